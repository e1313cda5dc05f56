"""One live run per output (mmcurate.pipelines.lock)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmcurate.pipelines import lock

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"


def test_a_second_run_into_a_held_output_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    held = lock.acquire(str(out), "run-holder")
    try:
        proc = subprocess.run([sys.executable, "-m", "mmcurate.pipelines.cli", "run",
                               str(MEDIA / "speech" / "jfk.wav"), "--output", str(out), "--stages", "vad"],
                              capture_output=True, text=True, timeout=120)
    finally:
        lock.release(held)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mmcurate:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "run-holder" in lines[0] and f"pid {os.getpid()}" in lines[0] and socket.gethostname() in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [], "the refused run wrote something"


def test_the_lock_is_released_and_taken_again():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with lock.output_lock(d, "run-a") as path:
            assert json.loads(Path(path).read_text())["run_id"] == "run-a"
            with pytest.raises(lock.OutputLocked, match="run-a"):
                lock.acquire(d, "run-b")
        assert not Path(path).exists()
        with lock.output_lock(d, "run-b"):
            pass


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / lock.LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                  "run_id": "run-dead", "since": "then"}))
    path = lock.acquire(str(tmp_path), "run-new")
    assert json.loads(Path(path).read_text())["run_id"] == "run-new"
    assert "taking over the stale lock" in caplog.text and "run-dead" in caplog.text
    lock.release(path)


def test_a_recycled_pid_is_not_taken_for_the_holder(tmp_path):
    """The holder's pid now runs another process (another start time): the lock is stale."""
    (tmp_path / lock.LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "run_id": "run-old", "since": "then", "started": "1"}))
    path = lock.acquire(str(tmp_path), "run-new")
    lock.release(path)


def test_another_hosts_lock_is_stale_only_when_it_stopped_being_refreshed(tmp_path):
    p = tmp_path / lock.LOCK
    p.write_text(json.dumps({"pid": 1, "host": "elsewhere", "run_id": "run-far", "since": "then"}))
    with pytest.raises(lock.OutputLocked, match="run-far"):
        lock.acquire(str(tmp_path), "run-new")
    old = p.stat().st_mtime - lock.STALE_OTHER_HOST_S - 5
    os.utime(p, (old, old))
    lock.release(lock.acquire(str(tmp_path), "run-new"))


def test_object_stores_take_no_lock():
    assert lock.acquire("gs://bucket/out", "run-x") is None
