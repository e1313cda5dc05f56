"""Speaker attribution and utterance cutting: ASR words + diarization turns -> utterances.

Pure functions (no Beam, no models), so the rules are tested on hand-made words and turns.

* `assign_speakers`: each word gets the speaker whose turn overlaps it most; a word that
  overlaps no turn takes the nearest turn within `max_gap_s` (1.0 s), else None.
* `cut_utterances`: consecutive words are grouped into utterances, cut at speaker changes,
  at sentence ends (".", "?", "!" ending a word) and at long pauses (>= 1.0 s between words);
  a run longer than `max_duration_s` (30 s, Whisper's window) is split at its largest inner
  pause, recursively. Speakers are renumbered 0, 1, ... by their first turn in the source (by
  first word when there are no turns), so labels are stable whatever indices the diarizer
  happened to use and whichever words the ASR heard; a speaker without words keeps its number.

Times are absolute seconds in the source (Lhotse's convention).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import ClassVar

from mmcurate.schemas.params import Rule, positive
from mmcurate.schemas.records import AsrResult, AsrSegment, Turn, Word


@dataclass
class SegmentsConfig:
    max_duration_s: float = 30.0  # one utterance at most (Whisper's window)
    # store each segment's audio in segments.audio ({bytes, path}, Hugging Face's Audio layout),
    # cut from the decode the speech models read; off: segments.audio_uri is a reference only
    include_audio: bool = False
    audio_format: str = "flac"  # flac: lossless 16-bit, 16 kHz mono | opus: Ogg Opus, 16 kHz mono
    opus_bitrate_kbps: int = 32  # the Opus stream's bit rate (audio_format opus)

    RULES: ClassVar[dict] = {"max_duration_s": positive("seconds"),
                             "audio_format": Rule(choices=("flac", "opus")),
                             "opus_bitrate_kbps": positive("kbit/s")}


# A word that overlaps no turn is given the nearest turn closer than this: diarizers trim
# turn edges more tightly than ASR word timestamps (pyannote's own collar convention is 0.25 s
# each side; 1.0 s also covers Whisper's word-time drift of a few hundred ms).
NEAREST_TURN_MAX_GAP_S = 1.0
# A silence this long between two words ends an utterance (a turn-taking pause; VAD's
# min_silence is 0.1 s, so this only cuts where people clearly stopped).
LONG_PAUSE_S = 1.0
SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")
# Abbreviations whose final "." does not end a sentence (English; lower-cased, no punctuation
# around them).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st vs etc e.g i.e jr sr no vol fig approx dept".split()
)


@dataclass(frozen=True)
class Utterance:
    """One speaker's contiguous stretch of words; becomes one `mmcurate.schemas.records.Segment`."""

    segment_id: str  # f"{source_id}-seg-{n:05d}"
    source_id: str
    start: float
    end: float
    speaker: int | None  # renumbered by first turn in the source; None: unknown
    text: str
    words: list[Word]
    avg_logprob: float | None  # duration-weighted mean over the ASR segments it came from
    no_speech_prob: float | None  # max over those segments
    compression_ratio: float | None  # mean over those segments
    raw_speaker: int | None = None  # the diarizer's own id before renumbering

    @property
    def duration(self) -> float:
        return self.end - self.start


