"""The Beam quality stage (JudgeQuality): a fake DNSMOS model for the graph, the verdicts and the
ledger; the real pipeline for the table, the kept_segments view and re-tuning in DuckDB."""

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

from mmcurate.schemas.records import Segment, SourceRecord, SpeechRegion, Word, to_table
from mmcurate.transforms.quality import DnsmosModelHandler, JudgeQuality, QualityConfig, keep_sql

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


def _run(inputs: dict, cfg: QualityConfig, handler=None, args: list[str] | None = None):
    if args:  # the local runner with these worker options
        from apache_beam.options.pipeline_options import PipelineOptions

        from mmcurate.pipelines.curate import local_runner

        options = PipelineOptions(args)
        p = beam.Pipeline(runner=local_runner(options), options=options)
    else:
        p = TestPipeline()
    pcolls = {k: p | f"Create{k}" >> beam.Create(v) for k, v in inputs.items()}
    out = pcolls | JudgeQuality(cfg, RUN, dnsmos_handler=handler or DnsmosModelHandler(loader=LoudnessDnsmos))
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
    cfg = QualityConfig(languages=("en",), min_dnsmos_ovrl=1.8, rate_min_segments=4,
                        min_source_speech_ratio=0.2)
    got, counters = _run({"segments": segs, "sources": [a, b, gone], "speech_regions": regions}, cfg)
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
        "srcC-seg-00000": None,  # DNSMOS could not decode it: judged without DNSMOS
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
    drops = [r for r in got["rejected"] if r.reason != "dnsmos_error"]
    assert sorted(r.item_id for r in drops) == sorted(r.segment_id for r in got["segment_quality"]
                                                        if not r.keep)
    for r in drops:
        assert r.stage == "quality" and r.source_id == r.item_id.split("-seg-")[0]
        assert r.duration_s is not None and '"dnsmos_ovrl"' in r.detail or r.source_id == "srcC"
    phrase = next(r for r in drops if r.item_id == "srcA-seg-00005")
    assert phrase.reason == "hallucination_phrase" and "Thanks for watching" in phrase.detail
    assert json.loads(phrase.detail.split("scores ", 1)[1])["phrase_share"] == 1.0
    (err,) = [r for r in got["rejected"] if r.reason == "dnsmos_error"]
    assert err.item_id == "srcC" and "judged without DNSMOS" in err.detail
    assert counters["quality.segments"] == len(segs)
    assert counters["quality.kept"] == len(kept) and counters["quality.dnsmos_error"] == 1


@pytest.mark.slow  # seconds: out of the fast tier
def test_dnsmos_cut_into_pieces_on_several_workers_gives_the_same_rows(tmp_path):
    """On several local workers a source's DNSMOS spans are cut into pieces dealt by cost and
    put back together by source: the rows and the ledger are those of one request per source,
    and a source whose pieces all fail still gets one dnsmos_error row."""
    from mmcurate.transforms.quality import SourceScores, dnsmos_pieces

    loud = _wav(tmp_path / "loud.wav", 60.0, 0.3)
    a, gone = _source(loud, "srcA"), _source(tmp_path / "gone.wav", "srcC")
    text = "we measured the signal again and wrote down the numbers"
    segs = [_seg("srcA", i, 1.0 + 4.5 * i, 5.0 + 4.5 * i, text) for i in range(12)]
    segs += [_seg("srcC", i, 1.0 + 4.5 * i, 5.0 + 4.5 * i, text) for i in range(10)]
    regions = [SpeechRegion("srcA-vad-00000", "srcA", 0.5, 59.0, RUN), SpeechRegion("srcC-vad-00000", "srcC", 0.5, 50.0, RUN)]
    inputs = {"segments": segs, "sources": [a, gone], "speech_regions": regions}
    assert len(dnsmos_pieces(SourceScores(a, segs[:12], []), 4)) == 2  # 48 windows: 2 pieces here
    cfg = QualityConfig(languages=("en",), min_dnsmos_ovrl=1.8)
    whole, _ = _run(inputs, cfg)
    cut, counters = _run(inputs, cfg, args=["--direct_running_mode=multi_threading", "--direct_num_workers=2"])

    def rows(got, name):
        return sorted(got[name], key=lambda r: (r.item_id if name == "rejected" else r.segment_id))

    assert rows(cut, "segment_quality") == rows(whole, "segment_quality")
    assert [r.dnsmos_ovrl is not None for r in rows(cut, "segment_quality")] == [True] * 12 + [False] * 10
    assert rows(cut, "rejected") == rows(whole, "rejected")
    assert [r.item_id for r in cut["rejected"] if r.reason == "dnsmos_error"] == ["srcC"]
    assert counters["quality.dnsmos_error"] == 1


def test_dnsmos_off_leaves_scores_null(tmp_path):
    src = _source(_wav(tmp_path / "a.wav", 5.0, 0.01), "srcA")
    segs = [_seg("srcA", 0, 1.0, 3.0, ENGLISH[0])]
    got, _ = _run({"segments": segs, "sources": [src], "speech_regions": []},
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
    minimum is the median of the first run's scores (2.857 here: they span 2.37-3.03), so that it
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
