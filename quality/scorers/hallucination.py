"""Hallucination scores of a transcribed segment, from its text and word times alone.

Whisper's own rules (no-speech probability, log-probability, compression ratio) run inside the
ASR step (`mmcurate.transforms.asr.drop_reason`), where the per-window scores exist; these three
add evidence the ASR scores do not carry:

* `phrase_share`: the share of the segment's characters covered by stock phrases ASR models
  invent on silence and music ("thanks for watching", "subtitles by the Amara.org community",
  per language), the bag of hallucinations kept as data in `quality/data/hallucinations.*.txt`
  and matched with an Aho-Corasick automaton (pyahocorasick) on normalised text.
* `repeat_share`: the share of the words inside decoder loops: an n-gram (1 <= n <= 20 words)
  said LOOP_MIN_REPEATS or more times in a row covering at least LOOP_MIN_WORDS words
  ("I'm sorry, I'm sorry, I'm sorry, ...", "I don't know, I don't know, I don't know").
* `outside_vad_share`: the share of words whose middle lies outside every VAD speech region
  (padded by VAD_TOLERANCE_S): text for audio the VAD called non-speech.
Each is None when it cannot be computed (no words, no regions known).
"""

from __future__ import annotations

import functools
import os
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")  # quality/data
PHRASE_FILE_PREFIX = "hallucinations."

LOOP_MIN_REPEATS = 3  # a loop is the same n-gram at least 3 times in a row ...
LOOP_MIN_WORDS = 5  # ... covering at least 5 words ("no, no, no" is speech; whisper-base
# wrote "Ah, ah, ah, ah, ah..." on a wordless hum)
LOOP_MAX_N = 20  # longest n-gram looked for (whisper-base loops on 13-word sentences)
VAD_TOLERANCE_S = 0.25  # a word whose middle is this close to a region counts as inside


def _is_cjk(ch: str) -> bool:
    """Scripts written without spaces between words (Han, kana): one character is one token."""
    o = ord(ch)
    return (0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF
            or 0x20000 <= o <= 0x2FFFF)


def normalize(text: str) -> str:
    """NFKC, case-folded, every character that is not a letter or digit a space, spaces
    collapsed: "Thanks for WATCHING!!" -> "thanks for watching"."""
    t = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join("".join(c if c.isalnum() else " " for c in t).split())


def tokens(text: str) -> list[str]:
    """Words of the normalised text; Han and kana characters are one token each."""
    out: list[str] = []
    for w in normalize(text).split():
        if any(_is_cjk(c) for c in w):
            buf = ""
            for c in w:
                if _is_cjk(c):
                    if buf:
                        out.append(buf)
                        buf = ""
                    out.append(c)
                else:
                    buf += c
            if buf:
                out.append(buf)
        else:
            out.append(w)
    return out


# --------------------------------------------------------------------------- stock phrases


@dataclass(frozen=True)
class PhraseMatch:
    share: float  # of the text's non-space characters covered by matched phrases
    phrases: tuple[str, ...]  # the phrases found, as written in the data files (normalised)


def phrase_files(data_dir: str = DATA_DIR) -> dict[str, str]:
    """{language: path} of the phrase lists (hallucinations.<lang>.txt)."""
    return {f[len(PHRASE_FILE_PREFIX):-4]: os.path.join(data_dir, f)
            for f in sorted(os.listdir(data_dir))
            if f.startswith(PHRASE_FILE_PREFIX) and f.endswith(".txt")}


def read_phrases(path: str) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
            p = normalize(line)
            if p:
                out.append(p)
    return out


def _key(phrase: str) -> str:
    """The automaton key: padded with a space at each end that is a word boundary (not CJK),
    so "subtitles by" never matches inside "subtitles bypass"."""
    return ("" if _is_cjk(phrase[0]) else " ") + phrase + ("" if _is_cjk(phrase[-1]) else " ")


class PhraseMatcher:
    """Aho-Corasick over every phrase list at once (a Japanese phrase cannot match English)."""

    def __init__(self, phrases: dict[str, Iterable[str]] | None = None):
        import ahocorasick

        if phrases is None:
            phrases = {lang: read_phrases(p) for lang, p in phrase_files().items()}
        self.languages = sorted(phrases)
        self._auto = ahocorasick.Automaton()
        n = 0
        for lang, items in phrases.items():
            for p in items:
                p = normalize(p)
                if p:
                    self._auto.add_word(_key(p), (lang, p))
                    n += 1
        self.size = n
        if n:
            self._auto.make_automaton()

    def match(self, text: str) -> PhraseMatch:
        norm = normalize(text)
        letters = sum(1 for c in norm if c != " ")
        if not letters or not self.size:
            return PhraseMatch(0.0, ())
        padded = f" {norm} "
        covered = [False] * len(padded)
        found: list[str] = []
        for end, (_lang, phrase) in self._auto.iter(padded):
            start = end - len(_key(phrase)) + 1
            for i in range(start, end + 1):
                covered[i] = True
            if phrase not in found:
                found.append(phrase)
        share = sum(1 for c, on in zip(padded, covered) if on and c != " ") / letters
        return PhraseMatch(share, tuple(found))


@functools.lru_cache(maxsize=1)
def default_matcher() -> PhraseMatcher:
    """The repository's phrase lists, built once per process (at first use, not import)."""
    return PhraseMatcher()


# --------------------------------------------------------------------------- loops


def repeat_share(words: Sequence[str]) -> float | None:
    """Share of `words` inside loops (see the module doc); None without words."""
    n_words = len(words)
    if not n_words:
        return None
    covered = [False] * n_words
    for n in range(1, min(LOOP_MAX_N, n_words // LOOP_MIN_REPEATS) + 1):
        i = 0
        while i + n <= n_words:
            gram = words[i : i + n]
            r = 1
            while words[i + r * n : i + (r + 1) * n] == gram:
                r += 1
            if r >= LOOP_MIN_REPEATS and r * n >= LOOP_MIN_WORDS:
                for k in range(i, i + r * n):
                    covered[k] = True
                i += r * n
            else:
                i += 1
    return sum(covered) / n_words


# --------------------------------------------------------------------------- VAD


def outside_vad_share(words: Iterable[tuple[float, float]],
                      regions: Sequence[tuple[float, float]] | None) -> float | None:
    """Share of words (start, end) whose middle is outside every region (+- tolerance).

    None when there is no word or the regions are unknown (regions None); an empty region list
    means the VAD found no speech, so every word is outside."""
    spans = list(words)
    if not spans or regions is None:
        return None
    regs = sorted(regions)
    outside = 0
    for s, e in spans:
        mid = (s + e) / 2.0
        if not any(a - VAD_TOLERANCE_S <= mid <= b + VAD_TOLERANCE_S for a, b in regs):
            outside += 1
    return outside / len(spans)
