"""The Beam quality stage (JudgeQuality): a fake DNSMOS model for the graph, the verdicts and the
ledger; DNSMOS in windows of contiguous speech (scored once, in the speech stage, from the decode
the models read); the real pipeline for the table, the kept_segments view and re-tuning in DuckDB."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from mmcurate.schemas.records import DnsmosWindow, Segment, SourceRecord, SpeechRegion, Transcript, Word, to_table
from mmcurate.transforms.segment_quality import JudgeQuality, QualityConfig, keep_sql

from quality_fakes import LoudnessDnsmos, fake_run

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SR = 16000
RUN = "run-test"


def _wav(path: Path, seconds: float, amp: float) -> Path:
    from mmcurate.transforms.decode import write_audio

    t = np.arange(int(seconds * SR)) / SR
    write_audio(str(path), [(amp * np.sin(2 * np.pi * 180 * t)).astype(np.float32)], SR)
    return path


def _source(path: Path, sid: str, ratio: float = 0.8) -> SourceRecord:
    return SourceRecord(sid, sid * 2, str(path), str(path), "file", "audio", "wav", "pcm_s16le",
                        None, 20.0, SR, 1, 1, 16.0, ratio, {}, RUN)


def _seg(sid: str, n: int, start: float, end: float, text: str, language: str = "en") -> Segment:
    toks = text.split()
    step = (end - start) / max(1, len(toks))
    words = [Word(w, round(start + i * step, 3), round(start + (i + 0.8) * step, 3), 0.9)
             for i, w in enumerate(toks)]
    return Segment(f"{sid}-seg-{n:05d}", sid, start, end, f"{sid}-spk0", text, language, 0.97, words,
                   -0.3, 0.05, 1.2, "fake-asr", "1", None, f"x#t={start},{end}", None, RUN)


ENGLISH = ["we measured the signal again and wrote down the numbers",
           "then we compared them with the values from last week",
           "most of them agreed within a few percent of each other",
           "the rest came from a sensor that had come loose",
           "so we fixed the sensor and measured everything once more"]


def _transcript(sid: str, windows: list[DnsmosWindow] | None) -> Transcript:
    return Transcript(sid, "", "en", 0.97, 1, 1, 1, 1.0, "fake-asr", None, RUN, windows)


def _windows(path: Path, regions: list[SpeechRegion]) -> list[DnsmosWindow]:
    """What the speech stage's DNSMOS step gives a source (the fake model over its samples)."""
    from mmcurate.transforms.decode import decode_audio
    from mmcurate.transforms.segment_quality import score_stretches, speech_stretches

    return score_stretches(LoudnessDnsmos(), decode_audio(str(path)),
                           speech_stretches([(r.start, r.end) for r in regions]))


def _run(inputs: dict, cfg: QualityConfig, args: list[str] | None = None):
    if args:  # the local runner with these worker options
        from apache_beam.options.pipeline_options import PipelineOptions

        from mmcurate.pipelines.curate import local_runner

        options = PipelineOptions(args)
        p = beam.Pipeline(runner=local_runner(options), options=options)
    else:
        p = TestPipeline()
    pcolls = {k: p | f"Create{k}" >> beam.Create(v) for k, v in inputs.items()}
    out = pcolls | JudgeQuality(cfg, RUN)
    names = ("segment_quality", "kept_segments", "rejected")
    got = {}
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            path = os.path.join(d, name)

            def capture(rows, path=path):
                with open(path, "wb") as fh:
                    pickle.dump(list(rows), fh)

            assert_that(out[name], capture, label=f"Capture[{name}]")
        result = p.run()
        result.wait_until_finish()
        for name in names:
            with open(os.path.join(d, name), "rb") as fh:
                got[name] = pickle.load(fh)
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    return got, counters


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    d = tmp_path_factory.mktemp("quality")
    loud = _wav(d / "loud.wav", 20.0, 0.3)  # fake OVRL 1 + 10 x 0.212 = 3.12
    quiet = _wav(d / "quiet.wav", 20.0, 0.05)  # fake OVRL 1.35
    a, b, gone = _source(loud, "srcA"), _source(quiet, "srcB", ratio=0.1), _source(d / "gone.wav", "srcC")
    segs = [_seg("srcA", i, 1.0 + 2.5 * i, 3.0 + 2.5 * i, t) for i, t in enumerate(ENGLISH)]
    segs += [
        _seg("srcA", 5, 14.0, 15.5, "Thanks for watching!"),
        _seg("srcA", 6, 15.5, 19.0, "I'm sorry, I'm sorry, I'm sorry, I'm sorry"),
        _seg("srcA", 7, 19.0, 19.05, "Hm."),
        _seg("srcB", 0, 1.0, 4.0, "guten morgen wir haben heute lange über das wetter gesprochen",
             language="de"),
        _seg("srcB", 1, 5.0, 8.0, "und danach sind wir alle zusammen nach hause gegangen", language="de"),
        _seg("srcC", 0, 1.0, 3.0, "this file was deleted before the quality stage read it"),
    ]
    regions = [SpeechRegion(f"srcA-vad-{k:05d}", "srcA", s, e, RUN)
               for k, (s, e) in enumerate([(0.5, 13.5), (13.9, 19.2)])]
    regions += [SpeechRegion("srcB-vad-00000", "srcB", 0.5, 9.0, RUN),
                SpeechRegion("srcC-vad-00000", "srcC", 0.5, 4.0, RUN)]
    # srcC: DNSMOS failed in the speech stage (its transcript has no windows)
    transcripts = [_transcript("srcA", _windows(loud, regions[:2])), _transcript("srcB", _windows(quiet, regions[2:3])),
                   _transcript("srcC", None)]
    cfg = QualityConfig(languages=("en",), min_dnsmos_ovrl=1.8, rate_min_segments=4,
                        min_source_speech_ratio=0.2)
    got, counters = _run({"segments": segs, "sources": [a, b, gone], "speech_regions": regions,
                          "transcripts": transcripts}, cfg)
    return segs, got, counters


