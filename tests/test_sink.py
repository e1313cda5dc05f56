"""The Parquet sink: declared schemas, deterministic shards, atomic publish, no duplicates on re-run."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from mmcurate.pipelines.config import OutputConfig
from mmcurate.schemas import Rejection, SpeechRegion
from mmcurate.schemas.tables import TABLES
from mmcurate.transforms.sink import WriteTables, split_rows


def _manifest(written: dict) -> dict:
    return {"run_id": "run-test", **written}


def _write(out: Path, regions: list[SpeechRegion], rejections: list[Rejection], cfg: OutputConfig) -> dict:
    with beam.Pipeline() as p:
        tables = {
            "speech_regions": p | "R" >> beam.Create(regions),
            "rejected": p | "X" >> beam.Create(rejections),
        }
        _ = tables | WriteTables(str(out), "run-test", cfg, _manifest)
    return json.loads((out / "manifest.json").read_text())


def _regions(n: int, source: str = "s1") -> list[SpeechRegion]:
    return [SpeechRegion(f"{source}-vad-{i:05d}", source, i * 1.0, i + 0.5, "run-test") for i in range(n)]


def _ids(out: Path, table: str, col: str) -> list[str]:
    rows = []
    for f in sorted((out / table).glob("*.parquet")):
        t = pq.read_table(f)
        assert t.schema.equals(TABLES[table]), f"{f} does not have the declared schema"
        rows.extend(t.column(col).to_pylist())
    return rows


def test_writes_declared_schemas_and_manifest_last(tmp_path):
    rej = [Rejection.make(stage="ingest", reason="empty_file", detail="0 bytes", uri="a.wav", run_id="r")]
    m = _write(tmp_path, _regions(25), rej, OutputConfig(buckets=3))
    assert sorted(_ids(tmp_path, "speech_regions", "region_id")) == [r.region_id for r in _regions(25)]
    assert _ids(tmp_path, "rejected", "rejection_id") == [rej[0].rejection_id]
    assert m["tables"] == {"speech_regions": 25, "rejected": 1}
    assert m["rejected"] == {"ingest/empty_file": 1}
    assert all((tmp_path / s).exists() for s in m["shards"])
    assert not list(tmp_path.rglob("_staging-*")), "staging directories must be cleaned up"


def test_rerun_is_idempotent_and_removes_stale_shards(tmp_path):
    _write(tmp_path, _regions(40), [], OutputConfig(buckets=4))
    first = sorted(p.name for p in (tmp_path / "speech_regions").glob("*.parquet"))
    bytes_first = {p.name: p.read_bytes() for p in (tmp_path / "speech_regions").glob("*.parquet")}
    _write(tmp_path, _regions(40), [], OutputConfig(buckets=4))
    again = {p.name: p.read_bytes() for p in (tmp_path / "speech_regions").glob("*.parquet")}
    assert sorted(again) == first and again == bytes_first, "same rows must give byte-identical shards"
    # A re-run with another bucket count must not leave the old shards behind (no duplicate rows)
    _write(tmp_path, _regions(40), [], OutputConfig(buckets=2))
    ids = _ids(tmp_path, "speech_regions", "region_id")
    assert len(ids) == 40 and len(set(ids)) == 40


def test_empty_table_gets_a_schema_only_shard(tmp_path):
    m = _write(tmp_path, [], [], OutputConfig())
    files = list((tmp_path / "rejected").glob("*.parquet"))
    assert len(files) == 1 and pq.read_table(files[0]).num_rows == 0
    assert m["tables"] == {"speech_regions": 0, "rejected": 0}


@pytest.mark.parametrize("target", [200, 10_000, 10**9])
def test_split_rows_respects_target_size(target):
    rows = sorted((r.to_row() for r in _regions(300)), key=lambda r: r["region_id"])
    shards = split_rows(rows, "speech_regions", target)
    assert sum(s.num_rows for s in shards) == 300
    if target >= 10**9:
        assert len(shards) == 1
    else:
        assert len(shards) > 1 and all(s.nbytes <= max(target, shards[0].nbytes // shards[0].num_rows) * 1.05 for s in shards)
