"""Temporal and turn-taking question-answer items (`mmcurate export DIR --format qa --to OUT`):
questions about fixed-length clips of curated conversations whose answers are read off the
tables (`turns`, `turn_events`, `segments`), never guessed.

Which sources, which clips:

* a curated source is used when its curated `turns` have two or more speakers (others are
  counted in the summary as skipped). Its clips are cut on the source timeline:
  [k * clip_s, min((k + 1) * clip_s, duration_s)) for k = 0, 1, ... (default clip_s 30 s); a
  clip without any speech gives no item.
* a source whose `transcripts.diarization_confidence` (how sure the diarizer is of the speaker
  count) is below `min_confidence` (default 0.5) gives no item: every item it would have given
  is counted as `dropped_low_confidence` (per kind). A source without a confidence (reference
  turns, an old output) is kept.
* "first" / "last" items are also dropped (counted as `dropped_overlapped`) when the turn that
  decides them is flagged `overlapped` (another speaker talks during it: where the diarizer's
  speaker labels are least sure).

Speech in a clip: each turn cut to the clip; a speaker speaks in the clip when their cut turns
there add up to at least MIN_SPEECH_S (0.2 s: a sliver at the clip's edge is not someone
speaking). Times in the questions are seconds from the clip's start, two decimals; `clip_start`
and `clip_end` put the clip on the source timeline.

Kinds (at most the number said per clip):

* ``count`` (1): how many people speak in the clip. Options: other counts near it.
* ``first`` / ``last`` (1 each): who speaks first (the earliest start of speech in the clip) /
  last (the latest end). Not asked when another speaker starts (ends) within AMBIGUOUS_S (0.5 s)
  of it. Options: the speaker labels in the clip, then the source's other speakers, then
  labels the source does not have (`<source_id>-spk<k>`), as many as needed.
* ``order`` (1): which of these phrases is said first. A phrase is up to 3 consecutive words of
  a segment (`segments.words`), inside the clip, its text unique in the clip; the distractors
  start at least ORDER_APART_S (1 s) after the answer's start and after its end.
* ``duration`` (up to 2): how long a given silence (a `gap` or `pause` of `turn_events`, inside
  the clip) lasts, and how long a given turn (a `turns` row inside the clip) lasts. The answer
  is the seconds to two decimals; `tolerance_s` = max(0.2 s, 10 % of it); the distractors lie
  2 * tolerance + 0.05 s apart from it and from each other (none within the tolerance of the
  true value), above 0.
* ``interrupt`` (up to 2): does X interrupt Y in the clip: "yes" for an `interruption` or
  `overlap` event starting in the clip with X its `speaker` and Y its `other_speaker`, "no" for
  two speakers of the clip with no such event from X to Y in it. Options: yes, no.
* ``backchannel`` (up to 2): is the utterance of X from a to b a back-channel: "yes" for a
  `backchannel` event inside the clip, "no" for the turn of a newcomer who takes the floor (a
  `gap`, `interruption` or `overlap` event's speaker, the turn that starts at their onset),
  inside the clip. Options: yes, no.

`options` hold the answer and `distractors` others (3 to 10, default 3; never the answer) for
count, first, last, order and duration; the yes/no kinds have the two options. Options are
shuffled by a generator seeded from the item's id. `item_id` is
`<source_id>-qa-<clip k, 5 digits>-<kind>-<n>`: a re-run gives the same items. `reference` lists
the ids of the rows an item came from (turn_id, event_id, segment_id), its subject's first.

Layout (`mmcurate.transforms.export.QAExporter`): `OUT/qa-NNNNNN.parquet`, shards of
`--shard-size` sources (default 64), items by source, clip, kind, with the columns of
`QA_FIELDS`; `OUT/summary.json` (items per kind, dropped per kind and reason, sources used and
skipped, the options) written after the shards. README.md, "Dialogue data", has an example.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

import pyarrow as pa

DEFAULT_CLIP_S = 30.0
DEFAULT_DISTRACTORS = 3
DISTRACTORS_RANGE = (3, 10)
DEFAULT_MIN_CONFIDENCE = 0.5
MIN_SPEECH_S = 0.2  # a speaker with less speech in a clip does not speak in it
AMBIGUOUS_S = 0.5  # first/last: another speaker starting (ending) this close: not asked
ORDER_APART_S = 1.0  # order: distractors start this much after the answer (and after its end)
PHRASE_WORDS = 3
MIN_TOLERANCE_S = 0.2
REL_TOLERANCE = 0.1
KINDS = ("count", "first", "last", "order", "duration", "interrupt", "backchannel")
YES, NO = "yes", "no"

QA_FIELDS = [
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("clip_start", pa.float64(), nullable=False),  # seconds in the source
    pa.field("clip_end", pa.float64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # one of KINDS
    pa.field("question", pa.string(), nullable=False),  # times in it: seconds from clip_start
    pa.field("answer", pa.string(), nullable=False),
    pa.field("options", pa.list_(pa.string())),  # the answer + distractors, shuffled
    pa.field("tolerance_s", pa.float64()),  # duration: an answer within this is right; else null
    pa.field("reference", pa.list_(pa.string())),  # turn_id / event_id / segment_id rows used
    pa.field("diarization_confidence", pa.float64()),  # the source's (null: not measured)
    # every speaker of the clip with a moment (seconds from clip_start) they talk alone: how a
    # listener tells which voice a label in the question or the options means
    pa.field("voices", pa.list_(pa.struct([pa.field("speaker", pa.string()), pa.field("alone_at", pa.float64())]))),
]
QA_SCHEMA = pa.schema(QA_FIELDS)


@dataclass(frozen=True)
class Turn:
    turn_id: str
    speaker: str
    start: float
    end: float
    overlapped: bool = False


@dataclass(frozen=True)
class Event:
    event_id: str
    kind: str
    start: float
    end: float
    speaker: str
    other_speaker: str | None
    offset_s: float | None = None


@dataclass(frozen=True)
class Phrase:
    segment_id: str
    text: str
    start: float
    end: float


@dataclass
class QAOptions:
    clip_s: float = DEFAULT_CLIP_S
    distractors: int = DEFAULT_DISTRACTORS
    min_confidence: float = DEFAULT_MIN_CONFIDENCE


@dataclass
class Counts:
    items: dict[str, int] = field(default_factory=dict)  # kind -> items written
    dropped_low_confidence: dict[str, int] = field(default_factory=dict)
    dropped_overlapped: dict[str, int] = field(default_factory=dict)
    sources_low_confidence: int = 0
    clips: int = 0

    def add(self, other: "Counts") -> None:
        for name in ("items", "dropped_low_confidence", "dropped_overlapped"):
            mine = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] = mine.get(k, 0) + v
        self.sources_low_confidence += other.sources_low_confidence
        self.clips += other.clips

    def to_dict(self) -> dict:
        return {"items": dict(sorted(self.items.items())),
                "dropped_low_confidence": dict(sorted(self.dropped_low_confidence.items())),
                "dropped_overlapped": dict(sorted(self.dropped_overlapped.items())),
                "sources_low_confidence": self.sources_low_confidence, "clips": self.clips}

    @classmethod
    def from_dict(cls, d: dict) -> "Counts":
        return cls(dict(d["items"]), dict(d["dropped_low_confidence"]), dict(d["dropped_overlapped"]),
                   int(d["sources_low_confidence"]), int(d["clips"]))


def tolerance(seconds: float) -> float:
    return round(max(MIN_TOLERANCE_S, REL_TOLERANCE * seconds), 3)


def _t(x: float) -> str:
    return f"{x:.2f}"


def _seed(item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big")


def clips(duration_s: float, clip_s: float) -> list[tuple[float, float]]:
    out, k = [], 0
    while k * clip_s < duration_s:
        out.append((round(k * clip_s, 6), round(min((k + 1) * clip_s, duration_s), 6)))
        k += 1
    return out


def _cut(turns: list[Turn], a: float, b: float) -> list[tuple[Turn, float, float]]:
    """Turns cut to [a, b): (turn, start, end), those with something inside."""
    return [(t, max(t.start, a), min(t.end, b)) for t in turns if min(t.end, b) > max(t.start, a)]


def speaker_order(speaker: str) -> tuple[int, str]:
    """spk2 before spk10 (the labels of one source share its prefix)."""
    return len(speaker), speaker


def alone_at(turns: list[Turn], speaker: str, a: float, b: float) -> float | None:
    """The middle of `speaker`'s longest stretch in [a, b) with nobody else speaking, seconds
    from `a` (None: they never speak alone there)."""
    others = [(s, e) for t, s, e in _cut(turns, a, b) if t.speaker != speaker]
    best, best_len = None, 0.0
    for t, s, e in _cut(turns, a, b):
        if t.speaker != speaker:
            continue
        pieces = [(s, e)]
        for os_, oe in others:
            pieces = [p for x, y in pieces for p in ((x, min(y, os_)), (max(x, oe), y)) if p[1] > p[0]]
        for x, y in pieces:
            if y - x > best_len:
                best, best_len = (x + y) / 2 - a, y - x
    return None if best is None else round(best, 2)


def speakers_in(turns: list[Turn], a: float, b: float) -> list[str]:
    """The speakers with at least MIN_SPEECH_S of speech in [a, b)."""
    speech: dict[str, float] = {}
    for t, s, e in _cut(turns, a, b):
        speech[t.speaker] = speech.get(t.speaker, 0.0) + (e - s)
    return sorted((spk for spk, d in speech.items() if d >= MIN_SPEECH_S - 1e-9), key=speaker_order)


def phrases(segments: list[tuple[str, list[dict]]]) -> list[Phrase]:
    """Up to PHRASE_WORDS consecutive words of each segment, in groups from its first word."""
    out = []
    for sid, words in segments:
        ws = [w for w in (words or []) if (w.get("word") or "").strip() and w.get("start") is not None
              and w.get("end") is not None]
        for i in range(0, len(ws), PHRASE_WORDS):
            group = ws[i:i + PHRASE_WORDS]
            out.append(Phrase(sid, " ".join(w["word"].strip() for w in group), float(group[0]["start"]),
                              float(group[-1]["end"])))
    return sorted(out, key=lambda p: (p.start, p.end, p.segment_id))


def _shuffled(item_id: str, answer: str, distractors: list[str]) -> list[str]:
    assert answer not in distractors and len(set(distractors)) == len(distractors)
    opts = [answer] + distractors
    random.Random(_seed(item_id)).shuffle(opts)
    return opts


def count_distractors(n: int, k: int) -> list[str]:
    """k other speaker counts, nearest first (n+1, n-1, n+2, ...; at least 1)."""
    out, d = [], 1
    while len(out) < k:
        for c in (n + d, n - d):
            if c >= 1 and len(out) < k:
                out.append(str(c))
        d += 1
    return out


def speaker_distractors(answer: str, present: list[str], all_speakers: list[str], source_id: str,
                        k: int) -> list[str]:
    out = [s for s in present if s != answer]
    out += [s for s in all_speakers if s != answer and s not in out]
    n = 0
    taken = set(all_speakers) | {answer}
    while len(out) < k:
        label = f"{source_id}-spk{n}"
        if label not in taken and label not in out:
            out.append(label)
        n += 1
    return out[:k]


def duration_distractors(seconds: float, k: int) -> list[str]:
    """k durations spaced 2 * tolerance + 0.05 s from the answer and from each other, > 0:
    alternately above and below it, below only while above 0."""
    step = 2 * tolerance(seconds) + 0.05
    out, d = [], 1
    answer = _t(seconds)
    while len(out) < k:
        for x in (seconds + d * step, seconds - d * step):
            if x > 0.05 and len(out) < k and _t(x) != answer:
                out.append(_t(x))
        d += 1
    return out


def source_items(source_id: str, duration_s: float, turns: list[Turn], events: list[Event],
                 segments: list[tuple[str, list[dict]]], confidence: float | None,
                 opts: QAOptions) -> tuple[list[dict], Counts]:
    """The items of one source (in clip, kind order) and what was counted on the way."""
    counts = Counts()
    turns = sorted(turns, key=lambda t: (t.start, t.end, t.turn_id))
    events = sorted(events, key=lambda e: (e.start, e.end, e.event_id))
    all_speakers = sorted({t.speaker for t in turns if t.end > t.start}, key=speaker_order)
    all_phrases = phrases(segments)
    low = confidence is not None and confidence < opts.min_confidence
    items: list[dict] = []
    for k, (a, b) in enumerate(clips(duration_s, opts.clip_s)):
        present = speakers_in(turns, a, b)
        if not present:
            continue
        counts.clips += 1
        clip_counts = Counts()  # overlapped drops: counted only where the source is not dropped whole
        made = _clip_items(source_id, k, a, b, present, turns, events, all_phrases, all_speakers, opts, clip_counts)
        for it in made:
            it["diarization_confidence"] = confidence
        if low:
            for it in made:
                counts.dropped_low_confidence[it["kind"]] = counts.dropped_low_confidence.get(it["kind"], 0) + 1
            continue
        counts.add(clip_counts)
        for it in made:
            counts.items[it["kind"]] = counts.items.get(it["kind"], 0) + 1
        items += made
    if low:
        counts.sources_low_confidence = 1
    return items, counts


def _clip_items(source_id, k, a, b, present, turns, events, all_phrases, all_speakers, opts: QAOptions,
                counts: Counts) -> list[dict]:
    out: list[dict] = []
    nd = opts.distractors

    def item(kind: str, n: int, question: str, answer: str, distractors: list[str] | None,
             reference: list[str], tol: float | None = None) -> None:
        item_id = f"{source_id}-qa-{k:05d}-{kind}-{n}"
        options = _shuffled(item_id, answer, distractors if distractors is not None
                            else [NO if answer == YES else YES])
        named = [spk for spk in voices if re.search(re.escape(spk) + r"(?!\d)", question + " " + " ".join(options))]
        if named:  # the labels a listener must tell apart, each by a moment it talks alone
            question += " Voices: " + "; ".join(
                f"{spk} is the voice at {_t(voices[spk])} s" if voices[spk] is not None else f"{spk} never talks alone"
                for spk in named) + "."
        out.append({"item_id": item_id, "source_id": source_id, "clip_start": a, "clip_end": b, "kind": kind,
                    "question": question, "answer": answer, "options": options, "tolerance_s": tol,
                    "reference": reference,
                    "voices": [{"speaker": spk, "alone_at": voices[spk]} for spk in present]})

    voices = {spk: alone_at(turns, spk, a, b) for spk in present}
    cut = _cut(turns, a, b)
    in_clip = [t for t, s, e in cut if t.speaker in present]
    where = f"in this clip ({_t(b - a)} s)"
    # count
    item("count", 0, f"How many people speak {where}?", str(len(present)),
         count_distractors(len(present), nd), [t.turn_id for t in in_clip])
    # first / last
    parts = [(t, s, e) for t, s, e in cut if t.speaker in present]
    for kind, key, word in (("first", lambda p: p[1], "first"), ("last", lambda p: -p[2], "last")):
        ranked = sorted(parts, key=lambda p: (key(p), p[0].turn_id))
        top = ranked[0]
        rivals = [p for p in ranked[1:] if p[0].speaker != top[0].speaker and key(p) - key(top) < AMBIGUOUS_S]
        if rivals:
            continue
        if top[0].overlapped:
            counts.dropped_overlapped[kind] = counts.dropped_overlapped.get(kind, 0) + 1
            continue
        spk = top[0].speaker
        item(kind, 0, f"Who speaks {word} {where}? Answer with the speaker label.", spk,
             speaker_distractors(spk, present, all_speakers, source_id, nd), [top[0].turn_id])
    # order
    inside = [p for p in all_phrases if p.start >= a and p.end <= b]
    texts: dict[str, int] = {}
    for p in inside:
        texts[p.text.lower()] = texts.get(p.text.lower(), 0) + 1
    unique = [p for p in inside if texts[p.text.lower()] == 1]
    candidates = []
    for p in unique:
        later = [q for q in unique if q.start >= p.start + ORDER_APART_S and q.start >= p.end]
        if len(later) >= nd:
            candidates.append((p, later))
    if candidates:
        rng = random.Random(_seed(f"{source_id}-qa-{k:05d}-order"))
        p, later = candidates[rng.randrange(len(candidates))]
        chosen = sorted(rng.sample(range(len(later)), nd))
        picks = [later[i] for i in chosen]
        item("order", 0, "Which of these phrases is said first in this clip?", p.text, [q.text for q in picks],
             list(dict.fromkeys([p.segment_id] + [q.segment_id for q in picks])))
    # duration: a silence, a turn
    n = 0
    silences = [e for e in events if e.kind in ("gap", "pause") and e.start >= a and e.end <= b and e.end > e.start]
    if silences:
        e = max(silences, key=lambda e: (e.end - e.start, -e.start))  # the longest: least relative error
        d = round(e.end - e.start, 3)
        who = (f"between the end of {e.other_speaker}'s turn and {e.speaker}'s reply" if e.kind == "gap"
               else f"of {e.speaker}'s pause")
        item("duration", n, f"How long is the silence {who} at {_t(e.start - a)} s of this clip, in seconds?",
             _t(d), duration_distractors(d, nd), [e.event_id], tolerance(d))
        n += 1
    whole = [t for t in turns if t.start >= a and t.end <= b and t.speaker in present]
    if whole:
        t = max(whole, key=lambda t: (t.end - t.start, -t.start))
        d = round(t.end - t.start, 3)
        item("duration", n, f"How long does the turn of {t.speaker} that starts at {_t(t.start - a)} s of this "
             "clip last, in seconds?", _t(d), duration_distractors(d, nd), [t.turn_id], tolerance(d))
    # interrupt
    overlaps = [e for e in events if e.kind in ("interruption", "overlap") and a <= e.start < b
                and e.speaker in present and e.other_speaker in present]
    n = 0
    if overlaps:
        e = overlaps[0]
        item("interrupt", n, f"Does {e.speaker} interrupt {e.other_speaker} in this clip?", YES, None,
             [x.event_id for x in overlaps if (x.speaker, x.other_speaker) == (e.speaker, e.other_speaker)])
        n += 1
    pairs = [(x, y) for x in present for y in present if x != y
             and not any((e.speaker, e.other_speaker) == (x, y) for e in overlaps)]
    if pairs:
        x, y = pairs[random.Random(_seed(f"{source_id}-qa-{k:05d}-interrupt")).randrange(len(pairs))]
        item("interrupt", n, f"Does {x} interrupt {y} in this clip?", NO, None,
             [t.turn_id for t in in_clip if t.speaker in (x, y)])
    # backchannel
    n = 0
    bcs = [e for e in events if e.kind == "backchannel" and e.start >= a and e.end <= b]
    if bcs:
        e = bcs[0]
        item("backchannel", n, f"Is what {e.speaker} says from {_t(e.start - a)} s to {_t(e.end - a)} s of this "
             "clip a back-channel (feedback that does not take the floor)?", YES, None, [e.event_id])
        n += 1
    for e in events:
        if e.kind not in ("gap", "interruption", "overlap"):
            continue
        onset = e.end if e.kind == "gap" else e.start
        taking = [t for t in turns if t.speaker == e.speaker and abs(t.start - onset) < 2e-3
                  and t.start >= a and t.end <= b]
        if taking:
            t = taking[0]
            item("backchannel", n, f"Is what {t.speaker} says from {_t(t.start - a)} s to {_t(t.end - a)} s of "
                 "this clip a back-channel (feedback that does not take the floor)?", NO, None,
                 [e.event_id, t.turn_id])
            break
    return out
