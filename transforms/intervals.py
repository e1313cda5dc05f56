"""Intervals of seconds, (start, end): their union, total length and overlap. Used by the
duplex export (a speaker's turns as one stream) and by the tests and benches that score speech
regions; imports nothing heavy.
"""

from __future__ import annotations

from typing import Iterable


def merge_intervals(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union, by start: overlapping or touching intervals merged, empty ones dropped."""
    out: list[list[float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in intervals if e > s):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def total_duration(intervals: Iterable[tuple[float, float]]) -> float:
    return sum(e - s for s, e in merge_intervals(intervals))


def intersection_duration(
    a: Iterable[tuple[float, float]], b: Iterable[tuple[float, float]]
) -> float:
    a, b = merge_intervals(a), merge_intervals(b)
    i = j = 0
    tot = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            tot += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tot
