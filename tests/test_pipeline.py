"""End to end: the whole job on real media plus every kind of bad input; nothing is lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from media_fixtures import write_video
from mmcurate.pipelines import cli, curate
from mmcurate.pipelines.config import CurateConfig
from mmcurate.quality import audit
from mmcurate.schemas.tables import SOURCE_LEVEL_STAGES, TABLES

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"


def _wav(path: Path, samples: np.ndarray, sr: int = 16000) -> Path:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Inputs and, for each bad one, the (stage, reason) expected in the ledger."""
    d = tmp_path_factory.mktemp("inputs")
    jfk = (MEDIA / "speech" / "jfk.mp3").read_bytes()
    (d / "good.mp3").write_bytes(jfk)
    (d / "same-bytes-other-name.mp3").write_bytes(jfk)
    (d / "empty.wav").write_bytes(b"")
    (d / "truncated.mp3").write_bytes(jfk[:200])
    (d / "notes.mp3").write_text("this is a text file, not an mp3\n" * 20)
    write_video(d / "no_audio.mp4", "mpeg4", None, seconds=1.0)
    _wav(d / "silence.wav", np.zeros(16000 * 3))
    bad_name = os.fsencode(str(d)) + b"/caf\xe9.wav"
    with open(bad_name, "wb") as fh:
        fh.write((MEDIA / "speech" / "LDC93S1.wav").read_bytes())
    manifest = d / "manifest.jsonl"
    manifest.write_text(
        json.dumps({"uri": "good.mp3", "title": "JFK inaugural"}) + "\n"
        + json.dumps({"uri": "does/not/exist.wav", "title": "missing"}) + "\n"
    )
    inputs = [
        str(d / n)
        for n in ("good.mp3", "same-bytes-other-name.mp3", "empty.wav", "truncated.mp3", "notes.mp3",
                  "no_audio.mp4", "silence.wav")
    ] + [os.fsdecode(bad_name), str(manifest)]
    expected = {
        "same-bytes-other-name.mp3": ("ingest", "duplicate"),
        "empty.wav": ("ingest", "empty_file"),
        "truncated.mp3": ("decode", None),
        "notes.mp3": ("decode", None),
        "no_audio.mp4": ("decode", "no_audio_stream"),
        "silence.wav": ("vad", "no_speech"),
        "caf": ("ingest", "invalid_path"),
        "does/not/exist.wav": ("ingest", "not_found"),
    }
    return inputs, expected


def _read(out: Path, table: str) -> list[dict]:
    rows = []
    for f in sorted((out / table).glob("*.parquet")):
        t = pq.read_table(f)
        assert t.schema.equals(TABLES[table]), f"{f}: schema differs from mmcurate.schemas.tables.{table.upper()}"
        rows.extend(t.to_pylist())
    return rows


def _check_run(out: Path, inputs_count: int, expected: dict) -> dict:
    sources, rejected = _read(out, "sources"), _read(out, "rejected")
    source_level = [r for r in rejected if r["stage"] in SOURCE_LEVEL_STAGES]
    # Nothing lost: every input is a source or a source-level ledger row, exactly once
    assert len(sources) + len(source_level) == inputs_count, (sources, rejected)
    for needle, (stage, reason) in expected.items():
        hits = [r for r in source_level if needle in r["uri"]]
        assert len(hits) == 1, f"{needle}: expected one ledger row, got {hits}"
        assert hits[0]["stage"] == stage, hits[0]
        assert reason is None or hits[0]["reason"] == reason, hits[0]
        assert hits[0]["detail"], "every rejection says why"
    assert [s["uri"].rsplit("/", 1)[-1] for s in sources] == ["good.mp3"]
    assert sources[0]["metadata"] and dict(sources[0]["metadata"]).get("title") == "JFK inaugural"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tables"]["sources"] == 1
    summary = audit.summarize(str(out))
    assert summary["inputs"] == inputs_count and summary["invariant_ok"]
    return {t: sorted(json.dumps(r, sort_keys=True, default=str) for r in _read(out, t)) for t in ("sources", "speech_regions", "rejected")}


@pytest.mark.slow  # seconds: out of the fast tier
def test_bad_inputs_multiprocessing_and_rerun(bad_inputs, tmp_path):
    """Runs on Beam's multi-processing DirectRunner; a re-run gives the same rows and ids."""
    inputs, expected = bad_inputs
    # 9 files + the manifest's 2 lines, minus the manifest itself = 10 input items
    n_inputs = len(inputs) - 1 + 2
    cfg = CurateConfig(stages=("vad",))
    beam_args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    out = tmp_path / "out"
    m1 = curate.run(inputs, str(out), cfg, beam_args)
    first = _check_run(out, n_inputs, expected)
    shards = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    m2 = curate.run(inputs, str(out), cfg, beam_args)
    second = _check_run(out, n_inputs, expected)
    assert first == second, "a re-run must give identical rows and ids"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == shards
    assert m1["run_id"] == m2["run_id"] and m1["tables"] == m2["tables"]


# The demo's kinds of input, without the folders of many more of the same (speakers/, the AMI
# excerpts): `make demo` runs the whole of ../shared/media; this test keeps the suite's time.
# (a 42 s video with speech; the 123 s laion_talk has its own tests in test_video_stage.py)
DEMO_INPUTS = [MEDIA / "speech", MEDIA / "diarization" / "sample.wav", MEDIA / "video" / "autoeditor_example.mp4",
               MEDIA / "neardup"]


