"""Parquet shards per table, written with the declared schemas, committed by the manifest.

Layout: `<out>/<table>/part-<bucket>-<k>-<generation>.parquet` and `<out>/manifest.json`.

One consistent output generation:
- rows are bucketed by a hash of their id and sorted by id inside a bucket, so the same rows
  always land in the same shard files with the same content; the generation is the run id's
  hash, so re-running the same inputs and config gives the same file names and bytes;
- shards are written under `<out>/<table>/_staging-<run_id>/`, then renamed into place under
  their generation's names: the previous generation's files are untouched until the commit;
- the commit is one atomic step: `manifest.json` is replaced (write to a temporary name, then
  rename). It lists every shard of the generation; readers (`mmcurate audit`, its DuckDB views,
  `ReadTables`) read exactly the listed shards, so a run killed at any point leaves the
  previous generation readable and consistent;
- after the commit, every shard file the manifest does not list is deleted, in every table
  directory, including tables this run did not produce (a re-run with fewer --stages leaves
  no stale `segments` beside new `sources`), and leftover staging directories of killed runs.
  A raw glob (`SELECT * FROM 'out/sources/*.parquet'`) is therefore exact except while a run
  is publishing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from mmcurate.schemas.params import Rule, positive
from mmcurate.transforms.commit import delete_quietly, match, move_into_place, write_atomic
from mmcurate.transforms.commit import join as _join
from mmcurate.schemas.printable import printable
from mmcurate.schemas.records import to_table
from mmcurate.schemas.tables import TABLES


@dataclass
class OutputConfig:
    target_shard_mb: float = 256.0
    buckets: int = 8  # rows are bucketed by id hash; each bucket is cut into shards
    # per-source checkpoints under OUT/_work/<run_id>/ (mmcurate.pipelines.checkpoints): a
    # killed or re-run job re-uses the sources whose per-source stages finished. false: none
    checkpoints: bool = True

    RULES: ClassVar[dict] = {"target_shard_mb": positive("MiB"), "buckets": Rule(ge=1, le=4096)}


log = logging.getLogger("mmcurate.sink")

# The id column of each table, the bucketing and sort key: a row's id is its table's first column (mmcurate.schemas.records): shards are bucketed and
# sorted by it, so the same rows give the same bytes
ID_COLUMN = {table: schema.names[0] for table, schema in TABLES.items()}

MANIFEST = "manifest.json"




def _bucket(key: str, buckets: int) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8", "backslashreplace")).digest()[:4], "big") % buckets


def _write_parquet(path: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    with FileSystems.create(path) as fh:
        fh.write(buf.getvalue())


def split_rows(rows: list[dict[str, Any]], table: str, target_bytes: int) -> list[pa.Table]:
    """Cut sorted rows into Arrow tables of about `target_bytes` (in-memory size) each."""
    whole = to_table(table, rows)
    if whole.num_rows == 0:
        return []
    per_row = max(1, whole.nbytes // whole.num_rows)
    rows_per_shard = max(1, int(target_bytes // per_row))
    return [whole.slice(i, rows_per_shard) for i in range(0, whole.num_rows, rows_per_shard)]


def generation(run_id: str) -> str:
    """The shard-name suffix of a run's output generation (deterministic, like the run id)."""
    return hashlib.sha1(run_id.encode()).hexdigest()[:10]


def shard_name(bucket: int, k: int, run_id: str) -> str:
    return f"part-{bucket:04d}-{k:04d}-{generation(run_id)}.parquet"


class _WriteBucket(beam.DoFn):
    def __init__(self, out_dir: str, run_id: str, target_bytes: int):
        self.out_dir, self.run_id, self.target_bytes = out_dir, run_id, target_bytes

    def process(self, element):
        (table, bucket), rows = element
        rows = sorted(rows, key=lambda r: r[ID_COLUMN[table]])
        staging = _join(self.out_dir, table, f"_staging-{self.run_id}")
        for k, shard in enumerate(split_rows(rows, table, self.target_bytes)):
            name = shard_name(bucket, k, self.run_id)
            _write_parquet(_join(staging, name), shard)
            beam.metrics.Metrics.counter("mmcurate", f"sink.{table}.rows").inc(shard.num_rows)
            yield table, name, shard.num_rows