def test_one_row_per_segment_kept_or_dropped(judged):
    segs, got, _ = judged
    rows = {r.segment_id: r for r in got["segment_quality"]}
    assert sorted(rows) == sorted(s.segment_id for s in segs)
    reasons = {sid: r.reason for sid, r in rows.items()}
    assert reasons == {
        **{f"srcA-seg-{i:05d}": None for i in range(5)},
        "srcA-seg-00005": "hallucination_phrase",
        "srcA-seg-00006": "repeated_ngrams",
        "srcA-seg-00007": "too_short",
        # German, quiet (fake OVRL 1.35) and from a source with speech ratio 0.1: all listed
        "srcB-seg-00000": "language_not_allowed",
        "srcB-seg-00001": "language_not_allowed",
        "srcC-seg-00000": None,  # no DNSMOS windows: judged without DNSMOS
    }
    assert rows["srcB-seg-00000"].failed == ["language_not_allowed", "low_dnsmos", "low_speech_ratio"]
    assert all(r.keep == (r.reason is None) and r.keep == (not r.failed) for r in rows.values())
    a0 = rows["srcA-seg-00000"]
    assert a0.dnsmos_ovrl == pytest.approx(1 + 10 * 0.3 / np.sqrt(2), abs=0.01)
    assert a0.dnsmos_sig == pytest.approx(a0.dnsmos_ovrl + 0.5) and a0.text_language == "en"
    assert rows["srcC-seg-00000"].dnsmos_ovrl is None
    # speaking-rate quartiles: English has 7 segments with a rate (>= rate_min_segments 4),
    # German only 2 (no quartiles, no verdict)
    assert a0.rate_q1 is not None and a0.rate_q3 >= a0.rate_q1
    assert rows["srcB-seg-00000"].rate_q1 is None
    assert rows["srcB-seg-00000"].transcript_language == "de"
    assert rows["srcA-seg-00006"].repeat_share == 1.0
    assert rows["srcA-seg-00005"].phrases == ["thanks for watching"]
    to_table("segment_quality", list(rows.values()))  # fits the declared schema


def test_kept_stream_and_ledger(judged):
    segs, got, counters = judged
    kept = sorted(s.segment_id for s in got["kept_segments"])
    assert kept == sorted(r.segment_id for r in got["segment_quality"] if r.keep)
    assert all(isinstance(s, Segment) for s in got["kept_segments"])
    drops = got["rejected"]
    assert sorted(r.item_id for r in drops) == sorted(r.segment_id for r in got["segment_quality"]
                                                        if not r.keep)
    for r in drops:
        assert r.stage == "quality" and r.source_id == r.item_id.split("-seg-")[0]
        assert r.duration_s is not None and '"dnsmos_ovrl"' in r.detail or r.source_id == "srcC"
    phrase = next(r for r in drops if r.item_id == "srcA-seg-00005")
    assert phrase.reason == "hallucination_phrase" and "Thanks for watching" in phrase.detail
    assert json.loads(phrase.detail.split("scores ", 1)[1])["phrase_share"] == 1.0
    assert counters["quality.segments"] == len(segs)
    assert counters["quality.kept"] == len(kept)


