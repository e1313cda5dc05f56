"""Beam SDK worker processes: end them without the interpreter's slow teardown.

A worker process of the local multi-processing runner (and a portable runner's Python SDK
harness) that has loaded Whisper, ONNX Runtime and torch spends ~2.5 s after its harness has
finished in CPython's finalization: every module torn down, every native library's thread
pools and allocators destroyed, all for a process that is about to vanish. The local runner
stops its workers one after the other, so a run paid that once per worker and pipeline
(bench/README.md, "Workers after three levers": 5.7 s of a 2-worker chunk's 50 s).

`exit_fast_after_harness()` (called by every model handler when its model loads in a worker:
VAD, ASR, diarization, DNSMOS, rephrasing) adds an exit hook that flushes logging and the
standard streams and then calls `os._exit`, keeping the exit status: 1 when an uncaught exception
ended the worker, else 0. Every bundle's output has been sent and acknowledged over the Fn API
before the harness returns, so nothing is lost.
It does nothing outside a Beam worker process (the driver, tests, a DirectRunner in memory).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"

_armed = False
_failed = False


def in_beam_worker() -> bool:
    """Is this process a Beam Python SDK worker (`python -m ...sdk_worker_main`)?"""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == WORKER_MAIN


def exit_without_teardown(status: int) -> None:
    """Flush logging and the standard streams, then end the process with `status` at once:
    no atexit hooks, no module or native-library teardown (also the `mmcurate` command's and
    the warm-worker template's exit, mmcurate.pipelines)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream: nothing left to flush
            pass
    os._exit(status)


def _exit_now() -> None:
    exit_without_teardown(1 if _failed else 0)


def exit_fast_after_harness() -> bool:
    """Arm the fast exit in a Beam worker process (once); True when armed."""
    global _armed
    if _armed or not in_beam_worker():
        return _armed
    _armed = True
    previous = sys.excepthook

    def record_failure(kind, value, tb):
        global _failed
        _failed = True
        previous(kind, value, tb)

    sys.excepthook = record_failure
    atexit.register(_exit_now)
    return True