def assign_speakers(
    words: list[Word], turns: list[Turn], *, max_gap_s: float = NEAREST_TURN_MAX_GAP_S
) -> list[int | None]:
    """Speaker index for each word (diarizer's own indices), or None when no turn is near.

    The speaker with the largest total overlap wins; ties go to the speaker whose turn holds
    the word's midpoint, then to the lower index. Pass exclusive turns
    (`mmcurate.transforms.diarize.exclusive_turns`) to decide overlapped speech the diarizer's way;
    overlapping turns also work (each speaker is credited with its own overlap).
    """
    if not turns:
        return [None] * len(words)
    ts = sorted(turns, key=lambda t: (t.start, t.end))
    starts = [t.start for t in ts]
    max_end = []  # prefix maximum of turn ends: lets the backward scan stop early
    m = -math.inf
    for t in ts:
        m = max(m, t.end)
        max_end.append(m)

    out: list[int | None] = []
    for w in words:
        lo, hi = min(w.start, w.end), max(w.start, w.end)
        mid = (lo + hi) / 2
        overlap: dict[int, float] = {}
        holds_mid: set[int] = set()
        nearest: tuple[float, int] | None = None  # (gap, speaker)
        j = bisect.bisect_left(starts, hi + max_gap_s) - 1
        while j >= 0 and max_end[j] >= lo - max_gap_s:
            t = ts[j]
            j -= 1
            ov = min(hi, t.end) - max(lo, t.start)
            if ov > 0:
                overlap[t.speaker] = overlap.get(t.speaker, 0.0) + ov
            if t.start <= mid <= t.end:
                holds_mid.add(t.speaker)
            gap = max(t.start - hi, lo - t.end, 0.0)
            if gap <= max_gap_s and (nearest is None or (gap, t.speaker) < nearest):
                nearest = (gap, t.speaker)
        if overlap:
            out.append(max(overlap, key=lambda s: (overlap[s], s in holds_mid, -s)))
        elif holds_mid:  # zero-length word inside a turn
            out.append(min(holds_mid))
        elif nearest is not None:
            out.append(nearest[1])
        else:
            out.append(None)
    return out


def is_sentence_end(word: str) -> bool:
    w = word.strip().rstrip("\"'”’)]")
    if not w.endswith(SENTENCE_END):
        return False
    if w.endswith(".") and w[:-1].lower().lstrip("\"'“‘([") in _ABBREVIATIONS:
        return False
    return True


def join_words(words: list[Word]) -> str:
    """Utterance text from its words: Whisper-style words carry their leading space and are
    concatenated; words without one (aligners such as whisperx) are joined with spaces."""
    if not words:
        return ""
    if any(w.word[:1].isspace() for w in words):
        return "".join(w.word for w in words).strip()
    return " ".join(w.word.strip() for w in words).strip()


def cut_utterances(
    asr: AsrResult,
    turns: list[Turn],
    *,
    source_id: str,
    max_duration_s: float = 30.0,
    long_pause_s: float = LONG_PAUSE_S,
    speakers: list[int | None] | None = None,
    default_speaker: int | None = 0,
) -> list[Utterance]:
    """Utterances of one source, in time order, with renumbered speakers and ASR scores.

    `turns` should be exclusive (no overlap); an empty list means "no diarization": every word
    then gets `default_speaker` (0: one speaker; None: unknown, e.g. diarization failed). `speakers` overrides the per-word
    assignment (one entry per word of `asr.segments`, in order) - e.g. all None when
    diarization failed. ASR segments without word timestamps become one utterance each,
    attributed by the overlap of the whole segment.
    """
    segs = sorted(asr.segments, key=lambda s: (s.start, s.end))
    # Flatten to (word, asr segment index); segments without words stand as one pseudo-item.
    items: list[tuple[Word, int, bool]] = []  # (word, segment index, is_whole_segment)
    for i, s in enumerate(segs):
        if s.words:
            items.extend((w, i, False) for w in s.words)
        elif s.text.strip():
            items.append((Word(s.text.strip(), s.start, s.end, float("nan")), i, True))
    if not items:
        return []

    if speakers is not None:
        if len(speakers) != len(items):
            raise ValueError(f"{source_id}: {len(speakers)} speakers for {len(items)} words")
        spk = list(speakers)
    elif turns:
        spk = assign_speakers([w for w, _, _ in items], turns)
    else:
        spk = [default_speaker] * len(items)

    # Group into runs: cut at speaker change, sentence end, long pause, whole-segment items.
    runs: list[list[int]] = []
    cur: list[int] = []
    for k, (w, _, whole) in enumerate(items):
        if cur:
            prev_w, _, prev_whole = items[cur[-1]]
            if (
                spk[k] != spk[cur[-1]]
                or whole
                or prev_whole
                or is_sentence_end(prev_w.word)
                or w.start - prev_w.end >= long_pause_s
            ):
                runs.append(cur)
                cur = []
        cur.append(k)
    if cur:
        runs.append(cur)

    pieces: list[list[int]] = []
    for run in runs:
        pieces.extend(_split_long(run, items, max_duration_s))

    # Speakers are numbered by their first turn, not their first word: the words depend on the
    # ASR, and a word that comes or goes must not swap two speakers' labels.
    renumber: dict[int, int] = {}
    first_turn: dict[int, float] = {}
    for t in turns:
        first_turn[t.speaker] = min(first_turn.get(t.speaker, t.start), t.start)
    for raw in sorted(first_turn, key=lambda r: (first_turn[r], r)):
        renumber[raw] = len(renumber)
    out: list[Utterance] = []
    for idx in pieces:
        raw = spk[idx[0]]
        if raw is not None and raw not in renumber:
            renumber[raw] = len(renumber)
        words = [items[k][0] for k in idx]
        whole = items[idx[0]][2]
        avg_lp, nsp, cr = _scores(idx, items, segs)
        out.append(
            Utterance(
                segment_id=f"{source_id}-seg-{len(out):05d}",
                source_id=source_id,
                start=min(w.start for w in words),
                end=max(w.end for w in words),
                speaker=None if raw is None else renumber[raw],
                text=segs[items[idx[0]][1]].text.strip() if whole else join_words(words),
                words=[] if whole else words,
                avg_logprob=avg_lp,
                no_speech_prob=nsp,
                compression_ratio=cr,
                raw_speaker=raw,
            )
        )
    return out


