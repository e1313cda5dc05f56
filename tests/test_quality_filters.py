"""The quality filters as units: scores from text and times, each filter's verdict just inside and
just outside its thresholds, the SQL form of every verdict agreeing with the Python one, the
config's checks, and the two models (langdetect, DNSMOS) on real input."""

from __future__ import annotations

import dataclasses
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from mmcurate.pipelines.config import ConfigError, CurateConfig
from mmcurate.quality.scorers import filters as qf
from mmcurate.quality.scorers.hallucination import (
    PhraseMatcher,
    default_matcher,
    normalize,
    outside_vad_share,
    phrase_files,
    read_phrases,
    repeat_share,
    tokens,
)
from mmcurate.schemas.records import SegmentQuality, Segment, Word
from mmcurate.transforms.segment_quality import QualityConfig, build_filters, keep_sql, score_segment

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"


def row(**kw) -> SegmentQuality:
    base = dict(segment_id="s-seg-00000", source_id="s", start=0.0, end=2.0, duration_s=2.0,
                num_words=5, chars=40, chars_per_s=14.0, language="en", language_probability=0.99,
                text_language="en", text_language_probability=0.99, transcript_language="en",
                transcript_language_probability=0.99, language_mismatch=False,
                language_low_confidence=False, phrase_share=0.0, phrases=[], repeat_share=0.0,
                outside_vad_share=0.0, dnsmos_sig=3.5, dnsmos_bak=3.8, dnsmos_ovrl=3.0,
                rate_q1=12.0, rate_q3=16.0, source_speech_ratio=0.8, failed=[], keep=True,
                reason=None, run_id="r")
    base.update(kw)
    return SegmentQuality(**base)


# --------------------------------------------------------------------------- text scores


def test_normalize_and_tokens():
    assert normalize("  Thanks for WATCHING!! ") == "thanks for watching"
    assert normalize("Amara.org-Community") == "amara org community"
    assert tokens("I'm sorry, I'm sorry") == ["i", "m", "sorry", "i", "m", "sorry"]
    assert tokens("谢谢观看 ok") == ["谢", "谢", "观", "看", "ok"]


def test_phrase_lists_are_data_with_sources():
    files = phrase_files()
    assert {"en", "de", "fr", "es", "ja", "zh", "ru"} <= set(files)
    for lang, path in files.items():
        text = Path(path).read_text(encoding="utf-8")
        assert "arXiv:2501.11378" in text, path  # every list says where its phrases come from
        assert read_phrases(path), path
    assert default_matcher().size >= 60


@pytest.mark.parametrize("text,share", [
    ("Thanks for watching!", 1.0),
    ("Subtitles by the Amara.org community", 1.0),
    ("Untertitel im Auftrag des ZDF für funk, 2017", 1.0),
    ("ご視聴ありがとうございました", 1.0),
    ("And so, my fellow Americans", 0.0),
    ("Subtitles bypass the filter", 0.0),  # "subtitles by" must end at a word boundary
    ("", 0.0),
])
def test_phrase_share(text, share):
    assert default_matcher().match(text).share == pytest.approx(share)


def test_phrase_inside_a_real_utterance_covers_only_its_part():
    m = default_matcher().match("Thanks for watching, today we looked at three ways to cut "
                                "the cost of solar panels on a roof")
    assert 0.1 < m.share < 0.3 and m.phrases == ("thanks for watching",)
    custom = PhraseMatcher({"xx": ["zorp blat"]})
    assert custom.match("Zorp, blat!").share == 1.0 and custom.languages == ["xx"]


@pytest.mark.parametrize("text,share", [
    ("I'm sorry, I'm sorry, I'm sorry, I'm sorry", 1.0),  # whisper-base on a wordless hum
    ("I don't know, I don't know, I don't know", 1.0),
    ("Ah, ah, ah, ah, ah, ah", 1.0),  # six times one word
    ("no, no, no", 0.0),  # three words: people say this
    ("no, no, no, no", 0.0),  # four words: below LOOP_MIN_WORDS
    ("Ah, ah, ah, ah, ah...", 1.0),  # whisper-base on a wordless hum
    ("the the cat sat on the mat", 0.0),
    ("well I said it, I said it, I said it and then we left the room", 9 / 16),
])
def test_repeat_share(text, share):
    assert repeat_share(tokens(text)) == pytest.approx(share)
    assert repeat_share([]) is None


