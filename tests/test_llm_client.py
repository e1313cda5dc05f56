"""The OpenAI-compatible rephrase client against servers that misbehave, on loopback.

Each fault server is a ThreadingHTTPServer on 127.0.0.1 in a thread of this process that records
every request it gets (path, method, headers). For each fault the client must end within
timeout_s x attempts (+ 1 s of slack), return one failure with its ledger reason, never send the
API key anywhere but the configured server, and hold no more than the size cap of a reply (the
memory test runs the client in a subprocess and reads its VmHWM). Valid answers come from
`FakeChat` of tests/rephrase_server.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmcurate.transforms.rephrase_backends import OpenAIChatClient
from rephrase_server import FakeChat

KEY_ENV = "MMCURATE_TEST_LLM_KEY"
KEY = "sk-test-never-leaves-the-origin"
MESSAGES = [{"role": "user", "content": "Text: the river floods every spring"}]
TIMEOUT_S = 0.8  # > the trickle's 0.5 s between bytes: a per-read timeout alone never fires
RETRIES = 1
BOUND_S = TIMEOUT_S * (RETRIES + 1) + 1.0


class FaultServer:
    """One scenario on 127.0.0.1:<free port>. `scenario(handler, server)` answers each request
    (handler is the BaseHTTPRequestHandler: headers read, body in handler.body)."""

    def __init__(self, scenario):
        self.scenario = scenario
        self.requests: list[dict] = []
        self.stop = threading.Event()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(n) if n else b""
                srv.requests.append({"method": self.command, "path": self.path,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}})
                try:
                    srv.scenario(self, srv)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what these tests want

            do_GET = do_POST = _any

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that hung up: expected
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(scenario) -> FaultServer:
        servers.append(FaultServer(scenario))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def client(url: str, **kw) -> OpenAIChatClient:
    args = dict(api_key_env=KEY_ENV, timeout_s=TIMEOUT_S, retries=RETRIES, backoff_s=0.05,
                max_response_bytes=64 << 10)
    args.update(kw)
    return OpenAIChatClient(url, "fake-rephraser", **args)


def timed(c: OpenAIChatClient):
    t0 = time.monotonic()
    g = c.generate(MESSAGES, 32)
    return g, time.monotonic() - t0


# --------------------------------------------------------------------------- scenarios


def send(h, code: int, body: bytes, headers: dict | None = None):
    h.send_response(code)
    for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                 **(headers or {})}.items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def ok(h, srv):
    body = json.loads(h.body) if h.body else {"messages": MESSAGES}
    send(h, 200, json.dumps(FakeChat().chat(body)).encode())


def status(code: int):
    def answer(h, srv):
        send(h, code, json.dumps({"error": {"message": f"injected {code}"}}).encode())
    return answer


def raw(payload: bytes):
    def answer(h, srv):
        send(h, 200, payload)
    return answer


def redirect(code: int, location: str):
    def answer(h, srv):
        send(h, code, b"", {"Location": location})
    return answer


def trickle(head: bool):
    """One byte every 0.5 s for up to 20 s: of the status line (head) or of the body. httpx's
    own read timeout never fires on either; the status line is cut only by the client's per-read
    deadline, the body also by its check between chunks."""
    def answer(h, srv):
        out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
        if not head:
            h.wfile.write(out)
            h.wfile.flush()
            out = b'{"choices": [{"message": {"content": "' + b"a" * 9000
        for i in range(40):
            if srv.stop.is_set():
                return
            h.wfile.write(out[i:i + 1])
            h.wfile.flush()
            time.sleep(0.5)
    return answer


def silent(h, srv):
    srv.stop.wait(30)  # accepted and read, never answered


def huge(size: int, code: int = 200, declare: bool = False):
    """`size` bytes of a chat completion that never ends, chunked (or with its Content-Length)."""
    def answer(h, srv):
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length" if declare else "Transfer-Encoding",
                      str(size) if declare else "chunked")
        h.end_headers()
        block = b'{"choices": [{"message": {"content": "' + b"a" * ((64 << 10) - 38)
        sent = 0
        while sent < size and not srv.stop.is_set():
            h.wfile.write(block if declare else b"%x\r\n%s\r\n" % (len(block), block))
            sent += len(block)
        if not declare:
            h.wfile.write(b"0\r\n\r\n")
    return answer


def assert_key_only_at(origin: FaultServer, *others: FaultServer):
    assert origin.requests and all(r["headers"].get("authorization") == f"Bearer {KEY}"
                                   for r in origin.requests)
    for o in others:
        assert all("authorization" not in r["headers"] for r in o.requests)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("host,code", [("127.0.0.1", 302), ("localhost", 302), ("localhost", 307)])
def test_a_redirect_is_not_followed_and_the_key_stays_at_the_origin(serve, host, code):
    elsewhere = serve(ok)
    target = f"http://{host}:{elsewhere.port}/v1/chat/completions"
    origin = serve(redirect(code, target))
    g, took = timed(client(origin.url))
    assert g.error == "redirect" and g.text == "" and g.attempts == 1
    assert f"HTTP {code}" in g.detail and target in g.detail
    assert elsewhere.requests == []  # nothing sent there, so nothing from there used
    assert_key_only_at(origin, elsewhere)
    assert took <= BOUND_S


@pytest.mark.parametrize("head", [False, True], ids=["body", "status-line"])
def test_a_trickling_server_ends_at_the_item_deadline(serve, head):
    s = serve(trickle(head))
    g, took = timed(client(s.url))
    assert g.error == "timeout" and g.attempts == RETRIES + 1 and g.text == ""
    assert "deadline" in g.detail
    assert took <= BOUND_S, f"{took:.1f} s"
    assert len(s.requests) == RETRIES + 1
    assert_key_only_at(s)


def test_a_server_that_never_answers_is_a_timeout_within_the_bound(serve):
    s = serve(silent)
    g, took = timed(client(s.url))
    assert g.error == "timeout" and g.attempts == RETRIES + 1
    assert TIMEOUT_S * (RETRIES + 1) - 0.1 <= took <= BOUND_S, f"{took:.1f} s"
    assert len(s.requests) == RETRIES + 1


@pytest.mark.parametrize("declare", [False, True], ids=["chunked", "content-length"])
def test_a_reply_over_the_cap_is_too_large_and_not_retried(serve, declare):
    s = serve(huge(50 << 20, declare=declare))
    g, took = timed(client(s.url, max_response_bytes=256 << 10))
    assert g.error == "too_large" and g.attempts == 1 and g.text == ""
    assert "max_response_bytes" in g.detail and str(256 << 10) in g.detail
    assert ("Content-Length" in g.detail) == declare
    assert took <= BOUND_S
    assert len(s.requests) == 1


@pytest.mark.parametrize("payload,why", [
    (b"<html>upstream says hello</html>", "not JSON"),
    (b'{"object": "chat.completion"}', "no choices"),
    (b'{"choices": []}', "no choices"),
    (b'["a", "list"]', "not a chat completion"),
], ids=["html", "no-choices", "empty-choices", "a-list"])
def test_a_reply_that_is_not_a_chat_completion_is_bad_response(serve, payload, why):
    s = serve(raw(payload))
    g, took = timed(client(s.url))
    assert g.error == "bad_response" and why in g.detail and g.attempts == 1
    assert len(s.requests) == 1 and took <= BOUND_S


@pytest.mark.parametrize("code,reason,tries", [(500, "server_error", 3), (503, "server_error", 3),
                                               (429, "server_error", 3), (400, "client_error", 1),
                                               (401, "client_error", 1)])
def test_http_errors_retry_5xx_and_429_only(serve, code, reason, tries):
    s = serve(status(code))
    g, took = timed(client(s.url, retries=2))
    assert g.error == reason and g.attempts == tries and f"HTTP {code}" in g.detail
    assert f"injected {code}" in g.detail
    assert len(s.requests) == tries and took <= TIMEOUT_S * 3 + 1.0
    assert_key_only_at(s)


def test_a_valid_answer_and_the_config_key(serve):
    from mmcurate.pipelines.config import ConfigError, CurateConfig
    from mmcurate.transforms import rephrase as rp

    s = serve(ok)
    cfg = rp.RephraseConfig(backend="openai", url=s.url, api_model="fake-rephraser",
                            api_key_env=KEY_ENV, max_response_bytes=8192)
    c = rp.RephraseModelHandler(cfg).load_model()
    assert c.max_response_bytes == 8192
    g = c.generate(MESSAGES, 32)
    assert g.error is None and g.text.startswith("In other words:") and g.finish_reason == "stop"
    assert s.requests[0]["method"] == "POST" and s.requests[0]["path"] == "/v1/chat/completions"
    assert s.requests[0]["headers"]["accept-encoding"] == "identity"
    assert_key_only_at(s)
    with pytest.raises(ConfigError) as e:
        CurateConfig.from_dict({"rephrase": {"max_response_bytes": 10, "backend": "openai",
                                             "url": "vllm:8000/v1", "api_model": "m"}})
    assert "rephrase.max_response_bytes" in str(e.value) and "http://host:port/v1" in str(e.value)


MEMORY_PROBE = r"""
import json, sys
from mmcurate.transforms.rephrase_backends import OpenAIChatClient

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

