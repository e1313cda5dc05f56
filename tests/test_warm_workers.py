"""Warm workers (mmcurate.pipelines.warm_workers): the local multi-processing runner's worker
processes fork from a template that has done the imports, give the output a cold worker gives,
fall back to a cold worker whenever the template cannot serve, and never outlive the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from mmcurate.pipelines import warm_workers as ww

ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]

pytestmark = pytest.mark.skipif(not ww.supported(), reason="warm workers are Linux-only (fork)")


def _children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _who_ran(tmp_path: Path, args: list[str]) -> tuple[list[tuple[int, int, bool, int]], list[int]]:
    """A small multi-processing pipeline: (pid, parent pid, torch imported before the first
    element, x * x) for each element, as the workers saw them."""
    from mmcurate.pipelines.curate import local_runner

    def probe(x):
        import os as _os
        import sys as _sys

        return f"{_os.getpid()} {_os.getppid()} {int('torch' in _sys.modules)} {x * x}"

    options = PipelineOptions(args)
    out = tmp_path / "seen"
    with beam.Pipeline(runner=local_runner(options), options=options) as p:
        _ = (p | beam.Create(list(range(12))) | beam.Reshuffle() | beam.Map(probe)
             | beam.io.WriteToText(str(out)))
    rows = [tuple(int(v) for v in line.split()) for f in tmp_path.glob("seen*") for line in f.read_text().split("\n") if line]
    return rows, sorted(r[3] for r in rows)


def test_workers_fork_from_the_template_and_give_the_same_output(tmp_path):
    with ww.warm_workers(ARGS) as server:
        assert server is not None and ww.active() is server
        template = server.proc.pid
        rows, squares = _who_ran(tmp_path, ARGS)
    assert squares == sorted(x * x for x in range(12))
    assert {r[1] for r in rows} == {template}, rows  # every worker a child of the template
    assert all(r[2] for r in rows)  # torch came with the fork: nothing imported again
    assert server.proc.poll() is not None and ww.active() is None  # the template ended with the run
    assert not os.path.exists(server.socket)


def test_workers_forked_once_the_template_is_idle_inherit_its_prepared_state(tmp_path):
    """The language profiles and the phrase automaton are built by the template when it is
    idle (after a step's workers were forked), so a later step's workers do not build them."""
    from mmcurate.pipelines.curate import local_runner

    def built(_):
        import sys as _sys

        h = _sys.modules.get("mmcurate.quality.hallucination")
        lang = _sys.modules.get("mmcurate.quality.language")
        return f"{int(bool(h and h.default_matcher.cache_info().currsize))} {int(bool(lang and lang._factory.cache_info().currsize))}"

    options = PipelineOptions(ARGS)
    with ww.warm_workers(ARGS):
        for attempt in range(8):  # the imports, a quiet second, then the prepared state
            time.sleep(3)
            out = tmp_path / f"try{attempt}"
            with beam.Pipeline(runner=local_runner(options), options=options) as p:
                _ = p | beam.Create([1, 2, 3, 4]) | beam.Reshuffle() | beam.Map(built) | beam.io.WriteToText(str(out))
            seen = {line for f in tmp_path.glob(f"try{attempt}*") for line in f.read_text().split("\n") if line}
            if seen == {"1 1"}:
                break
    assert seen == {"1 1"}, seen


def test_a_variable_set_behind_os_environ_does_not_make_workers_cold(tmp_path):
    """A native library's setenv() (xllamacpp sets KMP_BLOCKTIME) reaches the process's C
    environment but not os.environ, which is what the runner gives its workers; the template
    gets os.environ too, so the two still agree."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.setenv(b"MMCURATE_TEST_C_ONLY", b"1", 1)
    try:
        assert "MMCURATE_TEST_C_ONLY" not in os.environ
        with ww.warm_workers(ARGS) as server:
            rows, _ = _who_ran(tmp_path, ARGS)
            template = server.proc.pid
    finally:
        libc.unsetenv(b"MMCURATE_TEST_C_ONLY")
    assert {r[1] for r in rows} == {template}


def test_without_the_template_the_workers_start_cold(tmp_path, monkeypatch):
    monkeypatch.setenv(ww.ENV_SWITCH, "0")
    with ww.warm_workers(ARGS) as server:
        assert server is None
        rows, squares = _who_ran(tmp_path, ARGS)
    assert squares == sorted(x * x for x in range(12))
    assert not any(r[2] for r in rows)  # Beam's own `python -m sdk_worker_main`: a fresh interpreter


def test_an_environment_the_template_did_not_import_with_gets_cold_workers(tmp_path, monkeypatch, capfd):
    """Libraries read thread counts and instruction sets when they load: a worker whose
    environment differs from the template's must not inherit the template's imports."""
    with ww.warm_workers(ARGS) as server:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        rows, squares = _who_ran(tmp_path, ARGS)
        template = server.proc.pid
    assert squares == sorted(x * x for x in range(12))
    assert template not in {r[1] for r in rows} and not any(r[2] for r in rows)
    assert "environment differs from the template's: OMP_NUM_THREADS" in capfd.readouterr().err


def test_the_shim_becomes_a_cold_worker_when_no_template_answers(tmp_path):
    """The runner's worker command never depends on the template: /bin/echo stands in for
    python here, so the exec is visible."""
    proc = subprocess.run([sys.executable, "-S", "-I", str(ww.SHIM), str(tmp_path / "nothing"), "/bin/echo"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"-m {ww.WORKER_MAIN}"
    assert "no warm server" in proc.stderr and "starting a cold worker" in proc.stderr


def test_a_killed_shim_takes_its_worker_with_it_and_the_template_ends_its_workers():
    server = ww.WarmWorkers(preload=())
    try:
        # a worker whose runner is not there: it waits for its control channel
        env = dict(os.environ, CONTROL_API_SERVICE_DESCRIPTOR='url: "localhost:9"', PIPELINE_OPTIONS="{}")
        shims = [subprocess.Popen(server.command, shell=True, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(2)]
        deadline = time.monotonic() + 60
        while len(_children(server.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = _children(server.proc.pid)
        assert len(workers) == 2, "the template did not fork the workers"
        os.killpg(shims[0].pid, signal.SIGKILL)  # the runner kills a worker command
        shims[0].wait()
        deadline = time.monotonic() + 10
        while sum(_alive(w) for w in workers) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(_alive(w) for w in workers) == 1
        server.close()  # the driver is done: the remaining worker ends, its shim reports it
        assert shims[1].wait(timeout=30) != 0
        deadline = time.monotonic() + 10  # SIGKILL is delivered, not waited for
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers)
    finally:
        server.close()


def test_the_arguments_decide_without_importing_beam(monkeypatch):
    monkeypatch.delenv(ww.ENV_SWITCH, raising=False)
    assert ww.wanted(ARGS)
    assert ww.wanted(["--direct_running_mode", "multi_processing"])
    assert not ww.wanted(["--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    assert not ww.wanted([])
    assert not ww.wanted([*ARGS, "--runner=DataflowRunner"])
    assert ww.wanted(PipelineOptions(ARGS))
    assert not ww.wanted(None)
    monkeypatch.setenv(ww.ENV_SWITCH, "0")
    assert not ww.wanted(ARGS)


def test_no_socket_for_the_template_means_cold_workers_not_a_failed_run(tmp_path, monkeypatch, caplog):
    long_dir = tmp_path / ("d" * 120)  # past a Unix socket path's ~108 bytes
    long_dir.mkdir()
    monkeypatch.setattr(ww.tempfile, "tempdir", str(long_dir))
    with ww.warm_workers(ARGS) as server:
        assert server is None and ww.active() is None
        rows, squares = _who_ran(tmp_path, ARGS)
    assert squares == sorted(x * x for x in range(12)) and not any(r[2] for r in rows)
    assert "worker processes start cold" in caplog.text


def test_the_driver_imports_runinference_without_torch():
    """`mmcurate run` imports Beam's RunInference without its optional ModelManager (which
    imports torch and scipy.optimize: 1.3 s of the command's start) before its stages; the
    module stays importable for a pipeline that asks for it, and the stages load without torch."""
    code = (
        "import sys\n"
        "from mmcurate.pipelines.warm_workers import import_runinference_without_model_manager\n"
        "import_runinference_without_model_manager()\n"
        "import apache_beam.ml.inference.base as base\n"
        "from mmcurate.pipelines import curate, resume, stages\n"
        "from mmcurate.transforms import vad, speech, quality, video, dedup\n"
        "print(base.ModelManager, sorted(m for m in ('torch', 'scipy.optimize') if m in sys.modules))\n"
        "from apache_beam.ml.inference.model_manager import ModelManager\n"
        "print('torch' in sys.modules, ModelManager.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["None []", "True ModelManager"]