def test_outside_vad_share():
    regions = [(1.0, 3.0), (5.0, 6.0)]
    assert outside_vad_share([(1.1, 1.5), (2.0, 2.4)], regions) == 0.0
    assert outside_vad_share([(1.1, 1.5), (3.8, 4.2)], regions) == 0.5  # middle 4.0: in the gap
    assert outside_vad_share([(3.1, 3.3)], regions) == 0.0  # 0.2 s past the region: tolerance
    assert outside_vad_share([(1.0, 2.0)], []) == 1.0  # the VAD found no speech at all
    assert outside_vad_share([(1.0, 2.0)], None) is None  # regions unknown: no evidence
    assert outside_vad_share([], regions) is None


def test_score_segment_fills_text_scores():
    words = [Word(w, 1.0 + i * 0.4, 1.3 + i * 0.4, 0.9) for i, w in
             enumerate("Thanks for watching and see you next time".split())]
    seg = Segment("s-seg-00000", "s", 1.0, 4.0, "s-spk0", "Thanks for watching and see you next time!",
                  "en", 0.97, words, -0.3, 0.1, 1.2, "m", "v", None, "file#t=1,4", None, "r")
    r = score_segment(seg, [(0.9, 4.1)], ("en", 0.99), 0.7, "r")
    assert r.phrase_share == 1.0 and r.phrases == ["thanks for watching",
                                                   "thanks for watching and see you next time"]
    assert r.repeat_share == 0.0 and r.outside_vad_share == 0.0
    assert r.chars == 34 and r.chars_per_s == pytest.approx(34 / 3.0) and r.num_words == 8
    assert (r.language, r.text_language, r.transcript_language) == ("en", "en", "en")
    assert r.source_speech_ratio == 0.7 and r.dnsmos_ovrl is None and r.keep


# --------------------------------------------------------------------------- language


def test_langdetect_is_deterministic_and_thread_safe():
    from mmcurate.quality.scorers.language import detect

    texts = ["And so, my fellow Americans, ask not what your country can do for you",
             "Guten Morgen, wie geht es dir heute? Ich habe lange nicht geschlafen.",
             "Bonjour à tous, merci d'être venus si nombreux ce soir", "Yeah."]
    first = [detect(t) for t in texts]
    assert [lang for lang, _ in first[:3]] == ["en", "de", "fr"]
    out: dict[int, list] = {}

    def work(k):
        out[k] = [detect(t) for t in texts * 5]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(v == first * 5 for v in out.values())
    assert detect("...") == (None, None) and detect("1,5") == (None, None)


def test_language_filter_allow_list_and_flags():
    f = qf.LanguageFilter(allowed=("en",), min_spoken_probability=0.8, min_text_probability=0.9,
                          min_text_chars=30)
    assert f.judge(row()) is None
    assert f.judge(row(language="de")) == "language_not_allowed"
    assert f.judge(row(language=None, transcript_language="en")) is None  # text stands in
    assert f.judge(row(language=None, transcript_language=None)) == "language_not_allowed"
    # flags: a disagreement on long, confident text; low Whisper confidence
    assert f.mismatch(row(text_language="de", chars=30, text_language_probability=0.9))
    assert not f.mismatch(row(text_language="de", chars=29, text_language_probability=0.99))
    assert not f.mismatch(row(text_language="de", chars=80, text_language_probability=0.89))
    assert f.low_confidence(row(language_probability=0.79))
    assert not f.low_confidence(row(language_probability=0.8))
    assert not f.low_confidence(row(language_probability=None))
    # flags drop only with drop_flags
    flagged = row(text_language="de", chars=80, language_probability=0.5)
    assert f.judge(flagged) is None
    drop = dataclasses.replace(f, drop_flags=True)
    assert drop.failures(flagged) == ["language_mismatch", "language_low_confidence"]


# --------------------------------------------------------------------------- each filter


E = 1e-6


