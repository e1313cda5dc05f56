"""Word error rate and word alignment for scoring transcripts against references (a test-only
metric: no product code scores WER).

Scoring follows the usual convention (and /work/shared/media/README.md): lower-case, remove
punctuation, collapse whitespace, then Levenshtein distance over words divided by the number of
reference words.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


def normalize(text: str) -> str:
    """Lower-case, drop punctuation/symbols (keeping in-word apostrophes and hyphens as joins),
    collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    text = re.sub(r"(?<=\w)'(?=\w)", "", text)  # don't -> dont, so "don't" == "dont"
    chars = [
        c if (unicodedata.category(c)[0] in "LNM" or c.isspace()) else " " for c in text
    ]
    return " ".join("".join(chars).split())


def _words(text: str | Sequence[str]) -> list[str]:
    if isinstance(text, str):
        return normalize(text).split()
    return [w for t in text for w in normalize(t).split()]


def _edit_ops(ref: list[str], hyp: list[str]) -> list[tuple[str, int | None, int | None]]:
    """Minimum-edit alignment as (op, ref_index, hyp_index); op in ok/sub/del/ins."""
    n, m = len(ref), len(hyp)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        ri = ref[i - 1]
        row, prev = d[i], d[i - 1]
        for j in range(1, m + 1):
            cost = 0 if ri == hyp[j - 1] else 1
            row[j] = min(prev[j - 1] + cost, prev[j] + 1, row[j - 1] + 1)
    ops: list[tuple[str, int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            ops.append(("ok" if ref[i - 1] == hyp[j - 1] else "sub", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            ops.append(("del", i - 1, None))
            i -= 1
        else:
            ops.append(("ins", None, j - 1))
            j -= 1
    ops.reverse()
    return ops


def wer(ref: str | Sequence[str], hyp: str | Sequence[str]) -> float:
    """Word error rate (substitutions + deletions + insertions) / reference words.

    Strings are normalized with `normalize`; an empty reference gives 0.0 for an empty
    hypothesis and 1.0 otherwise (every hypothesis word is an error).
    """
    r, h = _words(ref), _words(hyp)
    if not r:
        return 0.0 if not h else 1.0
    errors = sum(op != "ok" for op, _, _ in _edit_ops(r, h))
    return errors / len(r)


def align_words(ref_words: Sequence[str], hyp_words: Sequence[str]) -> list[tuple[int, int]]:
    """(ref_index, hyp_index) pairs of words the hypothesis got right, on a minimum-edit path.

    Indices point into the given sequences; each word is compared after `normalize` (a word that
    normalizes to nothing, e.g. "-", never matches). Used for timing error over correctly
    recognized words.
    """
    r = [normalize(w) for w in ref_words]
    h = [normalize(w) for w in hyp_words]
    return [(i, j) for op, i, j in _edit_ops(r, h) if op == "ok" and r[i]]
