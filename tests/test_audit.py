"""Audit figures over a hand-made run output whose every number is known in advance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcurate.quality import audit
from mmcurate.schemas.tables import TABLES
from mmcurate.schemas.records import (
    Rejection,
    Segment,
    SourceRecord,
    SpeechRegion,
    Transcript,
    Word,
    to_table,
)

RUN = "run-test-0001"


def _source(sid: str, uri: str, duration_s: float, speech_s: float, kind: str = "audio") -> SourceRecord:
    return SourceRecord(
        source_id=sid, sha256=sid * 4, uri=uri, media_uri="/data/" + uri, ingested_via="file",
        media_kind=kind, container="wav", audio_codec="pcm_s16le", video_codec=None,
        duration_s=duration_s, sample_rate=16000, channels=1, bytes=1000, speech_s=speech_s,
        speech_ratio=speech_s / duration_s, metadata={"title": sid}, run_id=RUN,
    )


def _words(n: int, start: float, end: float, low: int = 0, low_p: float = 0.3, high_p: float = 0.9) -> list[Word]:
    """n words evenly over [start, end]; the first `low` have probability low_p."""
    step = (end - start) / n
    return [
        Word(f"w{i}", start + i * step, start + (i + 1) * step, low_p if i < low else high_p)
        for i in range(n)
    ]


def _segment(sid: str, n: int, start: float, end: float, spk: int | None, lang: str | None,
             words: list[Word] | None, avg_logprob: float | None, text: str | None = None) -> Segment:
    return Segment(
        segment_id=f"{sid}-seg-{n:05d}", source_id=sid, start=start, end=end,
        speaker=None if spk is None else f"{sid}-spk{spk}",
        text=text if text is not None else " ".join(w.word for w in words or []),
        language=lang, language_probability=0.9, words=words, avg_logprob=avg_logprob,
        no_speech_prob=None if avg_logprob is None else 0.1, compression_ratio=None if avg_logprob is None else 1.5,
        asr_model="whisper-base", asr_model_version="fw 1.2.1", diarization_model="segmentation-3.0 + CAM++",
        audio_uri=f"/data/{sid}#t={start},{end}", audio=None, run_id=RUN,
    )


def _write(out: Path, table: str, records: list, part: int = 0) -> None:
    """Write a shard; when a manifest exists already, commit the shard in it too (the audit
    reads exactly the shards the manifest lists)."""
    d = out / table
    d.mkdir(parents=True, exist_ok=True)
    name = f"part-{part:05d}.parquet"
    pq.write_table(to_table(table, records), d / name)
    m = out / "manifest.json"
    if m.exists():
        data = json.loads(m.read_text())
        data["shards"] = sorted(set(data["shards"]) | {f"{table}/{name}"})
        m.write_text(json.dumps(data))


# Sources A (en, 2 speakers, 150 wpm), B (de, 3 speakers, 100 wpm), C (no transcript: asr
# rejection), D (en, 1 speaker, no word timestamps: 200 text tokens in 1 min -> 200 wpm).
SOURCES = [
    _source("aaaa", "in/a.wav", 600.0, 480.0),
    _source("bbbb", "in/b.mp4", 1200.0, 900.0, kind="video"),
    _source("cccc", "in/c.mp3", 300.0, 120.0),
    _source("dddd", "in/d.opus", 120.0, 60.0),
]
REJECTED = [
    Rejection.make(stage="ingest", reason="duplicate", detail="same sha256 as in/a.wav",
                   uri="in/a_copy.wav", run_id=RUN, source_id="aaaa"),
    Rejection.make(stage="ingest", reason="not_media", detail="no audio stream", uri="in/notes.txt", run_id=RUN),
    Rejection.make(stage="decode", reason="undecodable", detail="invalid data", uri="in/broken.mp3", run_id=RUN),
    Rejection.make(stage="vad", reason="no_speech", detail="speech_s == 0", uri="in/silence.wav",
                   run_id=RUN, source_id="eeee", duration_s=360.0),
    Rejection.make(stage="asr", reason="no_transcript", detail="empty ASR output", uri="in/c.mp3",
                   run_id=RUN, source_id="cccc", duration_s=120.0),
]
REGIONS = [
    SpeechRegion(f"{sid}-vad-{i:05d}", sid, i * 10.0, i * 10.0 + 5.0, RUN)
    for sid, n in (("aaaa", 2), ("bbbb", 3), ("cccc", 1), ("dddd", 1))
    for i in range(n)
]
B_WORDS_2 = _words(80, 120.0, 180.0, high_p=0.95)
B_WORDS_2[-1] = Word("edge", 179.0, 180.0, 0.5)  # exactly the threshold: not "low"
SEGMENTS = [
    _segment("aaaa", 0, 0.0, 30.0, 0, "en", _words(75, 0.0, 30.0), -0.2),
    _segment("aaaa", 1, 30.0, 60.0, 1, "en", _words(75, 30.0, 60.0, low=15), -0.3),
    _segment("bbbb", 0, 0.0, 60.0, 0, "de", _words(120, 0.0, 60.0, low=30, low_p=0.4, high_p=0.95), -0.4),
    _segment("bbbb", 1, 60.0, 120.0, 1, "de", _words(100, 60.0, 120.0, high_p=0.95), -0.5),
    _segment("bbbb", 2, 120.0, 180.0, 2, "de", B_WORDS_2, -0.6),
    _segment("dddd", 0, 0.0, 60.0, 0, "en", None, None, text=" ".join(["hello"] * 200)),
]
TRANSCRIPTS = [
    Transcript("aaaa", "[spk0] ...", "en", 0.9, 2, 2, 150, 60.0, "whisper-base", "segmentation-3.0 + CAM++", RUN),
    Transcript("bbbb", "[spk0] ...", "de", 0.9, 3, 3, 300, 180.0, "whisper-base", "segmentation-3.0 + CAM++", RUN),
    Transcript("dddd", "[spk0] ...", "en", 0.9, 1, 1, 200, 60.0, "whisper-base", "segmentation-3.0 + CAM++", RUN),
]
MODELS = [
    {"role": "vad", "name": "silero-vad", "version": "6.2.3", "path": "/m/vad.onnx", "sha256": "ab" * 32},
    {"role": "asr", "name": "whisper-base", "version": "faster-whisper 1.2.1", "path": "/m/wb", "sha256": "cd" * 32},
]


def _manifest(out: Path, tables: dict[str, int]) -> None:
    (out / "manifest.json").write_text(json.dumps({
        "run_id": RUN,
        "finished_at": "2026-11-23T12:00:00Z",
        "code_version": "0.1.0+gabc1234",
        "config": json.dumps({"vad": {"threshold": 0.5}}),
        "inputs": ["in/"],
        "models": MODELS,
        "tables": tables,
        "stage_counts": {"ingest.inputs": 8},
        "rejected": {"ingest/duplicate": 1},
        "shards": [f"{t}/{p.name}" for t in tables for p in sorted((out / t).glob("part-*.parquet"))],
    }))


EXPECTED_TABLES = {"sources": 4, "speech_regions": 7, "segments": 6, "transcripts": 3, "turns": 0, "rejected": 5}


@pytest.fixture
def run_out(tmp_path: Path) -> Path:
    out = tmp_path / "out [it's]"  # glob characters and a quote stay literal
    _write(out, "sources", SOURCES)
    _write(out, "speech_regions", REGIONS)
    _write(out, "segments", SEGMENTS)
    _write(out, "transcripts", TRANSCRIPTS)
    _write(out, "rejected", REJECTED)
    _manifest(out, EXPECTED_TABLES)
    return out


def test_counts_rejections_inputs_and_hours(run_out: Path) -> None:
    s = audit.summarize(str(run_out))
    assert s["tables"] == {t: EXPECTED_TABLES.get(t, 0) for t in TABLES}
    assert s["rejected"] == {"duplicate": 1, "no_speech": 1, "no_transcript": 1, "not_media": 1, "undecodable": 1}
    assert s["rejected_by_stage"] == {
        "asr": {"no_transcript": 1},
        "decode": {"undecodable": 1},
        "ingest": {"duplicate": 1, "not_media": 1},
        "vad": {"no_speech": 1},
    }
    assert s["inputs"] == 8  # 4 sources + 4 source-level rejections; the asr one is not an input
    assert s["invariant_ok"] is True
    assert s["invariant"]["distinct_uris"] == 8
    assert s["invariant"]["sub_source_rejections_without_source"] == 0
    # sources 2220 s + the no_speech rejection's 360 s (other source-level rejections: unknown)
    assert s["hours_in"] == pytest.approx((600 + 1200 + 300 + 120 + 360) / 3600)
    assert s["rejected_duration_unknown"] == 3
    assert s["hours_speech"] == pytest.approx((480 + 900 + 120 + 60) / 3600)
    assert s["hours_transcribed"] == pytest.approx(300 / 3600)


def test_per_stage(run_out: Path) -> None:
    ps = audit.summarize(str(run_out))["per_stage"]
    assert ps["ingest"] == {"inputs": 8, "sources": 4, "rejected": 2}
    assert ps["decode"] == {"rejected": 1}
    assert ps["vad"] == {"regions": 7, "sources_with_regions": 4, "no_speech": 1, "rejected": 1}
    assert ps["asr"] == {
        "sources_transcribed": 3, "transcripts": 3, "segments": 6, "words": 650,
        "no_transcript": 1, "rejected": 1,
    }
    assert ps["diarize"] == {"sources_diarized": 3, "speakers": 6, "segments_with_speaker": 6, "rejected": 0}


def test_speech_figures(run_out: Path) -> None:
    s = audit.summarize(str(run_out))
    hl = s["hours_transcribed_by_language"]
    assert list(hl) == ["de", "en"]  # most hours first
    assert hl["de"] == pytest.approx(180 / 3600)
    assert hl["en"] == pytest.approx(120 / 3600)

    sp = s["speakers_per_source"]
    assert sp["histogram"] == {"1": 1, "2": 1, "3": 1}
    assert (sp["sources"], sp["min"], sp["max"]) == (3, 1, 3)
    assert sp["mean"] == pytest.approx(2.0)

    w = s["words_per_minute"]
    assert w["overall"] == pytest.approx(650 / 5)  # 650 words in 5 minutes of segments
    per = w["per_source"]  # per-source wpm 100 (B), 150 (A), 200 (D, from text tokens)
    assert per["n"] == 3
    assert per["p10"] == pytest.approx(110.0)
    assert per["p50"] == pytest.approx(150.0)
    assert per["p90"] == pytest.approx(190.0)

    a = s["asr_scores"]
    lp = a["avg_logprob"]  # -0.2 .. -0.6; D has none
    assert lp["n"] == 5
    assert lp["p10"] == pytest.approx(-0.56)
    assert lp["p50"] == pytest.approx(-0.4)
    assert lp["p90"] == pytest.approx(-0.24)
    assert lp["mean"] == pytest.approx(-0.4)
    assert a["no_speech_prob"]["p50"] == pytest.approx(0.1)
    assert a["compression_ratio"]["mean"] == pytest.approx(1.5)
    # 15 (A) + 30 (B) of 450 timestamped words are below 0.5; the word at exactly 0.5 is not
    assert a["words_with_probability"] == 450
    assert a["low_probability_word_share"] == pytest.approx(45 / 450)


def test_manifest_fields_and_table_match(run_out: Path) -> None:
    s = audit.summarize(str(run_out))
    assert s["run_id"] == RUN
    assert s["code_version"] == "0.1.0+gabc1234"
    assert [m["name"] for m in s["models"]] == ["silero-vad", "whisper-base"]
    assert s["manifest"]["tables_match"] is True
    assert s["manifest"]["stage_counts"] == {"ingest.inputs": 8}

    _manifest(run_out, {**EXPECTED_TABLES, "segments": 7})
    s = audit.summarize(str(run_out))
    assert s["manifest"]["tables_match"] is False
    assert s["manifest"]["table_mismatches"] == {"segments": {"manifest": 7, "parquet": 6}}
    assert "MANIFEST MISMATCH segments" in audit.format_summary(s)


def test_invariant_broken_by_a_kept_source_also_rejected(run_out: Path) -> None:
    # a second shard: a decode rejection for an input that is also a kept source
    _write(run_out, "rejected", [
        Rejection.make(stage="decode", reason="undecodable", detail="x", uri="in/b.mp4", run_id=RUN),
    ], part=1)
    s = audit.summarize(str(run_out))
    assert s["tables"]["rejected"] == 6
    assert s["inputs"] == 9
    assert s["invariant_ok"] is False
    inv = s["invariant"]
    assert (inv["distinct_uris"], inv["uris_kept_and_rejected"]) == (8, 1)
    assert "INVARIANT BROKEN" in audit.format_summary(s)


def test_invariant_broken_by_an_input_rejected_twice(run_out: Path) -> None:
    _write(run_out, "rejected", [
        Rejection.make(stage="vad", reason="no_speech", detail="x", uri="in/notes.txt", run_id=RUN),
    ], part=1)
    inv = audit.summarize(str(run_out))["invariant"]
    assert inv["ok"] is False
    assert inv["duplicate_uris_in_source_level_rejected"] == 1


def test_orphan_sub_source_rejection_is_reported(run_out: Path) -> None:
    _write(run_out, "rejected", [
        Rejection.make(stage="asr", reason="no_transcript", detail="x", uri="in/zz.wav",
                       run_id=RUN, source_id="zzzz"),
    ], part=1)
    s = audit.summarize(str(run_out))
    assert s["invariant_ok"] is True  # not an input-level loss, but still reported
    assert s["invariant"]["sub_source_rejections_without_source"] == 1


def test_missing_tables_are_zero(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write(out, "sources", SOURCES[:1])
    (out / "transcripts").mkdir()  # a table directory with no shard
    _write(out, "speech_regions", [])  # an empty shard
    s = audit.summarize(str(out))
    assert s["tables"] == {t: 1 if t == "sources" else 0 for t in TABLES}
    assert s["tables_present"]["speech_regions"] is True and s["tables_present"]["segments"] is False
    assert s["inputs"] == 1 and s["invariant_ok"] is True
    assert s["hours_in"] == pytest.approx(600 / 3600)
    assert s["hours_transcribed_by_language"] == {}
    assert s["speakers_per_source"]["histogram"] == {} and s["speakers_per_source"]["mean"] is None
    assert s["words_per_minute"]["overall"] is None
    assert s["asr_scores"]["avg_logprob"]["p50"] is None
    assert s["asr_scores"]["low_probability_word_share"] is None
    assert s["manifest"] is None and s["run_id"] is None
    json.dumps(s)
    text = audit.format_summary(s)
    assert "manifest.json missing" in text
    # the empty views keep the declared columns
    cols = audit.query(str(out), "select * from segments").column_names
    assert cols[:3] == ["segment_id", "source_id", "start"] and "words" in cols

    empty = audit.summarize(str(tmp_path / "nothing-here"))
    assert set(empty["tables"].values()) == {0}


def test_query_and_format_table(run_out: Path) -> None:
    t = audit.query(str(run_out), "select count(*) as n from sources")
    assert isinstance(t, pa.Table)
    assert t.column("n").to_pylist() == [4]
    t = audit.query(str(run_out), "select source_id, duration_s, metadata from sources order by source_id")
    text = audit.format_table(t, max_rows=2)
    lines = text.splitlines()
    assert lines[0].split("|")[0].strip() == "source_id"
    assert "aaaa" in text and "bbbb" in text and "cccc" not in text
    assert "600" in text
    assert lines[-1] == "(4 rows, 2 not shown)"
    assert audit.format_table(audit.query(str(run_out), "select 1 as x")).splitlines()[-1] == "(1 row)"


def test_summary_is_json_and_report_has_key_lines(run_out: Path) -> None:
    s = audit.summarize(str(run_out))
    assert json.loads(json.dumps(s)) == s  # round-trips: string keys, no NaN
    text = audit.format_summary(s)
    # the Tables block pads names to the longest table name (segment_quality, 15 characters)
    assert re.search(r"^  sources +4$", text, re.M), text
    for needle in (RUN, "invariant OK", "ingest/duplicate", "vad/no_speech",
                   "asr/no_transcript", "transcribed [de]", "whisper-base"):
        assert needle in text, needle
    hours_in = next(line for line in text.splitlines() if line.strip().startswith("in "))
    assert hours_in.split()[-1] == f"{2580 / 3600:.2f}"


# ------------------------------------------------------------------ shard schemas


def _rewrite(out: Path, table: str, part: int, change) -> str:
    """Replace shard `part` of `table` by `change(arrow table)`; returns its relative path."""
    rel = f"{table}/part-{part:05d}.parquet"
    path = out / rel
    pq.write_table(change(pq.read_table(path)), path)
    return rel


def _audit_cli(capsys, out: Path, *args: str) -> tuple[int, str, str]:
    from mmcurate.pipelines import cli

    rc = cli.main(["audit", str(out), *args])
    stdout, err = capsys.readouterr()
    return rc, stdout, err


def _consistency_gate_passes(out: Path) -> bool:
    from mmcurate.orchestration.commands import default_gates
    from mmcurate.quality import gates

    consistent = [c for c in gates.load(default_gates()) if c.metric == "problems"]
    assert consistent, "the default gate file has its consistency check"
    return all(o.passed for o in gates.evaluate(str(out), consistent))


def test_a_shard_without_a_required_column_is_a_problem_in_every_mode(run_out: Path, capsys, tmp_path) -> None:
    rel = _rewrite(run_out, "sources", 0, lambda t: t.drop_columns(["duration_s"]))
    s = audit.summarize(str(run_out))
    line = next((p for p in s["problems"] if "duration_s" in p), None)
    assert line is not None and rel in line and "no column duration_s" in line, s["problems"]
    assert not _consistency_gate_passes(run_out)
    for args in ((), ("--json",), ("--html", str(tmp_path / "r.html"))):
        rc, stdout, err = _audit_cli(capsys, run_out, *args)
        assert rc == 1, (args, stdout, err)
        assert "Traceback" not in stdout + err
        if not args:
            assert "PROBLEMS" in stdout and rel in stdout and "invariant OK" not in stdout
        if args == ("--json",):
            assert any(rel in p and "duration_s" in p for p in json.loads(stdout)["problems"])
    assert "no column duration_s" in (tmp_path / "r.html").read_text()


def test_a_retyped_column_is_a_problem_not_a_traceback(run_out: Path, capsys, tmp_path) -> None:
    import pyarrow.compute as pc

    def as_text(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("duration_s")
        return t.set_column(i, "duration_s", pc.cast(t["duration_s"], pa.string()))

    rel = _rewrite(run_out, "sources", 0, as_text)
    s = audit.summarize(str(run_out))
    assert any(rel in p and "duration_s is string, declared double" in p for p in s["problems"]), s["problems"]
    assert not _consistency_gate_passes(run_out)
    for args in ((), ("--json",), ("--html", str(tmp_path / "r.html"))):
        rc, stdout, err = _audit_cli(capsys, run_out, *args)
        assert rc == 1 and "Traceback" not in stdout + err, (args, stdout, err)
    # the views still answer: the broken shard is left out, the others are read
    assert audit.query(str(run_out), "SELECT count(*) FROM rejected").column(0).to_pylist() == [5]


def test_a_ledger_shard_without_reason_is_a_problem(run_out: Path, capsys) -> None:
    # one shard of two without `reason`
    _write(run_out, "rejected", [
        Rejection.make(stage="decode", reason="undecodable", detail="x", uri="in/x.mp3", run_id=RUN),
    ], part=1)
    rel = _rewrite(run_out, "rejected", 1, lambda t: t.drop_columns(["reason"]))
    s = audit.summarize(str(run_out))
    assert any(rel in p and "no column reason" in p for p in s["problems"]), s["problems"]
    rc, stdout, err = _audit_cli(capsys, run_out)
    assert rc == 1 and "Traceback" not in stdout + err
    # every shard without it: no `decode/None` rows in the summary, a problem per shard
    _rewrite(run_out, "rejected", 0, lambda t: t.drop_columns(["reason"]))
    rc, stdout, err = _audit_cli(capsys, run_out)
    assert rc == 1 and "/None" not in stdout and stdout.count("no column reason") == 2, stdout


def test_an_extra_column_is_a_warning_and_a_clean_output_has_none(run_out: Path, capsys) -> None:
    clean = audit.summarize(str(run_out))
    assert "warnings" not in clean and clean["problems"] == []
    rel = _rewrite(run_out, "sources", 0, lambda t: t.append_column("note", pa.array(["x"] * t.num_rows)))
    s = audit.summarize(str(run_out))
    assert s["problems"] == [] and s["invariant_ok"] is True
    assert len(s["warnings"]) == 1 and rel in s["warnings"][0] and "note" in s["warnings"][0]
    rc, stdout, _ = _audit_cli(capsys, run_out)
    assert rc == 0 and "WARNINGS (1)" in stdout and "invariant OK" in stdout
    assert _consistency_gate_passes(run_out)


def test_types_other_writers_choose_read_as_declared() -> None:
    from mmcurate.quality.db import _same_type

    word = TABLES["segments"].field("words").type
    assert _same_type(pa.large_string(), pa.string())
    assert _same_type(pa.dictionary(pa.int32(), pa.string()), pa.string())
    assert _same_type(pa.large_list(pa.field("element", word.value_type)), word)
    assert not _same_type(pa.string(), pa.float64())
    assert not _same_type(pa.int64(), pa.float64())
    assert not _same_type(pa.list_(pa.struct([("word", pa.string())])), word)
