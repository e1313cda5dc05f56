"""Fault and load cases of a whole run, each with the same check: nothing is lost,
every input is a row of `sources` or a source-level ledger row, exactly once, and the run
finishes (one pipeline with per-source checkpoints).

The 2-hour file and the throughput figures are in bench/bench_orchestration.py (minutes).
"""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmcurate.pipelines import curate
from mmcurate.pipelines.config import CurateConfig, IngestConfig, OutputConfig
from mmcurate.quality import audit
from mmcurate.schemas.tables import SOURCE_LEVEL_STAGES

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SR = 16000


def _jfk() -> np.ndarray:
    with wave.open(str(MEDIA / "speech" / "jfk.wav")) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _wav(path: Path, samples: np.ndarray) -> str:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(samples.astype("<i2").tobytes())
    return str(path)


def _rows(out: Path, table: str) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [r for rel in manifest["shards"] if rel.startswith(f"{table}/")
            for r in pq.read_table(out / rel).to_pylist()]


def _nothing_lost(out: Path, n_inputs: int) -> tuple[list[dict], list[dict]]:
    """count(inputs) == sources + source-level ledger rows; the audit agrees."""
    sources, rejected = _rows(out, "sources"), _rows(out, "rejected")
    source_level = [r for r in rejected if r["stage"] in SOURCE_LEVEL_STAGES and r["reason"] != "truncated_kept"]
    assert len(sources) + len(source_level) == n_inputs, (len(sources), len(source_level), n_inputs)
    s = audit.summarize(str(out))
    assert s["inputs"] == n_inputs and s["invariant_ok"] and s["problems"] == [], s["problems"]
    assert not (out / "_chunks").exists() and not (out / ".mmcurate.lock").exists()
    return sources, rejected


def _fake_speech(cfg: CurateConfig) -> dict:
    """Fake ASR + diarizer (tests/test_speech_stage.py): ASR raises on exactly 3.0 s of audio."""
    from test_speech_stage import fake_diarizer_factory, fake_transcriber_factory

    from mmcurate.transforms.asr import AsrModelHandler
    from mmcurate.transforms.diarize import DiarizationModelHandler

    return {"asr_handler": AsrModelHandler(cfg.asr, loader=fake_transcriber_factory),
            "diarization_handler": DiarizationModelHandler(cfg.diarization, loader=fake_diarizer_factory)}


def test_a_model_backend_that_raises_on_some_inputs_gives_ledger_rows_and_the_run_finishes(tmp_path):
    jfk = _jfk()
    raising = [_wav(tmp_path / f"three-{k}.wav", jfk[k * 8000:k * 8000 + 3 * SR]) for k in range(3)]
    fine = [_wav(tmp_path / f"five-{k}.wav", jfk[k * 8000:k * 8000 + 5 * SR]) for k in range(4)]
    cfg = CurateConfig(stages=("vad", "speech"), output=OutputConfig())
    m = curate.run(raising + fine, str(tmp_path / "out"), cfg, overrides=_fake_speech(cfg))
    sources, rejected = _nothing_lost(tmp_path / "out", 7)
    assert len(sources) == 7 and m["tables"]["sources"] == 7
    by_uri = {s["uri"]: s["source_id"] for s in sources}
    failed = {r["source_id"] for r in rejected if (r["stage"], r["reason"]) == ("asr", "model_error")}
    assert failed == {by_uri[u] for u in raising}, rejected
    assert all("out of memory (fake)" in r["detail"] for r in rejected if r["reason"] == "model_error")
    transcribed = {t["source_id"] for t in _rows(tmp_path / "out", "transcripts") if t["text"]}
    assert {by_uri[u] for u in fine} <= transcribed


@pytest.mark.slow
def test_500_short_files(tmp_path):
    """500 distinct 1-second files (slices of jfk.wav; some have no speech), each checkpointed."""
    jfk = _jfk()
    d = tmp_path / "many"
    d.mkdir()
    files = [_wav(d / f"clip{i:04d}.wav", jfk[i * 320:i * 320 + SR]) for i in range(500)]
    m = curate.run([str(d)], str(tmp_path / "out"), CurateConfig(stages=("vad",)))
    sources, rejected = _nothing_lost(tmp_path / "out", 500)
    assert {s["uri"] for s in sources} | {r["uri"] for r in rejected} == set(files)
    assert len(sources) > 400 and m["tables"]["speech_regions"] >= len(sources)


