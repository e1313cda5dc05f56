"""The multi-speaker development set's generator (tests/conversations.py), on made-up voices:
its reference is exactly where speech was placed, it is deterministic, and the voice split keeps
the test voices out of the fit conversations."""

from __future__ import annotations

import numpy as np
import pytest

import conversations as conv

SR = conv.SR


@pytest.fixture
def tone_voices(monkeypatch):
    """Every voice is a few 'regions' of a tone of its own (no decoding, no VAD model)."""
    def regions(name: str):
        f = 150.0 + 40.0 * sorted(conv.VOICES).index(name)
        return tuple((0.2 * np.sin(2 * np.pi * f * np.arange(int(d * SR)) / SR)).astype(np.float32)
                     for d in (1.2, 2.5, 4.0))

    monkeypatch.setattr(conv, "voice_regions", regions)


def _active(audio: np.ndarray, floor_db: float = -50.0) -> np.ndarray:
    """Per-10 ms frame: louder than the room tone."""
    n = audio.size // 160
    frames = audio[:n * 160].reshape(n, 160).astype(np.float64)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12) > floor_db


def _covered(reference, n: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    for s, e, _ in reference:
        mask[int(np.ceil(s * 100)):int(e * 100)] = True
    return mask


def test_reference_is_where_speech_was_placed(tone_voices):
    c = conv.conversation(("sb_spk2", "ldc93s1", "ami_mee009", "sample_spk90"), 1.5, seed=3)
    active = _active(c.audio)
    covered = _covered(c.reference, active.size)
    # every reference frame sounds, and nothing sounds outside the reference (10 ms fades and
    # frame rounding aside: one frame at each edge)
    edges = covered ^ np.roll(covered, 1) | covered ^ np.roll(covered, -1)
    assert np.all(active[covered & ~edges])
    assert not np.any(active[~covered & ~edges])
    assert {lab for _, _, lab in c.reference} == set(c.voices)
    assert c.duration >= 90.0


def test_turn_taking_has_gaps_overlaps_and_back_channels(tone_voices):
    c = conv.conversation(("sb_spk2", "ldc93s1", "ami_mee009"), 4.0, seed=5)
    ref = c.reference
    others_overlap = [any(o[2] != r[2] and max(o[0], r[0]) < min(o[1], r[1]) for o in ref) for r in ref]
    assert 0.05 < np.mean(others_overlap) < 0.6
    short = [r for r in ref if r[1] - r[0] <= 0.7 + 1e-9]
    assert short, "back-channels"
    # nobody overlaps themself
    for lab in c.voices:
        own = sorted((s, e) for s, e, v in ref if v == lab)
        assert all(b[0] >= a[1] for a, b in zip(own, own[1:])), lab
    # each speaker has at least 3 turns' worth of pieces
    assert all(sum(v == lab for *_, v in ref) >= 3 for lab in c.voices)


def test_monologue_and_exact_turn_count(tone_voices):
    mono = conv.conversation(("jfk",), 1.0, seed=0)
    assert {v for *_, v in mono.reference} == {"jfk"}
    assert all(b[0] >= a[1] for a, b in zip(mono.reference, mono.reference[1:]))
    few = conv.few_turns(0)
    assert few.voices == conv.CLEAN_TEST_VOICES and few.name == "clean-4spk-19turns-s0"


def test_deterministic(tone_voices):
    a = conv.conversation(("sb_spk1", "lj"), 1.0, seed=7)
    b = conv.conversation(("sb_spk1", "lj"), 1.0, seed=7)
    assert np.array_equal(a.audio, b.audio) and a.reference == b.reference
    assert a.rttm().splitlines()[0].startswith(f"SPEAKER {a.name} 1 ")
    assert not np.array_equal(conv.conversation(("sb_spk1", "lj"), 1.0, seed=8).audio[:SR * 30], a.audio[:SR * 30])


def test_voice_split():
    fit = {v.name for v in conv.FIT_VOICES}
    test = {v.name for v in conv.TEST_VOICES}
    assert not fit & test and len(fit) >= 6 and len(test) >= 6
    # the shared meetings, whose files are scored on their own, are never fitted on
    assert all(v.split == "test" for v in conv.TEST_VOICES if v.files[0].startswith("diarization/"))
    for split, allowed in (("fit", fit), ("test", test)):
        rows = conv.dev_set(split)
        assert {len(voices) for _, voices, _, _ in rows} == {1, 2, 3, 4, 5, 6}
        assert all(set(voices) <= allowed and len(set(voices)) == len(voices) for _, voices, _, _ in rows)
        assert all(name.startswith(split) for name, *_ in rows)
    assert conv.dev_set("test") == conv.dev_set("test")
    assert set(conv.CLEAN_TEST_VOICES) <= test and set(conv.LONG_VOICES) <= test