@pytest.mark.parametrize("filt,inside,outside,code", [
    (qf.HallucinationFilter(0.5, 0.5, 0.5), row(phrase_share=0.5), row(phrase_share=0.5 + E),
     "hallucination_phrase"),
    (qf.HallucinationFilter(0.5, 0.5, 0.5), row(repeat_share=0.5), row(repeat_share=0.5 + E),
     "repeated_ngrams"),
    (qf.HallucinationFilter(0.5, 0.5, 0.5), row(outside_vad_share=0.5),
     row(outside_vad_share=0.5 + E), "outside_vad"),
    (qf.HallucinationFilter(), row(chars_per_s=45.0), row(chars_per_s=45.0 + E), "implausible_rate"),
    (qf.SpeechQualityFilter(min_ovrl=1.8), row(dnsmos_ovrl=1.8), row(dnsmos_ovrl=1.8 - E), "low_dnsmos"),
    (qf.SpeechQualityFilter(min_sig=2.0), row(dnsmos_sig=2.0), row(dnsmos_sig=2.0 - E), "low_dnsmos"),
    (qf.DurationFilter(0.1, 30.5), row(duration_s=0.1), row(duration_s=0.1 - E), "too_short"),
    (qf.DurationFilter(0.1, 30.5), row(duration_s=30.5), row(duration_s=30.5 + E), "too_long"),
    # Tukey's fences at 1.5 x IQR: q1 12, q3 16 -> [6, 22]
    (qf.SpeakingRateFilter(1.5), row(chars_per_s=22.0), row(chars_per_s=22.0 + E), "speaking_rate"),
    (qf.SpeakingRateFilter(1.5), row(chars_per_s=6.0), row(chars_per_s=6.0 - E), "speaking_rate"),
    (qf.SpeechRatioFilter(0.2), row(source_speech_ratio=0.2), row(source_speech_ratio=0.2 - E),
     "low_speech_ratio"),
    # only segments of at least min_duration_s get a rate verdict
    (qf.SpeakingRateFilter(1.5, 2.0), row(chars_per_s=40.0, duration_s=2.0 - E),
     row(chars_per_s=40.0, duration_s=2.0), "speaking_rate"),
])
def test_filter_threshold_edges(filt, inside, outside, code):
    assert filt.judge(inside) is None
    assert filt.judge(outside) == code
    assert code in filt.codes


def test_missing_scores_are_no_evidence():
    fs = build_filters(QualityConfig(min_dnsmos_ovrl=4.9, min_source_speech_ratio=0.9))
    r = row(phrase_share=None, repeat_share=None, outside_vad_share=None, dnsmos_ovrl=None,
            dnsmos_sig=None, dnsmos_bak=None, rate_q1=None, rate_q3=None, chars_per_s=None,
            source_speech_ratio=None)
    assert qf.judge(r, fs) == []


def test_every_failure_is_listed_first_is_the_reason():
    fs = build_filters(QualityConfig(min_dnsmos_ovrl=2.0))
    r = row(phrase_share=1.0, repeat_share=1.0, dnsmos_ovrl=1.2, duration_s=0.05)
    assert qf.judge(r, fs) == ["hallucination_phrase", "repeated_ngrams", "low_dnsmos", "too_short"]


def test_quartiles_agree_with_numpy_and_duckdb():
    import duckdb

    rng = np.random.default_rng(0)
    for n in (4, 5, 20, 101):
        xs = list(rng.normal(14, 3, n))
        q1, q3 = qf.quartiles(xs)
        assert (q1, q3) == pytest.approx(tuple(np.percentile(xs, [25, 75])), abs=1e-12)
        con = duckdb.connect()
        d1, d3 = con.execute("SELECT quantile_cont(x, 0.25), quantile_cont(x, 0.75) FROM "
                             "(SELECT unnest(?) AS x)", [xs]).fetchone()
        assert (q1, q3) == pytest.approx((d1, d3), abs=1e-12)


