"""One live run per output directory.

`mmcurate run` and `mmcurate corpus` hold `OUT/.mmcurate.lock` from their start to their end.
The file is created with O_EXCL (atomic on local filesystems and on NFSv3+) and says who holds
it: pid, host, run id, since when, and the holder's process start time (so a recycled pid is
not taken for the holder). A second run into the same output stops at start-up with
`OutputLocked`, whose message names the holder (the CLI prints it and exits 2).

A lock whose holder is gone is stale and is taken over: on the same host when its pid is not
running (or runs another process: a different start time); from another host, when the lock
is older than `STALE_OTHER_HOST_S` and has not been refreshed (the holder rewrites it every
`REFRESH_S` while it runs). A killed run therefore never blocks the next one for long.

Object stores (`gs://`, `s3://`) have no exclusive create: no lock is taken there, and the
guarantee is the manifest's (one atomic commit; a reader sees one whole generation). Schedule
one run per output there (Airflow: `max_active_runs=1` per partition's DAG), as the README
says.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time

from mmcurate.schemas.printable import printable

log = logging.getLogger("mmcurate.lock")

LOCK = ".mmcurate.lock"
REFRESH_S = 60.0
STALE_OTHER_HOST_S = 10 * 60.0


class OutputLocked(RuntimeError):
    """Another live run holds the output."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None
    when there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_gone(info: dict, mtime: float) -> bool:
    if info.get("host") == socket.gethostname():
        pid = int(info.get("pid") or 0)
        if pid <= 0 or not _alive(pid):
            return True
        started = info.get("started")
        return started is not None and _start_time(pid) not in (None, started)
    return time.time() - mtime > STALE_OTHER_HOST_S


def describe(info: dict) -> str:
    return (f"run {info.get('run_id', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {info.get('since', '?')})")


def _read(path: str) -> tuple[dict, float] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        mtime = os.path.getmtime(path)
    except FileNotFoundError:
        return None
    try:
        return json.loads(text), mtime
    except ValueError:  # a holder killed between create and write: empty or partial
        return {}, mtime


def acquire(output: str, run_id: str) -> str | None:
    """Take the lock of `output` (a local directory); returns its path, or None for object
    stores. Raises OutputLocked naming the live holder."""
    if "://" in output:
        return None
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id,
          "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
          "started": _start_time(os.getpid())}
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read(path)
            if held is None:
                continue  # released meanwhile: try again
            info, mtime = held
            # an empty file younger than a few seconds is a holder between create and write
            if not info and time.time() - mtime < 5.0:
                raise OutputLocked(f"{output} is being locked by another run (an unfinished {LOCK})")
            if info and not _holder_gone(info, mtime):
                raise OutputLocked(f"{output} is in use by {describe(info)}; wait for it to end, "
                                   f"or write to another --output")
            log.warning("taking over the stale lock of %s: %s is gone", printable(output),
                        describe(info) if info else "a run that left an empty lock file")
            # rename the stale file away first: of two runs taking over at once, one renames
            # it and the other finds nothing to rename and retries the exclusive create
            try:
                os.rename(path, f"{path}.stale-{os.getpid()}")
                os.unlink(f"{path}.stale-{os.getpid()}")
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh, sort_keys=True)
        return path
    raise OutputLocked(f"{output}: could not take {LOCK} (another run keeps taking it)")


def release(path: str | None) -> None:
    if path is None:
        return
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return
    if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def output_lock(output: str, run_id: str):
    """Hold the lock of `output` for the block; refreshes its mtime every REFRESH_S so that
    another host can tell a live holder from a dead one."""
    path = acquire(output, run_id)
    stop = threading.Event()

    def refresh():
        while not stop.wait(REFRESH_S):
            with contextlib.suppress(OSError):
                os.utime(path)

    t = None
    if path is not None:
        t = threading.Thread(target=refresh, name="mmcurate-lock-refresh", daemon=True)
        t.start()
    try:
        yield path
    finally:
        stop.set()
        release(path)