class _Publish(beam.DoFn):
    """Runs once: moves staged shards into place, commits the manifest, then removes every
    shard file the committed manifest does not list (and stale staging directories)."""

    def __init__(self, out_dir: str, run_id: str, tables: list[str], manifest: Callable[[dict], dict]):
        self.out_dir, self.run_id, self.tables, self.manifest = out_dir, run_id, tables, manifest

    def process(self, _unused, written, rejected_counts, stats=()):
        published: dict[str, list[str]] = {t: [] for t in self.tables}
        rows: dict[str, int] = {t: 0 for t in self.tables}
        for table, name, n in sorted(set(written)):
            published[table].append(name)
            rows[table] += n
        for table in self.tables:
            tdir = _join(self.out_dir, table)
            staging = _join(tdir, f"_staging-{self.run_id}")
            if not published[table]:  # an empty table still gets a file with its schema
                name = shard_name(0, 0, self.run_id)
                _write_parquet(_join(staging, name), TABLES[table].empty_table())
                published[table].append(name)
            src = [_join(staging, n) for n in published[table]]
            dst = [_join(tdir, n) for n in published[table]]
            existing = {m.path for m in match(_join(tdir, "part-*.parquet"))}
            move_into_place(src, dst, existing)
            delete_quietly(staging)
        info = {
            "tables": rows,
            "rejected": dict(sorted(rejected_counts)),
            "shards": sorted(f"{t}/{n}" for t in self.tables for n in published[t]),
            "stats": dict(sorted(stats)),
        }
        manifest = self.manifest(info)
        commit_manifest(self.out_dir, manifest, self.run_id)
        # the manifest may list more than this job wrote (a corpus job extends a run's output)
        collect_garbage(self.out_dir, set(manifest["shards"]))
        yield manifest


def commit_manifest(out_dir: str, manifest: dict, run_id: str) -> None:
    """Replace `<out>/manifest.json` in one step: the commit point of an output generation
    (`mmcurate.transforms.commit.write_atomic`; a killed commit leaves `manifest.json.tmp-*`,
    which the next garbage collection removes)."""
    path = _join(out_dir, MANIFEST)
    write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True).encode(),
                 tmp_suffix=f".tmp-{run_id}")


def collect_garbage(out_dir: str, committed: set[str]) -> list[str]:
    """Delete shard files of every known table that the committed manifest does not list
    (earlier generations, tables this run did not produce, half-published files of killed
    runs) and leftover staging directories; returns what was deleted."""
    deleted = []
    for table in TABLES:
        tdir = _join(out_dir, table)
        stale = sorted(m.path for m in match(_join(tdir, "part-*.parquet"))
                       if f"{table}/{posixpath.basename(m.path)}" not in committed)
        if stale:
            produced = any(c.startswith(f"{table}/") for c in committed)
            log.info("removing %d shard(s) from %s (%s)", len(stale), printable(tdir),
                     "an earlier generation" if produced else "a table this run did not produce")
            FileSystems.delete(stale)
            deleted.extend(stale)
        for m in match(_join(tdir, "_staging-*")):
            delete_quietly(m.path)
        if "://" not in tdir and os.path.isdir(tdir):
            for name in os.listdir(tdir):
                if name.startswith("_staging-"):
                    delete_quietly(_join(tdir, name))
            if not os.listdir(tdir):
                os.rmdir(tdir)
    for m in match(_join(out_dir, f"{MANIFEST}.tmp-*")):
        delete_quietly(m.path)
    return deleted


class WriteTables(beam.PTransform):
    """Write {table: PCollection[record]} as Parquet shards, then the run manifest.

    `manifest` is called once on a worker with {"tables", "rejected", "shards", "stats"} and
    returns the full manifest dict (conforming to mmcurate.schemas.tables.RUN_MANIFEST); every
    shard file the returned manifest does not list is then deleted.

    An optional entry `"_stats"` of the input dict is not a table: a PCollection of
    (key, number) pairs that are summed per key into the manifest's `stats` (e.g. a stage's
    token counts).
    """

    def __init__(self, out_dir: str, run_id: str, cfg: OutputConfig, manifest: Callable[[dict], dict]):
        super().__init__()
        self.out_dir, self.run_id, self.cfg, self.manifest = out_dir, run_id, cfg, manifest

    def expand(self, tables: dict[str, beam.PCollection]):
        tables = dict(tables)
        stats = tables.pop("_stats", None)
        buckets = max(1, self.cfg.buckets)
        target = int(self.cfg.target_shard_mb * 1024 * 1024)
        written = []
        for name, pcoll in tables.items():
            id_col = ID_COLUMN[name]
            written.append(
                pcoll
                | f"ToRows[{name}]" >> beam.Map(lambda r: r.to_row())
                | f"KeyByBucket[{name}]"
                >> beam.Map(lambda r, t=name, c=id_col: ((t, _bucket(r[c], buckets)), r))
                | f"GroupBucket[{name}]" >> beam.GroupByKey()
                | f"WriteShards[{name}]" >> beam.ParDo(_WriteBucket(self.out_dir, self.run_id, target))
            )
        all_written = written | "AllShards" >> beam.Flatten()
        rejected_counts = (
            tables["rejected"]
            | "RejectionKey" >> beam.Map(lambda r: f"{r.stage}/{r.reason}")
            | "CountRejections" >> beam.combiners.Count.PerElement()
        )
        pipeline = all_written.pipeline
        side = [beam.pvalue.AsList(all_written), beam.pvalue.AsList(rejected_counts)]
        if stats is not None:
            summed = stats | "SumStats" >> beam.CombinePerKey(sum)
            side.append(beam.pvalue.AsList(summed))
        return (
            pipeline
            | "PublishTrigger" >> beam.Create([None])
            | "Publish" >> beam.ParDo(_Publish(self.out_dir, self.run_id, list(tables), self.manifest), *side)
        )
