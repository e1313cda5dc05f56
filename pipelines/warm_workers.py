"""Warm workers for the local multi-processing runner: each Beam SDK worker process is forked
from a template process that has already imported Beam, torch, ONNX Runtime, CTranslate2 and
the stage modules, instead of starting a fresh interpreter that imports them all again.

Why: `mmcurate run` is several pipelines (ingest, one per chunk of sources, the merge;
mmcurate.pipelines.resume), and the local runner starts new worker processes for each. A cold
worker spent ~3.8 s importing before its first element (py-spy: `apache_beam.ml` alone 2.4 s,
as Beam's model manager imports torch and scipy.optimize), every worker of every pipeline: with
2 workers the run burnt 11.6 CPU-s more than with 1 on the shared media, and on 2 cores that
capped the speed-up (bench/README.md, issue 13). A forked worker starts in milliseconds and
shares the template's pages until it writes them.

How:
  * `warm_workers(options)` (a context manager around a run; `mmcurate run` opens it first
    thing) starts the template when the options ask for the local runner in multi_processing
    mode on Linux, and not when MMCURATE_WARM_WORKERS=0. The driver binds the template's Unix
    socket; the template imports `PRELOAD` while workers asked for meanwhile wait in the
    socket's backlog, so its imports overlap the driver's own start and the ingest step.
  * While it is open, `local_runner` gives such pipelines a runner whose worker command is the
    shim (`_warm_worker_shim.py`): the runner starts the shim as it would start a worker; the
    shim hands the template its environment and standard streams; the template forks; the
    child becomes the worker (`runpy` of Beam's `sdk_worker_main`, exactly what `python -m`
    runs) with that environment; the shim exits with the worker's exit status.
  * Fork safety: the template never starts a thread of its own (one select loop) and never
    runs a model; what it imports only defines things. OpenBLAS and jemalloc, which start
    threads at load, re-initialise in a forked child themselves.
  * The child's environment is the runner's. A library reads some variables when it loads
    (thread counts, instruction sets: OMP_*, CT2_*, ATEN_*, ONEDNN_* ...), so when the
    request's environment differs from the template's in anything but the runner's own
    per-worker variables, the shim starts a cold worker instead, and the log says why.
  * Lifetimes: a shim that is killed closes its connection and the template kills its
    worker; a template whose driver goes away (its stdin closes) kills its workers and exits;
    every child dies with the template (PR_SET_PDEATHSIG). If the template cannot be reached,
    the shim becomes a cold worker.

Distributed runners (Dataflow, Flink, Spark) keep their own long-lived workers and are not
touched; neither are the in-memory and multi-threading modes, whose workers are threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("mmcurate.warm_workers")

WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"
SHIM = Path(__file__).with_name("_warm_worker_shim.py")
ENV_SWITCH = "MMCURATE_WARM_WORKERS"
# set by the runner for each worker, or by a shell or terminal and read by no library at load
# time; everything else must match the template's environment
PER_WORKER_ENV = frozenset({"CONTROL_API_SERVICE_DESCRIPTOR", "LOGGING_API_SERVICE_DESCRIPTOR",
                            "PIPELINE_OPTIONS", "WORKER_ID", "STATUS_API_SERVICE_DESCRIPTOR",
                            "COLUMNS", "LINES", "PWD", "OLDPWD", "SHLVL", "_", "PYTEST_CURRENT_TEST"})
# what the chunk steps' workers of the default stages import (decode, VAD, speech, the commit),
# before the template serves (a module that fails to import is skipped: the worker imports it,
# or fails on it, as a cold one would)
PRELOAD = (
    "numpy", "scipy.cluster.hierarchy", "pyarrow", "pyarrow.parquet",
    # not WORKER_MAIN itself: runpy runs it as __main__ and warns when it is already imported
    "apache_beam", "apache_beam.runners.worker.sdk_worker", "apache_beam.runners.worker.log_handler",
    "apache_beam.runners.worker.data_sampler", "apache_beam.utils.profiler",
    "apache_beam.ml.inference.base", "apache_beam.transforms.util",
    "torch", "torchaudio.compliance.kaldi", "onnxruntime", "ctranslate2", "faster_whisper", "av",
    "mmcurate.schemas.records", "mmcurate.pipelines.stages", "mmcurate.transforms.decode",
    "mmcurate.transforms.vad", "mmcurate.transforms.speech", "mmcurate.transforms.asr",
    "mmcurate.transforms.diarize", "mmcurate.transforms.diarize_core", "mmcurate.transforms.sink",
    "mmcurate.pipelines.balance", "mmcurate.transforms.worker",
)
# prepared by the template once it serves and has been idle for a second (a step's workers are
# asked for together, so the chunk steps' workers never wait for this), for the merge's workers
# to inherit: the merge stages' modules (0.25-0.4 s), then model-free state that workers build
# the same way whatever the config (pure Python: langdetect's 55 language profiles, the phrase
# automaton; 0.4-0.5 s per merge worker). "module" is imported, "module:function" called.
WARM_CALLS = (
    "scipy.signal", "mmcurate.transforms.ingest", "mmcurate.transforms.quality", "mmcurate.transforms.video",
    "mmcurate.transforms.keyframes", "mmcurate.transforms.interleave", "mmcurate.transforms.read",
    "mmcurate.quality.language:factory", "mmcurate.quality.hallucination:default_matcher",
)

_ACTIVE: "WarmWorkers | None" = None


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork") and hasattr(socket, "send_fds")


def wanted(options) -> bool:
    """Do these pipeline options (PipelineOptions, or Beam's command-line arguments) run the
    local runner's worker processes, which warm workers can serve?"""
    if options is None or os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not supported():
        return False
    if isinstance(options, (list, tuple)):  # the arguments, read without importing Beam
        import argparse

        ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        ap.add_argument("--runner", default=None)
        ap.add_argument("--direct_running_mode", default="in_memory")
        known, _ = ap.parse_known_args(list(options))
        runner = (known.runner or "DirectRunner").split(".")[-1].lower()
        return runner in ("directrunner", "direct", "fnapirunner") and known.direct_running_mode == "multi_processing"
    from apache_beam.options.pipeline_options import DirectOptions

    from mmcurate.pipelines.balance import local_workers

    return local_workers(options) > 0 and options.view_as(DirectOptions).direct_running_mode == "multi_processing"


class WarmWorkers:
    """The driver's handle on one template process."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD):
        self._dir = tempfile.mkdtemp(prefix="mmcurate-warm-")
        self.socket = os.path.join(self._dir, "s")
        # bound and listening before the template starts: a worker asked for at once waits in
        # the backlog instead of finding no socket (and starting cold)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.socket)
            listener.listen(64)
        except OSError:
            listener.close()
            os.rmdir(self._dir)
            raise
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mmcurate.pipelines.warm_workers", str(listener.fileno()), *preload],
                stdin=subprocess.PIPE, pass_fds=[listener.fileno()],
                # os.environ, which is what the runner hands its workers: a native library may
                # have setenv()'d into the process's C environment behind it (xllamacpp sets
                # KMP_BLOCKTIME), and the template would then differ from every worker
                env=dict(os.environ))
        finally:
            listener.close()

    @property
    def command(self) -> str:
        """The worker command line the runner starts (through a shell) for each worker."""
        import shlex

        return " ".join(shlex.quote(x) for x in (sys.executable, "-S", "-I", str(SHIM), self.socket, sys.executable))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the template kills its workers and exits
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.socket)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


def active() -> "WarmWorkers | None":
    return _ACTIVE if _ACTIVE is not None and _ACTIVE.proc.poll() is None else None


@contextlib.contextmanager
def warm_workers(options):
    """Serve the local runner's worker processes warm while open (when `wanted(options)`);
    nested uses share the outer template."""
    global _ACTIVE
    if _ACTIVE is not None or not wanted(options):
        yield _ACTIVE
        return
    try:
        _ACTIVE = WarmWorkers()
    except OSError as e:  # no Unix socket here (a path too long, a read-only temp dir ...)
        log.warning("warm workers: no template (%s); worker processes start cold", e)
        yield None
        return
    log.info("warm workers: worker processes fork from a template (pid %d; %s=0 turns this off)",
             _ACTIVE.proc.pid, ENV_SWITCH)
    try:
        yield _ACTIVE
    finally:
        server, _ACTIVE = _ACTIVE, None
        server.close()


def runner(command: str):
    """An FnApiRunner whose multi_processing workers are started with `command`."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    class WarmFnApiRunner(FnApiRunner):
        # FnApiRunner.run_pipeline sets its default environment to `python -m sdk_worker_main`
        # for multi_processing; this runner starts the same worker through the shim instead
        # (tests/test_warm_workers.py fails if a Beam upgrade bypasses this)
        @property
        def _default_environment(self):
            return self._mm_environment

        @_default_environment.setter
        def _default_environment(self, env):
            if getattr(env, "command_string", "").endswith(f" -m {WORKER_MAIN}"):
                env = SubprocessSDKEnvironment.from_command_string(command)
            self._mm_environment = env

    return WarmFnApiRunner()


# --------------------------------------------------------------------------- the template


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _flags, _addr = socket.recv_fds(conn, 8, 3)
    if len(head) < 8:
        head += conn.recv(8 - len(head), socket.MSG_WAITALL)
    (size,) = struct.unpack("!Q", head)
    body = b""
    while len(body) < size:
        got = conn.recv(size - len(body))
        if not got:
            raise ConnectionError("the shim went away mid-request")
        body += got
    return json.loads(body), fds


def _env_differences(env: dict, base: dict) -> list[str]:
    keys = (set(env) | set(base)) - PER_WORKER_ENV
    return sorted(k for k in keys if env.get(k) != base.get(k))


def _become_worker(env: dict, cwd: str, fds: list[int]) -> None:
    """In the forked child: the shim's streams and environment, then Beam's worker main."""
    import ctypes
    import random
    import runpy

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the template
    except Exception:  # noqa: BLE001 - not Linux's prctl: the stdin watch still ends workers
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    random.seed()  # a fresh interpreter's seeds, not the template's (shared by every child)
    with contextlib.suppress(Exception):
        import numpy as np

        np.random.seed()
    rc = 0
    try:
        runpy.run_module(WORKER_MAIN, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as an interpreter would, then the status
        import traceback

        traceback.print_exc()
        rc = 1
    from mmcurate.transforms.worker import exit_without_teardown

    exit_without_teardown(rc)  # as `exit_fast_after_harness` ends a cold worker


def import_runinference_without_model_manager() -> None:
    """Import Beam's RunInference module without its optional ModelManager.

    `apache_beam.ml.inference.base` imports `model_manager` when it loads, and that imports
    torch and scipy.optimize: 1.3 s of the command's 2.1 s before it checks anything, for a
    feature (`use_model_manager`) this project never asks for. base expects the module may be
    missing (its `ModelManager` is then None, and imported when a pipeline asks for it), so
    it is hidden while base loads and importable again afterwards. The `mmcurate` command
    does this before it imports its stages, and so does the template (scipy.optimize, 0.25 s,
    was only for this); torch still loads where a model needs it: in the template (`PRELOAD`)
    or, for an in-process run, when the first model loads."""
    name = "apache_beam.ml.inference.model_manager"
    if "apache_beam.ml.inference.base" in sys.modules or name in sys.modules:
        return
    sys.modules[name] = None  # type: ignore[assignment]  # `from name import ...` raises ImportError
    try:
        import apache_beam.ml.inference.base  # noqa: F401
    finally:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


def _warm_call(spec: str) -> None:
    import importlib

    module, _, name = spec.partition(":")
    try:
        loaded = importlib.import_module(module)
        if name:
            getattr(loaded, name)()
    except Exception as e:  # noqa: BLE001 - the workers build it themselves, as cold ones do
        print(f"mmcurate warm workers: {spec} not prepared ({type(e).__name__}: {e})", file=sys.stderr, flush=True)


def serve(fd: int, preload: list[str], calls: tuple[str, ...] = WARM_CALLS) -> int:
    listener = socket.socket(fileno=fd)  # bound and listening: shims wait there during the imports
    t0 = time.perf_counter()
    failed = []
    try:
        import_runinference_without_model_manager()
    except Exception:  # noqa: BLE001 - PRELOAD imports it again and reports it
        pass
    for name in preload:
        try:
            __import__(name)
        except Exception as e:  # noqa: BLE001 - the worker meets (and reports) it itself
            failed.append(f"{name} ({type(e).__name__})")
    import threading

    if threading.active_count() != 1:  # something started a Python thread: forking is unsafe
        print(f"mmcurate warm workers: {threading.active_count()} threads after the imports; "
              "workers start cold", file=sys.stderr, flush=True)
    warm = threading.active_count() == 1
    base = dict(os.environ)
    logging.getLogger(__name__).debug("template ready in %.1f s (not imported: %s)",
                                      time.perf_counter() - t0, ", ".join(failed) or "none")
    workers: dict[socket.socket, int] = {}  # connection -> worker pid
    stdin = sys.stdin.fileno()
    pending = list(calls) if warm else []
    last_fork = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([listener, stdin, *workers], [], [], 0.05)
            # idle for a second (a step's workers are asked for together): prepare the next
            # piece of shared state
            if not ready and pending and time.monotonic() - last_fork > 1.0:
                _warm_call(pending.pop(0))
                if threading.active_count() != 1:  # it started a thread: fork no more
                    print("mmcurate warm workers: a thread started while preparing; workers start cold",
                          file=sys.stderr, flush=True)
                    warm, pending = False, []
                continue
            if stdin in ready and not os.read(stdin, 4096):
                return 0  # the driver is done (or gone)
            if listener in ready:
                conn, _ = listener.accept()
                try:
                    req, fds = _recv_request(conn)
                except (OSError, ValueError, ConnectionError) as e:
                    print(f"mmcurate warm workers: bad request ({e})", file=sys.stderr, flush=True)
                    conn.close()
                    continue
                diff = _env_differences(req["env"], base)
                if not warm or diff:
                    why = "template not fork-safe" if not warm else (
                        "environment differs from the template's: " + ", ".join(diff[:8]))
                    with contextlib.suppress(OSError):
                        conn.sendall(f"cold {why}\n".encode())
                    conn.close()
                    for fd in fds:
                        os.close(fd)
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    for c in [*workers, conn]:
                        c.close()
                    os.close(stdin)
                    _become_worker(req["env"], req["cwd"], fds)
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    conn.sendall(f"forked {pid}\n".encode())
                workers[conn] = pid
                last_fork = time.monotonic()
            for conn in [c for c in ready if c in workers]:
                # a shim sends nothing after its request: readable means it closed (was killed)
                if not conn.recv(1):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(workers[conn], signal.SIGKILL)
            for conn, pid in list(workers.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    rc = os.waitstatus_to_exitcode(status)
                    with contextlib.suppress(OSError):
                        conn.sendall(f"{rc if rc >= 0 else 128 - rc}\n".encode())
                    conn.close()
                    del workers[conn]
    finally:
        for pid in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        listener.close()


if __name__ == "__main__":
    from mmcurate.transforms.worker import exit_without_teardown

    # no teardown of torch & co.: the driver waits for this exit
    exit_without_teardown(serve(int(sys.argv[1]), sys.argv[2:]))