def test_a_file_10x_over_the_size_limit_is_rejected_before_it_is_read(tmp_path, monkeypatch):
    """A sparse file 10x ingest.max_bytes (200 GiB at the default 20 GiB: no disk used) is a
    `too_large` row; nothing ever opens it (every open of the ingest is recorded)."""
    from mmcurate.transforms import ingest

    huge = tmp_path / "huge.wav"
    with open(huge, "wb") as fh:
        fh.truncate(10 * IngestConfig().max_bytes)
    assert huge.stat().st_blocks == 0  # sparse: reading it would take minutes of zeros
    opened = []
    real_open = ingest._open_raw
    monkeypatch.setattr(ingest, "_open_raw", lambda loc: opened.append(loc) or real_open(loc))
    small = str(MEDIA / "speech" / "LDC93S1.wav")
    curate.run([str(huge), small], str(tmp_path / "out"), CurateConfig(stages=("vad",)))
    sources, rejected = _nothing_lost(tmp_path / "out", 2)
    assert [s["uri"] for s in sources] == [small]
    [row] = [r for r in rejected if r["uri"] == str(huge)]
    assert (row["stage"], row["reason"]) == ("ingest", "too_large")
    assert str(10 * IngestConfig().max_bytes) in row["detail"]
    assert opened == [small], opened  # the small file was hashed; the huge one never opened


@pytest.mark.slow  # seconds: out of the fast tier
def test_a_manifest_of_10000_lines_with_10_percent_bad(tmp_path):
    """9,000 good lines naming 54 distinct short files (each named ~167 times: one source and
    the rest `duplicate` rows), 1,000 bad ones: missing files, URIs of unknown schemes, lines that
    are not JSON, JSON that is not an object, `uri` of the wrong type or missing."""
    jfk = _jfk()
    d = tmp_path / "m"
    d.mkdir()
    files = [_wav(d / f"f{i:02d}.wav", jfk[i * 1600:i * 1600 + SR]) for i in range(60)]
    bad_kinds = [
        lambda i: json.dumps({"uri": f"missing/{i}.wav"}),
        lambda i: json.dumps({"uri": f"nosuch://bucket/{i}.wav"}),
        lambda i: "{not json " + str(i),
        lambda i: json.dumps([f"f{i}.wav"]),
        lambda i: json.dumps({"uri": i}),
        lambda i: json.dumps({"url": f"f{i}.wav"}),
        lambda i: json.dumps({"uri": None, "title": "x"}),
        lambda i: json.dumps({"uri": ["a.wav"]}),
        lambda i: json.dumps({"uri": ""}),
        lambda i: json.dumps({"uri": f"f{i % 60:02d}.wav/"}),
    ]
    lines, named = [], set()
    for i in range(10_000):
        if i % 10 == 9:
            lines.append(bad_kinds[(i // 10) % len(bad_kinds)](i))
        else:
            named.add(files[i % 60])
            lines.append(json.dumps({"uri": os.path.basename(files[i % 60]), "title": f"line {i}"}))
    manifest = d / "big.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    cfg = CurateConfig(stages=("vad",), output=OutputConfig())
    # the local runner's default worker threads (one per core, at most 4): the ingest's
    # expansion writes for over a second, which Beam's timed data-plane flush made lose rows
    # (curate.without_timed_flushes, bench/README.md "Rows lost by the multi-threaded local runner")
    curate.run([str(manifest)], str(tmp_path / "out"), cfg)
    sources, rejected = _nothing_lost(tmp_path / "out", 10_000)
    # each named file is a source, or a vad/no_speech row (some 1 s slices are a pause)
    kept = {s["uri"] for s in sources}
    assert len(kept) > 30 and kept | {r["uri"] for r in rejected if r["stage"] == "vad"} == named
    ingest_reasons: dict[str, int] = {}
    for r in rejected:
        if r["stage"] == "ingest":
            ingest_reasons[r["reason"]] = ingest_reasons.get(r["reason"], 0) + 1
    assert ingest_reasons.get("duplicate") == 9_000 - len(named)
    bad = sum(n for k, n in ingest_reasons.items() if k != "duplicate")
    assert bad == 1_000, ingest_reasons
