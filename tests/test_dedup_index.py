"""The cross-run dedup index: a run's partition is published by the run's commit (a failed run
never poisons the index; a run that died after its commit is published by the next), the index
describes itself (a run of other settings is refused; a listed part missing, resized or of a
foreign schema is an error naming it), partition names are checked, and a re-run into the same
output replaces its partition."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from mmcurate.pipelines.config import CurateConfig
from mmcurate.schemas.records import SourceRecord
from mmcurate.transforms import dedup_index
from mmcurate.transforms.dedup_config import DedupConfig
from mmcurate.transforms.dedup_index import read_index

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
JFK = MEDIA / "speech" / "jfk.wav"
TEXT = ("the quick brown fox jumps over the lazy dog while the cat watches from the old wooden "
        "fence and the sun sets slowly behind the distant hills of the quiet valley tonight")
METHODS = ("sha256", "text_hash", "minhash")


def _src(sid: str) -> SourceRecord:
    return SourceRecord(sid, sid * 3, f"/m/{sid}.wav", f"/m/{sid}.wav", "file", "audio", "wav",
                        "pcm_s16le", None, 10.0, 16000, 1, 1000, 10.0, 1.0, {}, "run-t")


def _signatures(cfg: DedupConfig, partition: str, run_id: str) -> list:
    """sha256, text_hash and minhash signatures of two fake sources and their transcripts."""
    from mmcurate.transforms.dedup_minhash import MinHasher, normalize_text, text_hash
    from mmcurate.transforms.dedup_nodes import make_signature, source_info

    hasher = MinHasher(cfg.num_perm, cfg.seed, cfg.shingle_size)
    out = []
    for sid, text in (("a" * 20, TEXT), ("b" * 20, "other words " * 8)):
        info = source_info(_src(sid))
        norm = normalize_text(text)
        out += [make_signature("source", sid, "sha256", info, bytes(32), 10.0, partition, run_id),
                make_signature("transcript", sid, "text_hash", info, text_hash(norm), len(norm), partition, run_id),
                make_signature("transcript", sid, "minhash", info, MinHasher.pack(*hasher.signature(norm)),
                               len(norm), partition, run_id)]
    return out


def _stage(index: Path, partition: str, output: Path, run_id: str = "run-a") -> str:
    """Stage a partition as the dedup stage does (its StageIndex step; no model); returns its
    staging directory."""
    cfg = DedupConfig(methods=METHODS, index_dir=str(index))
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p | beam.Create(_signatures(cfg, partition, run_id))
             | dedup_index.StageIndex(cfg, str(index), partition, run_id, str(output)))
    return dedup_index.staging_dir(str(index), partition, str(output), run_id)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """An index holding one staged partition, 2026-11-01 of run-a into `out` (copied by each
    test: one pipeline for the module)."""
    tmp = tmp_path_factory.mktemp("staged")
    _stage(tmp / "index", "2026-11-01", tmp / "out")
    return tmp


def _copy_index(staged: Path, tmp: Path) -> Path:
    """The staged index, copied to `tmp/index` (its record names staged/out as the output)."""
    import shutil

    shutil.copytree(staged / "index", tmp / "index")
    return tmp / "index"


def _published(staged: Path, tmp: Path, partition: str = "2026-11-01") -> Path:
    index = _copy_index(staged, tmp)
    dedup_index.publish(str(index), dedup_index.staging_dir(str(index), partition, str(staged / "out"), "run-a"))
    return index / partition


def _read_all(cfg: CurateConfig, partition: str):
    """Every index entry a run of `cfg` as `partition` reads (through a pipeline)."""
    with beam.Pipeline(runner=FnApiRunner()) as p:
        idx = read_index(p, cfg.dedup, partition)
        if idx is not None:
            _ = idx | beam.Map(lambda s: None)


def _cfg(index: Path, **dedup) -> CurateConfig:
    return CurateConfig.from_dict({"stages": ["vad", "dedup"], "dedup": {
        "methods": list(METHODS), "index_dir": str(index), **dedup}})


# --------------------------------------------------------------------------- fast: no model


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "_staging", "a\nb", "a\x00b", "x" * 129])
def test_partition_names_are_checked_at_config_time(name):
    from mmcurate.schemas.params import ConfigError

    with pytest.raises(ConfigError) as e:
        CurateConfig.from_dict({"dedup": {"partition": name}})
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith("dedup.partition")
    CurateConfig.from_dict({"dedup": {"partition": "date=2026-11-01.v2_x"}})  # a fine one


@pytest.mark.parametrize("key,value", [("seed", 2), ("shingle_size", 3), ("bands", 32)])
def test_a_run_of_other_settings_is_refused_naming_the_setting(staged, tmp_path, key, value):
    from mmcurate.pipelines.curate import startup_problems

    index = _published(staged, tmp_path).parent
    problems = startup_problems(_cfg(index, **{key: value}))
    assert len(problems) == 1, problems
    default = getattr(DedupConfig(), key)
    assert problems[0].startswith(f"dedup.{key}: ") and "2026-11-01" in problems[0]
    assert f"written with {default}, this run has {value} " in problems[0]
    assert startup_problems(_cfg(index)) == []  # the index's own settings
    # settings of a method the run does not use, and thresholds, change nothing comparable
    assert startup_problems(_cfg(index, methods=["sha256", "text_hash"], **{key: value})) == []
    assert startup_problems(_cfg(index, jaccard_threshold=0.9)) == []


def test_the_command_refuses_other_settings_with_one_line_and_exit_2(staged, tmp_path, capsys):
    from mmcurate.pipelines import cli

    index = _published(staged, tmp_path).parent
    rc = cli.main(["run", str(JFK), "--output", str(tmp_path / "out"), "--stages", "vad,dedup",
                   "--no-audit", "--set", f"dedup.index_dir={index}", "--set", "dedup.seed=2",
                   "--set", f"dedup.methods={json.dumps(list(METHODS))}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmcurate:")]
    assert rc == 2 and len(err) == 1 and "dedup.seed" in err[0] and "with 1, this run has 2" in err[0], err
    assert not (tmp_path / "out" / "manifest.json").exists()


def _damage(part_dir: Path, how: str) -> Path:
    part = part_dir / "part-0003.parquet"
    if how == "missing":
        part.unlink()
    elif how == "resized":
        part.write_bytes(part.read_bytes() + b"\0")
    else:  # a foreign schema, listed with its true size and sha256: only its columns are wrong
        import hashlib
        import io

        buf = io.BytesIO()
        pq.write_table(pa.table({"signature_id": ["x"], "vector": [[1.0, 2.0]]}), buf)
        part.write_bytes(buf.getvalue())
        succ = part_dir / "_SUCCESS"
        rec = json.loads(succ.read_text())
        for f in rec["files"]:
            if f["name"] == part.name:
                f["bytes"], f["sha256"] = len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()
        succ.write_text(json.dumps(rec))
    return part


@pytest.mark.parametrize("how", ["missing", "resized", "foreign"])
def test_a_damaged_part_is_an_error_naming_it(staged, tmp_path, how):
    """Never a silent 0 duplicates: a missing or resized part is found at start-up, a part of
    another schema (or content) when it is read; either way the error names it."""
    from mmcurate.pipelines.curate import startup_problems

    part = _damage(_published(staged, tmp_path), how)
    index = part.parent.parent
    cfg = _cfg(index, partition="2026-11-02")
    if how != "foreign":
        problems = startup_problems(cfg)
        assert len(problems) == 1 and str(part) in problems[0], problems
        assert ("missing" if how == "missing" else "bytes, its _SUCCESS lists") in problems[0]
    with pytest.raises(Exception, match="part-0003.parquet"):
        _read_all(cfg, "2026-11-02")


def test_only_committed_runs_are_consulted_and_a_lost_publish_is_recovered(staged, tmp_path):
    """Staged partitions are never read; one whose run committed its output (its manifest names
    the run) but died before publishing is published by the next run that reads the index."""
    index, out = _copy_index(staged, tmp_path), staged / "out"
    staging = dedup_index.staging_dir(str(index), "2026-11-01", str(out), "run-a")
    assert not (index / "2026-11-01").exists()  # staged: nothing published
    assert dedup_index.check_index(_cfg(index).dedup, "2026-11-02", True)[:2] == ([], [])
    out.mkdir(exist_ok=True)
    try:
        (out / "manifest.json").write_text(json.dumps({"run_id": "run-other"}))  # another run committed
        _read_all(_cfg(index, partition="2026-11-02"), "2026-11-02")
        assert not (index / "2026-11-01").exists() and Path(staging, "_STAGED").exists()
        (out / "manifest.json").write_text(json.dumps({"run_id": "run-a"}))  # run-a committed
        _read_all(_cfg(index, partition="2026-11-02"), "2026-11-02")
    finally:
        (out / "manifest.json").unlink()
    assert json.loads((index / "2026-11-01" / "_SUCCESS").read_text())["run_id"] == "run-a"
    assert not (index / "_staging").exists()
    parts, files, problems = dedup_index.check_index(_cfg(index).dedup, "2026-11-02", True)
    assert parts == ["2026-11-01"] and len(files) == 8 and problems == []


# ------------------------------------------------------------- slow: real runs (VAD on jfk)


def _run(inputs, out: Path, index: Path, partition=None):
    from mmcurate.pipelines import curate

    cfg = CurateConfig.from_dict({"stages": ["vad", "dedup"], "dedup": {
        "methods": ["sha256"], "index_dir": str(index), "partition": partition}})
    return curate.run([str(i) for i in inputs], str(out), cfg,
                      test_pipeline=beam.Pipeline(runner=FnApiRunner()))


def _dedup_rows(out: Path):
    return duckdb.connect().execute(
        f"SELECT regexp_extract(uri, '[^/]+$'), reason, detail FROM '{out}/rejected/*.parquet' "
        "WHERE stage = 'dedup'").fetchall()


@pytest.mark.slow
def test_a_run_that_fails_before_its_commit_never_poisons_the_index(tmp_path, monkeypatch):
    """jfk's run dies after its index partition is written, before its manifest commit (a
    kill, a full disk); a later run with jfk and other inputs keeps jfk: the failed run's
    partition is never consulted."""
    from mmcurate.transforms import sink

    index = tmp_path / "index"

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink, "commit_manifest", disk_full)
    with pytest.raises(Exception, match="No space left"):
        _run([JFK], tmp_path / "out1", index)
    monkeypatch.undo()
    assert not (tmp_path / "out1" / "manifest.json").exists()
    assert dedup_index.published(str(index)) == []
    run2 = _run([JFK, MEDIA / "speech" / "LDC93S1.wav"], tmp_path / "out2", index)
    assert _dedup_rows(tmp_path / "out2") == []  # jfk is curated
    assert run2["tables"]["sources"] == 2
    assert dedup_index.published(str(index)) == [dedup_index.default_partition(str(tmp_path / "out2"))]


@pytest.mark.slow
def test_a_run_that_dies_between_commit_and_publish_is_published_by_the_next(tmp_path, monkeypatch):
    index = tmp_path / "index"

    def killed(*a, **k):
        raise RuntimeError("killed before publishing")

    monkeypatch.setattr(dedup_index, "publish", killed)
    with pytest.raises(Exception, match="killed before publishing"):
        _run([JFK], tmp_path / "out1", index)
    monkeypatch.undo()
    assert (tmp_path / "out1" / "manifest.json").exists()  # committed
    assert dedup_index.published(str(index)) == []
    _run([JFK], tmp_path / "out2", index)  # recovers it first, then reads it
    first = dedup_index.default_partition(str(tmp_path / "out1"))
    assert first in dedup_index.published(str(index))
    rows = _dedup_rows(tmp_path / "out2")
    assert [r[:2] for r in rows] == [("jfk.wav", "exact_duplicate")] and first in rows[0][2]


@pytest.mark.slow
def test_a_rerun_into_the_same_output_replaces_its_partition(tmp_path, monkeypatch):
    """Other code (or config) gives another run id; the partition is the output's, so the re-run
    replaces it instead of adding one that its own items would duplicate."""
    index, out = tmp_path / "index", tmp_path / "out"
    monkeypatch.setenv("MMCURATE_CODE_VERSION", "1.0")
    first = _run([JFK], out, index)
    monkeypatch.setenv("MMCURATE_CODE_VERSION", "1.1")
    again = _run([JFK], out, index)
    assert first["run_id"] != again["run_id"]
    assert dedup_index.published(str(index)) == [dedup_index.default_partition(str(out))]
    assert _dedup_rows(out) == []  # jfk is not a duplicate of its own earlier run
    succ = json.loads((index / dedup_index.default_partition(str(out)) / "_SUCCESS").read_text())
    assert succ["run_id"] == again["run_id"]
