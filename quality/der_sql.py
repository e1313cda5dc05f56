"""Diarization error rate in DuckDB SQL, from a run's ``turns`` table against reference RTTMs.

The definition of md-eval and ``pyannote.metrics.diarization.DiarizationErrorRate`` (the tests'
reference, tests/der_reference.py), computed over the Parquet output:

* the reference RTTM is loaded into DuckDB (``SPEAKER <file> 1 <start> <duration> <NA> <NA>
  <speaker> ...``; end = start + duration) next to the ``turns`` view of
  :func:`mmcurate.quality.db.connect`;
* the elementary segments are the intervals between consecutive boundaries of both sides
  (plus, with a collar, the edges of the +-collar holes around every reference boundary,
  which are then left out of scoring: md-eval's convention, pyannote.metrics' ``collar`` is
  twice this value);
* per segment: the number of *distinct* reference and hypothesis speakers active over the
  whole segment (so a label overlapping itself counts once) and, per (ref, hyp) pair, the
  time both are active;
* missed = sum max(0, R - H) d, false alarm = sum max(0, H - R) d, total = sum R d, and
  confusion = sum min(R, H) d - (overlap time of the optimal one-to-one mapping), the mapping
  maximising total overlap (``scipy.optimize.linear_sum_assignment``; without scipy, brute
  force over assignments for at most :data:`BRUTE_FORCE_MAX_SPEAKERS` speakers a side).

Zero-length or negative turns are ignored on both sides, as the in-memory scorer does.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import duckdb

log = logging.getLogger(__name__)

BRUTE_FORCE_MAX_SPEAKERS = 8

# temp tables this module creates on a connection (replaced on every call)
_RTTM = "_der_rttm"
_REF, _HYP, _SEG, _RA, _HA = "_der_ref", "_der_hyp", "_der_seg", "_der_ra", "_der_ha"


# --------------------------------------------------------------------------- RTTM in DuckDB


def load_rttm(con: duckdb.DuckDBPyConnection, paths: list[str | Path], table: str = _RTTM) -> None:
    """Load the SPEAKER lines of RTTM files into temp table ``table``
    (path, file_id, start, dur, "end", speaker); times are parsed by DuckDB as DOUBLE."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {table} "
        "(path VARCHAR, file_id VARCHAR, start DOUBLE, dur DOUBLE, \"end\" DOUBLE, speaker VARCHAR)"
    )
    for p in paths:
        text = Path(p).read_text(encoding="utf-8", errors="replace")
        con.execute(
            f"""
            INSERT INTO {table}
            SELECT ?, f[2], CAST(f[4] AS DOUBLE), CAST(f[5] AS DOUBLE),
                   CAST(f[4] AS DOUBLE) + CAST(f[5] AS DOUBLE), f[8]
            FROM (SELECT string_split_regex(trim(line), '\\s+') AS f
                  FROM (SELECT unnest(string_split(replace(?, chr(13), ''), chr(10))) AS line))
            WHERE len(f) >= 8 AND f[1] = 'SPEAKER'
            """,
            [str(p), text],
        )


def rttm_file_ids(con: duckdb.DuckDBPyConnection, path: str | Path, table: str = _RTTM) -> list[str]:
    return [r[0] for r in con.execute(
        f"SELECT DISTINCT file_id FROM {table} WHERE path = ? ORDER BY file_id", [str(path)]
    ).fetchall()]


# --------------------------------------------------------------------------- the scorer


def _assign(cooc: list[list[float]]) -> list[tuple[int, int]]:
    """(row, col) pairs of the one-to-one assignment maximising the summed overlap."""
    nr = len(cooc)
    nh = len(cooc[0]) if nr else 0
    if not nr or not nh:
        return []
    try:
        import numpy as np
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        if max(nr, nh) > BRUTE_FORCE_MAX_SPEAKERS:
            raise RuntimeError(
                f"DER speaker mapping of {nr} x {nh} speakers needs scipy "
                f"(brute force only up to {BRUTE_FORCE_MAX_SPEAKERS})"
            ) from None
        best, best_pairs = -1.0, []
        if nr <= nh:
            for cols in itertools.permutations(range(nh), nr):
                v = sum(cooc[r][c] for r, c in enumerate(cols))
                if v > best:
                    best, best_pairs = v, list(enumerate(cols))
        else:
            for rows in itertools.permutations(range(nr), nh):
                v = sum(cooc[r][c] for c, r in enumerate(rows))
                if v > best:
                    best, best_pairs = v, [(r, c) for c, r in enumerate(rows)]
        return best_pairs
    rows, cols = linear_sum_assignment(-np.asarray(cooc, dtype=float))
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


