"""`mmcurate export --format duplex`: per-speaker audio streams, word-per-frame text streams and
sentences (mmcurate.transforms.duplex), read back from the Parquet shards.

No model runs: the outputs are small consistent output directories written with the project's
own records and table schemas, whose turns are exact. One is the shared meeting excerpt
diarization/sample.wav with its reference RTTM as the turns (two speakers, overlapping) and
jfk.wav as a one-speaker source; the other is a generated three-person conversation
(tests/conversations.py) with its exact reference turns. Words are synthetic (unique names,
Whisper style with a leading space), placed inside the speaker's turns, with a pair starting
within one frame (the next-free-frame rule) and sentence ends (".") and pauses over 1 s.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmcurate.pipelines import cli
from mmcurate.pipelines.export import run_export
from mmcurate.schemas.records import Segment, SourceRecord, Transcript, Word, to_table
from mmcurate.transforms.duplex import PAD, sentences, text_stream

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SR = 16000
RUN = "run-duplex-0001"
SAMPLE_WAV = MEDIA / "diarization" / "sample.wav"
SAMPLE_RTTM = MEDIA / "diarization" / "sample.rttm"
JFK_WAV = MEDIA / "speech" / "jfk.wav"

pytestmark = pytest.mark.skipif(not SAMPLE_WAV.is_file(), reason="shared media not available")


# ------------------------------------------------------------------ a small consistent output


def _source(sid: str, media: Path) -> SourceRecord:
    import soundfile as sf

    info = sf.info(str(media))
    return SourceRecord(source_id=sid, sha256=sid * 4, uri=str(media), media_uri=str(media), ingested_via="file",
                        media_kind="audio", container="wav", audio_codec="pcm_s16le", video_codec=None,
                        duration_s=info.frames / info.samplerate, sample_rate=info.samplerate,
                        channels=info.channels, bytes=media.stat().st_size, speech_s=1.0, speech_ratio=0.1,
                        metadata={}, run_id=RUN)


def _merge(spans):
    out = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [tuple(x) for x in out]


def _words_in(spans, tag: str) -> list[Word]:
    """Synthetic words every 0.3 s inside the spans, every 4th ending a sentence; the first two of
    the first span start 0.03 s apart (one frame at 12.5 or 25 Hz: the second moves on)."""
    words, n = [], 0
    for i, (s, e) in enumerate(spans):
        t = s + 0.05
        while t + 0.2 <= e - 0.05:
            end = "." if n % 4 == 3 else ""
            words.append(Word(f" {tag}w{n}{end}", round(t, 3), round(t + 0.2, 3), 0.9))
            n += 1
            if i == 0 and n == 1:
                words.append(Word(f" {tag}w{n}", round(t + 0.03, 3), round(t + 0.2, 3), 0.9))
                n += 1
            t += 0.3
    return words


def write_output(out: Path, sources: list[tuple[str, Path, list[tuple[float, float, str]]]]) -> dict:
    """An output dir whose sources, transcripts, turns (the given ones) and segments (one per merged
    turn span of a speaker, with synthetic words) are consistent; returns {speaker: (spans, words)}."""
    from test_turns_audit import turn_rows

    recs, segs, turns, transcripts, streams = [], [], [], [], {}
    for sid, media, ref in sources:
        recs.append(_source(sid, media))
        rows = turn_rows(sid, ref)
        turns += rows
        by_spk: dict[str, list] = {}
        for r in rows:
            by_spk.setdefault(r.speaker, []).append((r.start, r.end))
        pieces = []
        for k, (spk, spans) in enumerate(sorted(by_spk.items())):
            merged = _merge(spans)
            words = _words_in(merged, f"s{k}{sid[:2]}")
            streams[spk] = (merged, words)
            for s, e in merged:
                inside = [w for w in words if s <= w.start < e]
                pieces.append((s, e, spk, inside))
        for n, (s, e, spk, inside) in enumerate(sorted(pieces, key=lambda p: (p[0], p[1]))):
            segs.append(Segment(segment_id=f"{sid}-seg-{n:05d}", source_id=sid, start=s, end=e, speaker=spk,
                                text="".join(w.word for w in inside).strip(), language="en",
                                language_probability=0.9, words=inside, avg_logprob=-0.2, no_speech_prob=0.1,
                                compression_ratio=1.5, asr_model="whisper-base", asr_model_version="test",
                                diarization_model="reference", audio_uri=f"{media}#t={s},{e}", audio=None,
                                run_id=RUN))
        transcripts.append(Transcript(sid, "[spk0] ...", "en", 0.9, len(by_spk), n + 1,
                                      sum(len(p[3]) for p in pieces), 1.0, "whisper-base", "reference", RUN))
    tables = {"sources": recs, "segments": segs, "transcripts": transcripts, "turns": turns}
    for table, records in tables.items():
        (out / table).mkdir(parents=True, exist_ok=True)
        pq.write_table(to_table(table, records), out / table / "part-00000.parquet")
    (out / "manifest.json").write_text(json.dumps({
        "run_id": RUN, "finished_at": "2026-01-01T00:00:00Z", "code_version": "test", "config": "{}",
        "inputs": [str(m) for _, m, _ in sources], "models": [],
        "tables": {t: len(r) for t, r in tables.items()}, "stage_counts": {}, "rejected": {},
        "shards": [f"{t}/part-00000.parquet" for t in tables]}))
    return streams


def read_rttm(path: Path) -> list[tuple[float, float, str]]:
    from mmcurate.quality.der import read_rttm as read

    return [(float(s), float(e), str(lab)) for s, e, lab in read(path)]


# ------------------------------------------------------------------ reading the export back


def read_export(to: Path) -> dict[str, dict]:
    rows = {}
    for f in sorted(to.glob("dialogues-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            rows[r["speaker"]] = r
    return rows


def _pcm16(x: np.ndarray) -> np.ndarray:
    """What the 16-bit FLAC holds of float samples (transforms/audio_codec.py)."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")


