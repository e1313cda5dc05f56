"""The reference DER for tests and bench scripts: pyannote.metrics' `DiarizationErrorRate`, and
the RTTM reader they need.

The product computes DER in SQL only (`mmcurate.quality.der_sql`, behind `mmcurate audit
--der`); this is what it is checked against. `der` takes lists of `Turn` or (start, end, label)
and returns seconds under the product's names (missed, false_alarm, confusion, total) and the
ratio `der`. `collar` is the product's (md-eval's): +-collar seconds around every reference
boundary, so pyannote.metrics gets twice it (its collar is the total width). Overlapping turns of
one label count once (md-eval; `Annotation.support()` merges them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")


def read_rttm(path: str | Path, uri: str | None = None, sort: bool = True) -> list[tuple[float, float, str]]:
    """RTTM ``SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> ...`` -> (start, end, label),
    sorted (`sort=False`: in the file's order, to check how a writer ordered it); only file `uri`
    when given."""
    turns = []
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if not f or f[0] != "SPEAKER":
            continue
        if uri is not None and f[1] != uri:
            continue
        start, dur = float(f[3]), float(f[4])
        turns.append((start, start + dur, f[7]))
    return sorted(turns, key=lambda t: (t[0], t[1])) if sort else turns


def annotation(turns: Iterable, uri: str = "file"):
    """A pyannote.core Annotation of `Turn`s or (start, end, label); empty turns are left out,
    overlapping turns of one label merged."""
    from pyannote.core import Annotation, Segment

    ann = Annotation(uri=uri)
    for i, t in enumerate(turns):
        s, e, label = (t.start, t.end, t.speaker) if hasattr(t, "speaker") else t
        if float(e) > float(s):
            ann[Segment(float(s), float(e)), i] = label
    return ann.support()


def der(reference: Iterable, hypothesis: Iterable, collar: float = 0.0) -> dict[str, float]:
    """pyannote.metrics' DER of `hypothesis` against `reference`, overlap scored."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=2 * collar, skip_overlap=False)
    d = metric(annotation(reference), annotation(hypothesis), detailed=True)
    total = d["total"]
    err = d["missed detection"] + d["false alarm"] + d["confusion"]
    return {
        # an empty reference: 0 without errors, else infinite (pyannote.metrics says 1.0)
        "der": err / total if total > 0 else (0.0 if err == 0 else float("inf")),
        "missed": d["missed detection"],
        "false_alarm": d["false alarm"],
        "confusion": d["confusion"],
        "total": total,
    }
