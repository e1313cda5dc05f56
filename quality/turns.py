"""The ``turns`` table in the audit: RTTM export and turn-level figures (SQL over DuckDB).

Re-exported by :mod:`mmcurate.quality.audit` (``write_rttm``, ``sources_without_turns``); the
summary figures go under the ``"turns"`` key of ``audit.summarize()``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import duckdb

from mmcurate.quality.der_sql import basename_of, source_names
from mmcurate.schemas.printable import printable

log = logging.getLogger(__name__)

RTTM_NAMES = ("source_id", "basename")

# Seconds of diarized speech and of overlapped speech (>= 2 distinct speakers) per source.
# Each speaker's turns are merged first (gaps and islands), so a speaker overlapping itself
# counts once; then a sweep over +1/-1 events gives the number of speakers in every interval.
_OVERLAP = """
    WITH t AS (
        SELECT source_id, speaker, start, "end",
               max("end") OVER (PARTITION BY source_id, speaker ORDER BY start, "end"
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
        FROM turns WHERE "end" > start
    ),
    isl AS (
        SELECT *, sum(CASE WHEN prev_end IS NULL OR start > prev_end THEN 1 ELSE 0 END)
                  OVER (PARTITION BY source_id, speaker ORDER BY start, "end"
                        ROWS UNBOUNDED PRECEDING) AS island
        FROM t
    ),
    merged AS (
        SELECT source_id, min(start) AS s, max("end") AS e FROM isl GROUP BY source_id, speaker, island
    ),
    ev AS (
        SELECT source_id, x, sum(delta) AS delta FROM (
            SELECT source_id, s AS x, 1 AS delta FROM merged
            UNION ALL SELECT source_id, e, -1 FROM merged
        ) GROUP BY source_id, x
    ),
    sweep AS (
        SELECT source_id, x,
               lead(x) OVER (PARTITION BY source_id ORDER BY x) - x AS d,
               sum(delta) OVER (PARTITION BY source_id ORDER BY x ROWS UNBOUNDED PRECEDING) AS n
        FROM ev
    )
    SELECT source_id,
           coalesce(sum(d) FILTER (WHERE n >= 1), 0.0) AS speech_s,
           coalesce(sum(d) FILTER (WHERE n >= 2), 0.0) AS overlapped_s
    FROM sweep GROUP BY source_id
"""


def sources_without_turns(con: duckdb.DuckDBPyConnection | str) -> list[str]:
    """Source ids of the ``sources`` view with no row in ``turns`` (a connection of
    :func:`mmcurate.quality.db.connect`, or a run output directory)."""
    if isinstance(con, (str, os.PathLike)):
        from mmcurate.quality.db import connect

        c = connect(os.fspath(con))
        try:
            return sources_without_turns(c)
        finally:
            c.close()
    return [r[0] for r in con.execute(
        "SELECT DISTINCT source_id FROM sources WHERE source_id NOT IN (SELECT source_id FROM turns) ORDER BY 1"
    ).fetchall()]


def _rttm_names(con: duckdb.DuckDBPyConnection, sids: list[str], name: str) -> dict[str, str]:
    if name == "source_id":
        return {s: s for s in sids}
    base = source_names(con)
    out: dict[str, str] = {}
    for s in sids:
        if s not in base:
            log.warning("turns of source %s: no sources row, so no basename; named by source id", s)
        out[s] = (base.get(s) or [s])[0]
    counts: dict[str, int] = {}
    for n in out.values():
        counts[n] = counts.get(n, 0) + 1
    for s, n in list(out.items()):
        if counts[n] > 1:  # two sources called x.wav in different folders
            out[s] = f"{n}-{s}"
            log.warning("basename %r is shared by %d sources; writing %s.rttm", n, counts[n], printable(out[s]))
    return out


def write_rttm(out_dir: str, rttm_dir: str, name: str = "source_id") -> list[str]:
    """One ``<name>.rttm`` per source with turns, from the ``turns`` view; returns the paths.

    Lines ``SPEAKER <file-id> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>`` sorted by
    start, times with 3 decimals (duration = rounded end - rounded start, so start + duration
    gives the end to 0.5 ms). ``name="source_id"`` names file and file-id by the source id;
    ``name="basename"`` by the source's media name (``sources.uri`` without folder and
    extension, e.g. ``sample`` for ``.../sample.wav``), so they line up with reference RTTMs
    named after the audio (a basename shared by several sources gets ``-<source_id>``).
    Sources without turns get no file; they are logged (see :func:`sources_without_turns`).
    Turns with end <= start are skipped.
    """
    from mmcurate.quality.db import connect

    if name not in RTTM_NAMES:
        raise ValueError(f"name must be one of {RTTM_NAMES}, not {name!r}")
    con = connect(out_dir)
    try:
        rows = con.execute(
            'SELECT source_id, start, "end", speaker FROM turns WHERE "end" > start '
            'ORDER BY source_id, start, "end", speaker'
        ).fetchall()
        skipped_bad = con.execute('SELECT count(*) FROM turns WHERE NOT ("end" > start)').fetchone()[0]
        sids = sorted({r[0] for r in rows})
        names = _rttm_names(con, sids, name)
        missing = sources_without_turns(con)
    finally:
        con.close()

    os.makedirs(rttm_dir, exist_ok=True)
    by_source: dict[str, list[str]] = {s: [] for s in sids}
    for sid, start, end, spk in rows:
        s3, e3 = round(float(start), 3), round(float(end), 3)
        by_source[sid].append(
            f"SPEAKER {names[sid]} 1 {s3:.3f} {max(0.0, e3 - s3):.3f} <NA> <NA> {spk} <NA> <NA>\n"
        )
    paths = []
    for sid in sids:
        path = os.path.join(rttm_dir, f"{names[sid]}.rttm")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(by_source[sid])
        paths.append(path)
    if skipped_bad:
        log.warning("%d turns with end <= start were not written", skipped_bad)
    if missing:
        log.info("%d sources have no turns and got no RTTM: %s", len(missing),
                 ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    log.info("wrote %d RTTM files to %s", len(paths), printable(rttm_dir))
    return paths


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


# Sources whose speaker-count confidence is below this are listed for review: a change of the
# clustering threshold by 7.5 % or less gives another count. On the generated conversations it
# lists 3 of the 8 miscounted recordings and 9 of the 37 right ones (bench/README.md,
# bench_diarization_count.py)
REVIEW_BELOW = 0.5
# at most this many source ids named in the report (the summary's "review" list holds them all)
REVIEW_SHOWN = 10


def confidence_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The per-source speaker-count confidence (``turns.diarization_confidence``, one value per
    source): how many sources have one, min / mean, and the sources below REVIEW_BELOW, least
    sure first."""
    per_source = ("SELECT source_id, min(diarization_confidence) AS c FROM turns "
                  "WHERE diarization_confidence IS NOT NULL GROUP BY source_id")
    n, mn, mean = con.execute(f"SELECT count(*), min(c), avg(c) FROM ({per_source})").fetchone()
    review = con.execute(f"SELECT source_id, c FROM ({per_source}) WHERE c < ? ORDER BY c, source_id",
                         [REVIEW_BELOW]).fetchall()
    return {"sources": int(n), "min": _num(mn), "mean": _num(mean), "review_below": REVIEW_BELOW,
            "review": [{"source_id": sid, "confidence": float(c)} for sid, c in review]}


