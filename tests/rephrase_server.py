"""A small OpenAI-compatible chat-completions server on loopback, backed by the embedded model.

    python tests/rephrase_server.py [--model smollm2-135m-instruct] [--port 0]
        [--parallel 4] [--fail-matching TEXT] [--sleep-matching TEXT --sleep S]
        [--fail-every N] [--fake]

Serves POST /v1/chat/completions (non-streaming), GET /v1/models and GET /health with the
stdlib's ThreadingHTTPServer; every request thread calls the same in-process llama.cpp engine
(xllamacpp, continuous batching over `--parallel` slots), so concurrent requests are decoded
together, as on a vLLM or llama.cpp server. Prints `listening on http://127.0.0.1:PORT` as its
first line. Used by the rephrase stage's tests and bench/bench_rephrase.py; it binds 127.0.0.1
only.

Fault modes for tests: a request whose last message contains `--fail-matching` gets HTTP 500
every time; one containing `--sleep-matching` is answered after `--sleep` seconds; with
`--fail-every N` every N-th request gets HTTP 503 (a transient error a retry gets past).
`--fake` answers without a model (the passage, reversed word order, prefixed), for fast tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeChat:
    model = "fake-rephraser"

    def chat(self, body: dict) -> dict:
        text = body["messages"][-1]["content"].rsplit("Text:", 1)[-1].split("\n\n")[0].strip()
        out = "In other words: " + " ".join(reversed(text.split()))
        return {"object": "chat.completion", "model": self.model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": out}}],
                "usage": {"completion_tokens": len(out.split()), "prompt_tokens": 0}}


def make_server(engine, port: int = 0, fail_matching: str | None = None,
                sleep_matching: str | None = None, sleep_s: float = 0.0, fail_every: int = 0):
    counter = itertools.count(1)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet
            pass

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout)

        def do_GET(self):
            if self.path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": getattr(engine, "model", "model"),
                                                             "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            if self.path not in ("/v1/chat/completions", "/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            n = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(n))
                last = str(body["messages"][-1]["content"])
            except (ValueError, KeyError, IndexError, TypeError) as e:
                self._send(400, {"error": {"message": f"bad request: {e}"}})
                return
            with lock:
                k = next(counter)
            if fail_matching and fail_matching in last:
                self._send(500, {"error": {"message": "injected server error"}})
                return
            if fail_every and k % fail_every == 0:
                self._send(503, {"error": {"message": "injected transient error"}})
                return
            if sleep_matching and sleep_matching in last:
                time.sleep(sleep_s)
            try:
                r = engine.chat(body)
            except Exception as e:  # noqa: BLE001
                self._send(500, {"error": {"message": f"{type(e).__name__}: {e}"}})
                return
            if isinstance(r, (str, bytes)):
                r = json.loads(r)
            self._send(500 if "error" in r else 200, r)

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    return httpd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fail-matching")
    ap.add_argument("--sleep-matching")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--fake", action="store_true")
    a = ap.parse_args(argv)
    if a.fake:
        engine = FakeChat()
    else:
        from mmcurate.transforms.rephrase_backends import EmbeddedGenerator

        engine = EmbeddedGenerator(a.model, parallel=a.parallel, threads=a.threads)
    httpd = make_server(engine, a.port, a.fail_matching, a.sleep_matching, a.sleep, a.fail_every)
    print(f"listening on http://127.0.0.1:{httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