def test_keep_sql_agrees_with_judge_on_random_rows():
    """The SQL form of every config's verdict selects exactly the rows judge() keeps: what makes
    re-tuning over the stored scores exact."""
    import duckdb

    from mmcurate.schemas.records import to_table

    rnd = random.Random(7)

    def maybe(v):
        return None if rnd.random() < 0.15 else v

    rows = []
    for i in range(600):
        q1 = maybe(rnd.uniform(8, 14))
        rows.append(row(
            segment_id=f"s-seg-{i:05d}", duration_s=rnd.choice([0.05, 0.1, 3.0, 30.5, 31.0, rnd.uniform(0, 35)]),
            chars=rnd.randint(0, 120), chars_per_s=maybe(rnd.choice([45.0, rnd.uniform(0, 60)])),
            language=maybe(rnd.choice(["en", "de", "fr"])), language_probability=maybe(rnd.random()),
            text_language=maybe(rnd.choice(["en", "de", "id"])), text_language_probability=maybe(rnd.random()),
            transcript_language=maybe(rnd.choice(["en", "de"])),
            phrase_share=maybe(rnd.choice([0.0, 0.5, 1.0, rnd.random()])),
            repeat_share=maybe(rnd.choice([0.0, 0.5, 1.0, rnd.random()])),
            outside_vad_share=maybe(rnd.choice([0.0, 0.5, rnd.random()])),
            dnsmos_sig=maybe(rnd.uniform(1, 5)), dnsmos_bak=maybe(rnd.uniform(1, 5)),
            dnsmos_ovrl=maybe(rnd.choice([3.2, 1.8, rnd.uniform(1, 5)])),
            rate_q1=q1, rate_q3=None if q1 is None else q1 + rnd.uniform(0, 6),
            source_speech_ratio=maybe(rnd.random())))
    con = duckdb.connect()
    con.register("segment_quality", to_table("segment_quality", rows))
    configs = [QualityConfig(), QualityConfig(min_dnsmos_ovrl=3.2),
               QualityConfig(languages=("en", "fr"), language_flags="drop", min_dnsmos_sig=2.5,
                             min_dnsmos_bak=3.0, min_source_speech_ratio=0.3, rate_iqr_k=0.5,
                             rate_min_duration_s=3.0),
               QualityConfig(max_phrase_share=None, max_repeat_share=0.2, max_outside_vad_share=None,
                             max_chars_per_s=None,
                             min_dnsmos_ovrl=None, min_duration_s=None, max_duration_s=None,
                             rate_iqr_k=None)]
    for cfg in configs:
        fs = build_filters(cfg)
        want = sorted(r.segment_id for r in rows if not qf.judge(r, fs))
        got = sorted(x for (x,) in con.execute(
            f"SELECT segment_id FROM segment_quality WHERE {keep_sql(cfg)}").fetchall())
        assert got == want, cfg
        assert 0 < len(want) < len(rows)


# --------------------------------------------------------------------------- config


def test_quality_config_is_checked():
    with pytest.raises(ConfigError) as e:
        CurateConfig.from_dict({"quality": {"max_phrase_share": 1.5, "min_dnsmos_ovrl": 0.5,
                                            "language_flags": "maybe", "languages": ["EN"],
                                            "min_duration_s": 5.0, "max_duration_s": 2.0,
                                            "rate_min_segments": 2, "nope": 1}})
    text = "\n".join(e.value.problems)
    for part in ("quality.max_phrase_share", "quality.min_dnsmos_ovrl", "quality.language_flags",
                 "quality.languages", "min_duration_s 5.0 > max_duration_s 2.0",
                 "quality.rate_min_segments", "unknown key(s) ['nope']"):
        assert part in text, text
    cfg = CurateConfig.from_dict({"quality": {"min_dnsmos_ovrl": None, "languages": ["en", "de"]}})
    assert cfg.quality.min_dnsmos_ovrl is None and cfg.quality.languages == ("en", "de")
    assert "quality" in CurateConfig().stages


# --------------------------------------------------------------------------- DNSMOS


def test_dnsmos_windows_follow_the_reference():
    from mmcurate.quality.scorers.dnsmos import WINDOW, windows

    # short clips are doubled until >= 9.01 s: 1 s -> 16 s (7 hops), 3 s -> 12 s (3 hops)
    assert windows(np.ones(16000, np.float32)).shape == (7, WINDOW)
    assert windows(np.ones(3 * 16000, np.float32)).shape[0] == 3
    assert windows(np.ones(10 * 16000, np.float32)).shape[0] == 1
    # 30 s: the reference's int((i + 9.01) * 16000) makes some windows one sample short and
    # skips them (7 of 21 are scored); scores must equal the reference implementation's
    assert windows(np.zeros(30 * 16000, np.float32)).shape == (7, WINDOW)
    with pytest.raises(ValueError):
        windows(np.zeros(0, np.float32))


