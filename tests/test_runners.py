"""The same job on several Beam runners gives the same output: DirectRunner in-process (its
FnApiRunner, `--direct_running_mode=in_memory`), its default on a machine with several cores
(one worker thread per core, mmcurate.pipelines.curate.local_parallelism), DirectRunner with
`--direct_running_mode=multi_processing`, and Beam's PortableRunner against a job service and
an SDK worker pool running as separate processes (`--environment_type=EXTERNAL`: the Job API
and Fn API a Flink or Spark cluster speaks), all from PyPI packages, started by the test.

FlinkRunner and SparkRunner need Beam's job-server jars from Maven Central and PrismRunner a
binary from GitHub releases; none is reachable here (README "Orchestration" -> "Runners")."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
INPUTS = [str(MEDIA / "speech" / "jfk.wav"), str(MEDIA / "speech" / "LDC93S1.wav")]
# the VAD stage: decode, a model behind RunInference, the sharded sink and its manifest commit
# (the speech models in several processes are bench/'s subject; here they would triple the time)
JOB = ["--stages", "vad", "--no-audit"]
CLI = [sys.executable, "-m", "mmcurate.pipelines.cli"]
# per-run measurements (wall time of a model call), not data
VOLATILE = {"elapsed_s", "finished_at"}

pytestmark = pytest.mark.slow


def _cli(out: Path, *beam_args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, "run", *INPUTS, "--output", str(out), *JOB, *beam_args],
                          capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _run(out: Path, *beam_args: str, timeout: int = 600) -> dict:
    _cli(out, *beam_args, timeout=timeout)
    return json.loads((out / "manifest.json").read_text())


def _tables(out: Path) -> dict:
    """Every committed table's rows, sorted, without per-run measurements."""
    import pyarrow.parquet as pq

    from mmcurate.quality.db import committed_shards

    tables = {}
    for table, paths in committed_shards(str(out))[0].items():
        rows = [{k: v for k, v in r.items() if k not in VOLATILE}
                for p in paths for r in pq.read_table(p).to_pylist()]
        tables[table] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return tables


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("direct") / "out"
    manifest = _run(out, "--direct_running_mode=in_memory")
    assert manifest["tables"]["sources"] == 2 and manifest["tables"]["speech_regions"] >= 2
    return manifest, _tables(out)


def _same(manifest: dict, out: Path, baseline: tuple[dict, dict]) -> None:
    base_manifest, base_tables = baseline
    assert manifest["run_id"] == base_manifest["run_id"]
    assert manifest["shards"] == base_manifest["shards"]  # same file names: same ids, same buckets
    assert manifest["tables"] == base_manifest["tables"]
    assert _tables(out) == base_tables


def test_default_worker_threads_match_in_process(in_process, tmp_path):
    from mmcurate.pipelines.curate import AUTO_MAX_WORKERS

    out = tmp_path / "out"
    proc = _cli(out)
    # the run says how it used the machine: a thread per core, at most 4, at most one per source
    workers = min(os.cpu_count() or 1, AUTO_MAX_WORKERS, len(INPUTS))
    if workers > 1:
        assert f"multi_threading, {workers} worker(s)" in proc.stderr, proc.stderr[-3000:]
    _same(json.loads((out / "manifest.json").read_text()), out, in_process)


def test_direct_multi_processing_matches_in_process(in_process, tmp_path):
    """Beam's worker processes give the in-process output."""
    out = tmp_path / "out"
    _cli(out, "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    _same(json.loads((out / "manifest.json").read_text()), out, in_process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        with contextlib.suppress(OSError), socket.create_connection(("localhost", port), timeout=1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {deadline_s} s")


@contextlib.contextmanager
def _server(args: list[str], port: int, log: Path):
    # the worker pool starts SDK harnesses with `python` from PATH: this interpreter's
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_portable_runner_job_service_and_external_workers(in_process, tmp_path):
    """A job service process and an SDK worker pool process, both from apache-beam's wheel;
    the job is submitted over the Job API and its bundles run in the pool's SDK harness."""
    job_port, pool_port = _free_port(), _free_port()
    with _server(["apache_beam.runners.portability.local_job_service_main", f"--port={job_port}"],
                 job_port, tmp_path / "job_service.log"), \
         _server(["apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"],
                 pool_port, tmp_path / "worker_pool.log"):
        out = tmp_path / "out"
        proc = _cli(out, "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                    "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}")
        manifest = json.loads((out / "manifest.json").read_text())
    assert "Starting worker" in (tmp_path / "worker_pool.log").read_text()  # the pool ran the bundles
    _same(manifest, out, in_process)
    # the driver tells the progress of bundles that ran in another process (from their marks)
    progress = [line for line in proc.stderr.splitlines() if " mmcurate.progress: " in line]
    assert any("| run: 2 source(s)" in line for line in progress), proc.stderr[-3000:]
