"""Diarization error rate (DER), NIST-style, with overlap scored.

DER = (missed + false_alarm + confusion) / total reference speech, where every quantity is
time-weighted per speaker count: in a region with ``R`` reference and ``H`` hypothesis
speakers, missed = max(0, R - H), false alarm = max(0, H - R) and
confusion = min(R, H) - (number of correctly mapped speakers), after the one-to-one
speaker mapping that maximises overlap (Hungarian, ``scipy.optimize.linear_sum_assignment``).
This is the definition of md-eval and ``pyannote.metrics.diarization.DiarizationErrorRate``.

Overlapping turns of one label count once (a speaker cannot overlap themself), as in
md-eval; pyannote.metrics agrees once such tracks are merged (``Annotation.support()``).

``collar`` removes +-collar seconds around every reference boundary from scoring (md-eval
convention; pyannote.metrics' ``collar`` is the total width, i.e. twice this value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Iterable

import numpy as np

Labelled = tuple[float, float, Hashable]


def read_rttm(path: str | Path, uri: str | None = None) -> list[tuple[float, float, str]]:
    """RTTM ``SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> ...`` -> (start, end, label)."""
    turns = []
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if not f or f[0] != "SPEAKER":
            continue
        if uri is not None and f[1] != uri:
            continue
        start, dur = float(f[3]), float(f[4])
        turns.append((start, start + dur, f[7]))
    return sorted(turns, key=lambda t: (t[0], t[1]))


def _as_labelled(turns: Iterable) -> list[Labelled]:
    out = []
    for t in turns:
        if hasattr(t, "speaker"):
            out.append((float(t.start), float(t.end), t.speaker))
        else:
            s, e, lab = t
            out.append((float(s), float(e), lab))
    return [t for t in out if t[1] > t[0]]


def _uem_regions(reference: list[Labelled], collar: float) -> list[tuple[float, float]]:
    """Scored regions: everything, minus +-collar around reference boundaries."""
    if collar <= 0:
        return []
    holes = []
    for s, e, _ in reference:
        holes.append((s - collar, s + collar))
        holes.append((e - collar, e + collar))
    return holes


def der(reference: Iterable, hypothesis: Iterable, collar: float = 0.0) -> dict[str, float]:
    """Score ``hypothesis`` against ``reference`` (lists of Turn or (start, end, label)).

    Returns seconds for ``missed``, ``false_alarm``, ``confusion``, ``total`` (reference
    speech, counted once per speaker) and the ratio ``der``.
    """
    from scipy.optimize import linear_sum_assignment

    ref = _as_labelled(reference)
    hyp = _as_labelled(hypothesis)
    holes = _uem_regions(ref, collar)

    cuts = sorted({x for s, e, _ in ref + hyp for x in (s, e)} | {max(0.0, x) for h in holes for x in h})
    ref_labels = sorted({lab for _, _, lab in ref}, key=str)
    hyp_labels = sorted({lab for _, _, lab in hyp}, key=str)
    ri = {lab: i for i, lab in enumerate(ref_labels)}
    hi = {lab: i for i, lab in enumerate(hyp_labels)}

    # elementary segments: duration + which speakers are active
    durs, R, H = [], [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b <= a:
            continue
        mid = 0.5 * (a + b)
        if any(lo < mid < hi_ for lo, hi_ in holes):
            continue
        r = np.zeros(len(ref_labels), dtype=bool)
        h = np.zeros(len(hyp_labels), dtype=bool)
        for s, e, lab in ref:
            if s <= a and e >= b:
                r[ri[lab]] = True
        for s, e, lab in hyp:
            if s <= a and e >= b:
                h[hi[lab]] = True
        if r.any() or h.any():
            durs.append(b - a)
            R.append(r)
            H.append(h)

    if not durs:
        return {"der": 0.0, "missed": 0.0, "false_alarm": 0.0, "confusion": 0.0, "total": 0.0}
    d = np.asarray(durs)
    R = np.asarray(R).reshape(len(d), len(ref_labels))
    H = np.asarray(H).reshape(len(d), len(hyp_labels))
    nr, nh = R.sum(1), H.sum(1)

    # co-occurrence time between each reference and hypothesis speaker
    cooc = (R.astype(float) * d[:, None]).T @ H.astype(float)
    mapping: dict[int, int] = {}
    if cooc.size:
        rows, cols = linear_sum_assignment(-cooc)
        mapping = {int(c): int(r) for r, c in zip(rows, cols) if cooc[r, c] > 0}
    correct = np.zeros(len(d))
    for c, r in mapping.items():
        correct += (H[:, c] & R[:, r]).astype(float)

    total = float((nr * d).sum())
    missed = float((np.maximum(0, nr - nh) * d).sum())
    fa = float((np.maximum(0, nh - nr) * d).sum())
    conf = float(((np.minimum(nr, nh) - correct) * d).sum())
    err = missed + fa + conf
    return {
        "der": err / total if total > 0 else (0.0 if err == 0 else float("inf")),
        "missed": missed,
        "false_alarm": fa,
        "confusion": conf,
        "total": total,
    }
