"""The main curation job: ingest -> decode + VAD -> diarization + ASR -> Parquet shards.

The stages and their order come from the registry (`mmcurate.schemas.stages` declares them,
`mmcurate.pipelines.stages` wires them).

`run(argv)` is what the CLI, the Airflow DAG and the tests call; Beam runner flags pass
through `PipelineOptions` untouched, and `test_pipeline` lets a test inject its own pipeline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from mmcurate.pipelines.config import CurateConfig
from mmcurate.pipelines.version import code_version  # noqa: F401  (run ids, manifests; corpus)
from mmcurate.schemas.printable import printable

log = logging.getLogger("mmcurate")


def make_run_id(inputs: list[str], cfg: CurateConfig, version: str) -> str:
    """Deterministic: the same inputs, config and code give the same run id."""
    h = hashlib.sha256(json.dumps([sorted(inputs), cfg.to_json(), version]).encode())
    return "run-" + h.hexdigest()[:16]


def model_infos(cfg: CurateConfig) -> list[dict]:
    """Names, versions and checksums of every model the run uses: the model handlers' own
    `model_info()` (computed on the driver; nothing is loaded)."""
    from mmcurate.pipelines.stages import REGISTRY
    from mmcurate.schemas.stages import resolve

    return [info for spec in resolve(cfg.stages) for h in REGISTRY[spec.name].handlers(cfg)
            for info in h.model_info()]


def startup_problems(cfg: CurateConfig) -> list[str]:
    """What would make the run fail, found before any work (each stage's `check`)."""
    from mmcurate.pipelines.stages import REGISTRY
    from mmcurate.schemas.stages import STAGE_MODULE_PROBLEMS, resolve

    return list(STAGE_MODULE_PROBLEMS) + [p for spec in resolve(cfg.stages) for p in REGISTRY[spec.name].check(cfg)]


@dataclass
class ManifestBuilder:
    """Completes the run manifest on the worker that publishes the shards."""

    run_id: str
    version: str
    config_json: str
    inputs: list[str]
    models: list[dict]

    def __call__(self, written: dict) -> dict:
        tables = written["tables"]
        rejected = written["rejected"]
        return {
            "run_id": self.run_id,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": self.version,
            "config": self.config_json,
            "inputs": self.inputs,
            "models": self.models,
            "tables": tables,
            "stage_counts": stage_counts(tables, rejected),
            "rejected": rejected,
            "shards": written["shards"],
            "stats": with_ratios(written.get("stats", {})),
        }


def stage_counts(tables: dict[str, int], rejected: dict[str, int]) -> dict[str, int]:
    """"<table>.rows", "<stage>.rejected" and "ingest.inputs" (sources + rejections that
    removed a whole input) for the manifest."""
    from mmcurate.schemas.stages import KEPT_SOURCE_REASONS
    from mmcurate.schemas.tables import SOURCE_LEVEL_STAGES

    counts = {f"{t}.rows": n for t, n in tables.items()}
    for key, n in rejected.items():
        stage = key.split("/", 1)[0]
        counts[f"{stage}.rejected"] = counts.get(f"{stage}.rejected", 0) + n
    counts["ingest.inputs"] = tables.get("sources", 0) + sum(
        n for k, n in rejected.items() if k.split("/", 1)[0] in SOURCE_LEVEL_STAGES
        and k.split("/", 1)[1] not in KEPT_SOURCE_REASONS
    )
    return dict(sorted(counts.items()))


def with_ratios(stats: dict[str, float]) -> dict[str, float]:
    """Summed stage stats plus "<p>.synthetic_ratio" wherever "<p>.synthetic_tokens" and
    "<p>.total_tokens" are both present (the achieved share of synthetic text)."""
    out = dict(stats)
    for key in stats:
        if key.endswith(".synthetic_tokens"):
            prefix = key[: -len(".synthetic_tokens")]
            total = stats.get(f"{prefix}.total_tokens")
            if total:
                out[f"{prefix}.synthetic_ratio"] = round(stats[key] / total, 6)
    return dict(sorted(out.items()))


def split_stages(specs: list) -> tuple[list, list] | None:
    """The stages after ingest cut into (per-source, the rest): a stage is per-source (its rows
    for a source depend on that source alone, `StageSpec.per_source`) when it reads nothing a
    later-cut stage makes. None when the selection cannot be cut that way (a stage of the rest
    needs a stream, not a table, of a per-source stage): the run then has no checkpoints."""
    per_source, rest = [], []
    for spec in specs:
        needs = set(spec.requires) | set(spec.uses)
        from_rest = needs & {x for m in rest for x in m.produces + m.streams}
        if spec.corpus or not spec.per_source or from_rest:
            rest.append(spec)
        else:
            per_source.append(spec)
    tables = {t for s in per_source for t in s.produces}
    for spec in rest:  # the rest reads the per-source stages' tables only (streams end there)
        later = {x for m in rest[: rest.index(spec)] for x in m.produces + m.streams}
        if any(r not in tables and r not in later for r in spec.requires):
            return None
    return (per_source, rest) if per_source else None


def build(p: beam.Pipeline, inputs: list[str], output: str, cfg: CurateConfig, run_id: str,
          manifest: ManifestBuilder, overrides: dict | None = None, workers: int = 1) -> None:
    """Assemble the curation graph on `p` from the stage registry, in declaration order: the
    one assembler of `mmcurate run` (every runner) and, through `build_stages`, of
    `mmcurate corpus`.

    With `output.checkpoints` on, the per-source stages run only for the sources that have no
    checkpoint, and each source's rows are checkpointed once its per-source stages are done
    (`mmcurate.pipelines.checkpoints`). Labels are stable (monitoring and pipeline updates
    key on them). `overrides` lets tests hand in model handlers with fake loaders
    ({"asr_handler": ..., "vad_handler": ...}); `workers` is how many local workers the
    stages may deal costed work to (`mmcurate.pipelines.balance`; 1 or 0: no dealing)."""
    from mmcurate.pipelines import checkpoints
    from mmcurate.pipelines.stages import BuildContext
    from mmcurate.schemas.stages import resolve
    from mmcurate.transforms.sink import WriteTables

    specs = resolve(cfg.stages)
    from mmcurate.pipelines.progress import progress_dir

    ctx = BuildContext(p, inputs, output, cfg, run_id, [s.name for s in specs], overrides or {},
                       workers=workers, step_checkpoints=cfg.output.checkpoints,
                       progress=progress_dir(output, run_id))
    streams: dict = {}
    tables: dict = {}
    rejected, stats = [], []
    build_stages(ctx, specs[:1], streams, tables, rejected, stats)  # ingest
    parts = split_stages(specs[1:]) if cfg.output.checkpoints else None
    if parts is None:
        build_stages(ctx, specs[1:], streams, tables, rejected, stats)
    else:
        per_source, rest = parts
        directory = checkpoints.work_dir(output, run_id)
        produced = [t for s in per_source for t in s.produces] + ["rejected"]
        media = streams["media"]
        split = media | "Checkpoints" >> checkpoints.SplitFinished(directory, produced)
        streams["media"] = split["todo"]
        new_rejected: list = []
        build_stages(ctx, per_source, streams, tables, new_rejected, stats)
        fresh = {"media": split["todo"], **{t: tables[t] for t in produced[:-1]},
                 "rejected": new_rejected | "PerSourceRejections" >> beam.Flatten()}
        written = fresh | "CheckpointSources" >> checkpoints.CheckpointSources(directory)
        for t in produced[:-1]:
            tables[t] = streams[t] = (written[t], split[t]) | f"AllRows[{t}]" >> beam.Flatten()
        rejected += [written["rejected"], split["rejected"]]
        streams["media"] = media  # the rest (dedup's fingerprints) reads every source
        build_stages(ctx, rest, streams, tables, rejected, stats)
    tables["rejected"] = rejected | "AllRejections" >> beam.Flatten()
    if stats:
        tables["_stats"] = stats | "AllStats" >> beam.Flatten()
    committed = tables | "WriteTables" >> WriteTables(output, run_id, cfg.output, manifest)
    for after_commit in ctx.on_commit:  # e.g. publishing the dedup index partition
        after_commit(committed)


def build_stages(ctx, specs: list, streams: dict, tables: dict, rejected: list, stats: list) -> None:
    """Wire `specs` in order on context `ctx`: each stage reads `streams` and adds its streams
    and tables to them; its tables also go into `tables`, its ledger rows into `rejected` and
    its (key, number) stats into `stats` (summed into manifest["stats"])."""
    from mmcurate.pipelines.progress import mark_step
    from mmcurate.pipelines.stages import REGISTRY
    from mmcurate.pipelines.startup import memoize_dofn_specs, memoize_option_views

    memoize_dofn_specs()  # graph construction sooner by about a third (startup.py, bench_graph.py)
    memoize_option_views()
    for spec in specs:
        handed = [streams[r] for r in spec.requires[:1] if r in streams]
        out = REGISTRY[spec.name].build(ctx, streams)
        if ctx.progress:  # the sources it was handed and those it put out rows or ledger rows for
            made = [out[t] for t in spec.produces] + [out["rejected"]] if spec.produces else \
                [out[s] for s in spec.streams]
            mark_step(ctx.progress, spec.name, handed, made)
        rejected.append(out.pop("rejected"))
        if "stats" in out:
            stats.append(out.pop("stats"))
        for name in spec.produces:
            tables[name] = out[name]
        # later stages read earlier streams and tables in-graph (e.g. video reads segments)
        streams.update({k: out[k] for k in spec.streams + spec.produces})


# --runner values that mean mmcurate.pipelines.dask_runner.DaskRunner (Beam's own DaskRunner
# mixes the tagged outputs of a ParDo, computes only the last transform and never repartitions)
DASK_RUNNER_NAMES = ("dask", "DaskRunner", "mmcurate.pipelines.dask_runner.DaskRunner")


def local_runner(options: PipelineOptions):
    """The DirectRunner's portable engine (FnApiRunner) when no other runner is asked for.

    Beam 2.77's DirectRunner first tries the Prism runner, which downloads a Go binary from
    GitHub at run time; here that fails (no network) and it falls back to the FnApiRunner
    anyway. Going there directly skips the download attempt; `--direct_running_mode` and
    `--direct_num_workers` keep working. Any other --runner is passed through untouched.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    from mmcurate.pipelines.balance import local_workers

    if options.view_as(StandardOptions).runner in DASK_RUNNER_NAMES:  # Beam's, its gaps closed
        from mmcurate.pipelines.dask_runner import DaskRunner

        return DaskRunner()
    if local_workers(options) == 0:
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    without_timed_flushes()
    return FnApiRunner()


def without_timed_flushes() -> None:
    """Turn off the periodic flush of the local runner's data-plane output buffers (Beam's
    default: every 1000 ms for the embedded gRPC workers of `--direct_running_mode
    multi_threading`), leaving the size-based flush that every other mode uses.

    That flush runs on a timer thread of its own while the bundle's thread keeps encoding
    elements into the same buffer, and Beam 2.77 writes without its lock: an element written
    between the timer's copy of the buffer and its clear is dropped without a word, and one
    caught half-encoded is split over two messages that the other side decodes apart (wrong
    values, or a length read from the middle of an element: a MemoryError). Only bundles
    that write for longer than the period are exposed (the ingest of a 10,000-line manifest),
    so the loss came and went (bench/README.md, "Rows lost by the multi-threaded local
    runner"; a Beam-only reproduction: bench/beam_timed_flush_loss.py). The timed flush only
    lowers latency for streaming jobs; a batch job loses nothing by waiting for the size limit
    or the end of the bundle. Both ends read the module's value when a run creates its
    workers and data server, so it is set before each local run."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0


# Worker threads the local runner gets when the command line names neither
# --direct_running_mode nor --direct_num_workers: one per core, at most this many (measured on
# 2 cores: 2 threads with 1 model thread each are 1.5x one in-process worker with 2 model
# threads, bench/README.md; more cores go to each model's own threads beyond this)
AUTO_MAX_WORKERS = 4
_WORKER_FLAGS = ("--direct_running_mode", "--direct_num_workers")


@dataclass(frozen=True)
class Parallelism:
    """How a run uses the local machine: Beam's running mode, its workers, model threads each."""

    mode: str  # in_memory | multi_threading | multi_processing | "" (another runner)
    workers: int
    model_threads: int  # 0: each library's default
    # the threads each model gets as resolved (ASR, diarization, DNSMOS, embeddings): a setting
    # given on the command line wins over model_threads, and the log line says so
    per_model: tuple[int, int, int, int] | None = None

    def describe(self) -> str:
        if not self.mode:
            return "the runner's own workers"
        a, d, q, e = self.per_model or (self.model_threads,) * 4
        if a == d == q == e:
            threads = f"{a} model thread(s) each" if a else "library default threads"
        else:
            threads = "model threads: " + ", ".join(
                f"{name} {n or 'library default'}"
                for name, n in (("ASR", a), ("diarization", d), ("DNSMOS", q), ("embeddings", e)))
        return f"{self.mode}, {self.workers} worker(s), {threads}"


def local_parallelism(cfg: CurateConfig, beam_args: list[str] | None, cores: int | None = None,
                      sources: int | None = None) -> tuple[CurateConfig, list[str], Parallelism]:
    """The config and Beam arguments a pipeline uses on this machine.

    On the local runner with no worker flags given, the pipeline takes min(cores,
    AUTO_MAX_WORKERS, sources) worker threads of one process (`multi_threading`; `sources`: how
    many sources the pipeline holds, when known; one source runs in-process on all the model
    threads, as no second worker would have work): each source's decode, VAD, diarization
    and ASR runs on one thread while the others run other sources, with one copy of each model
    (RunInference shares it between threads). Settings left at 0 follow the workers:
    `asr.num_workers` (CTranslate2 replicas: one per worker thread, so sources transcribe at
    the same time), `asr.cpu_threads`, `diarization.torch_threads`, `quality.dnsmos_threads` and
    `dedup.semantic_threads` (cores / workers each).
    Given flags are kept (`--direct_running_mode=in_memory` runs everything on one thread),
    and so are settings other than 0. Other runners: one replica, library default threads.
    The run id is computed from the config as given, so the same job has the same id on any
    machine."""
    from apache_beam.options.pipeline_options import DirectOptions

    from mmcurate.pipelines.balance import local_workers

    args = list(beam_args or [])
    cores = cores or os.cpu_count() or 1
    options = PipelineOptions(args)
    n = local_workers(options)
    mode = options.view_as(DirectOptions).direct_running_mode if n else ""
    explicit = any(a.split("=", 1)[0] in _WORKER_FLAGS for a in args)
    auto = min(cores, AUTO_MAX_WORKERS, max(1, sources) if sources is not None else cores)
    if n == 1 and not explicit and auto > 1:
        n, mode = auto, "multi_threading"
        args += [f"--direct_running_mode={mode}", f"--direct_num_workers={n}"]
    threads = max(1, cores // n) if n > 1 else 0
    replicas = n if mode == "multi_threading" else 1
    asr, dia, q, dd = cfg.asr, cfg.diarization, cfg.quality, cfg.dedup
    cfg = dataclasses.replace(
        cfg,
        asr=dataclasses.replace(asr, num_workers=asr.num_workers or replicas,
                                cpu_threads=asr.cpu_threads or threads),
        diarization=dataclasses.replace(dia, torch_threads=dia.torch_threads or threads),
        quality=dataclasses.replace(q, dnsmos_threads=q.dnsmos_threads or threads),
        dedup=dataclasses.replace(dd, semantic_threads=dd.semantic_threads or threads))
    per_model = (cfg.asr.cpu_threads, cfg.diarization.torch_threads, cfg.quality.dnsmos_threads,
                 cfg.dedup.semantic_threads)
    return cfg, args, Parallelism(mode, max(n, 1), threads, per_model)


def run(inputs: list[str], output: str, cfg: CurateConfig | None = None,
        beam_args: list[str] | None = None, test_pipeline: beam.Pipeline | None = None,
        overrides: dict | None = None) -> dict:
    """Run the job to completion, as one Beam pipeline on whatever runner `beam_args` name;
    returns the run manifest. Raises ValueError for a bad stage selection or a start-up
    problem, OutputLocked when another live run holds `output`."""
    cfg = cfg or CurateConfig()
    from mmcurate.schemas.stages import resolve

    resolve(cfg.stages)  # ValueError naming unknown stages or a missing prerequisite
    problems = startup_problems(cfg)
    if problems:
        raise ValueError("; ".join(problems))
    output = output.rstrip("/") if "://" in output else os.path.abspath(output)
    if "://" not in output:
        os.makedirs(output, exist_ok=True)
    from mmcurate.transforms.ingest import normalize_input

    inputs = [normalize_input(i) for i in inputs]  # the same files by any path: the same uris
    version = code_version()
    run_id = make_run_id(inputs, cfg, version)
    from mmcurate.transforms.ingest import escape_uri

    manifest = ManifestBuilder(run_id, version, cfg.to_json(), [escape_uri(i) for i in inputs], model_infos(cfg))
    from mmcurate.pipelines import checkpoints
    from mmcurate.pipelines.lock import output_lock

    with output_lock(output, run_id):
        from mmcurate.pipelines.logs import open_debug_log

        debug_log = open_debug_log(output)  # the CLI's log of every record, once the output is ours
        log.info("run %s: %d input(s) -> %s (stages: %s)%s", run_id, len(inputs), printable(output),
                 ",".join(cfg.stages), f"; full log: {printable(debug_log)}" if debug_log else "")
        from mmcurate.pipelines.balance import local_workers

        if test_pipeline is None:
            cfg, beam_args, par = local_parallelism(cfg, beam_args, sources=_known_sources(inputs))
            log.info("run %s on %s", run_id, par.describe())
        options = PipelineOptions(beam_args or [])
        if cfg.output.checkpoints:
            directory = checkpoints.work_dir(output, run_id)
            found = checkpoints.count_checkpoints(directory)
            if found:
                log.info("%d source(s) finished by an earlier attempt of this run: their "
                         "checkpoints under %s are reused", found, printable(directory))
        from mmcurate.pipelines import progress
        from mmcurate.transforms.commit import remove_tree

        marks = progress.progress_dir(output, run_id)
        remove_tree(marks)  # an earlier attempt's
        with progress.Reporter(marks, [s.name for s in resolve(cfg.stages)]):
            p = test_pipeline or beam.Pipeline(runner=local_runner(options), options=options)
            build(p, inputs, output, cfg, run_id, manifest, overrides, workers=local_workers(options))
            result = p.run()
            result.wait_until_finish()
        remove_tree(marks)
        checkpoints.remove_other_runs(output, run_id)
    from mmcurate.transforms.read import read_manifest

    return read_manifest(output)


def _known_sources(inputs: list[str]) -> int | None:
    """1 when the run's only input is one local media file (it then runs in-process on all the
    model threads, `local_parallelism`); None when only ingest can tell."""
    from mmcurate.transforms.ingest import FEED_EXTS, MANIFEST_EXTS

    if len(inputs) == 1 and "://" not in inputs[0] and os.path.isfile(inputs[0]):
        ext = os.path.splitext(inputs[0])[1].lower()
        if ext not in MANIFEST_EXTS and ext not in FEED_EXTS:
            return 1
    return None