def test_dnsmos_off_leaves_scores_null(tmp_path):
    src = _source(_wav(tmp_path / "a.wav", 5.0, 0.01), "srcA")
    segs = [_seg("srcA", 0, 1.0, 3.0, ENGLISH[0])]
    windows = [DnsmosWindow(0.0, 5.0, 1.5, 1.5, 1.0)]
    got, _ = _run({"segments": segs, "sources": [src], "speech_regions": [],
                   "transcripts": [_transcript("srcA", windows)]},
                  QualityConfig(dnsmos=False, min_dnsmos_ovrl=4.0))
    (row,) = got["segment_quality"]
    assert row.dnsmos_ovrl is None and row.keep and row.outside_vad_share is None  # regions unknown


# --------------------------------------------------------------------------- the real pipeline


def test_pipeline_writes_segment_quality_and_the_kept_view(tmp_path):
    """Fake ASR (a stock phrase in every third region), real VAD, fake DNSMOS: the table, the
    ledger, the audit figures and the kept_segments view agree."""
    from mmcurate.quality import audit

    out = str(tmp_path / "out")
    m = fake_run([str(MEDIA / "diarization" / "sample.wav"), str(MEDIA / "speech" / "jfk.wav")], out,
                 texts=[" ".join(ENGLISH) + ".", "Thanks for watching!", " ".join(ENGLISH[1:]) + "."],
                 quality={"min_dnsmos_ovrl": None})
    assert m["tables"]["segment_quality"] == m["tables"]["segments"] > 0
    con = audit.connect(out, read_only=True)
    n_drop, n_ledger, n_view, n_kept = con.execute("""
        SELECT (SELECT count(*) FROM segment_quality WHERE NOT keep),
               (SELECT count(*) FROM rejected WHERE stage = 'quality'),
               (SELECT count(*) FROM kept_segments),
               (SELECT count(*) FROM segment_quality WHERE keep)""").fetchone()
    assert n_drop >= 1 and n_drop == n_ledger and n_view == n_kept
    assert con.execute("SELECT DISTINCT reason FROM segment_quality WHERE NOT keep").fetchall() == [
        ("hallucination_phrase",)]
    s = audit.summarize(out)
    assert s["problems"] == [] and s["quality"]["dropped"] == n_drop
    assert s["rejected_by_stage"]["quality"] == {"hallucination_phrase": n_drop}
    assert "Quality (segment_quality)" in audit.format_summary(s)
    assert any(x["role"] == "speech-quality" for x in m["models"])


