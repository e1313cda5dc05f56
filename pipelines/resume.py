"""Resumable runs: a `mmcurate run` killed at any point (SIGKILL included) and started again
with the same arguments finishes with the output an uninterrupted run gives, without
re-running the model work of sources it had already committed.

A run is cut into Beam pipelines that each commit atomically under
`OUT/_chunks/<run_id>/` (the run id is deterministic: inputs, config and code):

1. `ingest/`: the ingest stage over all inputs (folders listed, globs matched, manifests read,
   feeds fetched, bytes hashed, identical bytes under several names deduplicated — over the
   whole run, so a duplicate in another chunk is still a `duplicate` row); commits the
   `MediaRef`s (`media.jsonl`) and its ledger rows (`rejected/`).
2. `chunk-<n>-<hash>/`: the sources, sorted by source id, cut into chunks of
   `output.chunk_sources`; each chunk runs the per-source stages (`StageSpec.per_source`: vad,
   speech, video ...) as its own pipeline and commits their tables. The chunk id is its
   position plus a hash of its source ids, so a restart finds the same chunks.
3. the merge: reads every chunk's tables, runs the stages whose result for a source depends
   on other sources (quality's per-language speaking-rate quartiles, corpus stages such as
   dedup) over the merged tables and writes the final shards and `manifest.json` with
   `WriteTables`, exactly as a single-pipeline run does (same bucketing and generation, so
   the same file names and bytes whether or not the run was interrupted). Then `_chunks/` is
   removed.

Every step commits with one atomic rename of its `manifest.json` (written last); a restart
skips every committed step (logged: "... committed earlier, skipped") and re-runs a step that
has no manifest from scratch (its half-written files are removed first).

Why not per-element checkpoints inside one pipeline: the DirectRunner runs each fused stage
to completion before the next, so a checkpoint after a GroupByKey only happens once every
source has passed the stages before it, and runners differ in when they retry bundles;
separate pipelines with their own commit work the same on every runner.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import shutil
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from mmcurate.pipelines.config import CurateConfig
from mmcurate.schemas.records import MediaRef, stable_id

log = logging.getLogger("mmcurate.resume")

CHUNKS_DIR = "_chunks"
MANIFEST = "manifest.json"
MEDIA = "media.jsonl"
INGEST = "ingest"


def _join(*parts: str) -> str:
    return posixpath.join(*parts) if "://" in parts[0] else os.path.join(*parts)


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Plan:
    chunk: list  # StageSpecs run per chunk (per-source stages)
    merge: list  # StageSpecs run once over the merged tables

    @property
    def chunk_tables(self) -> list[str]:
        return [t for s in self.chunk for t in s.produces]


def plan(cfg: CurateConfig) -> Plan | None:
    """Which selected stages run per chunk and which in the merge: a stage runs per chunk when
    it is per-source and reads (requires or uses) nothing a merge stage makes; otherwise in the
    merge. None when the selection cannot be cut (a merge stage needs a stream, not a table,
    of a chunk stage): the caller then runs one pipeline."""
    from mmcurate.schemas.stages import resolve

    chunk, merge = [], []
    for spec in resolve(cfg.stages):
        if not spec.selectable and spec.name == INGEST:
            continue
        needs = set(spec.requires) | set(getattr(spec, "uses", ()))
        from_merge = needs & {x for m in merge for x in m.produces + m.streams}
        if spec.corpus or not getattr(spec, "per_source", True) or from_merge:
            merge.append(spec)
        else:
            chunk.append(spec)
    tables = {t for s in chunk for t in s.produces}
    for spec in merge:  # merge stages read tables only (streams are not committed)
        later = {x for m in merge[: merge.index(spec)] for x in m.produces + m.streams}
        if any(r not in tables and r not in later for r in spec.requires):
            return None
    return Plan(chunk, merge)


def chunk_sources(media: list[MediaRef], size: int) -> list[tuple[str, list[MediaRef]]]:
    """Deterministic chunks: sources sorted by id, cut every `size`; id = position + hash."""
    media = sorted(media, key=lambda m: (m.source_id, m.uri))
    out = []
    for n, i in enumerate(range(0, len(media), size)):
        part = media[i:i + size]
        out.append((f"chunk-{n:05d}-{stable_id(*(m.source_id for m in part), n=12)}", part))
    return out


# --------------------------------------------------------------------------- commit


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return
    with FileSystems.create(tmp) as fh:
        fh.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def is_committed(step_dir: str) -> bool:
    return FileSystems.exists(_join(step_dir, MANIFEST))


def read_step_manifest(step_dir: str) -> dict:
    with FileSystems.open(_join(step_dir, MANIFEST), compression_type="uncompressed") as fh:
        return json.loads(fh.read().decode("utf-8"))


def _remove_tree(path: str) -> None:
    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - nothing there
        pass


class _CommitStepFn(beam.DoFn):
    """Runs once: moves the step's staged shards into place, writes `media.jsonl` (ingest),
    then commits the step's `manifest.json` in one atomic rename."""

    def __init__(self, step_dir: str, run_id: str, step: str, tables: list[str], info: dict,
                 with_media: bool):
        self.step_dir, self.run_id, self.step, self.tables = step_dir, run_id, step, tables
        self.info, self.with_media = info, with_media

    def process(self, _unused, written, media):
        from mmcurate.transforms.sink import _move_into_place

        rows = {t: 0 for t in self.tables}
        shards = []
        for table, name, n in sorted(set(written)):
            staged = _join(self.step_dir, table, f"_staging-{self.run_id}", name)
            _move_into_place([staged], [_join(self.step_dir, table, name)], set())
            rows[table] += n
            shards.append(f"{table}/{name}")
        manifest = dict(self.info, step=self.step, run_id=self.run_id, tables=rows, shards=shards)
        if self.with_media:
            lines = sorted(media)
            _write_atomic(_join(self.step_dir, MEDIA), "".join(x + "\n" for x in lines).encode())
            manifest["media"] = len(lines)
        _write_atomic(_join(self.step_dir, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
        yield manifest


class CommitStep(beam.PTransform):
    """{table: PCollection[record]} (+ optional "media": PCollection[MediaRef]) -> one
    committed step directory (one shard per table unless it exceeds output.target_shard_mb)."""

    def __init__(self, step_dir: str, run_id: str, step: str, target_bytes: int, info: dict | None = None):
        super().__init__()
        self.step_dir, self.run_id, self.step = step_dir, run_id, step
        self.target_bytes, self.info = target_bytes, info or {}

    def expand(self, tables: dict):
        from mmcurate.transforms.sink import _WriteBucket

        tables = dict(tables)
        media = tables.pop("media", None)
        p = next(iter(tables.values())).pipeline if tables else media.pipeline
        # every table through one shuffle and one write step, keyed by (table, 0): a GroupByKey
        # per table made the local runner run (and, with worker processes, ship) a stage per
        # table one after the other
        rows = [
            pcoll | f"StepRows[{name}]" >> beam.Map(lambda r, t=name: ((t, 0), r.to_row()))
            for name, pcoll in tables.items()
        ]
        if rows:
            all_written = (
                rows
                | "StepAllRows" >> beam.Flatten()
                | "StepGroup" >> beam.GroupByKey()
                | "StepWrite" >> beam.ParDo(_WriteBucket(self.step_dir, self.run_id, self.target_bytes))
            )
        else:
            all_written = p | "NoTables" >> beam.Create([])
        if media is not None:
            lines = media | "MediaJson" >> beam.Map(
                lambda m: json.dumps(dataclasses.asdict(m), sort_keys=True, ensure_ascii=False))
        else:
            lines = p | "NoMedia" >> beam.Create([])
        return (
            p
            | "StepTrigger" >> beam.Create([None])
            | "CommitStep" >> beam.ParDo(
                _CommitStepFn(self.step_dir, self.run_id, self.step, list(tables), self.info,
                              media is not None),
                beam.pvalue.AsList(all_written), beam.pvalue.AsList(lines))
        )


def _load_media(step_dir: str) -> list[MediaRef]:
    with FileSystems.open(_join(step_dir, MEDIA), compression_type="uncompressed") as fh:
        text = fh.read().decode("utf-8")
    return [MediaRef(**json.loads(line)) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- run


def _pipeline(beam_args: list[str] | None, models: bool = True) -> beam.Pipeline:
    """A step's pipeline. A step without a model stage (ingest; a merge of tables only) runs
    in-process on the local runner even when its workers are processes: starting N workers
    that import Beam and the stages costs seconds, and hashing or concatenating tables gains
    nothing from them (bench/README.md, issue 13)."""
    from apache_beam.options.pipeline_options import DirectOptions

    from mmcurate.pipelines.curate import local_runner
    from mmcurate.transforms.balance import local_workers

    options = PipelineOptions(beam_args or [])
    direct = options.view_as(DirectOptions)
    # any local worker mode, one worker included: multi_processing with 1 worker still starts a
    # process for it (1 worker, vad,speech on the shared media: ingest 2.9 s vs 0.3 s in-process)
    if not models and local_workers(options) and direct.direct_running_mode != "in_memory":
        direct.direct_running_mode, direct.direct_num_workers = "in_memory", 1
    return beam.Pipeline(runner=local_runner(options), options=options)


def _run_pipeline(p: beam.Pipeline) -> None:
    result = p.run()
    result.wait_until_finish()


def _build_stages(c, specs, streams: dict, tables: dict) -> list:
    """Wire `specs` in order on context `c`: each stage reads `streams` and adds its streams
    and tables to it, its tables also go into `tables`; returns the stages' rejected
    PCollections (the chunk and merge pipelines share this)."""
    from mmcurate.pipelines.stages import REGISTRY

    rejected = []
    for spec in specs:
        got = REGISTRY[spec.name].build(c, streams)
        rejected.append(got.pop("rejected"))
        for name in spec.produces:
            tables[name] = got[name]
        streams.update({k: got[k] for k in spec.streams + spec.produces})
    return rejected


def run_resumable(inputs: list[str], output: str, cfg: CurateConfig, run_id: str, manifest,
                  steps: Plan, beam_args: list[str] | None = None, overrides: dict | None = None) -> None:
    """Ingest, the chunks, the merge: each a pipeline with its own commit (module docstring)."""
    from mmcurate.pipelines.curate import local_parallelism
    from mmcurate.pipelines.stages import REGISTRY, BuildContext
    from mmcurate.schemas.stages import resolve
    from mmcurate.transforms.read import read_shard
    from mmcurate.transforms.sink import WriteTables

    names = [s.name for s in resolve(cfg.stages)]
    base = _join(output, CHUNKS_DIR, run_id)
    target = int(cfg.output.target_shard_mb * 1024 * 1024)

    def ctx(p, c=None):
        return BuildContext(p, inputs, output, c or cfg, run_id, names, overrides or {})

    # 1. ingest
    ingest_dir = _join(base, INGEST)
    if is_committed(ingest_dir):
        log.info("ingest of run %s committed earlier, skipped", run_id)
    else:
        _remove_tree(ingest_dir)
        t0 = time.perf_counter()
        p = _pipeline(beam_args, models=False)
        out = REGISTRY[INGEST].build(ctx(p), {})
        _ = {"rejected": out["rejected"], "media": out["media"]} | "Commit" >> CommitStep(
            ingest_dir, run_id, INGEST, target)
        _run_pipeline(p)
        log.info("ingest committed in %.1f s", time.perf_counter() - t0)
    media = _load_media(ingest_dir)

    # 2. chunks of per-source stages
    chunk_dirs = [ingest_dir]
    chunks = chunk_sources(media, cfg.output.chunk_sources) if steps.chunk else []
    for n, (chunk_id, refs) in enumerate(chunks):
        cdir = _join(base, chunk_id)
        chunk_dirs.append(cdir)
        if is_committed(cdir):
            log.info("%s (%d source(s)) committed earlier, skipped", chunk_id, len(refs))
            continue
        _remove_tree(cdir)
        t0 = time.perf_counter()
        ccfg, cargs, par = local_parallelism(cfg, beam_args, sources=len(refs))
        log.info("%s (%d source(s)) on %s", chunk_id, len(refs), par.describe())
        p = _pipeline(cargs)
        streams: dict = {"media": p | "Media" >> beam.Create(refs)}
        tables: dict = {}
        rejected = _build_stages(ctx(p, ccfg), steps.chunk, streams, tables)
        tables["rejected"] = rejected | "AllRejections" >> beam.Flatten()
        _ = tables | "Commit" >> CommitStep(cdir, run_id, chunk_id, target,
                                           {"sources": [m.source_id for m in refs]})
        _run_pipeline(p)
        log.info("%s committed: %d source(s) in %.1f s (%d of %d chunks)", chunk_id, len(refs),
                 time.perf_counter() - t0, n + 1, len(chunks))

    # 3. merge: the chunks' tables, the stages over the whole corpus, the final shards
    shards: dict[str, list[str]] = {}
    for d in chunk_dirs:
        for rel in read_step_manifest(d)["shards"]:
            shards.setdefault(rel.split("/", 1)[0], []).append(_join(d, rel))
    models = any(s.models for s in steps.merge)
    mcfg, margs = cfg, beam_args  # without a model stage the merge runs in-process (_pipeline)
    if models:
        mcfg, margs, par = local_parallelism(cfg, beam_args, sources=len(media))
        log.info("merge on %s", par.describe())
    p = _pipeline(margs, models=models)
    # the run's media: merge stages that open it (dedup's audio/video fingerprints) see this as
    # an in-graph run, not a corpus job over an earlier output
    streams = {"media": p | "MergeMedia" >> beam.Create(media)} if media else {}
    for table in steps.chunk_tables + ["rejected"]:
        streams[table] = (
            p
            | f"Shards[{table}]" >> beam.Create(sorted(shards.get(table, [])))
            | f"SpreadShards[{table}]" >> beam.Reshuffle()
            | f"ReadShard[{table}]" >> beam.FlatMap(read_shard, table)
        )
    tables = {t: streams[t] for t in steps.chunk_tables}
    rejected = [streams.pop("rejected"), *_build_stages(ctx(p, mcfg), steps.merge, streams, tables)]
    # the tables in declaration order, as a single-pipeline run hands them to WriteTables
    tables = {t: tables[t] for s in resolve(cfg.stages) for t in s.produces if t in tables}
    tables["rejected"] = rejected | "AllRejections" >> beam.Flatten()
    _ = tables | "WriteTables" >> WriteTables(output, run_id, cfg.output, manifest)
    t0 = time.perf_counter()
    _run_pipeline(p)
    log.info("merge of %d chunk(s) committed in %.1f s", len(chunks), time.perf_counter() - t0)
    # committed: the checkpoints of this run (and of killed runs of other inputs) are garbage
    _remove_tree(_join(output, CHUNKS_DIR))
