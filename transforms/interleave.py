"""Interleaving: kept keyframes + speaker-attributed words -> one document's items in reading
order. Pure functions (no Beam, no decoding), so the rules are tested on hand-made words.

Rules:
* images in time order; the cut times are the keyframes' start times (the span each stands
  for begins where its shot, or its window of a long shot, begins);
* a word follows the keyframe that was on screen at its midpoint: words whose midpoint lies in
  [start_k, start_k+1) come right after image k, words before the first keyframe's start come
  first. A cut never splits a word: a word that straddles a keyframe's start goes to the side
  holding most of it (the cut moves to the nearest word boundary);
* within one image's stretch, text items are cut at speaker changes and, with
  `max_words` > 0, after at most that many words (at the last sentence end in the second half
  of the run when there is one, else exactly there);
* `speaker_tags`: each text item starts with "[spk<k>] " (the speaker's label within the source,
  "spk?" when unattributed); the item's `speaker` column holds the full label either way;
* no word is dropped, repeated or reordered: the items' words, concatenated, are the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from mmcurate.schemas.records import Segment
from mmcurate.transforms.attribute import is_sentence_end, join_words
from mmcurate.transforms.keyframes import Keyframe


@dataclass(frozen=True)
class SpokenWord:
    """A word of the transcript with its speaker (f"{source_id}-spk{k}", None: unknown)."""

    word: str
    start: float
    end: float
    speaker: str | None

    @property
    def mid(self) -> float:
        return (self.start + self.end) / 2


@dataclass(frozen=True)
class Item:
    """One position of an interleaved document: an image or a run of words."""

    modality: str  # image | text
    start: float
    end: float
    keyframe: Keyframe | None = None
    words: tuple[SpokenWord, ...] = ()
    text: str | None = None
    speaker: str | None = None


def words_from_segments(segments: Iterable[Segment]) -> list[SpokenWord]:
    """The transcript's words in order: segments by (start, segment_id), each segment's words
    as the ASR gave them. A segment without word timestamps (a backend that gives none) counts
    as its whitespace tokens spread evenly over the segment."""
    out: list[SpokenWord] = []
    for seg in sorted(segments, key=lambda s: (s.start, s.segment_id)):
        if seg.words:
            out.extend(SpokenWord(w.word, float(w.start), float(w.end), seg.speaker) for w in seg.words)
            continue
        tokens = (seg.text or "").split()
        step = (seg.end - seg.start) / max(len(tokens), 1)
        out.extend(SpokenWord(" " + tok, seg.start + i * step, seg.start + (i + 1) * step, seg.speaker)
                   for i, tok in enumerate(tokens))
    return out


def speaker_tag(speaker: str | None) -> str:
    """ "spk0" for "<source_id>-spk0"; "spk?" for an unattributed word."""
    return speaker.rsplit("-", 1)[-1] if speaker else "spk?"


def _text(words: Sequence[SpokenWord], speaker_tags: bool) -> str:
    from mmcurate.schemas.records import Word

    text = join_words([Word(w.word, w.start, w.end, None) for w in words])
    return f"[{speaker_tag(words[0].speaker)}] {text}" if speaker_tags else text


def _split(run: list[SpokenWord], max_words: int) -> list[list[SpokenWord]]:
    """`run` in pieces of at most max_words, each ending at a sentence end in its second half
    when there is one."""
    if max_words <= 0 or len(run) <= max_words:
        return [run]
    out, i = [], 0
    while len(run) - i > max_words:
        cut = i + max_words
        for j in range(i + max_words - 1, i + max_words // 2 - 1, -1):
            if is_sentence_end(run[j].word):
                cut = j + 1
                break
        out.append(run[i:cut])
        i = cut
    out.append(run[i:])
    return out


def _text_items(words: list[SpokenWord], max_words: int, speaker_tags: bool) -> list[Item]:
    items: list[Item] = []
    run: list[SpokenWord] = []

    def flush() -> None:
        for piece in _split(run, max_words):
            if piece:
                items.append(Item("text", piece[0].start, piece[-1].end, words=tuple(piece),
                                  text=_text(piece, speaker_tags), speaker=piece[0].speaker))

    for w in words:
        if run and w.speaker != run[-1].speaker:
            flush()
            run = []
        run.append(w)
    if run:
        flush()
    return items


def interleave(keyframes: Sequence[Keyframe], words: Sequence[SpokenWord], *,
               max_words: int = 0, speaker_tags: bool = False) -> list[Item]:
    """The document's items in reading order (see the module docstring). No keyframe: no
    document (an empty list), whatever was said."""
    frames = sorted(keyframes, key=lambda k: (k.start, k.frame_time))
    if not frames:
        return []
    cuts = [k.start for k in frames]
    groups: list[list[SpokenWord]] = [[] for _ in range(len(frames) + 1)]  # 0: before the first
    k = 0
    for w in words:  # in transcript order: a word whose midpoint goes back stays after the one before
        while k < len(cuts) and w.mid >= cuts[k]:
            k += 1
        groups[k].append(w)
    items = _text_items(groups[0], max_words, speaker_tags)
    for i, kf in enumerate(frames):
        items.append(Item("image", kf.start, kf.end, keyframe=kf))
        items.extend(_text_items(groups[i + 1], max_words, speaker_tags))
    return items