def der_sql(
    con: duckdb.DuckDBPyConnection,
    source_id: str,
    *,
    rttm_path: str | Path | None = None,
    file_id: str | None = None,
    collar: float = 0.0,
    rttm_table: str = _RTTM,
) -> dict[str, Any]:
    """DER of source ``source_id``'s rows of the ``turns`` view against the reference lines of
    ``rttm_table`` (see :func:`load_rttm`) from ``rttm_path`` (any, if None) whose file-id is
    ``file_id`` (any, if None). See :func:`der_from_turns` for the result."""
    collar = max(0.0, float(collar))
    cond, params = [], []
    if rttm_path is not None:
        cond.append("path = ?")
        params.append(str(rttm_path))
    if file_id is not None:
        cond.append("file_id = ?")
        params.append(file_id)
    where = " AND ".join(cond + ['"end" > start'])
    con.execute(
        f'CREATE OR REPLACE TEMP TABLE {_REF} AS SELECT start AS s, "end" AS e, speaker AS lab '
        f"FROM {rttm_table} WHERE {where}",
        params,
    )
    con.execute(
        f'CREATE OR REPLACE TEMP TABLE {_HYP} AS SELECT start AS s, "end" AS e, speaker AS lab '
        'FROM turns WHERE source_id = ? AND "end" > start',
        [source_id],
    )
    # elementary segments: every boundary of both sides (+ collar hole edges, clipped at 0),
    # minus those whose midpoint lies inside a hole (+-collar around a reference boundary)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {_SEG} AS
        WITH holes AS (
            SELECT s - $c AS lo, s + $c AS hi FROM {_REF} WHERE $c > 0
            UNION ALL
            SELECT e - $c, e + $c FROM {_REF} WHERE $c > 0
        ),
        cuts AS (
            SELECT s AS x FROM {_REF} UNION SELECT e FROM {_REF}
            UNION SELECT s FROM {_HYP} UNION SELECT e FROM {_HYP}
            UNION SELECT greatest(0.0, lo) FROM holes UNION SELECT greatest(0.0, hi) FROM holes
        ),
        bounds AS (SELECT x AS a, lead(x) OVER (ORDER BY x) AS b FROM cuts)
        SELECT a, b, b - a AS d FROM bounds
        WHERE b > a
          AND NOT EXISTS (SELECT 1 FROM holes WHERE lo < 0.5 * (a + b) AND 0.5 * (a + b) < hi)
        """,
        {"c": collar},
    )
    # who is active over each whole segment; DISTINCT: a label overlapping itself counts once
    for act, side in ((_RA, _REF), (_HA, _HYP)):
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {act} AS "
            f"SELECT DISTINCT g.a, g.d, t.lab FROM {_SEG} g JOIN {side} t ON t.s <= g.a AND t.e >= g.b"
        )
    total, missed, fa, both = con.execute(
        f"""
        WITH nr AS (SELECT a, count(*) AS n FROM {_RA} GROUP BY a),
             nh AS (SELECT a, count(*) AS n FROM {_HA} GROUP BY a),
             per AS (
                SELECT g.d, coalesce(nr.n, 0) AS r, coalesce(nh.n, 0) AS h
                FROM {_SEG} g LEFT JOIN nr USING (a) LEFT JOIN nh USING (a)
             )
        SELECT coalesce(sum(r * d), 0.0),
               coalesce(sum(greatest(r - h, 0) * d), 0.0),
               coalesce(sum(greatest(h - r, 0) * d), 0.0),
               coalesce(sum(least(r, h) * d), 0.0)
        FROM per
        """
    ).fetchone()
    ref_labels = sorted({r[0] for r in con.execute(f"SELECT DISTINCT lab FROM {_REF}").fetchall()}, key=str)
    hyp_labels = sorted({r[0] for r in con.execute(f"SELECT DISTINCT lab FROM {_HYP}").fetchall()}, key=str)
    ri = {lab: i for i, lab in enumerate(ref_labels)}
    hi = {lab: i for i, lab in enumerate(hyp_labels)}
    cooc = [[0.0] * len(hyp_labels) for _ in ref_labels]
    for rl, hl, sec in con.execute(
        f"SELECT r.lab, h.lab, sum(r.d) FROM {_RA} r JOIN {_HA} h USING (a) GROUP BY ALL"
    ).fetchall():
        cooc[ri[rl]][hi[hl]] = float(sec)
    pairs = [(r, c) for r, c in _assign(cooc) if cooc[r][c] > 0]
    correct = sum(cooc[r][c] for r, c in pairs)
    for t in (_REF, _HYP, _SEG, _RA, _HA):
        con.execute(f"DROP TABLE IF EXISTS {t}")

    total, missed, fa = float(total), float(missed), float(fa)
    conf = max(0.0, float(both) - correct)
    err = missed + fa + conf
    return {
        "source_id": source_id,
        "der": err / total if total > 0 else (0.0 if err == 0 else float("inf")),
        "missed_s": missed,
        "false_alarm_s": fa,
        "confusion_s": conf,
        "total_s": total,
        # hypothesis speaker -> the reference speaker it is mapped to (unmapped ones absent)
        "mapping": {hyp_labels[c]: ref_labels[r] for r, c in sorted(pairs, key=lambda p: p[1])},
        "num_ref_speakers": len(ref_labels),
        "num_hyp_speakers": len(hyp_labels),
        "collar": collar,
    }


def der_from_turns(
    out_dir: str,
    source_id: str,
    reference_rttm: str | Path,
    collar: float = 0.0,
    file_id: str | None = None,
) -> dict[str, Any]:
    """DER of one source's ``turns`` rows in run output ``out_dir`` against an RTTM file.

    ``file_id`` picks the reference lines when the RTTM holds several files; by default a
    one-file RTTM is used whole, else the file-id equal to the source id or to the source's
    basename (``sources.uri`` without folder and extension) is used.

    Returns {der, missed_s, false_alarm_s, confusion_s, total_s (reference speech, once per
    speaker), mapping (hypothesis speaker -> reference speaker), num_ref_speakers,
    num_hyp_speakers, source_id, collar}; seconds.
    """
    from mmcurate.quality.db import connect

    con = connect(out_dir)
    try:
        load_rttm(con, [reference_rttm])
        if file_id is None:
            ids = rttm_file_ids(con, reference_rttm)
            if len(ids) > 1:
                names = {source_id} | set(source_names(con).get(source_id, []))
                match = [i for i in ids if i in names]
                if not match:
                    raise ValueError(
                        f"{reference_rttm} holds {len(ids)} files ({', '.join(ids[:5])}...) and none is "
                        f"named {source_id!r} or after its source; pass file_id"
                    )
                file_id = match[0]
        return der_sql(con, source_id, rttm_path=reference_rttm, file_id=file_id, collar=collar)
    finally:
        con.close()


# --------------------------------------------------------------------------- many sources


def basename_of(uri: str) -> str:
    """A source's name for files named after the audio: the uri's last path part without its
    extension (query and fragment of URLs dropped), whitespace replaced by '_' (RTTM fields)."""
    path = uri
    if "://" in uri:
        from urllib.parse import unquote, urlsplit

        path = unquote(urlsplit(uri).path)
    base = os.path.basename(path.rstrip("/\\").replace("\\", "/")) or uri
    stem, ext = os.path.splitext(base)
    return "_".join((stem or base).split())


def source_names(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """source_id -> [basename] for every source row (from ``sources.uri``)."""
    return {
        sid: [basename_of(uri)]
        for sid, uri in con.execute("SELECT source_id, min(uri) FROM sources GROUP BY source_id").fetchall()
    }


def der_report(out_dir: str, reference: str | Path, collar: float = 0.0) -> dict[str, Any]:
    """DER of every source of ``out_dir`` that has a reference in ``reference``.

    ``reference`` is an RTTM file or a directory of ``*.rttm`` files. Reference file-ids (and,
    for an RTTM file holding one file-id, the file's stem) are matched to a source's id or
    basename; a lone reference file-id with a run of one diarized source matches it whatever
    the names. A source with a reference but no turns is scored too (all missed).

    Returns {"sources": [per-source der_sql dicts + name, reference, file_id, hyp_turns],
    "overall": time-weighted totals over the scored sources, "unscored_sources": [ids without
    a reference], "unused_references": ["path#file_id", ...]}.
    """
    from mmcurate.quality.db import connect

    ref = Path(reference)
    if ref.is_dir():
        paths = sorted(p for p in ref.iterdir() if p.is_file() and p.suffix.lower() == ".rttm")
    elif ref.is_file():
        paths = [ref]
    else:
        raise FileNotFoundError(f"{reference}: no such RTTM file or directory")

    con = connect(out_dir)
    try:
        load_rttm(con, paths)
        entries: list[tuple[str, str, set[str]]] = []  # (path, file_id, names it answers to)
        for p in paths:
            ids = rttm_file_ids(con, p)
            for fid in ids:
                names = {fid} | ({p.stem} if len(ids) == 1 else set())
                entries.append((str(p), fid, names))
        names = source_names(con)
        turn_counts = dict(con.execute("SELECT source_id, count(*) FROM turns GROUP BY source_id").fetchall())
        sids = sorted(set(names) | set(turn_counts))
        diarized = [s for s in sids if turn_counts.get(s)]

        matched: dict[str, tuple[str, str]] = {}
        used: set[tuple[str, str]] = set()
        for sid in sids:
            want = [sid] + names.get(sid, [])
            for w in want:  # the source id first, then the basename
                hit = [(p, f) for p, f, ns in entries if w in ns and (p, f) not in used]
                if hit:
                    if len(hit) > 1:
                        log.warning("source %s: %d references named %r; using %s#%s", sid, len(hit), w, *hit[0])
                    matched[sid] = hit[0]
                    used.add(hit[0])
                    break
        if not matched and len(entries) == 1 and len(diarized) == 1:
            matched[diarized[0]] = entries[0][:2]
            used.add(entries[0][:2])

        results = []
        for sid, (p, fid) in sorted(matched.items()):
            r = der_sql(con, sid, rttm_path=p, file_id=fid, collar=collar)
            r.update(name=(names.get(sid) or [sid])[0], reference=p, file_id=fid, hyp_turns=int(turn_counts.get(sid, 0)))
            results.append(r)
    finally:
        con.close()

    tot = {k: sum(r[k] for r in results) for k in ("missed_s", "false_alarm_s", "confusion_s", "total_s")}
    err = tot["missed_s"] + tot["false_alarm_s"] + tot["confusion_s"]
    overall = {
        "der": (err / tot["total_s"]) if tot["total_s"] > 0 else (0.0 if err == 0 else None),
        **tot,
        "sources": len(results),
    }
    return {
        "sources": results,
        "overall": overall,
        "unscored_sources": [s for s in sids if s not in matched],
        "unused_references": [f"{p}#{f}" for p, f, _ in entries if (p, f) not in used],
        "collar": max(0.0, float(collar)),
    }


def format_der_report(rep: dict[str, Any], reference: str = "") -> str:
    """Plain-text table of :func:`der_report`: per source DER, missed / false alarm /
    confusion / reference seconds and the speaker counts, then the overall figure."""
    L = [f"DER vs {reference or 'reference'} (collar {rep['collar']:g} s)"]
    if rep["sources"]:
        rows = [("source", "reference", "DER", "missed_s", "false_alarm_s", "confusion_s", "ref_speech_s", "speakers ref/hyp")]
        for r in rep["sources"]:
            rows.append((
                r["name"] if r["name"] == r["source_id"] else f"{r['name']} ({r['source_id']})",
                f"{os.path.basename(r['reference'])}#{r['file_id']}",
                f"{r['der'] * 100:.2f}%", f"{r['missed_s']:.3f}", f"{r['false_alarm_s']:.3f}",
                f"{r['confusion_s']:.3f}", f"{r['total_s']:.3f}",
                f"{r['num_ref_speakers']}/{r['num_hyp_speakers']}",
            ))
        w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            L.append("  " + "  ".join([row[0].ljust(w[0]), row[1].ljust(w[1])]
                                      + [c.rjust(n) for c, n in zip(row[2:], w[2:])]))
        o = rep["overall"]
        if len(rep["sources"]) > 1 and o["der"] is not None:
            L.append(f"  overall DER {o['der'] * 100:.2f}% over {o['sources']} sources "
                     f"({o['total_s']:.1f} s reference speech)")
    else:
        L.append("  no source matched a reference (matched by source id or media basename)")

    def some(xs: list[str]) -> str:
        return ", ".join(xs[:10]) + (" ..." if len(xs) > 10 else "")

    if rep["unscored_sources"]:
        L.append(f"  {len(rep['unscored_sources'])} sources without a reference: {some(rep['unscored_sources'])}")
    if rep["unused_references"]:
        L.append(f"  {len(rep['unused_references'])} references matched no source: {some(rep['unused_references'])}")
    return "\n".join(L) + "\n"