def check_streams(rows: dict[str, dict], media: dict[str, Path], streams: dict) -> None:
    """(1) energy inside the speaker's turns, exact silence outside them; (2) each word in the
    frame of its start, +-1; (3) pad_share is the counted share."""
    import soundfile as sf

    from mmcurate.transforms.decode import decode_audio

    assert sorted(rows) == sorted(streams)
    decoded = {sid: _pcm16(decode_audio(str(m), SR)) for sid, m in media.items()}
    for spk, (spans, words) in streams.items():
        r = rows[spk]
        source = decoded[r["source_id"]]
        audio, sr = sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="int16")
        assert sr == SR == r["sample_rate"] and audio.shape == source.shape and r["num_samples"] == len(source)
        mask = np.zeros(len(source), bool)
        for s, e in spans:
            a, b = round(s * SR), round(e * SR)
            mask[a:b] = True
            seg = audio[a:b].astype(np.float64)
            assert np.sqrt(np.mean(seg ** 2)) > 10.0, (spk, s, e)  # speech, not silence (16-bit units)
        assert not np.any(audio[~mask]), f"{spk}: sound outside its turns"
        assert np.array_equal(audio[mask], source[mask]), f"{spk}: not the source inside its turns"
        # (2) word per frame
        tokens, rate = r["tokens"], r["frame_rate"]
        assert len(tokens) == math.ceil(len(source) * rate / SR)
        where = {tok: k for k, tok in enumerate(tokens) if tok != PAD}
        assert len(where) == len(words) == r["num_words"] and r["words_dropped"] == 0
        for w in words:
            k = where[w.word.strip()]
            assert abs(k - math.floor(w.start * rate + 1e-9)) <= 1, (spk, w, k)
        assert [tokens[where[w.word.strip()]] for w in words] == [w.word.strip() for w in words]  # in order
        # (3) padding share
        counted = sum(1 for t in tokens if t == PAD) / len(tokens)
        assert r["pad_share"] == pytest.approx(counted, abs=1e-12) and 0 < counted < 1
        # the sentence stream: all the words, cut at "." or a pause over 1 s
        sents = r["sentences"]
        assert " ".join(s["text"] for s in sents) == "".join(w.word for w in words).strip()
        assert sents[0]["start"] == words[0].start and sents[-1]["end"] == words[-1].end
        for a, b in zip(sents, sents[1:]):
            assert a["text"].endswith(".") or b["start"] - a["end"] > 1.0, (a, b)
            assert a["end"] <= b["start"]


def _pad_lines(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^  (\S+): \d+ frames, \d+ words, pad share ([0-9.]+)$",
                                                   text, re.M)}