@pytest.mark.slow
def test_cli_full_run_on_shared_media(tmp_path, capsys):
    """The README's demo command, on a part of the real shared media (files of every kind),
    with the embedded default models."""
    out = tmp_path / "demo"
    assert cli.main(["run", *map(str, DEMO_INPUTS), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out}/sources/" in printed and "rejected" in printed and "hours" in printed.lower()
    sources = _read(out, "sources")
    names = {s["uri"].rsplit("/", 1)[-1] for s in sources}
    speech_files = {p.name for p in (MEDIA / "speech").glob("*") if p.suffix in (".wav", ".mp3", ".flac")}
    # jfk.wav/mp3/flac are different bytes, so three sources
    assert speech_files <= names, names
    assert {"sample.wav", "autoeditor_example.mp4"} <= names
    regions = _read(out, "speech_regions")
    assert {r["source_id"] for r in regions} >= {s["source_id"] for s in sources if s["speech_s"] > 0}
    # the video stage keeps the voiceless neardup clips as sources (speech 0, no regions) for
    # their image-only documents; every audio source has speech
    silent = {s["uri"].rsplit("/", 1)[-1] for s in sources if s["speech_s"] == 0}
    assert silent == {p.name for p in (MEDIA / "neardup").glob("*.mp4")}, silent
    assert all(s["media_kind"] == "video" for s in sources if s["speech_s"] == 0)
    documents = {d["source_id"] for d in _read(out, "documents")}
    assert {s["source_id"] for s in sources if s["speech_s"] == 0} <= documents
    segments = _read(out, "segments")
    transcripts = _read(out, "transcripts")
    assert segments and transcripts
    by_source = {t["source_id"]: t for t in transcripts}
    sample = next(s for s in sources if s["uri"].endswith("diarization/sample.wav"))
    assert by_source[sample["source_id"]]["num_speakers"] == 2
    # the ground-truth text files are in the ledger, not silently skipped
    rejected = _read(out, "rejected")
    assert any(r["uri"].endswith("jfk.txt") and r["reason"] == "unsupported_extension" for r in rejected)
    # audit --json interface
    assert cli.main(["audit", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tables"]["sources"] == len(sources) and "rejected" in summary
    assert cli.main(["audit", str(out), "--sql", "SELECT count(*) AS n FROM segments"]) == 0
    assert str(len(segments)) in capsys.readouterr().out


def test_run_help_explains_inputs_and_beam_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    assert "manifest" in text and "feed" in text and "--direct_running_mode" in text


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[asr]\nmodle = 'x'\n")
    assert cli.main(["run", str(tmp_path), "--output", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_beam_flags_pass_through_untouched():
    mine, beam_args = cli.split_beam_args(
        ["run", "a.wav", "--output", "o", "--runner", "DirectRunner", "--save_main_session", "b.wav",
         "--direct_num_workers=2"],
        cli._parser(),
    )
    assert mine == ["run", "a.wav", "--output", "o", "b.wav"]
    assert beam_args == ["--runner", "DirectRunner", "--save_main_session", "--direct_num_workers=2"]


def test_run_id_is_deterministic():
    cfg = CurateConfig()
    assert curate.make_run_id(["b", "a"], cfg, "v") == curate.make_run_id(["a", "b"], cfg, "v")
    assert curate.make_run_id(["a"], cfg, "v") != curate.make_run_id(["a"], CurateConfig(stages=("vad",)), "v")


def _music(seconds: float = 8.0, sr: int = 16000) -> np.ndarray:
    """Chords with harmonics, a beat of noise bursts and a little hiss: music, no voice."""
    t = np.arange(int(seconds * sr)) / sr
    y = np.zeros_like(t)
    for i, root in enumerate((220.0, 261.6, 196.0, 246.9) * 4):
        seg = (t >= i * 0.5) & (t < (i + 1) * 0.5)
        for f in (root, root * 1.25, root * 1.5):
            for h in (1, 2, 3):
                y[seg] += np.sin(2 * np.pi * f * h * t[seg]) / (h * 6)
    rng = np.random.default_rng(7)
    beat = (np.mod(t, 0.25) < 0.03) * rng.standard_normal(t.size) * 0.3
    return (0.5 * y + beat + rng.standard_normal(t.size) * 0.01).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("vad_threshold", [0.5, 0.05], ids=["default-vad", "vad-lets-it-through"])
def test_music_yields_no_segments_and_a_ledger_row(tmp_path, vad_threshold):
    """Music without speech: no invented text, and the ledger says where it stopped. With a
    VAD that lets it through, the ASR stage itself must refuse it."""
    music = _wav(tmp_path / "music.wav", _music())
    cfg = CurateConfig.from_dict({"vad": {"threshold": vad_threshold}})
    out = tmp_path / "out"
    curate.run([str(music)], str(out), cfg)
    assert _read(out, "segments") == []
    assert _read(out, "transcripts") == []
    rows = [r for r in _read(out, "rejected") if r["uri"].endswith("music.wav")]
    print(f"vad threshold {vad_threshold}: ledger {[(r['stage'], r['reason']) for r in rows]}")
    assert rows, "a source that yields no text must leave a ledger row"
    if _read(out, "sources"):  # it passed the VAD: the ASR stage must have said no
        assert any(r["stage"] == "asr" and r["reason"] == "no_transcript" for r in rows), rows
