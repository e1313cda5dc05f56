"""ASR with word timestamps: the embedded faster-whisper backend on real speech, plus scoring.

Real-model tests load each model once per module and print the measured WER / timing error
(run with -s to see them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmcurate.pipelines.config import AsrConfig
from wer_reference import align_words, normalize, wer
from mmcurate.schemas.records import AsrSegment, Word
from mmcurate.transforms import models
from mmcurate.transforms.asr import (
    _join,
    drop_reason,
    interpolate_words,
    load_transcriber,
    normalize_regions,
)
from mmcurate.transforms.decode import decode_audio

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SPEECH = MEDIA / "speech"
SR = 16000


def _jfk_ref() -> str:
    return (SPEECH / "jfk.txt").read_text()


def _check_words(result, lo: float, hi: float) -> None:
    prev = lo
    for seg in result.segments:
        assert lo - 1e-6 <= seg.start <= seg.end <= hi + 1e-6
        for w in seg.words:
            assert w.word and w.word == w.word.strip()
            assert isinstance(w.start, float) and isinstance(w.end, float)
            assert prev - 1e-6 <= w.start <= w.end <= hi + 1e-6, (w, prev, hi)
            assert w.probability is None or 0.0 <= w.probability <= 1.0
            prev = w.start


# --------------------------------------------------------------------------------- scoring


def test_normalize_and_wer():
    assert normalize("  And so, my fellow AMERICANS:  don't!") == "and so my fellow americans dont"
    assert wer("a b c d", "a x c") == pytest.approx(0.5)  # one substitution, one deletion
    assert wer("hello world", "Hello, world!") == 0.0
    assert wer("a b", "a b c d") == pytest.approx(1.0)  # two insertions over two words
    assert wer("", "") == 0.0 and wer("", "x") == 1.0


def test_align_words_pairs_only_correct_words():
    ref = ["she", "had", "your", "dark", "suit"]
    hyp = ["She", "had", "a", "dark", "suit.", "extra"]
    assert align_words(ref, hyp) == [(0, 0), (1, 1), (3, 3), (4, 4)]
    assert align_words(["a"], ["-"]) == []


# --------------------------------------------------------------------------------- helpers


def test_normalize_regions_clips_sorts_merges():
    assert normalize_regions(None, 3.0) == [(0.0, 3.0)]
    assert normalize_regions([(2.0, 5.0), (-1.0, 0.5), (0.4, 1.0), (4.0, 4.0)], 4.5) == [
        (0.0, 1.0),
        (2.0, 4.5),
    ]
    assert normalize_regions([], 3.0) == []


def test_joined_times_map_back_to_source():
    audio = np.zeros(10 * SR, dtype=np.float32)
    joined, tmap = _join(audio, [(1.0, 2.0), (5.0, 7.0)])
    assert len(joined) == int(3.1 * SR)  # 1 s + 0.1 s gap + 2 s
    assert tmap(0.5) == 1.5
    assert tmap(1.1) == 5.0 and tmap(1.6) == 5.5
    assert tmap(1.05) == 5.0  # a start in the gap goes to the next region
    assert tmap(1.05, is_end=True) == 2.0  # an end in the gap stays with the previous one
    # a word is never split by a cut: it goes whole into the region holding most of it
    assert tmap.span(0.2, 0.6) == (1.2, 1.6)  # inside one region: as mapped
    assert tmap.span(0.7, 1.8) == (5.0, 5.7)  # 0.3 s before the join, 0.7 s after: after
    assert tmap.span(0.1, 1.3) == (1.1, 2.0)  # 0.9 s before, 0.2 s after: before


def test_interpolated_words_cover_segment():
    words = interpolate_words("ask not what", 10.0, 13.0)
    assert [w.word for w in words] == ["ask", "not", "what"]
    assert words[0].start == 10.0 and words[-1].end == 13.0
    assert all(w.probability is None for w in words)
    assert words[2].end - words[2].start > words[0].end - words[0].start  # by length


def test_drop_rules():
    """Each rule just inside and just outside its thresholds (see asr.drop_reason)."""
    import dataclasses

    cfg = AsrConfig()
    # the measured defaults (asr.py, comment above drop_reason): change them on purpose only
    assert (cfg.no_speech_alone_threshold, cfg.vad_no_speech_threshold, cfg.low_confidence_word_prob,
            cfg.low_confidence_no_speech) == (0.465, 0.38, 0.1, 0.2)
    assert (cfg.no_speech_threshold, cfg.log_prob_threshold, cfg.compression_ratio_threshold) == (
        0.6, -1.0, 2.4)
    e = 0.01

    def seg(text="hello there", lp=-0.3, nsp=0.1, cr=1.2, probs=(0.9, 0.8)):
        words = [Word(f"w{i}", float(i), i + 0.5, p) for i, p in enumerate(probs)]
        return AsrSegment(0.0, 1.0, text, words, lp, nsp, cr)

    def reason(s, c=cfg):
        return drop_reason(s, c)

    assert reason(seg()) is None
    # no_speech_prob above 0.465 with avg_logprob below -0.5, or above 0.6 whatever avg_logprob says
    assert cfg.no_speech_alone_max_logprob == -0.5
    assert reason(seg(nsp=0.465 + e, lp=-0.5 - e)) == "no_speech"
    assert reason(seg(nsp=0.465 + e, lp=-0.5 + e)) is None  # confident text below 0.6 stays
    assert reason(seg(nsp=0.465 - e, lp=-0.5 - e)) is None
    assert reason(seg(nsp=0.6 + e, lp=-0.2)) == "no_speech"
    assert reason(seg(nsp=0.6 - e, lp=-0.2)) is None
    assert reason(seg(nsp=0.6 - e, lp=-0.2), dataclasses.replace(cfg, no_speech_alone_max_logprob=None)) == "no_speech"
    off = dataclasses.replace(cfg, no_speech_alone_threshold=None)
    assert reason(seg(nsp=0.9, lp=-0.2), off) is None  # Whisper keeps confident text
    # Whisper's own AND-rule (0.6 / -1.0) still stands when the VAD rules are off
    whisper_only = dataclasses.replace(off, vad_no_speech_threshold=None)
    assert reason(seg(nsp=0.6 + e, lp=-1.0 - e), whisper_only) == "no_speech"
    assert reason(seg(nsp=0.6 - e, lp=-1.0 - e), whisper_only) is None
    assert reason(seg(nsp=0.6 + e, lp=-1.0 + e), whisper_only) is None
    # the same AND-rule with the VAD no_speech threshold (0.38 / -1.0): both conditions needed
    assert reason(seg(nsp=0.38 + e, lp=-1.0 - e)) == "no_speech"
    assert reason(seg(nsp=0.38 - e, lp=-1.0 - e)) is None
    assert reason(seg(nsp=0.38 + e, lp=-1.0 + e)) is None
    # low_confidence: every word below 0.1, with no_speech_prob above 0.2
    assert reason(seg(nsp=0.2 + e, probs=(0.1 - e, 0.1 - e))) == "low_confidence"
    assert reason(seg(nsp=0.2 + e, probs=(0.1 - e, 0.1 + e))) is None  # one word is sure enough
    assert reason(seg(nsp=0.2 - e, probs=(0.1 - e, 0.1 - e))) is None  # no no-speech evidence
    # repetition and empty text
    assert reason(seg(cr=2.4 + e)) == "repetitive"
    assert reason(seg(cr=2.4 - e)) is None
    assert reason(seg(text=" ♪ ...")) == "no_words"
    # measured points (bench/README.md, "asr_scores.py: Whisper hallucination thresholds"):
    # noise on AVX2 "You", "1,5kg", a sampled "1.5kg" with a good avg_logprob, GENERIC "I'm
    # going to do it again." (sure words); speech AMI dev01 (highest nsp), trn07 and "brilliant
    # scale." (lowest avg_logprob), laion "test." (lowest word probability)
    assert reason(seg("You", nsp=0.529, lp=-1.27, probs=(0.009,))) == "no_speech"
    assert reason(seg("1,5kg", nsp=0.658, lp=-0.64, probs=(0.16, 0.24))) == "no_speech"
    assert reason(seg("1.5kg", nsp=0.562, lp=-0.70, probs=(0.2, 0.3))) == "no_speech"
    assert reason(seg("I'm going to do it again.", nsp=0.566, lp=-0.90,
                      probs=(0.40, 0.66, 0.96))) == "no_speech"
    alone_off = dataclasses.replace(cfg, no_speech_alone_threshold=None)
    assert reason(seg("You", nsp=0.529, lp=-1.27, probs=(0.009,)), alone_off) == "no_speech"
    assert reason(seg("You", nsp=0.529, lp=-0.5, probs=(0.009,)), alone_off) == "low_confidence"
    assert reason(seg(nsp=0.401, lp=-0.37, probs=(0.29, 0.95))) is None
    # AMI dev01 on an AVX-512 CPU: one 30 s window of fluent meeting speech
    assert reason(seg("What's the username?", nsp=0.484, lp=-0.354, probs=(0.93, 0.99))) is None
    # hum loops with confident words (rules off: no temperature fallback), AVX-512
    assert reason(seg("Ah ah ah", nsp=0.683, lp=-0.11, probs=(0.99,))) == "no_speech"
    assert reason(seg(nsp=0.253, lp=-0.657, probs=(0.35, 0.94))) is None
    assert reason(seg("brilliant scale.", nsp=0.244, lp=-1.048, probs=(0.21, 0.82))) is None
    assert reason(seg("test.", nsp=0.004, lp=-0.25, probs=(0.062,))) is None
    # whisperx: no no_speech_prob, words possibly without probability -> only the text rules
    assert reason(seg(nsp=None, lp=-3.0, probs=(None, None))) is None
    assert reason(seg(nsp=None, lp=None, probs=(0.01, 0.01))) is None
    assert reason(seg(nsp=0.3, lp=-0.3, probs=(None, None))) is None  # no probabilities: no vote
    assert reason(seg(nsp=0.3, lp=-0.3, probs=())) is None
    assert reason(seg(nsp=None, lp=None, cr=3.0, probs=(None,))) == "repetitive"
    assert reason(seg("...", nsp=None, lp=None, probs=(None,))) == "no_words"


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="backend"):
        load_transcriber(AsrConfig(backend="nope"))


# --------------------------------------------------------------------------------- models


@pytest.mark.slow
def test_joined_model_is_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCURATE_CACHE", str(tmp_path / "cache"))
    d = models.whisper_model_dir("whisper-base")
    assert d == tmp_path / "cache" / "whisper-base"
    assert {p.name for p in d.iterdir()} == {
        "model.bin", "config.json", "tokenizer.json", "vocabulary.txt"
    }
    info = models.model_info("asr", "whisper-base")
    assert info["sha256"] == models.WHISPER_BASE_SHA256 and info["path"] == str(d)
    assert set(info) == {"role", "name", "version", "path", "sha256"}
    assert models.whisper_model_dir("whisper-base") == d  # second call reuses the join
    with open(d / "model.bin", "r+b") as fh:  # corrupt one byte in the middle
        fh.seek(50_000_000)
        b = fh.read(1)
        fh.seek(50_000_000)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(models.ModelIntegrityError, match="sha256") as err:
        models.whisper_model_dir("whisper-base")
    assert str(d) in str(err.value) and "delete" in str(err.value)
    with pytest.raises(models.ModelIntegrityError):
        load_transcriber(AsrConfig(model="whisper-base"))


def test_unknown_model_name_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an embedded model"):
        models.whisper_model_dir("whisper-huge-from-nowhere")
    with pytest.raises(FileNotFoundError, match="lacks"):
        models.whisper_model_dir(str(tmp_path))


# --------------------------------------------------------------------------------- real model


def _threads() -> int:
    """CTranslate2 threads for this test process: its pytest-xdist worker's share of the cores
    (0, CTranslate2's own default of 4, in one process). Two workers' 4-thread pools on 2 cores
    spend their time waiting on each other (as torch's did: tests/conftest.py)."""
    from conftest import xdist_core_share

    return xdist_core_share()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMCURATE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield load_transcriber(AsrConfig(cpu_threads=_threads()))  # whisper-base, beam 5, int8


def test_batch_windows_pack_regions_and_cut_long_ones():
    from mmcurate.transforms.asr import batch_windows

    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(100 * SR) * 0.1).astype(np.float32)
    audio[int(52.0 * SR):int(52.3 * SR)] = 0.0  # a pause inside the long region
    regions = [(0.0, 4.0), (5.0, 9.0), (10.0, 29.0), (30.0, 95.0)]
    joined, tmap = _join(audio, regions)
    wins = batch_windows(joined, tmap, 30.0)
    assert all(0 < e - s <= 30.0 + 1e-9 for s, e in wins)
    assert all(a[1] <= b[0] + 1e-9 for a, b in zip(wins, wins[1:]))
    assert wins[0] == (0.0, 27.2)  # the first three regions (+ two 0.1 s joins) in one window
    covered = sum(e - s for s, e in wins)
    speech = sum(e - s for s, e in zip(tmap.joined_starts, tmap.joined_ends))
    assert covered >= speech - 1e-6 and wins[-1][1] == pytest.approx(len(joined) / SR, abs=1e-3)
    # the 65 s region is cut at its quietest 100 ms: the pause (at 52.0-52.3 s in the source)
    cut_points = [tmap(e) for _, e in wins[:-1]]
    assert any(52.0 <= c <= 52.3 for c in cut_points), cut_points


@pytest.mark.slow
@pytest.mark.model_score
@pytest.mark.parametrize("batched", [True, False])
def test_jfk_wer_zero_batched_and_sequential(base, batched):
    """Batched decoding over VAD windows (asr.batched, the default) keeps jfk at WER 0, like the
    sequential path."""
    from mmcurate.transforms.vad import SileroVad

    model = base if batched else load_transcriber(AsrConfig(batched=False, cpu_threads=_threads()))
    for name in ("jfk.wav", "jfk.mp3", "jfk.flac"):
        audio = decode_audio(str(SPEECH / name))
        res = model.transcribe(audio, SileroVad().regions([audio], SR))
        assert wer(_jfk_ref(), " ".join(s.text for s in res.segments)) == 0.0, name
        _check_words(res, 0.0, len(audio) / SR)


@pytest.mark.slow
@pytest.mark.model_score
@pytest.mark.parametrize("name", ["jfk.wav", "jfk.mp3", "jfk.flac"])
def test_jfk_wer(base, name):
    audio = decode_audio(str(SPEECH / name))
    dur = len(audio) / SR
    res = base.transcribe(audio, [(0.0, dur)])
    hyp = " ".join(s.text for s in res.segments)
    score = wer(_jfk_ref(), hyp)
    print(f"\n[asr] whisper-base {name}: WER {score:.3f} lang {res.language} "
          f"p={res.language_probability:.2f} | {hyp}")
    assert score <= 0.05
    assert res.language == "en" and res.language_probability > 0.5
    assert res.model == "whisper-base (faster-whisper)"
    assert res.model_version.startswith("faster-whisper 1.2.1, ctranslate2 ")
    assert res.model_version.endswith(models.WHISPER_BASE_SHA256[:12])
    _check_words(res, 0.0, dur)
    assert sum(len(s.words) for s in res.segments) == len(normalize(_jfk_ref()).split())


@pytest.mark.slow
@pytest.mark.model_score
def test_language_detection_encodes_the_first_window_once(base):
    """Detection runs on the first batch window as the batch feeds it, and that batch reuses its
    encoder output: one encoder pass per window (faster-whisper's own detection is one more per
    source), with the same words and times as encoding every window afresh."""
    from mmcurate.transforms.asr import batch_windows

    audio = np.concatenate([decode_audio(str(SPEECH / "jfk.wav")), decode_audio(str(SPEECH / "LDC93S1.wav"))] * 3)
    regions = [(0.0, len(audio) / SR)]  # 42 s: two windows
    windows = batch_windows(*_join(audio, regions))
    memo = base.model.encode
    shapes = []

    def counted(features):
        shapes.append(features.shape[0] if features.ndim == 3 else 1)
        return original(features)

    original, memo._encode = memo._encode, counted
    try:
        res = base.transcribe(audio, regions)
        assert len(windows) == 2 and sum(shapes) == 2, (windows, shapes)
        memo._encode = original
        base.model.encode = original  # no memo: detection and the batch encode on their own
        ref = base.transcribe(audio, regions)
    finally:
        memo._encode, base.model.encode = original, memo
    words = lambda r: [(w.word, w.start, w.end) for s in r.segments for w in s.words]  # noqa: E731
    assert res.language == ref.language == "en" and words(res) == words(ref) and words(res)


@pytest.mark.slow
@pytest.mark.model_score
def test_only_regions_are_transcribed_in_source_time(base):
    """jfk after 4 s of loud babble-like noise; the region covers only the speech."""
    jfk = decode_audio(str(SPEECH / "jfk.wav"))
    noise = (np.random.default_rng(1).standard_normal(4 * SR) * 0.3).astype(np.float32)
    audio = np.concatenate([noise, jfk])
    res = base.transcribe(audio, [(4.0, 4.0 + len(jfk) / SR)], language="en")
    hyp = " ".join(s.text for s in res.segments)
    assert wer(_jfk_ref(), hyp) <= 0.05
    assert res.language == "en" and res.language_probability is None  # a hint, not measured
    first = res.segments[0].words[0]
    assert first.word == "And" and 4.0 <= first.start <= 4.8, first
    _check_words(res, 4.0, len(audio) / SR)
    # two regions with a pause cut out: times stay absolute, text stays whole
    split = base.transcribe(jfk, [(0.0, 2.4), (3.0, len(jfk) / SR)], language="en")
    assert wer(_jfk_ref(), " ".join(s.text for s in split.segments)) <= 0.1
    words = [w for s in split.segments for w in s.words]
    ask = next(w for w in words if normalize(w.word) == "ask")
    assert 3.0 <= ask.start <= 3.6, ask  # "ask" is spoken at ~3.3 s in the source
    assert base.transcribe(jfk, [], language="en").segments == []


def _ldc_reference() -> list[tuple[str, float, float]]:
    out = []
    for line in (SPEECH / "LDC93S1.wrd").read_text().split("\n"):
        if line.strip():
            s, e, w = line.split()
            out.append((w, int(s) / SR, int(e) / SR))
    return out


@pytest.mark.slow
@pytest.mark.model_score
def test_ldc93s1_word_start_error(base):
    audio = decode_audio(str(SPEECH / "LDC93S1.wav"))
    res = base.transcribe(audio, [(0.0, len(audio) / SR)])
    hyp = [w for s in res.segments for w in s.words]
    ref = _ldc_reference()
    pairs = align_words([w for w, _, _ in ref], [w.word for w in hyp])
    errors = [abs(hyp[j].start - ref[i][1]) for i, j in pairs]
    mae = float(np.mean(errors)) if errors else float("inf")
    score = wer(" ".join(w for w, _, _ in ref), " ".join(w.word for w in hyp))
    print(f"\n[asr] whisper-base LDC93S1: WER {score:.3f}, word-start MAE {mae:.3f} s over "
          f"{len(pairs)}/{len(ref)} matched words | {' '.join(w.word for w in hyp)}")
    assert len(pairs) >= 6  # the timing claim must rest on most of the sentence
    assert mae <= 0.15


def _noise(seed: int, amp: float, seconds: float = 8.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * amp).astype(np.float32)


def _tones(seconds: float = 8.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    notes = [0.2 * np.sin(2 * np.pi * f * t) * ((t * 2).astype(int) % 3 == i)
             for i, f in enumerate([440.0, 660.0, 880.0])]
    return np.sum(notes, axis=0).astype(np.float32)


def _pink(seed: int, rms: float, seconds: float = 8.0) -> np.ndarray:
    n = int(seconds * SR)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n)  # 1/f power
    return (x / np.sqrt(np.mean(x**2)) * rms).astype(np.float32)


def _sweep(seconds: float = 8.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * np.sin(2 * np.pi * (100.0 * t + 3900.0 * t**2 / (2 * seconds)))).astype(np.float32)


def _dropped(transcriber, res) -> list:
    """(reason, AsrSegment) pairs a call dropped: AsrResult.dropped (or the older
    transcriber.last_dropped, which held the same)."""
    return list(getattr(res, "dropped", None) or getattr(transcriber, "last_dropped", None) or [])


# Each of these made whisper-base invent text under at least one CPU instruction set when
# measured ("1,5kg", "You", "I'm sorry, I'm sorry, ...", "2 tbps", "4.0%", ...); see drop_reason.
@pytest.mark.slow
@pytest.mark.model_score
@pytest.mark.parametrize(
    "kind,audio_fn,language",
    [
        ("white noise 0.1", lambda: _noise(0, 0.1), None),
        ("white noise 0.3, hint en", lambda: _noise(0, 0.3), "en"),
        ("white noise 0.3 seed 2", lambda: _noise(2, 0.3), None),
        ("tones, hint en", _tones, "en"),
        ("white noise 0.03 seed 1", lambda: _noise(1, 0.03), None),
        ("white noise 0.3 seed 3", lambda: _noise(3, 0.3), None),
        ("white noise 0.1 seed 4", lambda: _noise(4, 0.1), None),
        ("white noise 0.1 seed 2, hint en", lambda: _noise(2, 0.1), "en"),
        ("pink noise 0.05", lambda: _pink(0, 0.05), None),
        ("sine sweep", _sweep, None),
    ],
)
def test_noise_and_tones_give_no_text(base, kind, audio_fn, language):
    audio = audio_fn()
    res = base.transcribe(audio, [(0.0, len(audio) / SR)], language=language)
    dropped = [(r, s.text) for r, s in _dropped(base, res)]
    print(f"\n[asr] {kind}: kept {[s.text for s in res.segments]} dropped {dropped}")
    assert res.segments == [], [s.text for s in res.segments]


# Real speech (every file in ../shared/media with speech in it), VAD regions as in the pipeline.
REAL_SPEECH = [
    "speech/jfk.wav", "speech/LDC93S1.wav",  # (jfk.mp3/.flac: the same words, other codecs)
    "diarization/sample.wav", "diarization/ami/dev00.wav", "diarization/ami/dev01.wav",
    "diarization/ami/trn07.wav", "video/laion_talk.mp4", "video/autoeditor_example.mp4",
]


def _n_words(seg: AsrSegment) -> int:
    return sum(any(c.isalnum() for c in w.word) for w in seg.words)


@pytest.mark.slow
@pytest.mark.model_score
def test_real_speech_keeps_its_words(base):
    """The hallucination rules keep >= 99 % of the words whisper-base hears in real speech
    (words in kept segments / words in all segments before dropping)."""
    from mmcurate.transforms.vad import SileroVad

    vad = SileroVad()
    kept_all = total_all = 0
    for name in REAL_SPEECH:
        audio = decode_audio(str(MEDIA / name))
        res = base.transcribe(audio, vad.regions([audio]))
        dropped = _dropped(base, res)
        kept = sum(_n_words(s) for s in res.segments)
        total = kept + sum(_n_words(s) for _, s in dropped)
        print(f"\n[asr] {name}: kept {kept}/{total} words; dropped "
              f"{[(r, s.text, s.no_speech_prob, s.avg_logprob) for r, s in dropped]}")
        assert total > 0, name
        kept_all, total_all = kept_all + kept, total_all + total
    print(f"[asr] real speech: kept {kept_all}/{total_all} words ({kept_all / total_all:.2%})")
    assert kept_all >= 0.99 * total_all


@pytest.mark.slow
@pytest.mark.model_score
def test_tiny_en_transcribes_jfk():
    tr = load_transcriber(AsrConfig(model="whisper-tiny.en", beam_size=1, cpu_threads=_threads()))
    assert tr.model_info()["sha256"] == models.WHISPER_TINY_EN_SHA256
    audio = decode_audio(str(SPEECH / "jfk.flac"))
    res = tr.transcribe(audio, [(0.0, len(audio) / SR)])
    hyp = " ".join(s.text for s in res.segments)
    score = wer(_jfk_ref(), hyp)
    print(f"\n[asr] whisper-tiny.en jfk.flac: WER {score:.3f} | {hyp}")
    assert res.language == "en"
    assert res.model == "whisper-tiny.en (faster-whisper)"
    assert score <= 0.1
    _check_words(res, 0.0, len(audio) / SR)