cap = int(sys.argv[1])
msgs = [{"role": "user", "content": "Text: the river floods every spring"}]
clients = [OpenAIChatClient(u, "m", api_key_env="", timeout_s=20, retries=0,
                            max_response_bytes=cap) for u in sys.argv[2:]]
warm = clients[0].generate(msgs, 8)  # imports, the pool, the first connection
assert warm.error is None, warm.detail
out = []
for c in clients[1:]:
    before = hwm()
    g = c.generate(msgs, 8)
    out.append({"error": g.error, "detail": g.detail[:120], "growth": hwm() - before})
print(json.dumps(out))
"""


def test_memory_stays_within_twice_the_cap_on_a_200_mb_reply(serve):
    """8 MB cap, 200 MB streamed as a chat completion and as an HTTP 500's body: the client's
    peak RSS grows by at most 2x the cap (VmHWM of a fresh process around each request)."""
    cap = 8 << 20
    servers = [serve(ok), serve(huge(200 << 20)), serve(huge(200 << 20, code=500))]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(cap), *[s.url for s in servers]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    too_large, server_error = json.loads(proc.stdout)
    assert too_large["error"] == "too_large", too_large
    assert server_error["error"] == "server_error" and "HTTP 500" in server_error["detail"]
    for r in (too_large, server_error):
        assert r["growth"] <= 2 * cap, f"peak RSS grew by {r['growth'] / 2**20:.1f} MiB"
    assert time.monotonic() - t0 < 30


@pytest.mark.slow  # a Beam pipeline: ~10 s on 2 cores; the client tests above cover each fault fast
def test_the_stage_writes_one_row_per_request_whatever_the_server_does(serve):
    """The rephrase stage over the openai backend against a server that answers each passage
    with another fault: every request ends as a text_mix row or exactly one ledger row with the
    fault's reason, and the redirect target never hears from the stage."""
    from test_rephrase import _openai_cfg, make_segments, run_stage

    elsewhere = serve(ok)
    faults = [ok, redirect(302, f"http://localhost:{elsewhere.port}/v1/chat/completions"),
              huge(1 << 20), raw(b"not json"), status(500), status(400), silent]
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def per_passage(h, srv):
        text = json.loads(h.body)["messages"][-1]["content"]
        with lock:  # each passage keeps its fault across retries; faults in turn by arrival
            k = seen.setdefault(text, len(seen))
        faults[k % len(faults)](h, srv)

    s = serve(per_passage)
    cfg = _openai_cfg(s.url, api_key_env=KEY_ENV, timeout_s=0.5, retries=1, trim_surplus=False,
                      max_response_bytes=64 << 10)
    from mmcurate.transforms import rephrase as rp

    rows, rejected, _ = run_stage(make_segments(4, 8), cfg, handler=rp.RephraseModelHandler(cfg))
    syn = [r for r in rows if r.is_synthetic]
    assert len(seen) >= len(faults)
    # every HTTP request is one attempt of exactly one row: a rewrite or a guard's rejection
    # (1 attempt) or a failure (its detail says how many)
    tried = [int(m.group(1)) if (m := re.search(r"\((\d+) attempt\(s\)", r.detail)) else 1
             for r in rejected]
    assert len(syn) + sum(tried) == len(s.requests)
    assert len({r.item_id for r in rejected} | {r.text_id for r in syn}) == len(syn) + len(rejected)
    reasons = {r.reason for r in rejected}
    assert {"redirect", "too_large", "bad_response", "server_error", "client_error",
            "timeout"} <= reasons
    for r in rejected:
        if r.reason in ("redirect", "too_large", "bad_response", "client_error"):
            assert "(1 attempt(s)" in r.detail, r.detail
        if r.reason in ("server_error", "timeout"):
            assert "(2 attempt(s)" in r.detail, r.detail
    assert elsewhere.requests == []
    assert_key_only_at(s, elsewhere)