@pytest.mark.slow
def test_dnsmos_network_runs_is_what_scoring_a_clip_costs():
    """`network_runs(n)` (the cost the merge deals DNSMOS work by) is the number of windows the
    real network runs on for a clip of n samples: counted on the session, for clips that are
    tiled (1-4.5 s), at the edge (9.01 s) and long (12 s; 29 s, where the reference skips 13 of
    20 windows). Not the duration: a 2 s clip costs 2 runs, a 12 s one 3."""
    from mmcurate.quality.scorers.dnsmos import WINDOW, Dnsmos, network_runs

    m = Dnsmos()
    run = m._session.run
    calls = []
    m._session = type("Spy", (), {"run": lambda self, out, feed: calls.append(len(feed[m._input])) or run(out, feed)})()
    rng = np.random.default_rng(1)
    for n in (16000, 2 * 16000, 4 * 16000 + 8000, WINDOW, 12 * 16000, 29 * 16000):
        calls.clear()
        m.score((rng.standard_normal(n) * 0.1).astype(np.float32))
        assert sum(calls) == network_runs(n), n
    assert [network_runs(d * 16000) for d in (1, 2, 3, 12, 29)] == [1, 2, 3, 3, 7]
    assert network_runs(0) == 0


@pytest.mark.slow
def test_dnsmos_batch_changes_speed_not_scores():
    """The windows go to onnxruntime `batch` at a time (quality.dnsmos_batch, default 1: a
    whole clip's activations wait on memory); every batch size gives the same scores."""
    from mmcurate.quality.scorers.dnsmos import Dnsmos
    from mmcurate.schemas.params import check
    from mmcurate.transforms.decode import decode_audio
    from mmcurate.transforms.segment_quality import QualityConfig

    audio = decode_audio(str(MEDIA / "diarization" / "ami" / "dev01.wav"))[: 25 * 16000]
    one, wide = Dnsmos(), Dnsmos(batch=64)
    calls = []
    run = one._session.run
    one._session = type("Spy", (), {"run": lambda self, out, feed: calls.append(
        len(feed[one._input])) or run(out, feed)})()
    assert one.score(audio) == wide.score(audio)
    assert len(calls) > 1 and set(calls) == {1}
    assert check(QualityConfig(dnsmos_batch=0), "quality", []) == [
        "quality.dnsmos_batch: 0 must be >= 1 (windows per onnxruntime call)"]


@pytest.mark.slow
@pytest.mark.model_score
def test_dnsmos_scores_real_speech_above_noise():
    """DNSMOS P.835 on real recordings and on white noise (measured 2026-11-23, bit-identical
    with the CPU ISA variables set or unset: onnxruntime ignores them): jfk OVRL 2.715, LDC93S1
    3.238, white noise at 0.3 1.063; the bounds leave >= 0.18 either side."""
    from mmcurate.quality.scorers.dnsmos import Dnsmos, model_info
    from mmcurate.transforms.decode import decode_audio

    m = Dnsmos()
    jfk = m.score(decode_audio(str(MEDIA / "speech" / "jfk.wav")))
    ldc = m.score(decode_audio(str(MEDIA / "speech" / "LDC93S1.wav")))
    noise = m.score((np.random.default_rng(0).standard_normal(5 * 16000) * 0.3).astype(np.float32))
    print(f"\n[dnsmos] jfk {jfk} LDC93S1 {ldc} noise {noise}")
    assert 2.5 <= jfk.ovrl <= 2.95 and 3.0 <= ldc.ovrl <= 3.5
    assert noise.ovrl < 1.3 and noise.sig < 1.5
    assert all(1.0 <= v <= 5.0 for s in (jfk, ldc, noise) for v in (s.sig, s.bak, s.ovrl))
    info = model_info()
    assert info["role"] == "speech-quality" and len(info["sha256"]) == 64
