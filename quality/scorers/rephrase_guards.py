"""Guards on synthetic rephrasings: each one keeps a rephrasing or drops it with a reason.

A guard is a small object with `name` (the ledger reason it gives) and
`check(source, output) -> Verdict` where `source` is the natural passage and `output` the model's
answer (text + finish_reason). Every guard's score is returned even when it keeps the row, so
the scores land on the synthetic row (text_mix.copy_jaccard, drift_cosine, ...) and a
threshold can be re-tuned with a query. `judge()` runs them in order (cheap first, the sentence
embedding last) and returns the first failing guard's reason.

    empty           no text, or fewer than `min_tokens` tokens
    truncated       finish_reason == "length": the model hit its token limit mid-text
    chatter         the model's own talk ("Sure, here is...", an echo of the instruction);
                    phrases in quality/data/rephrase_chatter.txt
    wrong_language  langdetect (mmcurate.quality.scorers.language) says another language than the
                    passage's, both confident
    copy            MinHash Jaccard of word 3-gram shingles above `max_copy_jaccard`
                    (datasketch, 128 permutations, seed 1)
    drift           cosine of all-MiniLM-L6-v2 sentence embeddings (mmcurate.transforms.embed)
                    below `min_drift_cosine`: the rewrite is about something else

Thresholds are measured on real outputs; see RephraseConfig in mmcurate.transforms.rephrase.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)


def count_tokens(text: str) -> int:
    """Words and punctuation marks: the one token count of the text mix (natural and synthetic
    rows alike, so the synthetic share does not depend on which generator's tokenizer ran)."""
    return len(_TOKEN.findall(text or ""))


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str | None = None
    scores: dict[str, float | str | None] = field(default_factory=dict)


KEEP = Verdict(True)


@functools.lru_cache(maxsize=1)
def chatter_phrases() -> tuple[str, ...]:
    path = Path(__file__).parent.parent / "data" / "rephrase_chatter.txt"  # quality/data
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(l.strip().lower() for l in lines if l.strip() and not l.startswith("#"))


class EmptyGuard:
    name = "empty"

    def __init__(self, min_tokens: int = 3):
        self.min_tokens = min_tokens

    def check(self, source: str, output: str, finish_reason: str | None) -> Verdict:
        n = count_tokens(output)
        return Verdict(n >= self.min_tokens, None if n >= self.min_tokens else self.name,
                       {"output_tokens": n})


class TruncatedGuard:
    name = "truncated"

    def check(self, source: str, output: str, finish_reason: str | None) -> Verdict:
        cut = finish_reason == "length"
        return Verdict(not cut, self.name if cut else None, {"finish_reason": finish_reason})


class ChatterGuard:
    name = "chatter"

    def __init__(self, phrases: tuple[str, ...] | None = None, window: int = 160):
        self.phrases = chatter_phrases() if phrases is None else phrases
        self.window = window

    def check(self, source: str, output: str, finish_reason: str | None) -> Verdict:
        text = " ".join(output.lower().split())
        src = " ".join(source.lower().split())
        ends = (text[: self.window], text[-self.window:])
        # a phrase the passage itself says is not the model's chatter
        hit = next((p for p in self.phrases if any(p in e for e in ends) and p not in src), None)
        return Verdict(hit is None, self.name if hit else None, {"chatter": hit})


class LanguageGuard:
    """Another language than the passage's; only when both sides are detected confidently
    (langdetect on >= min_chars letters with p >= min_probability, as the quality stage)."""

    name = "wrong_language"

    def __init__(self, min_probability: float = 0.9, min_chars: int = 30):
        self.min_probability = min_probability
        self.min_chars = min_chars

    def _lang(self, text: str) -> str | None:
        from mmcurate.quality.scorers.language import detect

        if sum(c.isalpha() for c in text) < self.min_chars:
            return None
        lang, p = detect(text)
        return lang if p is not None and p >= self.min_probability else None

    def check(self, source: str, output: str, finish_reason: str | None,
              source_language: str | None = None) -> Verdict:
        want = self._lang(source) or source_language
        got = self._lang(output)
        bad = want is not None and got is not None and got != want
        return Verdict(not bad, self.name if bad else None, {"output_language": got})


def shingles(text: str, n: int = 3) -> set[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def minhash_jaccard(a: str, b: str, num_perm: int = 128, n: int = 3) -> float:
    """MinHash estimate of the Jaccard similarity of the two texts' word n-gram shingles."""
    from datasketch import MinHash

    sa, sb = shingles(a, n), shingles(b, n)
    if not sa or not sb:
        return 0.0
    ma, mb = MinHash(num_perm=num_perm, seed=1), MinHash(num_perm=num_perm, seed=1)
    ma.update_batch([s.encode("utf-8") for s in sa])
    mb.update_batch([s.encode("utf-8") for s in sb])
    return float(ma.jaccard(mb))


class CopyGuard:
    name = "copy"

    def __init__(self, max_jaccard: float = 0.5):
        self.max_jaccard = max_jaccard

    def check(self, source: str, output: str, finish_reason: str | None) -> Verdict:
        j = minhash_jaccard(source, output)
        return Verdict(j <= self.max_jaccard, None if j <= self.max_jaccard else self.name,
                       {"copy_jaccard": j})


class DriftGuard:
    """`embed(texts) -> (n, d)` L2-normalised rows (mmcurate.transforms.embed.SentenceEmbedder.embed)."""

    name = "drift"

    def __init__(self, embed: Callable[[list[str]], np.ndarray], min_cosine: float = 0.5):
        self.embed = embed
        self.min_cosine = min_cosine

    def check(self, source: str, output: str, finish_reason: str | None) -> Verdict:
        v = self.embed([source, output])
        c = float(np.dot(v[0], v[1]))
        return Verdict(c >= self.min_cosine, None if c >= self.min_cosine else self.name,
                       {"drift_cosine": c})


def judge(guards: list, source: str, output: str, finish_reason: str | None,
          source_language: str | None = None) -> Verdict:
    """All guards' scores, and the first failing guard's reason (the cheap ones run first; a
    guard after a failing one still runs so every score is known, except the ones that need
    text: an empty output skips the rest)."""
    scores: dict = {}
    reason = None
    for g in guards:
        if isinstance(g, LanguageGuard):
            v = g.check(source, output, finish_reason, source_language)
        else:
            v = g.check(source, output, finish_reason)
        scores.update(v.scores)
        if not v.keep and reason is None:
            reason = v.reason
            if v.reason == EmptyGuard.name:
                break
    return Verdict(reason is None, reason, scores)
