"""Corpus jobs: run corpus-level stages (dedup, rephrasing) over a finished output directory.

    mmcurate corpus OUT --stages rephrase,dedup

A corpus stage (`StageSpec.corpus`) is the same code whether it runs inside `mmcurate run`
(its inputs are the earlier stages' PCollections) or here, where its inputs are read back
from the shards OUT's `manifest.json` lists (`ReadTables`). Each selected stage runs as its
own Beam job, in declaration order, so a later one reads what an earlier one wrote.

A job ADDS to OUT, never duplicates (it holds OUT's lock, `mmcurate.pipelines.lock`, while it runs):
- its tables are written under the job's own generation and replace any earlier version of
  those tables (a re-run of the same job writes the same file names and bytes);
- the ledger (`rejected`) is rewritten whole: the committed rows of every other stage are
  carried over unchanged and this stage's earlier rows are replaced by its new ones;
- the manifest is extended (shards, row counts, rejections, stats, models, and
  `corpus_jobs.<stage>` with the job's id and config) and committed in one atomic step, so a
  job killed at any point leaves OUT as it was; unlisted shard files are then deleted.
A new `mmcurate run` into OUT replaces everything, corpus tables included: run the jobs again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from mmcurate.pipelines.config import CurateConfig
from mmcurate.schemas.printable import printable

log = logging.getLogger("mmcurate.corpus")


def corpus_stages() -> list[str]:
    from mmcurate.schemas.stages import STAGES

    return [s.name for s in STAGES if s.corpus]


def resolve_corpus(selected: list[str] | tuple[str, ...] | None) -> list:
    """The corpus stages to run, in declaration order (all of them when `selected` is empty)."""
    from mmcurate.schemas.stages import STAGES

    known = corpus_stages()
    chosen = list(selected or known)
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ValueError(f"not corpus stage(s): {unknown}; corpus stages: {known or 'none declared'}")
    return [s for s in STAGES if s.name in chosen]


def job_id(base: dict, stage: str, cfg: CurateConfig, version: str) -> str:
    """Deterministic: the same output, stage, config and code give the same job id."""
    h = hashlib.sha256(json.dumps([base["run_id"], stage, cfg.to_json(), version]).encode())
    return "job-" + h.hexdigest()[:16]


@dataclass
class CorpusManifest:
    """Extends the committed manifest `base` with what one corpus job wrote (runs on the
    worker that publishes)."""

    base: dict
    stage: str
    produces: tuple[str, ...]
    job_run_id: str
    version: str
    config_json: str
    models: list[dict]
    model_roles: tuple[str, ...]

    def __call__(self, written: dict) -> dict:
        from mmcurate.pipelines.curate import stage_counts, with_ratios

        replaced = set(self.produces) | {"rejected"}
        shards = sorted([s for s in self.base.get("shards", []) if s.split("/", 1)[0] not in replaced]
                        + list(written["shards"]))
        tables = {t: n for t, n in self.base.get("tables", {}).items() if t not in replaced}
        tables.update(written["tables"])
        rejected = dict(sorted(written["rejected"].items()))
        prefix = f"{self.stage}."
        stats = {k: v for k, v in self.base.get("stats", {}).items()
                 if not k.startswith(prefix) and not k.endswith(".synthetic_ratio")}
        stats.update(written.get("stats", {}))
        models = [m for m in self.base.get("models", []) if m.get("role") not in self.model_roles]
        jobs = dict(self.base.get("corpus_jobs", {}))
        jobs[self.stage] = {
            "run_id": self.job_run_id,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": self.version,
            "config": self.config_json,
            "tables": {t: written["tables"].get(t, 0) for t in self.produces},
        }
        return {
            **self.base,
            "tables": dict(sorted(tables.items())),
            "rejected": rejected,
            "stage_counts": stage_counts(tables, rejected),
            "shards": shards,
            "stats": with_ratios(stats),
            "models": models + self.models,
            "corpus_jobs": dict(sorted(jobs.items())),
        }


def build_job(p: beam.Pipeline, out_dir: str, base: dict, spec, cfg: CurateConfig, job_run_id: str,
              manifest: CorpusManifest, overrides: dict | None = None, workers: int = 1) -> None:
    """One corpus stage over OUT's committed tables, written back into OUT."""
    from mmcurate.pipelines.curate import build_stages
    from mmcurate.pipelines.stages import BuildContext
    from mmcurate.transforms.read import ReadTables
    from mmcurate.transforms.sink import WriteTables

    present = base.get("tables", {})
    reads = list(dict.fromkeys([*spec.requires, *(t for t in spec.uses if t in present), "rejected"]))
    streams = dict(p | f"Read[{spec.name}]" >> ReadTables(out_dir, reads))
    from mmcurate.pipelines.progress import progress_dir

    ctx = BuildContext(p, list(base.get("inputs", [])), out_dir, cfg, job_run_id, [spec.name],
                       overrides or {}, workers=workers, progress=progress_dir(out_dir, job_run_id))
    ledger = set(spec.ledger)
    rejected = [streams.pop("rejected") | f"OtherStagesLedger[{spec.name}]" >> beam.Filter(
        lambda r: r.stage not in ledger)]
    tables: dict = {}
    stats: list = []
    build_stages(ctx, [spec], streams, tables, rejected, stats)  # the one assembler `run` uses
    tables["rejected"] = rejected | f"Ledger[{spec.name}]" >> beam.Flatten()
    if stats:
        tables["_stats"] = stats[0]
    committed = tables | f"WriteTables[{spec.name}]" >> WriteTables(out_dir, job_run_id, cfg.output, manifest)
    for after_commit in ctx.on_commit:  # e.g. publishing the dedup index partition
        after_commit(committed)


