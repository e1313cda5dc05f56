"""Turn-taking events from a source's diarized turns: who takes the floor from whom, when, and how.

The `turn_events` table (mmcurate.schemas.tables.TURN_EVENTS) holds one row per event:

* ``gap``: the floor passes to another speaker after silence; ``offset_s`` is the floor-transfer
  offset (the new speaker's onset minus the previous holder's end), > 0.
* ``overlap`` / ``interruption``: the floor passes while the previous holder still speaks
  (``offset_s`` < 0). Timing alone cannot tell a cut-off from a turn end the next speaker
  anticipated, so the split is the one full-duplex benchmarks use: ``interruption`` when the
  previous holder stops within ``interruption_s`` of the newcomer's onset, ``overlap`` when
  both talk on longer than that before the previous holder yields.
* ``backchannel``: a short utterance (at most ``backchannel_max_s`` and, where the transcript has
  its words, ``backchannel_max_words``) inside another speaker's turn that does not take the
  floor: the holder speaks on both sides of it (silences up to ``hold_s`` allowed).
  ``lexical`` says whether its words are all on the language's back-channel list
  (quality/data/backchannels.json: data, not code), null where no word was transcribed.
* ``pause``: the floor holder is silent at least ``min_pause_s`` and speaks on, nobody taking the
  floor in between; ``offset_s`` is the silence.

The input is the overlap-aware `turns` table (several speakers may speak at once). Each speaker's
turns closer than ``min_pause_s`` are merged first (shorter silences are not events). An
utterance of another speaker wholly inside the holder's speech that is too long for a
back-channel neither takes the floor nor makes an event (the audit's overlap share counts it).
Ids are ``f"{source_id}-event-{n:05d}"`` in (start, end, kind, speaker) order: a re-run gives the
same rows.
"""

from __future__ import annotations

import bisect
import functools
import json
import os
import re
from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence

from mmcurate.schemas.params import Rule, positive

KINDS = ("gap", "overlap", "interruption", "backchannel", "pause")
FLOOR_TRANSFERS = ("gap", "overlap", "interruption")

_LISTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "quality", "data",
                      "backchannels.json")


@dataclass
class TurnEventsConfig:
    min_pause_s: float = 0.2  # a speaker's own silence shorter than this is no event
    # the previous holder stops within this of the newcomer's onset: interruption; later: overlap
    interruption_s: float = 1.0
    backchannel_max_s: float = 1.0  # longest back-channel utterance
    backchannel_max_words: int = 3  # most words of a back-channel (where words were transcribed)
    # a speaker silent at most this long still holds the floor: around a back-channel, going on
    # after a newcomer's onset, or taking it with an utterance broken by a short pause
    hold_s: float = 0.3

    RULES: ClassVar[dict] = {"min_pause_s": positive("seconds"), "interruption_s": positive("seconds"),
                             "backchannel_max_s": positive("seconds"),
                             "backchannel_max_words": Rule(ge=1, le=20),
                             "hold_s": Rule(ge=0.0, le=5.0)}


@dataclass(frozen=True)
class Speech:
    """One speaker's stretch of speech: merged turns."""

    speaker: str
    start: float
    end: float


@dataclass(frozen=True)
class TurnEvent:
    kind: str
    start: float  # gap/pause: the silence; overlap/interruption: the simultaneous talk; backchannel: itself
    end: float
    speaker: str  # who acts: the newcomer, the back-channeller, the pausing holder
    other_speaker: str | None  # the previous floor holder (None for a pause)
    offset_s: float | None  # floor-transfer offset (< 0: overlap); a pause's length; None: back-channel
    num_words: int | None = None  # back-channel: its transcribed words (None: none transcribed)
    text: str | None = None
    lexical: bool | None = None


@functools.lru_cache(maxsize=1)
def backchannel_words() -> dict[str, frozenset[str]]:
    """language -> back-channel tokens (lower case, no punctuation)."""
    with open(_LISTS, encoding="utf-8") as f:
        data = json.load(f)
    return {lang: frozenset(w.lower() for w in words) for lang, words in data.items() if not lang.startswith("_")}


_PUNCT = re.compile(r"[^\w'-]+", re.UNICODE)


def _token(w: str) -> str:
    return _PUNCT.sub("", w.lower()).strip("-'")


def _lexical(tokens: list[str], lexicon: frozenset[str]) -> bool:
    """All tokens are one-word entries, or together they are a phrase entry ("got it")."""
    return bool(tokens) and (all(t in lexicon for t in tokens) or " ".join(tokens) in lexicon)


def merge_turns(turns: Iterable[tuple[str, float, float]], min_pause_s: float) -> list[Speech]:
    """Each speaker's (speaker, start, end) turns merged where they overlap or are closer than
    `min_pause_s`; sorted by (start, end, speaker)."""
    by: dict[str, list[tuple[float, float]]] = {}
    for spk, s, e in turns:
        if e > s:
            by.setdefault(spk, []).append((float(s), float(e)))
    out = []
    for spk, spans in by.items():
        spans.sort()
        cs, ce = spans[0]
        for s, e in spans[1:]:
            if s - ce < min_pause_s:
                ce = max(ce, e)
            else:
                out.append(Speech(spk, cs, ce))
                cs, ce = s, e
        out.append(Speech(spk, cs, ce))
    return sorted(out, key=lambda x: (x.start, x.end, x.speaker))