def _split_long(
    run: list[int], items: list[tuple[Word, int, bool]], max_duration_s: float
) -> list[list[int]]:
    """Split a run longer than max_duration_s at its largest inner pause (ties: nearest the
    middle), recursively. A single word longer than the cap stays whole (it cannot be cut)."""
    first, last = items[run[0]][0], items[run[-1]][0]
    if len(run) < 2 or last.end - first.start <= max_duration_s:
        return [run]
    mid_t = (first.start + last.end) / 2
    best_j, best_key = 1, None
    for j in range(1, len(run)):
        a, b = items[run[j - 1]][0], items[run[j]][0]
        gap = b.start - a.end
        key = (round(gap, 6), -abs(b.start - mid_t))
        if best_key is None or key > best_key:
            best_j, best_key = j, key
    return _split_long(run[:best_j], items, max_duration_s) + _split_long(
        run[best_j:], items, max_duration_s
    )


def _scores(
    idx: list[int], items: list[tuple[Word, int, bool]], segs: list[AsrSegment]
) -> tuple[float | None, float | None, float | None]:
    """ASR scores of the segments an utterance came from: avg_logprob weighted by how long the
    utterance spends in each segment, the worst (max) no_speech_prob, mean compression ratio."""
    span: dict[int, list[float]] = {}
    for k in idx:
        w, si, _ = items[k]
        lo_hi = span.setdefault(si, [w.start, w.end])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], w.start), max(lo_hi[1], w.end)
    lp_num = lp_den = 0.0
    lp_any = False
    nsp: float | None = None
    crs: list[float] = []
    for si, (lo, hi) in span.items():
        s = segs[si]
        if s.avg_logprob is not None:
            weight = max(hi - lo, 1e-3)
            lp_num += weight * s.avg_logprob
            lp_den += weight
            lp_any = True
        if s.no_speech_prob is not None:
            nsp = s.no_speech_prob if nsp is None else max(nsp, s.no_speech_prob)
        if s.compression_ratio is not None:
            crs.append(s.compression_ratio)
    return (
        lp_num / lp_den if lp_any else None,
        nsp,
        sum(crs) / len(crs) if crs else None,
    )