def _same_bytes(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and names
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


# ------------------------------------------------------------------ sample.wav + a one-speaker source


@pytest.fixture(scope="module")
def sample_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("duplex") / "out"
    ref = read_rttm(SAMPLE_RTTM)
    assert len({lab for _, _, lab in ref}) == 2
    streams = write_output(out, [("5a3c9e1f00d1e2b3", SAMPLE_WAV, ref),
                                 ("0f0f0f0f0f0f0f0f", JFK_WAV, [(0.3, 10.5, "jfk")])])
    media = {"5a3c9e1f00d1e2b3": SAMPLE_WAV, "0f0f0f0f0f0f0f0f": JFK_WAV}
    return out, {spk: v for spk, v in streams.items() if spk.startswith("5a3c")}, media


def test_sample_wav_streams_read_back(sample_out, tmp_path, capsys):
    """The CLI: speaker streams of sample.wav, the one-speaker source counted as skipped, every
    stream's padding share printed as counted; a second run skips the finished shard; another
    export gives the same bytes."""
    out, streams, media = sample_out
    to = tmp_path / "a"
    assert cli.main(["export", str(out), "--format", "duplex", "--to", str(to)]) == 0
    printed = capsys.readouterr().out
    rows = read_export(to)
    check_streams(rows, media, streams)
    assert {r["source_id"] for r in rows.values()} == {"5a3c9e1f00d1e2b3"}  # jfk: one speaker
    assert "1 source(s) with fewer than 2 speakers skipped" in printed
    assert all(r["frame_rate"] == 12.5 for r in rows.values())
    # the overlap: both streams hold the samples where both talk
    (a, b) = [rows[s]["turns"] for s in sorted(rows)]
    assert any(max(x["start"], y["start"]) < min(x["end"], y["end"]) for x in a for y in b)
    shares = _pad_lines(printed)
    assert sorted(shares) == sorted(rows)
    for spk, r in rows.items():
        counted = sum(1 for t in r["tokens"] if t == PAD) / len(r["tokens"])
        assert shares[spk] == pytest.approx(counted, abs=5e-5)
    total = sum(sum(1 for t in r["tokens"] if t == PAD) for r in rows.values())
    assert f"pad share {total / sum(len(r['tokens']) for r in rows.values()):.4f} of all frames" in printed

    again = run_export(str(out), "duplex", str(to))
    assert again["shards_skipped"] == again["shards"] == 1
    assert again["sources"] == 1 and again["sources_skipped"] == 1 and again["streams"] == 2
    assert {(s["speaker"], s["pad_share"]) for s in again["pad_shares"]} == {
        (spk, r["pad_share"]) for spk, r in rows.items()}
    run_export(str(out), "duplex", str(tmp_path / "b"))
    _same_bytes(to, tmp_path / "b")


def test_frame_rate_is_only_a_duplex_option(sample_out, tmp_path, capsys):
    out, _, _ = sample_out
    assert cli.main(["export", str(out), "--format", "nemo", "--to", str(tmp_path / "x"), "--frame-rate", "25"]) == 2
    assert "--frame-rate applies to the duplex format" in capsys.readouterr().err
    assert cli.main(["export", str(out), "--format", "duplex", "--to", str(tmp_path / "x"), "--frame-rate", "0"]) == 2


# ------------------------------------------------------------------ a generated conversation


def test_generated_conversation_streams_read_back(tmp_path):
    """Three people (tests/conversations.py: exact reference turns, overlaps) at 25 Hz."""
    import soundfile as sf
    from conversations import FEW_TURNS, conversation

    conv = conversation(("sample_spk90", "sample_spk91", "ami_fee087"), 0.0, 7, FEW_TURNS, turns=12)
    media = tmp_path / "conv.wav"
    sf.write(str(media), conv.audio, SR, subtype="FLOAT")
    sid = "c0c0c0c0c0c0c0c0"
    streams = write_output(tmp_path / "out", [(sid, media, conv.reference)])
    assert len(streams) == 3
    summary = run_export(str(tmp_path / "out"), "duplex", str(tmp_path / "a"), frame_rate=25.0)
    assert summary["streams"] == 3 and summary["sources_skipped"] == 0
    assert [f.rsplit("/", 1)[1] for f in summary["files"]] == ["dialogues-25hz-000000.parquet"]
    rows = read_export(tmp_path / "a")
    assert all(r["frame_rate"] == 25.0 for r in rows.values())
    check_streams(rows, {sid: media}, streams)
    assert {s["speaker"]: s["pad_share"] for s in summary["pad_shares"]} == {
        spk: sum(1 for t in r["tokens"] if t == PAD) / len(r["tokens"]) for spk, r in rows.items()}


# ------------------------------------------------------------------ the rules, by hand


def test_text_stream_collisions_and_the_end():
    w = lambda t, s: {"word": f" {t}", "start": s, "end": s + 0.1}  # noqa: E731
    got = text_stream([w("b", 0.09), w("a", 0.08), w("c", 0.10), w("d", 0.5), w("z", 0.79), w("y", 0.795)],
                      frames=10, frame_rate=12.5)
    # a, b, c start in frame 1: b and c take the next free frames; z is in the last frame, y has none
    assert got.tokens == [PAD, "a", "b", "c", PAD, PAD, "d", PAD, PAD, "z"]
    assert (got.num_words, got.words_dropped, got.pad_share) == (5, 1, 0.5)
    assert text_stream([w("x", 0.24)], 4, 12.5).tokens == [PAD, PAD, PAD, "x"]  # 0.24 s * 12.5 is frame 3


def test_sentences_split_on_punctuation_and_pauses():
    w = lambda t, s, e: {"word": t, "start": s, "end": e}  # noqa: E731
    words = [w(" Hi", 0.0, 0.2), w(" there.", 0.3, 0.5), w(" So", 0.6, 0.7), w(" um", 0.8, 0.9),
             w(" later", 2.0, 2.3), w(' "really?"', 2.4, 2.8), w(" ok", 3.0, 3.2)]
    assert sentences(words) == [{"start": 0.0, "end": 0.5, "text": "Hi there."},
                                {"start": 0.6, "end": 0.9, "text": "So um"},
                                {"start": 2.0, "end": 2.8, "text": 'later "really?"'},
                                {"start": 3.0, "end": 3.2, "text": "ok"}]