def run_corpus(out_dir: str, cfg: CurateConfig | None = None, stages: list[str] | None = None,
               beam_args: list[str] | None = None, overrides: dict | None = None,
               test_pipeline_factory=None) -> dict:
    """Run the selected corpus stages (default: all) over OUT, one job each, in order;
    returns the final manifest. Raises ValueError when OUT lacks a table a stage reads."""
    import os

    from mmcurate.pipelines.curate import code_version
    from mmcurate.pipelines.stages import REGISTRY
    from mmcurate.transforms.read import read_manifest

    cfg = cfg or CurateConfig()
    out_dir = out_dir.rstrip("/") if "://" in out_dir else os.path.abspath(out_dir)
    specs = resolve_corpus(stages)
    base = read_manifest(out_dir)
    # a table an earlier selected corpus stage writes counts as present for the later ones
    written_before: set[str] = set()
    problems = []
    for s in specs:
        missing = [t for t in s.requires if t not in base.get("tables", {}) and t not in written_before]
        if missing:
            problems.append(f"stage {s.name!r} reads table(s) {missing} that {out_dir} does not have "
                            "(run `mmcurate run` with the stages that write them)")
        written_before.update(s.produces)
    problems += [p for s in specs for p in REGISTRY[s.name].check(cfg)]
    if problems:
        raise ValueError("; ".join(problems))
    from mmcurate.pipelines.balance import local_workers
    from mmcurate.pipelines.lock import output_lock

    version = code_version()
    options = PipelineOptions(beam_args or [])
    with output_lock(out_dir, "corpus:" + ",".join(s.name for s in specs)):
        from mmcurate.pipelines.logs import open_debug_log

        debug_log = open_debug_log(out_dir)  # the CLI's log of every record, once OUT is ours
        if debug_log:
            log.info("corpus %s: full log: %s", printable(out_dir), printable(debug_log))
        for spec in specs:
            _run_job(out_dir, spec, cfg, version, options, overrides, test_pipeline_factory,
                     local_workers(options))
    return read_manifest(out_dir)


def _run_job(out_dir, spec, cfg, version, options, overrides, test_pipeline_factory, workers) -> None:
    """One corpus job: `spec` over OUT's committed tables, committed into OUT."""
    from mmcurate.pipelines.curate import local_runner
    from mmcurate.pipelines.stages import REGISTRY
    from mmcurate.transforms.read import read_manifest

    base = read_manifest(out_dir)
    jid = job_id(base, spec.name, cfg, version)
    handlers = REGISTRY[spec.name].handlers(cfg)
    models = [info for h in handlers for info in h.model_info()]
    manifest = CorpusManifest(base, spec.name, spec.produces, jid, version, cfg.to_json(),
                              models, tuple(spec.models))
    log.info("corpus job %s: stage %s over %s (run %s)", jid, spec.name, printable(out_dir), base.get("run_id"))
    from mmcurate.pipelines import progress
    from mmcurate.transforms.commit import remove_tree

    marks = progress.progress_dir(out_dir, jid)
    remove_tree(marks)  # an earlier attempt's
    with progress.Reporter(marks, [spec.name], what=f"corpus job {spec.name}",
                           total=base.get("tables", {}).get("sources")):
        p = test_pipeline_factory() if test_pipeline_factory else beam.Pipeline(
            runner=local_runner(options), options=options)
        build_job(p, out_dir, base, spec, cfg, jid, manifest, overrides, workers)
        p.run().wait_until_finish()
    from mmcurate.pipelines.checkpoints import WORK_DIR
    from mmcurate.transforms.commit import join

    remove_tree(join(out_dir, WORK_DIR, jid))  # only the marks are there
