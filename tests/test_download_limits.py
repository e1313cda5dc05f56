"""Downloads are bounded: an overall deadline, a minimum transfer rate, a log line while
waiting or retrying, and no partial file left behind (also after a killed run). Real HTTP
servers on 127.0.0.1, started here; every test ends in seconds."""

from __future__ import annotations

import http.server
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from mmcurate.transforms import rss


class _Drip(http.server.BaseHTTPRequestHandler):
    """Promises 1 MB, then sends 50 bytes every 0.2 s (250 B/s): never silent long enough to
    trip a socket timeout."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        self.send_header("Content-Length", str(1_000_000))
        self.end_headers()
        try:
            for _ in range(200):
                self.wfile.write(b"x" * 50)
                self.wfile.flush()
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def drip():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/episode.mp3"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def silent():
    """Accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        s.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(s.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{s.getsockname()[1]}/episode.mp3"
    stop.set()
    for c in conns:
        c.close()
    s.close()


def _parts(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".part-")] if d.exists() else []


def test_a_dripping_host_is_abandoned_below_the_minimum_rate(drip, tmp_path, caplog):
    policy = rss.HttpPolicy(timeout_s=5.0, retries=3, backoff_s=0.1, max_bytes=10**7,
                            deadline_s=60.0, min_rate_bps=1000.0, rate_grace_s=1.0,
                            progress_every_s=0.5)
    caplog.set_level(logging.INFO, logger="mmcurate.ingest")
    t0 = time.monotonic()
    with pytest.raises(rss.DownloadError, match="transfer rate .* below the minimum"):
        rss.download(drip, str(tmp_path), policy)
    took = time.monotonic() - t0
    assert took < 4.0, took  # grace 1 s, not a retry loop, not the 60 s deadline
    assert _parts(tmp_path) == []  # the partial file is gone
    assert any("downloading" in r.getMessage() for r in caplog.records)  # progress while waiting


def test_the_deadline_bounds_all_attempts_and_each_retry_is_logged(silent, tmp_path, caplog):
    policy = rss.HttpPolicy(timeout_s=0.5, retries=10, backoff_s=0.2, max_bytes=10**6,
                            deadline_s=2.0)
    caplog.set_level(logging.INFO, logger="mmcurate.ingest")
    t0 = time.monotonic()
    with pytest.raises(rss.DownloadError, match="deadline"):
        rss.download(silent, str(tmp_path), policy)
    took = time.monotonic() - t0
    assert took < 3.5, took  # 11 attempts x 0.5 s + backoff would be > 6 s
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retries and "timed out" in retries[0].lower()
    assert _parts(tmp_path) == []


def test_partial_files_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    old = tmp_path / ".part-abc.mp3"
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    live = tmp_path / ".part-live.mp3"  # still being written by a running transfer
    live.write_bytes(b"growing")
    kept = tmp_path / ("a" * 64 + ".mp3")
    kept.write_bytes(b"done")
    gone = rss.remove_stale_parts(str(tmp_path), idle_s=60.0)
    assert gone == [str(old)]
    assert live.exists() and kept.exists()


def test_ingest_config_carries_the_limits():
    from mmcurate.pipelines.config import ConfigError, CurateConfig
    from mmcurate.transforms.ingest import http_policy

    cfg = CurateConfig.from_dict({"ingest": {"download_deadline_s": 120, "min_download_rate_bps": 5e4}})
    p = http_policy(cfg.ingest, 10)
    assert (p.deadline_s, p.min_rate_bps, p.max_bytes) == (120.0, 5e4, 10)
    with pytest.raises(ConfigError, match="download_deadline_s"):
        CurateConfig.from_dict({"ingest": {"download_deadline_s": 0}})
