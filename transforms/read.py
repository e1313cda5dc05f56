"""Read the tables of an earlier output directory back into a pipeline (corpus-level jobs).

Dedup and rephrasing run as jobs over what a curation run committed: `ReadTables(out_dir,
["segments", "transcripts"])` gives one PCollection of typed records per table, read from
exactly the shards that run's `manifest.json` lists (a half-published or foreign file beside
them is never read). Local paths and Beam FileSystems URIs (gs://, s3://) both work.
"""

from __future__ import annotations

import io
import json

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from mmcurate.schemas.records import RECORDS
from mmcurate.schemas.tables import TABLES
from mmcurate.transforms.commit import join

MANIFEST = "manifest.json"


def read_manifest(out_dir: str) -> dict:
    """The committed manifest of an output directory; FileNotFoundError without one."""
    path = join(out_dir, MANIFEST)
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"{out_dir}: no {MANIFEST}; not a finished mmcurate output")
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return json.loads(fh.read().decode("utf-8"))


def read_shard(path: str, table: str):
    """The records of one Parquet shard of `table`."""
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        data = pq.read_table(io.BytesIO(fh.read()), schema=TABLES[table])
    cls = RECORDS[table]
    for row in data.to_pylist():
        yield cls.from_row(row)


class ReadTables(beam.PTransform):
    """PBegin -> {table: PCollection[record]} for the named tables of a finished output."""

    def __init__(self, out_dir: str, tables: list[str]):
        super().__init__()
        unknown = [t for t in tables if t not in TABLES]
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; known: {list(TABLES)}")
        self.out_dir, self.tables = out_dir, list(tables)

    def expand(self, pbegin):
        from mmcurate.quality.db import committed_shards  # lazy: duckdb is no worker's business

        shards, why = committed_shards(self.out_dir)
        if shards is None:
            raise FileNotFoundError(f"{self.out_dir}: {why}")
        out = {}
        for table in self.tables:
            paths = sorted(shards.get(table, []))
            out[table] = (
                pbegin
                | f"Shards[{table}]" >> beam.Create(paths)
                | f"SpreadShards[{table}]" >> beam.Reshuffle()
                | f"ReadShard[{table}]" >> beam.FlatMap(read_shard, table)
            )
        return out
