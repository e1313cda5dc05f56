"""ASR with word timestamps: the embedded faster-whisper backend on real speech, plus scoring.

Real-model tests load each model once per module and print the measured WER / timing error
(run with -s to see them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmcurate.pipelines.config import AsrConfig
from mmcurate.quality.wer import align_words, normalize, wer
from mmcurate.schemas.records import AsrSegment
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


def test_interpolated_words_cover_segment():
    words = interpolate_words("ask not what", 10.0, 13.0)
    assert [w.word for w in words] == ["ask", "not", "what"]
    assert words[0].start == 10.0 and words[-1].end == 13.0
    assert all(w.probability is None for w in words)
    assert words[2].end - words[2].start > words[0].end - words[0].start  # by length


def test_drop_rules():
    cfg = AsrConfig()

    def seg(text="hello there", lp=-0.3, nsp=0.1, cr=1.2):
        return AsrSegment(0.0, 1.0, text, [], lp, nsp, cr)

    assert drop_reason(seg(), cfg) is None
    assert drop_reason(seg(lp=-1.5, nsp=0.7), cfg) == "no_speech"  # Whisper's rule
    assert drop_reason(seg(lp=-1.5, nsp=0.7), cfg, no_speech_alone=None) == "no_speech"
    assert drop_reason(seg(lp=-0.5, nsp=0.7), cfg, no_speech_alone=None) is None  # Whisper keeps
    assert drop_reason(seg(lp=-0.5, nsp=0.7), cfg) == "no_speech"  # VAD-gated extra rule
    assert drop_reason(seg(cr=3.0), cfg) == "repetitive"
    assert drop_reason(seg(text=" ♪ ..."), cfg) == "no_words"


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


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMCURATE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield load_transcriber(AsrConfig())  # whisper-base, beam 5, int8


@pytest.mark.slow
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


# These inputs made whisper-base invent text ("1,5kg", "I'm sorry." x4, ".") when measured.
@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,audio_fn,language",
    [
        ("white noise 0.1", lambda: _noise(0, 0.1), None),
        ("white noise 0.3, hint en", lambda: _noise(0, 0.3), "en"),
        ("white noise 0.3 seed 2", lambda: _noise(2, 0.3), None),
        ("tones, hint en", _tones, "en"),
    ],
)
def test_noise_and_tones_give_no_text(base, kind, audio_fn, language):
    audio = audio_fn()
    res = base.transcribe(audio, [(0.0, len(audio) / SR)], language=language)
    dropped = [(r, s.text) for r, s in base.last_dropped]
    print(f"\n[asr] {kind}: kept {[s.text for s in res.segments]} dropped {dropped}")
    assert res.segments == [], [s.text for s in res.segments]


@pytest.mark.slow
def test_tiny_en_transcribes_jfk():
    tr = load_transcriber(AsrConfig(model="whisper-tiny.en", beam_size=1))
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