@pytest.mark.slow
def test_retuning_in_duckdb_selects_what_a_rerun_keeps(tmp_path):
    """Re-tuning a DNSMOS OVRL minimum over the stored scores selects exactly the segments a
    re-run with that quality.min_dnsmos_ovrl keeps (real DNSMOS, real VAD, fake ASR text). The
    minimum is the median of the first run's scores (2.948 here: they span 2.84-3.18), so that it
    surely splits them."""
    import duckdb

    from mmcurate.quality import audit

    media = [str(MEDIA / p) for p in ("speech/jfk.wav", "speech/LDC93S1.wav", "diarization/sample.wav",
                                      "diarization/ami/dev00.wav")]
    first, second = str(tmp_path / "default"), str(tmp_path / "retuned")
    fake_run(media, first, real_dnsmos=True)
    con = audit.connect(first, read_only=True)
    ovrl = sorted(x for (x,) in con.execute("SELECT dnsmos_ovrl FROM segment_quality").fetchall())
    t = round(ovrl[len(ovrl) // 2], 3)
    # the query a person writes: the new threshold, and nothing else failed
    by_hand = sorted(x for (x,) in con.execute(f"""
        SELECT segment_id FROM segment_quality
        WHERE (dnsmos_ovrl IS NULL OR dnsmos_ovrl >= {t})
          AND len(list_filter(failed, lambda r: r <> 'low_dnsmos')) = 0""").fetchall())
    # the config's own verdict as SQL
    by_sql = sorted(x for (x,) in con.execute(
        f"SELECT segment_id FROM segment_quality WHERE {keep_sql(QualityConfig(min_dnsmos_ovrl=t))}"
    ).fetchall())
    before = sorted(x for (x,) in con.execute("SELECT segment_id FROM segment_quality WHERE keep").fetchall())
    fake_run(media, second, real_dnsmos=True, quality={"min_dnsmos_ovrl": t})
    rerun = sorted(x for (x,) in duckdb.connect().execute(
        f"SELECT segment_id FROM read_parquet('{second}/segment_quality/*.parquet') WHERE keep").fetchall())
    print(f"\n[quality] OVRL {ovrl[0]:.2f}..{ovrl[-1]:.2f}; kept {len(before)} at the default, "
          f"{len(rerun)} at >= {t}")
    assert by_hand == by_sql == rerun
    assert 0 < len(rerun) < len(before)  # the threshold bites: some segments go, some stay


# --------------------------------------------------------------------------- DNSMOS windows


def test_contiguous_speech_is_cut_into_windows_each_sample_under_one():
    """Regions closer than 1 s are one stretch; a stretch is cut into 9.01 s windows from its
    start, the last one ending at its end (and standing for the rest only); a stretch shorter
    than a window is one (tiled) window. Each sample stands under exactly one window."""
    from mmcurate.quality.scorers.dnsmos import WINDOW, stretch_window, stretch_windows
    from mmcurate.transforms.segment_quality import speech_stretches

    assert speech_stretches([(5.0, 6.0), (0.5, 2.0), (2.5, 3.0), (4.0, 4.5)]) == [(0.5, 3.0), (4.0, 6.0)]
    assert stretch_windows(0) == [] and stretch_windows(WINDOW) == [(0, 0, WINDOW)]
    assert stretch_windows(3 * 16000) == [(0, 0, 3 * 16000)]
    n = 2 * WINDOW + 5 * 16000  # 23.02 s: 3 windows, the last reading 9.01 s back from the end
    assert stretch_windows(n) == [(0, 0, WINDOW), (WINDOW, WINDOW, 2 * WINDOW), (n - WINDOW, 2 * WINDOW, n)]
    for length in (1, 16000, WINDOW - 1, WINDOW + 1, 5 * WINDOW, 5 * WINDOW + 7, 123457):
        ws = stretch_windows(length)
        assert [(a, b) for _f, a, b in ws] == list(zip([0] + [b for _f, _a, b in ws[:-1]], [b for _f, _a, b in ws]))
        assert ws[-1][2] == length and all(f + WINDOW <= max(length, WINDOW) for f, _a, _b in ws)
    x = np.arange(3 * 16000, dtype=np.float32)
    w = stretch_window(x, 0)  # tiled as the reference tiles a short clip: 3 s -> 6 s -> 12 s
    assert w.shape == (WINDOW,) and np.array_equal(w[: 3 * 16000], x) and np.array_equal(w[3 * 16000 : 6 * 16000], x)


def test_a_segment_gets_the_duration_weighted_scores_of_the_windows_it_overlaps():
    from mmcurate.transforms.segment_quality import segment_dnsmos

    ws = [DnsmosWindow(0.0, 9.01, 3.0, 4.0, 2.0), DnsmosWindow(9.01, 18.02, 2.0, 3.0, 1.0),
          DnsmosWindow(20.0, 22.0, 4.0, 4.0, 4.0)]
    assert segment_dnsmos(1.0, 5.0, ws) == (3.0, 4.0, 2.0)  # inside one window: its scores as they are
    assert segment_dnsmos(0.0, 9.01, ws) == (3.0, 4.0, 2.0)  # exactly one window
    sig, bak, ovrl = segment_dnsmos(8.01, 11.01, ws)  # 1 s in the first, 2 s in the second
    assert (sig, bak, ovrl) == pytest.approx((7 / 3, 10 / 3, 4 / 3))
    # across a pause between stretches: only the seconds under windows count
    assert segment_dnsmos(17.02, 21.0, ws) == pytest.approx((3.0, 3.5, 2.5))
    assert segment_dnsmos(21.0, 21.0, ws) == (4.0, 4.0, 4.0)  # no length: the window it lies in
    assert segment_dnsmos(18.5, 19.5, ws) is None  # outside every window: not scored


@pytest.mark.slow  # the real network: about a second
def test_a_segment_that_is_exactly_one_window_keeps_the_reference_score():
    """The windows are the reference implementation's: a segment that is exactly one window
    (a 9.01 s stretch, or the first 9.01 s of a longer one) has `Dnsmos.score` of its samples,
    bit for bit (Dnsmos.score follows DNS-Challenge dnsmos_local.py, tests/test_quality_filters.py)."""
    from mmcurate.quality.scorers.dnsmos import WINDOW, Dnsmos
    from mmcurate.transforms.decode import decode_audio
    from mmcurate.transforms.segment_quality import score_stretches, segment_dnsmos

    audio = decode_audio(str(MEDIA / "diarization" / "sample.wav"))
    model = Dnsmos()
    one = 9.01
    windows = score_stretches(model, audio, [(1.0, 1.0 + one), (12.0, 12.0 + one + 5.0)])
    assert [(round(w.start, 3), round(w.end, 3)) for w in windows] == [(1.0, 10.01), (12.0, 21.01), (21.01, 26.01)]
    for start in (1.0, 12.0):
        a = int(round(start * SR))
        ref = model.score(audio[a : a + WINDOW])
        assert segment_dnsmos(start, start + one, windows) == (ref.sig, ref.bak, ref.ovrl), start
    # the last window reads the 9.01 s that end the stretch and stands for what is left of it
    ref = model.score(audio[int(round(26.01 * SR)) - WINDOW : int(round(26.01 * SR))])
    assert segment_dnsmos(22.0, 26.0, windows) == (ref.sig, ref.bak, ref.ovrl)


def _counting_decodes(monkeypatch) -> dict:
    """Counts the times each media file's audio is decoded (opened for probing is not)."""
    from mmcurate.transforms import decode

    decoded: dict = {}
    real = decode._iter_container

    def counted(c, *a, **k):
        name = os.path.basename(str(c.name))
        decoded[name] = decoded.get(name, 0) + 1
        return real(c, *a, **k)

    monkeypatch.setattr(decode, "_iter_container", counted)
    return decoded


class _CountingDnsmos(LoudnessDnsmos):
    runs: list = []

    def score(self, audio):
        # the old per-segment path: what the real network runs on for a clip of this length
        from mmcurate.quality.scorers.dnsmos import network_runs

        _CountingDnsmos.runs.append(network_runs(len(audio)))
        return super().score(audio)

    def score_windows(self, windows):
        _CountingDnsmos.runs.append(len(windows))
        return [LoudnessDnsmos.score(self, w) for w in windows]


def test_dnsmos_costs_a_window_per_9_s_of_speech_and_no_second_decode(tmp_path, monkeypatch):
    """A vad,speech,quality run decodes each source once (DNSMOS reads the samples the speech
    models read) and runs the network on about one window per 9 s of contiguous speech,
    however the segments cut it (scored per segment, a 2 s segment costs 2 windows, a 4 s one
    4); every segment gets a score."""
    from mmcurate.quality import audit

    opened = _counting_decodes(monkeypatch)
    _CountingDnsmos.runs = []
    out = str(tmp_path / "out")
    media = [MEDIA / "diarization" / "sample.wav", MEDIA / "speech" / "jfk.wav"]
    m = fake_run([str(p) for p in media], out, texts=[". ".join(ENGLISH) + "."], dnsmos_loader=_CountingDnsmos)
    assert opened == {p.name: 1 for p in media}
    con = audit.connect(out, read_only=True)
    (speech_s,) = con.execute("SELECT sum(\"end\" - start) FROM speech_regions").fetchone()
    (stretches,) = con.execute("SELECT sum(len(dnsmos_windows)) FROM transcripts").fetchone()
    assert sum(_CountingDnsmos.runs) == stretches <= speech_s / 9.01 + 2 * len(media)
    assert m["tables"]["segments"] > sum(_CountingDnsmos.runs)  # fewer windows than segments
    assert con.execute("SELECT count(*) FROM segment_quality WHERE dnsmos_ovrl IS NULL").fetchone() == (0,)


class _BrokenDnsmos(LoudnessDnsmos):
    def score_windows(self, windows):
        raise RuntimeError("onnxruntime: out of memory")

    def score(self, audio):
        raise RuntimeError("onnxruntime: out of memory")


def test_a_dnsmos_failure_is_one_ledger_row_and_the_segments_are_judged_without_it(tmp_path):
    from mmcurate.quality import audit

    out = str(tmp_path / "out")
    m = fake_run([str(MEDIA / "speech" / "jfk.wav")], out, dnsmos_loader=_BrokenDnsmos,
                 quality={"min_dnsmos_ovrl": 4.5})
    con = audit.connect(out, read_only=True)
    rows = con.execute("SELECT stage, reason, item_id, detail FROM rejected").fetchall()
    assert [(st, r) for st, r, _i, _d in rows] == [("quality", "dnsmos_error")]
    assert rows[0][2] == con.execute("SELECT source_id FROM sources").fetchone()[0]
    assert rows[0][3].startswith("segments judged without DNSMOS: ") and "onnxruntime: out of memory" in rows[0][3]
    assert m["tables"]["segment_quality"] == m["tables"]["segments"] > 0
    assert con.execute("SELECT count(*) FROM segment_quality WHERE dnsmos_ovrl IS NOT NULL OR NOT keep"
                       ).fetchone() == (0,)
    assert con.execute("SELECT dnsmos_windows FROM transcripts").fetchone() == (None,)
