"""Beam worker processes end with os._exit once the harness is done, keeping the exit status."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from mmcurate.transforms.worker import exit_fast_after_harness, in_beam_worker

SCRIPT = textwrap.dedent("""
    import atexit, importlib.machinery, sys
    atexit.register(lambda: print("slow teardown ran", flush=True))  # registered first: runs last
    sys.modules["__main__"].__spec__ = importlib.machinery.ModuleSpec(
        "apache_beam.runners.worker.sdk_worker_main", None)
    from mmcurate.transforms.worker import exit_fast_after_harness
    print("armed", exit_fast_after_harness(), flush=True)
    if sys.argv[1] == "fail":
        raise RuntimeError("harness failed")
""")


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)


def test_a_worker_process_skips_teardown_and_keeps_its_exit_status():
    ok = _run("ok")
    assert ok.returncode == 0 and "armed True" in ok.stdout
    assert "slow teardown ran" not in ok.stdout  # os._exit came first
    failed = _run("fail")
    assert failed.returncode == 1 and "RuntimeError: harness failed" in failed.stderr
    assert "slow teardown ran" not in failed.stdout


def test_nothing_changes_outside_a_worker_process():
    assert not in_beam_worker()
    assert exit_fast_after_harness() is False


def test_the_cli_skips_teardown_keeps_its_status_and_flushes_what_it_printed(tmp_path):
    """`mmcurate` (cli.entry) ends with os._exit after main returns: the status and everything
    printed to a pipe survive; an atexit hook (the interpreter's teardown) does not run."""
    script = textwrap.dedent("""
        import atexit, sys
        atexit.register(lambda: print("slow teardown ran", flush=True))
        from mmcurate.pipelines import cli
        sys.argv = ["mmcurate", *sys.argv[1:]]
        cli.entry()
    """)

    def cli(*args):
        return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)

    missing = cli("audit", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no such output directory" in missing.stderr
    assert "slow teardown ran" not in missing.stdout
    bad = cli("run", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "asr.bogus=1")
    assert bad.returncode == 2 and "unknown key(s) ['bogus']" in bad.stderr
    helped = cli("run", "--help")  # argparse's own exit: the usual way, status 0
    assert helped.returncode == 0 and "Any option not listed above" in helped.stdout
