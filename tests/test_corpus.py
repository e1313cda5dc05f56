"""Corpus jobs (`mmcurate corpus`): a stage over a finished output adds to it, never duplicates.

The framework is tested with a small corpus stage registered by the test (ledger rows and
stats only), over a real `--stages vad` run on real media; the dedup and rephrase stages have
their own tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from mmcurate.pipelines import corpus
from mmcurate.pipelines.config import CurateConfig
from mmcurate.pipelines.stages import REGISTRY, Stage
from mmcurate.schemas import stages as stage_decl
from mmcurate.schemas.records import Rejection
from mmcurate.schemas.stages import StageSpec

TOY = StageSpec(name="toy", summary="flags every source", requires=("sources",), produces=(),
                streams=(), config=(), ledger=("toy",), source_level=False, corpus=True)
NEEDS_SEGMENTS = StageSpec(name="needs_segments", summary="reads segments", requires=("segments",),
                           produces=(), streams=(), config=(), ledger=("needs_segments",),
                           source_level=False, corpus=True)


def _build_toy(ctx, streams):
    flagged = streams["sources"] | "Flag" >> beam.Map(lambda s: Rejection.make(
        stage="toy", reason="flagged", detail=f"source {s.source_id} flagged", uri=s.uri,
        source_id=s.source_id, item_id=s.source_id, run_id=ctx.run_id))
    stats = streams["sources"] | "Stats" >> beam.FlatMap(
        lambda s: [("toy.synthetic_tokens", 3), ("toy.total_tokens", 10)])
    return {"rejected": flagged, "stats": stats}


@pytest.fixture
def toy_stages(monkeypatch):
    monkeypatch.setattr(stage_decl, "STAGES", stage_decl.STAGES + (TOY, NEEDS_SEGMENTS))
    monkeypatch.setitem(REGISTRY, "toy", Stage(spec=TOY, build=_build_toy))
    monkeypatch.setitem(REGISTRY, "needs_segments", Stage(spec=NEEDS_SEGMENTS, build=_build_toy))


@pytest.fixture(scope="module")
def vad_output(tmp_path_factory, media_dir=Path(__file__).resolve().parents[2] / "shared" / "media"):
    from mmcurate.pipelines import curate

    out = tmp_path_factory.mktemp("corpus") / "out"
    empty = out.parent / "empty.wav"
    empty.write_bytes(b"")
    cfg = CurateConfig.from_dict({"stages": ["vad"]})
    curate.run([str(media_dir / "speech" / "jfk.wav"), str(media_dir / "speech" / "LDC93S1.wav"),
                str(empty)], str(out), cfg)
    return out


def _rows(out: Path, table: str) -> list[dict]:
    m = json.loads((out / "manifest.json").read_text())
    rows = []
    for rel in m["shards"]:
        if rel.startswith(f"{table}/"):
            rows.extend(pq.read_table(out / rel).to_pylist())
    return rows


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.parquet")}


def test_corpus_job_extends_the_output_and_a_rerun_replaces_its_rows(toy_stages, vad_output):
    out = vad_output
    base = json.loads((out / "manifest.json").read_text())
    base_files = _files(out)
    base_ledger = _rows(out, "rejected")
    assert [r["reason"] for r in base_ledger] == ["empty_file"]

    m = corpus.run_corpus(str(out), CurateConfig(), ["toy"])
    # every table the job did not write is still listed, byte for byte
    for rel in base["shards"]:
        if not rel.startswith("rejected/"):
            assert rel in m["shards"] and (out / rel).read_bytes() == base_files[rel]
    ledger = _rows(out, "rejected")
    assert sorted(r["reason"] for r in ledger) == ["empty_file", "flagged", "flagged"]
    assert m["rejected"] == {"ingest/empty_file": 1, "toy/flagged": 2}
    assert m["tables"]["rejected"] == 3 and m["tables"]["sources"] == 2
    assert m["stage_counts"]["ingest.inputs"] == 3  # toy rows remove no input
    assert m["stats"] == {"toy.synthetic_ratio": 0.3, "toy.synthetic_tokens": 6, "toy.total_tokens": 20}
    assert m["run_id"] == base["run_id"] and m["corpus_jobs"]["toy"]["run_id"].startswith("job-")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == sorted(m["shards"])

    # the same job again: the same files and rows, nothing duplicated
    files = _files(out)
    m2 = corpus.run_corpus(str(out), CurateConfig(), ["toy"])
    assert m2["shards"] == m["shards"] and _files(out) == files
    assert len(_rows(out, "rejected")) == 3

    from mmcurate.quality import audit

    assert not audit.summarize(str(out)).get("problems")


def test_a_stage_that_reads_a_missing_table_is_refused_before_any_work(toy_stages, vad_output):
    before = (vad_output / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match=r"needs_segments.*\['segments'\]"):
        corpus.run_corpus(str(vad_output), CurateConfig(), ["needs_segments"])
    assert (vad_output / "manifest.json").read_bytes() == before


def test_unknown_or_non_corpus_stage_names_are_refused(toy_stages):
    with pytest.raises(ValueError, match="not corpus stage"):
        corpus.resolve_corpus(["speech"])


def test_cli_corpus_on_a_directory_without_a_manifest_says_so(tmp_path, capsys):
    from mmcurate.pipelines.cli import main

    assert main(["corpus", str(tmp_path), "--no-audit"]) == 2
    assert "no manifest.json" in capsys.readouterr().err