def _words_in(words: Sequence[tuple[str, float, float, str]], u: Speech, slack: float = 0.25) -> list[str]:
    return [w for spk, s, e, w in words if spk == u.speaker and u.start - slack <= (s + e) / 2 <= u.end + slack]


def _holder_around(u: Speech, speech: list[Speech], bridge: float) -> str | None:
    """The other speaker who speaks both before and after `u` (within `bridge`) and already
    spoke when it began, the one overlapping it most; None if nobody does."""
    best, best_ov = None, -1.0
    for spk in {x.speaker for x in speech if x.speaker != u.speaker}:
        mine = [x for x in speech if x.speaker == spk]
        before = any(x.start < u.start and x.end >= u.start - bridge for x in mine)
        after = any(x.end > u.end and x.start <= u.end + bridge for x in mine)
        if before and after:
            ov = sum(max(0.0, min(x.end, u.end) - max(x.start, u.start)) for x in mine)
            if ov > best_ov:
                best, best_ov = spk, ov
    return best


def detect(turns: Iterable[tuple[str, float, float]], cfg: TurnEventsConfig = TurnEventsConfig(),
           words: Sequence[tuple[str, float, float, str]] = (), language: str | None = None) -> list[TurnEvent]:
    """The events of one source. `turns`: (speaker, start, end), overlap-aware; `words`:
    (speaker, start, end, word) from the transcript (may be empty)."""
    speech = merge_turns(turns, cfg.min_pause_s)
    lexicon = backchannel_words().get((language or "").split("-")[0], frozenset())
    events: list[TurnEvent] = []
    backchannels: set[Speech] = set()
    for u in speech:
        if u.end - u.start > cfg.backchannel_max_s:
            continue
        # the speaker spoke right before it or goes on right after it: the end or the start of
        # a turn, not a back-channel
        if any(x.speaker == u.speaker and x is not u and (u.end < x.start <= u.end + cfg.hold_s
                                                         or u.start - cfg.hold_s <= x.end < u.start)
               for x in speech):
            continue
        said = _words_in(words, u)
        if len(said) > cfg.backchannel_max_words:
            continue
        holder = _holder_around(u, speech, cfg.hold_s)
        if holder is None:
            continue
        backchannels.add(u)
        toks = [_token(w) for w in said]
        events.append(TurnEvent(
            "backchannel", u.start, u.end, u.speaker, holder, None, num_words=len(said) or None,
            text=" ".join(w.strip() for w in said) or None,
            lexical=_lexical([t for t in toks if t], lexicon) if said and lexicon else None))

    # per speaker: (start, end) of their floor speech (back-channels aside), by start
    by_speaker: dict[str, list[tuple[float, float]]] = {}
    for x in speech:
        if x not in backchannels:
            by_speaker.setdefault(x.speaker, []).append((x.start, x.end))

    def reach(speaker: str, after: float, end: float, limit: float) -> float:
        """`end` carried on through `speaker`'s speech that starts after `after`, within
        hold_s of it, and ends by `limit`."""
        mine = by_speaker[speaker]
        for x0, x1 in mine[bisect.bisect_right(mine, (after, float("inf"))):]:
            if x0 > end + cfg.hold_s:
                break
            if x1 <= limit:
                end = max(end, x1)
        return end

    floor: Speech | None = None
    floor_end = 0.0
    for u in speech:
        if u in backchannels:
            continue
        if floor is None:
            floor, floor_end = u, u.end
            continue
        if u.speaker == floor.speaker:
            if u.start - floor_end >= cfg.min_pause_s:
                events.append(TurnEvent("pause", floor_end, u.start, u.speaker, None, u.start - floor_end))
            floor_end = max(floor_end, u.end)
            continue
        # the holder yields at the end of their speech that goes on (pausing at most hold_s)
        # while the newcomer speaks; holder speech running past the newcomer's is the holder
        # taking the floor back, a transfer of its own
        u_end = reach(u.speaker, u.start, u.end, float("inf"))
        floor_end = reach(floor.speaker, u.start, floor_end, u_end)
        if u_end <= floor_end:  # wholly inside the holder's speech, too long for a back-channel
            continue
        fto = u.start - floor_end
        if fto >= 0:
            events.append(TurnEvent("gap", floor_end, u.start, u.speaker, floor.speaker, fto))
        else:
            kind = "interruption" if -fto <= cfg.interruption_s else "overlap"
            events.append(TurnEvent(kind, u.start, floor_end, u.speaker, floor.speaker, fto))
        floor, floor_end = u, u.end
    events.sort(key=lambda e: (e.start, e.end, KINDS.index(e.kind), e.speaker))
    return events


def event_rows(source_id: str, events: list[TurnEvent], run_id: str, model: str | None,
               confidence: float | None = None) -> list:
    from mmcurate.schemas.records import TurnEventRow

    return [TurnEventRow(event_id=f"{source_id}-event-{n:05d}", source_id=source_id, kind=e.kind,
                         start=round(e.start, 3), end=round(e.end, 3), speaker=e.speaker,
                         other_speaker=e.other_speaker,
                         offset_s=None if e.offset_s is None else round(e.offset_s, 3),
                         num_words=e.num_words, text=e.text, lexical=e.lexical,
                         diarization_model=model, run_id=run_id, diarization_confidence=confidence)
            for n, e in enumerate(events)]