def turns_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Turn-level figures: counts, speakers per source (from turns), overlapped speech share,
    speaker-count confidence (`confidence_summary`).

    ``speech_s`` is the diarized speech (union of all turns per source), ``overlapped_s`` the
    time with >= 2 distinct speakers, ``overlapped_speech_share`` their ratio (None without
    turns); ``overlapped_turns`` counts rows flagged ``overlapped``.
    """
    n, n_src, n_ov = con.execute(
        "SELECT count(*), count(DISTINCT source_id), count(*) FILTER (WHERE overlapped) FROM turns"
    ).fetchone()
    spk = "SELECT source_id, count(DISTINCT speaker) AS n FROM turns GROUP BY source_id"
    mn, mean, mx = con.execute(f"SELECT min(n), avg(n), max(n) FROM ({spk})").fetchone()
    speech, over = con.execute(
        f"SELECT coalesce(sum(speech_s), 0.0), coalesce(sum(overlapped_s), 0.0) FROM ({_OVERLAP})"
    ).fetchone()
    speech, over = float(speech), float(over)
    return {
        "turns": int(n),
        "sources": int(n_src),
        "overlapped_turns": int(n_ov),
        "speakers_per_source": {
            "min": None if mn is None else int(mn),
            "mean": _num(mean),
            "max": None if mx is None else int(mx),
            "histogram": {
                str(int(k)): int(v)
                for k, v in con.execute(f"SELECT n, count(*) FROM ({spk}) GROUP BY n ORDER BY n").fetchall()
            },
        },
        "speech_s": speech,
        "overlapped_s": over,
        "overlapped_speech_share": (over / speech) if speech > 0 else None,
        "confidence": confidence_summary(con),
    }


def format_turns(t: dict[str, Any] | None) -> list[str]:
    """Report lines for the ``"turns"`` summary (none when the run has no turns)."""
    if not t or not t.get("turns"):
        return []
    sp = t["speakers_per_source"]

    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

    share = t["overlapped_speech_share"]
    rows = [
        ("turns", str(t["turns"])),
        ("sources with turns", str(t["sources"])),
        ("speakers min / mean / max", f"{f(sp['min'])} / {f(sp['mean'])} / {f(sp['max'])}"),
        ("diarized speech (h)", f"{t['speech_s'] / 3600:.2f}"),
        ("overlapped speech", "-" if share is None else f"{share * 100:.1f}% ({t['overlapped_s']:.1f} s)"),
        ("overlapped turns", str(t["overlapped_turns"])),
    ]
    c = t.get("confidence") or {}
    if c.get("sources"):
        rows.append(("speaker-count confidence min / mean", f"{f(c['min'])} / {f(c['mean'])}"))
        review = c["review"]
        shown = ", ".join(r["source_id"] for r in review[:REVIEW_SHOWN]) + (" ..." if len(review) > REVIEW_SHOWN else "")
        rows.append((f"sources to review (confidence < {c['review_below']:g})",
                     f"{len(review)}" + (f": {shown}" if review else "")))
    w = max(len(r[0]) for r in rows)
    return ["", "Turns (diarization)"] + [f"  {a.ljust(w)}  {b}" for a, b in rows]
