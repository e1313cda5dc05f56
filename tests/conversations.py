"""Multi-speaker conversations with an exact reference, mixed from single-speaker speech of the
shared media: the development set that calibrates the embedded diarizer's speaker count
(bench/bench_diarization_count.py) and the conversations of tests/test_diarize.py.

A voice is one person's speech regions (silero VAD regions of a single-speaker recording, or
the reference's solo regions of one speaker of a shared meeting). A conversation of k voices is
a sequence of turns (one or more cuts of the speaker's regions), separated by gaps or
overlapping the previous turn, with short back-channels of another participant (the first
0.25-0.7 s of one of their regions: no transcript says which are "yeah"s) inside long turns.
The reference RTTM is where each cut was placed, so it is exact up to the VAD's own
boundaries. Voices with little speech are reused (different cuts of the same regions), at
most MAX_REUSE times their own speech; `Conversation.reuse` says how much.

Voices are split once: FIT_VOICES are the ones the clustering was calibrated on, TEST_VOICES
are only measured. The shared meetings' speakers (sample.wav, AMI) are test voices, so their
files are never fitted on either.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SR = 16000
MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
# at most this many times a voice's own speech goes into one conversation
MAX_REUSE = 12.0


@dataclass(frozen=True)
class Voice:
    name: str
    split: str  # "fit" | "test"
    files: tuple[str, ...]  # under MEDIA
    label: str | None = None  # solo parts of this reference speaker (files with an .rttm)


FIT_VOICES = (
    Voice("sb_spk1", "fit", tuple(f"speakers/sb_spk1_snt{i}.wav" for i in range(1, 7))),
    Voice("lj", "fit", ("speakers/lj_LJ002-0020.wav", "speakers/lj_LJ002-0035.wav", "speakers/lj_LJ050-0131.wav")),
    Voice("libri1088", "fit", ("speakers/libri1088_134315-0000.wav",)),
    Voice("cv651325", "fit", ("speakers/cv_en_651325.mp3",)),
    Voice("jfk", "fit", ("speech/jfk.wav",)),
    Voice("laion_narrator", "fit", ("video/laion_talk.mp4",)),
)
TEST_VOICES = (
    Voice("sb_spk2", "test", tuple(f"speakers/sb_spk2_snt{i}.wav" for i in range(1, 7))),
    Voice("ldc93s1", "test", ("speech/LDC93S1.wav",)),
    Voice("autoeditor_narrator", "test", ("video/autoeditor_example.mp4",)),
    Voice("ami_es2011a", "test", ("speakers/ami_ES2011a_headset0.wav",)),
    Voice("sample_spk90", "test", ("diarization/sample.wav",), "speaker90"),
    Voice("sample_spk91", "test", ("diarization/sample.wav",), "speaker91"),
    Voice("ami_mee009", "test", ("diarization/ami/dev00.wav", "diarization/ami/dev01.wav"), "MEE009"),
    Voice("ami_mee012", "test", ("diarization/ami/dev00.wav", "diarization/ami/dev01.wav"), "MEE012"),
    Voice("ami_fee087", "test", ("diarization/ami/trn07.wav",), "FEE087"),
)
VOICES = {v.name: v for v in FIT_VOICES + TEST_VOICES}


@dataclass(frozen=True)
class Style:
    """How people take turns (seconds unless said)."""

    turn_median: float = 3.0  # turn length: log-normal around this, clipped to turn_range
    turn_range: tuple[float, float] = (0.8, 15.0)
    gap: tuple[float, float] = (0.1, 0.8)  # silence between turns
    overlap_p: float = 0.2  # share of turn changes that overlap the previous turn
    overlap: tuple[float, float] = (0.3, 0.9)
    backchannel_p: float = 0.15  # share of turns over 3 s with a back-channel inside
    backchannel: tuple[float, float] = (0.25, 0.7)
    level_db: float = 4.0  # each voice's level: -23 dBFS +- this
    # share of overlapping turn changes where both talk on for `long_overlap` seconds (0: none;
    # drawn only when > 0, so the conversations of the other styles stay what they were)
    long_overlap_p: float = 0.0
    long_overlap: tuple[float, float] = (1.4, 2.2)
    # a back-channel lies this far inside its turn (at least 3 s turns get one)
    backchannel_margin: float = 1.0


@dataclass
class Conversation:
    name: str
    audio: np.ndarray  # 16 kHz mono float32
    reference: list[tuple[float, float, str]]  # (start, end, voice name), sorted
    voices: tuple[str, ...]
    reuse: dict[str, float] = field(default_factory=dict)  # speech used / the voice's own speech
    # the turn-taking events as planted: (kind, start, end, voice, other voice, offset s), kinds
    # and fields as in the turn_events table: gap (offset > 0), interruption (the holder stops
    # within the overlap range), overlap (long_overlap), backchannel (start, end: its span)
    events: list[tuple[str, float, float, str, str | None, float | None]] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.audio.shape[0] / SR

    def rttm(self) -> str:
        return "".join(f"SPEAKER {self.name} 1 {s:.3f} {e - s:.3f} <NA> <NA> {lab} <NA> <NA>\n"
                       for s, e, lab in self.reference)


# ------------------------------------------------------------------------------ voices


def _solo_regions(rttm: Path, label: str, min_s: float = 0.3) -> list[tuple[float, float]]:
    """Where `label` speaks and nobody else does, per the reference."""
    from der_reference import read_rttm

    ref = read_rttm(rttm)
    own = [(s, e) for s, e, lab in ref if lab == label]
    others = [(s, e) for s, e, lab in ref if lab != label]
    out = []
    for s, e in own:
        pieces = [(s, e)]
        for os_, oe in others:
            pieces = [p for a, b in pieces for p in ((a, min(b, os_)), (max(a, oe), b)) if p[1] > p[0]]
        out += [(a, b) for a, b in pieces if b - a >= min_s]
    return sorted(out)


@functools.lru_cache(maxsize=None)
def voice_regions(name: str) -> tuple[np.ndarray, ...]:
    """A voice's speech regions as 16 kHz float32 arrays."""
    from mmcurate.transforms.decode import decode_audio

    voice = VOICES[name]
    regions = []
    vad = None
    for rel in voice.files:
        audio = decode_audio(str(MEDIA / rel))
        if voice.label is not None:
            spans = _solo_regions((MEDIA / rel).with_suffix(".rttm"), voice.label)
        else:
            if vad is None:
                from mmcurate.transforms.vad import SileroVad

                vad = SileroVad()
            spans = vad.regions([audio])
        regions += [audio[round(s * SR):round(e * SR)] for s, e in spans if e - s >= 0.3]
    return tuple(np.ascontiguousarray(r, dtype=np.float32) for r in regions)


