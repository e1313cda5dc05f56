"""Full-duplex dialogue streams (`mmcurate export DIR --format duplex --to OUT`): per speaker of a
multi-speaker source, its own audio channel, a word-aligned text stream at a fixed frame rate
(Moshi's inner monologue) and its sentences with times (FLM-Audio's lead/follow streams).

What a stream is made of:

* **audio**: the source's 16 kHz mono decode, kept only inside the speaker's own turns of the
  `turns` table (the diarizer's overlap-aware turns: where two people talk at once, both streams
  hold that audio), digital silence (samples exactly 0) everywhere else; as long as the source.
  A turn's samples are [round(start * 16000), round(end * 16000)), clipped to the source.
* **tokens**: one token per frame of 1 / frame_rate seconds (default 12.5 Hz, Moshi's; frame k
  covers [k / rate, (k + 1) / rate)); ceil(samples * rate / 16000) frames, so the text covers
  the audio. A word is the stripped text of one entry of a segment's `words`; it goes in the
  frame of its start time, floor(start * rate); when that frame already holds a word (two words
  start within one frame) it goes in the next free frame, so words stay in order and none is
  merged. A word with no free frame left before the end of the stream is counted in
  `words_dropped` (not silently lost). Every other frame holds the pad token "<pad>". A word
  belongs to the speaker of its segment (`segments.speaker`); words of segments without a
  speaker, and of segments the quality stage dropped (the curated view), are in no stream:
  their audio stays, their frames are pads.
* **pad_share**: pad frames / all frames of the stream.
* **sentences**: the speaker's words in time order, cut after a word that ends a sentence
  (. ? ! and the CJK 。？！, before closing quotes or brackets) or where the next word starts more
  than 1 s after this one ends; each with the start of its first word, the end of its last and
  its text (Whisper-style words carry their leading space and are concatenated, as segment text
  is: `mmcurate.transforms.attribute.join_words`).

Layout (`mmcurate.transforms.export.DuplexExporter`): `OUT/dialogues-<rate>hz-NNNNNN.parquet`, shards
of `--shard-size` sources (default 8), one row group per row, one row per (source, speaker), by
source then speaker, with the columns of `DUPLEX_FIELDS`: source_id, speaker, speakers (all of
the source's), sample_rate (16000), num_samples, audio ({bytes: 16-bit FLAC, path:
"<speaker>.flac"}, marked as a Hugging Face Audio feature), turns (list<{start, end}>, merged),
frame_rate, tokens (list<string>, one per frame), num_words, words_dropped, pad_share,
sentences (list<{start, end, text}>). Sources whose curated turns have fewer than two speakers
are not exported and are counted in the summary. README.md, "Dialogue data", has an example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa

DEFAULT_FRAME_RATE = 12.5  # Hz, the text streams' (Moshi's: its Mimi codec's frames)

PAD = "<pad>"
SENTENCE_PAUSE_S = 1.0  # a longer silence between two words of a speaker ends a sentence
SENTENCE_END = (".", "?", "!", "。", "？", "！")
_CLOSERS = "\"'”’)]}»"

SENTENCE = pa.struct([pa.field("start", pa.float64()), pa.field("end", pa.float64()),
                      pa.field("text", pa.string())])
SPAN = pa.struct([pa.field("start", pa.float64()), pa.field("end", pa.float64())])
# one row per (source, speaker), in source then speaker order
DUPLEX_FIELDS = [
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("speaker", pa.string(), nullable=False),  # f"{source_id}-spk{k}", as in turns
    pa.field("speakers", pa.list_(pa.string())),  # all speakers of the source (the other streams)
    pa.field("sample_rate", pa.int32(), nullable=False),  # 16000
    pa.field("num_samples", pa.int64(), nullable=False),  # the source's, every stream of it alike
    # FLAC, 16-bit mono, as Hugging Face `datasets` stores audio: {bytes, path: f"{speaker}.flac"}
    pa.field("audio", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
    pa.field("turns", pa.list_(SPAN)),  # the speaker's turns: where the audio is not silence
    pa.field("frame_rate", pa.float64(), nullable=False),  # Hz
    pa.field("tokens", pa.list_(pa.string())),  # one per frame: a word or PAD
    pa.field("num_words", pa.int32(), nullable=False),  # words placed in `tokens`
    pa.field("words_dropped", pa.int32(), nullable=False),  # words with no free frame left
    pa.field("pad_share", pa.float64(), nullable=False),  # PAD frames / frames
    pa.field("sentences", pa.list_(SENTENCE)),
]


def num_frames(num_samples: int, frame_rate: float, sample_rate: int) -> int:
    """Frames of 1 / frame_rate s that cover `num_samples` samples."""
    return max(0, math.ceil(round(num_samples * frame_rate / sample_rate, 9)))


def frame_of(t: float, frame_rate: float) -> int:
    """The frame holding time `t` (rounded to 1 ns first: 0.24 s * 12.5 Hz is frame 3)."""
    return int(math.floor(round(t * frame_rate, 9)))


@dataclass(frozen=True)
class TextStream:
    tokens: list[str]
    num_words: int
    words_dropped: int

    @property
    def pad_share(self) -> float:
        return pad_share(self.tokens)


def pad_share(tokens: list[str]) -> float:
    return sum(1 for t in tokens if t == PAD) / len(tokens) if tokens else 1.0


def _ordered(words: Iterable[dict]) -> list[dict]:
    """Words with text, in time order (stable: a segment's own order breaks ties)."""
    kept = [w for w in words if (w.get("word") or "").strip() and w.get("start") is not None]
    return sorted(kept, key=lambda w: (w["start"], w["end"] if w.get("end") is not None else w["start"]))


def text_stream(words: Iterable[dict], frames: int, frame_rate: float) -> TextStream:
    """The word-per-frame stream: each word at the frame of its start, or the next free one."""
    tokens = [PAD] * frames
    placed = dropped = 0
    k = 0  # the first frame that may still be free (words come in time order)
    for w in _ordered(words):
        k = max(k, min(frame_of(max(0.0, w["start"]), frame_rate), frames))
        if k >= frames:
            dropped += 1
            continue
        tokens[k] = w["word"].strip()
        placed += 1
        k += 1
    return TextStream(tokens, placed, dropped)


def _ends_sentence(word: str) -> bool:
    return word.strip().rstrip(_CLOSERS).endswith(SENTENCE_END)


def _join(words: list[dict]) -> str:
    if any(w["word"][:1].isspace() for w in words):
        return "".join(w["word"] for w in words).strip()
    return " ".join(w["word"].strip() for w in words).strip()


def sentences(words: Iterable[dict], pause_s: float = SENTENCE_PAUSE_S) -> list[dict]:
    """A speaker's sentences: {start, end, text}, in time order."""
    out: list[dict] = []
    current: list[dict] = []
    ordered = _ordered(words)
    for i, w in enumerate(ordered):
        current.append(w)
        nxt = ordered[i + 1] if i + 1 < len(ordered) else None
        end = w["end"] if w.get("end") is not None else w["start"]
        if nxt is None or _ends_sentence(w["word"]) or nxt["start"] - end > pause_s:
            last_end = max((x["end"] if x.get("end") is not None else x["start"]) for x in current)
            out.append({"start": float(current[0]["start"]), "end": float(last_end), "text": _join(current)})
            current = []
    return out


def speaker_audio(audio: np.ndarray, turns: Iterable[tuple[float, float]], sample_rate: int) -> np.ndarray:
    """`audio` inside the turns, exact zeros elsewhere; same length."""
    out = np.zeros_like(audio)
    n = audio.shape[0]
    for s, e in turns:
        a, b = min(n, max(0, round(s * sample_rate))), min(n, max(0, round(e * sample_rate)))
        out[a:b] = audio[a:b]
    return out