# ------------------------------------------------------------------------- conversations


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(float(np.mean(x.astype(np.float64) ** 2)) + 1e-12)


def _fade(x: np.ndarray, ms: float = 10.0) -> np.ndarray:
    n = min(len(x) // 2, int(ms * SR / 1000))
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


class _Pool:
    """One voice's regions, handed out in a shuffled cycle so that reuse spreads over all of them."""

    def __init__(self, regions, rng: np.random.Generator, gain: float):
        self.regions, self.rng, self.gain = regions, rng, gain
        self.order: list[int] = []
        self.own = sum(len(r) for r in regions) / SR
        self.used = 0.0

    def _next(self) -> np.ndarray:
        if not self.order:
            self.order = list(self.rng.permutation(len(self.regions)))
        return self.regions[self.order.pop()]

    def cut(self, seconds: float) -> np.ndarray:
        """Up to `seconds` of one region, from a random point (whole region if shorter)."""
        r = self._next()
        n = min(len(r), max(int(0.3 * SR), int(seconds * SR)))
        start = int(self.rng.integers(0, len(r) - n + 1))
        self.used += n / SR
        return self.gain * r[start:start + n]

    def onset(self, seconds: float) -> np.ndarray:
        """The first `seconds` of a region: a short back-channel."""
        r = self._next()
        n = min(len(r), int(seconds * SR))
        self.used += n / SR
        return self.gain * r[:n]


def conversation(voices: tuple[str, ...], minutes: float, seed: int, style: Style = Style(),
                 name: str | None = None, turns: int | None = None) -> Conversation:
    """A deterministic conversation of `voices` (names in VOICES) about `minutes` long, or of
    exactly `turns` turns. Everyone gets at least 3 turns; the others' shares are drawn."""
    rng = np.random.default_rng(seed)
    k = len(voices)
    pools = []
    for v in voices:
        regions = voice_regions(v)
        level = np.median([_rms_db(r) for r in regions])
        target = -23.0 + float(rng.uniform(-style.level_db, style.level_db))
        pools.append(_Pool(regions, rng, np.float32(10 ** ((target - level) / 20))))
    # speaking shares: a host or two speak more than a guest; nobody below a third of 1/k
    share = 0.7 * rng.dirichlet(np.full(k, 2.0)) + 0.3 / k
    total = minutes * 60.0
    placed: list[tuple[int, float, np.ndarray]] = []  # (voice index, start s, samples)
    planted: list[tuple[str, float, float, int, int | None, float | None]] = []

    def pick(prev: int | None, n_turns: list[int]) -> int:
        if k == 1:  # a monologue: the same person after each pause
            return 0
        starved = [i for i in range(k) if n_turns[i] < 3 and i != prev]
        if turns is not None and starved and turns - sum(n_turns) <= 3 * len(starved):
            return int(rng.choice(starved))
        w = np.array([0.0 if i == prev else share[i] for i in range(k)])
        # a voice out of fresh speech steps back (MAX_REUSE), unless it still needs its 3 turns
        for i, p in enumerate(pools):
            if p.used >= MAX_REUSE * p.own and n_turns[i] >= 3:
                w[i] *= 0.05
        if w.sum() == 0:
            w = np.array([0.0 if i == prev else 1.0 for i in range(k)])
        return int(rng.choice(k, p=w / w.sum()))

    t, prev, prev_start, n_turns = 0.5, None, 0.0, [0] * k
    while (t < total if turns is None else sum(n_turns) < turns) or (turns is None and min(n_turns) < 3):
        spk = pick(prev, n_turns)
        if prev is not None:
            prev_end = t
            if spk != prev and rng.random() < style.overlap_p:  # nobody overlaps themself
                long = style.long_overlap_p > 0 and rng.random() < style.long_overlap_p
                t = max(prev_start + 0.5, t - float(rng.uniform(*(style.long_overlap if long else style.overlap))))
                # named by the overlap it got (a short previous turn cuts it), "unclear" between
                kind = ("overlap" if prev_end - t >= style.long_overlap[0] else
                        "interruption" if prev_end - t <= style.overlap[1] else "unclear")
                planted.append((kind, t, prev_end, spk, prev, t - prev_end))
            else:
                t += float(rng.uniform(*style.gap))
                planted.append(("gap" if spk != prev else "pause", prev_end, t, spk, None if spk == prev else prev,
                                t - prev_end))
        length = float(np.clip(style.turn_median * np.exp(rng.normal(0.0, 0.6)), *style.turn_range))
        start, filled = t, 0.0
        while length - filled >= 0.3:
            piece = pools[spk].cut(length - filled)
            placed.append((spk, t, _fade(piece)))
            t += len(piece) / SR
            filled += len(piece) / SR
            if length - filled >= 0.3:
                t += float(rng.uniform(0.05, 0.25))
        m = style.backchannel_margin
        if t - start > max(3.0, 2 * m + style.backchannel[1]) and k > 1 and rng.random() < style.backchannel_p:
            other = int(rng.choice([i for i in range(k) if i != spk]))
            bc = pools[other].onset(float(rng.uniform(*style.backchannel)))
            at = float(rng.uniform(start + m, t - m - len(bc) / SR))
            placed.append((other, at, _fade(bc)))
            planted.append(("backchannel", at, at + len(bc) / SR, other, spk, None))
        n_turns[spk] += 1
        prev, prev_start = spk, start
    end = max(s + len(x) / SR for _, s, x in placed) + 0.5
    audio = np.zeros(int(np.ceil(end * SR)), np.float32)
    reference = []
    for spk, s, x in placed:
        i = round(s * SR)
        audio[i:i + len(x)] += x
        reference.append((i / SR, (i + len(x)) / SR, voices[spk]))
    audio += rng.normal(0.0, 10 ** (-70 / 20), audio.shape[0]).astype(np.float32)  # room tone
    peak = float(np.max(np.abs(audio)))
    if peak > 0.99:
        audio *= 0.99 / peak
    reference.sort(key=lambda r: (r[0], r[1]))
    name = name or f"{k}spk-{minutes:g}min-s{seed}"
    events = sorted((kind, round(a * SR) / SR, round(b * SR) / SR, voices[who], None if other is None else voices[other],
                     None if off is None else round(off, 3)) for kind, a, b, who, other, off in planted)
    return Conversation(name, audio, reference, tuple(voices),
                        {voices[i]: round(p.used / p.own, 2) for i, p in enumerate(pools)}, events)


# ------------------------------------------------------------------------- the dev set


DEV_COUNTS = (1, 2, 3, 4, 5, 6)
DEV_MINUTES = {1: (1.5, 3.0), **{k: (1.0, 2.0, 4.0) for k in range(2, 7)}}


def dev_set(split: str, seed: int = 0):
    """(name, voices, minutes, seed) of every conversation of a split: for each speaker count,
    the DEV_MINUTES lengths, voices drawn from the split's voices."""
    pool = [v.name for v in (FIT_VOICES if split == "fit" else TEST_VOICES)]
    rng = np.random.default_rng([seed, 0 if split == "fit" else 1])
    out = []
    for k in DEV_COUNTS:
        for j, minutes in enumerate(DEV_MINUTES[k]):
            voices = tuple(str(v) for v in rng.choice(pool, size=k, replace=False))
            s = int(rng.integers(1 << 31))
            out.append((f"{split}-{k}spk-{minutes:g}min", voices, minutes, s))
    return out


# 4 test voices with the most speech of their own, so that reuse stays lowest
LONG_VOICES = ("sb_spk2", "autoeditor_narrator", "sample_spk91", "ami_mee009")


def long_conversation(seed: int = 30) -> Conversation:
    """30 minutes of LONG_VOICES; each voice's speech is reused ~20-35 times (66 s of their own
    speech in all)."""
    return conversation(LONG_VOICES, 30.0, seed, name="test-4spk-30min")


# the four test voices recorded alone and close to the microphone
CLEAN_TEST_VOICES = ("sb_spk2", "ldc93s1", "autoeditor_narrator", "ami_es2011a")
# a clean conversation cut into few turns, the shape of a first user report: 19 turns,
# gaps of 0.1-0.6 s, one turn change in five overlapping by 0.3-0.9 s, no back-channel
FEW_TURNS = Style(gap=(0.1, 0.6), backchannel_p=0.0)


def few_turns(seed: int, voices: tuple[str, ...] = CLEAN_TEST_VOICES, turns: int = 19) -> Conversation:
    return conversation(voices, 0.0, seed, FEW_TURNS, name=f"clean-{len(voices)}spk-{turns}turns-s{seed}", turns=turns)


# turn-taking with every kind of event, far enough apart to tell which is which (the turn-events
# bench and tests): turns of at least 2.8 s, gaps of 0.2-1.0 s; of overlapping changes, half with the holder stopping
# within 0.3-0.7 s (interruptions) and half talking on for 1.4-2.2 s (overlaps); back-channels
# of 0.3-0.8 s at least 2.5 s inside a turn, in half of the turns long enough
EVENTS = Style(turn_median=4.0, turn_range=(2.8, 15.0), gap=(0.2, 1.0), overlap_p=0.4, overlap=(0.3, 0.7), long_overlap_p=0.5,
               long_overlap=(1.4, 2.2), backchannel_p=0.5, backchannel=(0.3, 0.8), backchannel_margin=2.5)
