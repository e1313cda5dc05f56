"""Audit of a finished run: DuckDB SQL over the Parquet tables a run wrote (`mmcurate audit`).

A run writes `<out>/<table>/*.parquet` for every table in `mmcurate.schemas.tables.TABLES` and
`<out>/manifest.json` (schema `mmcurate.schemas.tables.RUN_MANIFEST`). `connect()`
(`mmcurate.quality.db`, re-exported here) exposes each table as a DuckDB view named after it; a
table that is absent on disk (no shard yet, or a run that stopped early) is an empty view with
the declared columns, so every query below runs on any output directory. `summarize()` computes the run's figures with SQL and checks the
"nothing is lost" invariant:

    every input ends exactly once either as a `sources` row or as a rejection at a
    source-level stage (`mmcurate.schemas.tables.SOURCE_LEVEL_STAGES`), keyed by its `uri`.

So `inputs = rows(sources) + rows(source-level rejected)`, and the invariant holds iff the
number of distinct uris over both sides equals that sum (no uri both kept and rejected, none
counted twice). Sub-source rejections (an ASR failure of one source) do not remove the source
and are not inputs.

Why one module of this length: the checks and the summary of `mmcurate audit` read one DuckDB
connection; the per-topic figures are modules of their own (turns, turn_taking, video_audit,
der_sql, dedup_audit, segment_audit, rephrase_audit).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import duckdb
import pyarrow as pa

from mmcurate.schemas.printable import printable
from mmcurate.schemas.stages import KEPT_SOURCE_REASONS
from mmcurate.schemas.tables import SOURCE_LEVEL_STAGES, TABLES

# the run's tables as DuckDB views (a module of its own, below every audit module that queries them)
from mmcurate.quality.db import (  # noqa: F401  (audit.connect, audit.load_manifest: callers, tests)
    _on_disk,
    _readable,
    _table_shards,
    committed_shards,
    connect,
    load_manifest,
    schema_warnings,
    shard_schema_check,
)
# the turns table: RTTM export and DER in SQL (modules of their own, re-exported here)
from mmcurate.quality.der_sql import der_from_turns, der_report, format_der_report  # noqa: F401
from mmcurate.quality.turns import format_turns, sources_without_turns, turns_summary, write_rttm  # noqa: F401
from mmcurate.quality.turn_taking import format_turn_taking, turn_taking_summary
# the video stage's documents: figures and one document as HTML (`--show`)
from mmcurate.quality.video_audit import format_video, video_summary, write_document_html  # noqa: F401
# the quality stage's segment_quality table: figures, text lines and the kept_segments view
from mmcurate.quality.segment_audit import format_quality, quality_summary  # noqa: E402
from mmcurate.quality.rephrase_audit import format_rephrase, rephrase_summary  # noqa: E402
from mmcurate.quality.dedup_audit import dedup_summary, format_dedup  # noqa: E402
# the curated view of every table (quality kept, dedup representatives): one definition
from mmcurate.quality.curated import curated_summary, format_curated  # noqa: E402

# Word-level ASR confidence under which a word counts as doubtful; 0.5 is the point where
# whisper's token probability says "more likely wrong than right".
LOW_WORD_PROBABILITY = 0.5
QUANTILES = (0.1, 0.5, 0.9)

# SQL lists of the source-level stages and of the reasons that keep their source
_SOURCE_LEVEL_STAGES_SQL = "(" + ", ".join(f"'{s}'" for s in SOURCE_LEVEL_STAGES) + ")"
_KEPT_SOURCE_REASONS_SQL = "(" + ", ".join(f"'{r}'" for r in KEPT_SOURCE_REASONS) + ")"
# a WHERE condition: the ledger rows that remove an input (not annotations of a kept source)
_REMOVES_INPUT_SQL = f"(stage IN {_SOURCE_LEVEL_STAGES_SQL} AND reason NOT IN {_KEPT_SOURCE_REASONS_SQL})"

# Per segment: duration and word count. Words come from word timestamps; a backend that gives
# none (words null or empty) falls back to whitespace tokens of the text.
_SEG = """
    SELECT
        source_id,
        speaker,
        language,
        greatest("end" - start, 0.0) AS dur_s,
        CASE
            WHEN words IS NOT NULL AND len(words) > 0 THEN len(words)
            WHEN trim(coalesce(text, '')) = '' THEN 0
            ELSE len(string_split_regex(trim(text), '\\s+'))
        END AS n_words
    FROM segments
"""


class AuditQueryError(ValueError):
    """An --sql query that is not allowed or does not run; the message is one line."""


# Statements `mmcurate audit --sql` runs: queries only. COPY, ATTACH, INSTALL/LOAD, CREATE,
# INSERT, SET, PRAGMA, EXPORT ... are refused before DuckDB sees them.
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def _arrow(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    rel = con.sql(sql)
    if rel is None:  # a statement without a result (CREATE, SET ...)
        return pa.table({})
    # duckdb 2.0: to_arrow_table (arrow() gives a reader); 1.x: fetch_arrow_table / arrow
    for meth in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        fn = getattr(rel, meth, None)
        if fn is not None:
            out = fn()
            return out.read_all() if isinstance(out, pa.RecordBatchReader) else out
    raise RuntimeError("this duckdb has no Arrow fetch on relations")


def query(out_dir: str, sql: str) -> pa.Table:
    """Ad-hoc read-only SQL over the run's table views, as an Arrow table.

    Only SELECT/EXPLAIN statements run, on a connection that can read the committed shards
    and nothing else (`connect(read_only=True)`); AuditQueryError otherwise."""
    con = connect(out_dir, read_only=True)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as e:
            raise AuditQueryError(f"--sql does not parse: {' '.join(str(e).split())}") from None
        if not statements:
            raise AuditQueryError("--sql is empty")
        for st in statements:
            kind = str(st.type).rsplit(".", 1)[-1]
            if kind not in READ_ONLY_STATEMENTS:
                raise AuditQueryError(f"--sql is read-only: {kind} statements are not allowed "
                                      f"(use SELECT over the views {', '.join(TABLES)})")
        try:
            return _arrow(con, sql)
        except duckdb.Error as e:
            raise AuditQueryError(f"--sql failed: {' '.join(str(e).split())}") from None
    finally:
        con.close()


# --------------------------------------------------------------------------- checks

# Tables whose rows belong to a source (referential integrity: source_id in sources).
def _child_tables() -> list[str]:
    return [t for t, schema in TABLES.items() if t not in ("sources", "rejected")
            and "source_id" in schema.names]


def output_problems(out_dir: str, con: duckdb.DuckDBPyConnection | None = None,
                    tables: dict[str, int] | None = None) -> list[str]:
    """What is wrong with an output directory, one line each (empty: consistent).

    Checks: a committed manifest exists and parses; every shard it lists exists, is readable
    Parquet and has the declared columns and types (`shard_schema_check`); no shard file lies beside them that it does not list (an interrupted
    run's); row counts agree with the manifest; every row of a table with a source_id names
    a source; the nothing-is-lost invariant holds."""
    problems: list[str] = []
    listed, why = committed_shards(out_dir)
    if listed is None:
        problems.append(why or "no committed manifest")
    else:
        for table, files in sorted(listed.items()):
            if table not in TABLES:
                problems.append(f"manifest lists shards of an unknown table {table!r}")
            for f in files:
                if not os.path.exists(f):
                    problems.append(f"{table}: committed shard {os.path.relpath(f, out_dir)} is missing")
                else:
                    bad = _readable(f)
                    if bad:
                        problems.append(f"{table}: shard {os.path.relpath(f, out_dir)} is not "
                                        f"readable Parquet ({bad})")
                    elif table in TABLES:
                        problems += shard_schema_check(table, f, os.path.relpath(f, out_dir))[0]
        committed = {os.path.abspath(f) for files in listed.values() for f in files}
        extra = [f for t in TABLES for f in _on_disk(out_dir, t) if os.path.abspath(f) not in committed]
        if extra:
            problems.append(f"{len(extra)} shard file(s) not in the committed manifest (an "
                            f"interrupted run's, e.g. {os.path.relpath(extra[0], out_dir)}): "
                            f"readers ignore them; re-run to finish or clean up")
    own = con is None
    con = con or connect(out_dir)
    try:
        if listed is not None and tables is not None:
            m = load_manifest(out_dir) or {}
            declared = _as_map(m.get("tables"))
            for t in sorted(declared):
                if declared[t] != tables.get(t, 0):
                    problems.append(f"{t}: manifest says {declared[t]} rows, the shards hold "
                                    f"{tables.get(t, 0)}")
        for t in _child_tables():
            n = _one(con, f"SELECT count(*) FROM {t} WHERE source_id IS NULL OR source_id NOT IN "
                          f"(SELECT source_id FROM sources)")[0]
            if n:
                problems.append(f"{t}: {n} row(s) belong to no source in `sources`")
        inv = _invariant(con)
        if not inv["ok"]:
            problems.append(f"nothing-is-lost invariant broken: {inv['distinct_uris']} distinct "
                            f"inputs vs {inv['inputs']} source + source-level ledger rows")
        if inv["sub_source_rejections_without_source"]:
            problems.append(f"rejected: {inv['sub_source_rejections_without_source']} sub-source "
                            f"row(s) name no source in `sources`")
    finally:
        if own:
            con.close()
    return problems


# --------------------------------------------------------------------------- figures


def _num(v: Any) -> float | None:
    """A JSON-safe float: None for NULL / NaN / inf."""
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) or math.isinf(f) else f


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    return con.execute(sql).fetchone()


def _quantiles(con: duckdb.DuckDBPyConnection, expr: str, frm: str) -> dict[str, float | None]:
    """p10/p50/p90, mean, count of a numeric expression over non-null values."""
    qs = ", ".join(f"quantile_cont({expr}, {q})" for q in QUANTILES)
    row = _one(con, f"SELECT {qs}, avg({expr}), count({expr}) FROM {frm}")
    out: dict[str, float | None] = {
        f"p{round(q * 100)}": _num(v) for q, v in zip(QUANTILES, row[: len(QUANTILES)])
    }
    out["mean"] = _num(row[len(QUANTILES)])
    out["n"] = int(row[len(QUANTILES) + 1])
    return out


def _as_map(v: Any) -> dict[str, int]:
    """An Arrow map as JSON: an object, or a list of [key, value] pairs / {key, value} rows."""
    if isinstance(v, dict):
        return {str(k): int(n) for k, n in v.items()}
    out: dict[str, int] = {}
    for item in v or []:
        if isinstance(item, dict) and "key" in item:
            out[str(item["key"])] = int(item["value"])
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            out[str(item[0])] = int(item[1])
    return out


def _invariant(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    n_sources, n_sl, distinct, both, dup_sources, dup_rejected = _one(
        con,
        f"""
        WITH s AS (SELECT uri FROM sources),
             -- the same name reached twice (a folder and a manifest) is two inputs: the
             -- repeat's ledger row carries an item_id, which makes its key distinct
             r AS (SELECT uri || coalesce('#' || item_id, '') AS uri FROM rejected WHERE {_REMOVES_INPUT_SQL})
        SELECT
            (SELECT count(*) FROM s),
            (SELECT count(*) FROM r),
            (SELECT count(DISTINCT uri) FROM (SELECT uri FROM s UNION ALL SELECT uri FROM r)),
            (SELECT count(DISTINCT uri) FROM s WHERE uri IN (SELECT uri FROM r)),
            (SELECT count(*) - count(DISTINCT uri) FROM s),
            (SELECT count(*) - count(DISTINCT uri) FROM r)
        """,
    )
    # sub-source rejections should name a source that exists (else it was lost silently)
    orphans = _one(
        con,
        f"""
        SELECT count(*) FROM rejected
        WHERE NOT {_REMOVES_INPUT_SQL}
          AND (source_id IS NULL OR source_id NOT IN (SELECT source_id FROM sources))
        """,
    )[0]
    inputs = int(n_sources) + int(n_sl)
    return {
        "ok": int(distinct) == inputs,
        "definition": "count(distinct uri[#item_id] over sources and source-level rejected) "
        "== rows(sources) + rows(source-level rejected)",
        "source_level_stages": list(SOURCE_LEVEL_STAGES),
        "inputs": inputs,
        "sources": int(n_sources),
        "source_level_rejected": int(n_sl),
        "distinct_uris": int(distinct),
        "uris_kept_and_rejected": int(both),
        "duplicate_uris_in_sources": int(dup_sources),
        "duplicate_uris_in_source_level_rejected": int(dup_rejected),
        "sub_source_rejections_without_source": int(orphans),
    }


def summarize(out_dir: str) -> dict[str, Any]:
    """Every figure of a run's output directory, JSON-serializable (keys are strings)."""
    con = connect(out_dir)
    try:
        return _summarize(con, out_dir)
    finally:
        con.close()


def _summarize(con: duckdb.DuckDBPyConnection, out_dir: str) -> dict[str, Any]:
    s: dict[str, Any] = {"out_dir": os.path.abspath(out_dir)}

    s["tables"] = {t: int(_one(con, f"SELECT count(*) FROM {t}")[0]) for t in TABLES}
    s["tables_present"] = {t: bool(files) for t, files in _table_shards(out_dir).items()}
    s["problems"] = output_problems(out_dir, con, s["tables"])
    warnings = schema_warnings(out_dir)
    if warnings:  # only then: the summary of a clean output keeps its keys
        s["warnings"] = warnings

    # ---- rejections
    by_stage: dict[str, dict[str, int]] = {}
    by_reason: dict[str, int] = {}
    for stage, reason, n in con.execute(
        "SELECT stage, reason, count(*) FROM rejected GROUP BY ALL ORDER BY stage, reason"
    ).fetchall():
        by_stage.setdefault(stage, {})[reason] = int(n)
        by_reason[reason] = by_reason.get(reason, 0) + int(n)
    s["rejected"] = dict(sorted(by_reason.items()))
    s["rejected_by_stage"] = by_stage

    # ---- inputs, invariant, hours
    inv = _invariant(con)
    s["inputs"] = inv["inputs"]
    s["invariant_ok"] = inv["ok"]
    s["invariant"] = inv

    src_s, speech_s, rej_s, rej_unknown = _one(
        con,
        f"""
        SELECT
            (SELECT coalesce(sum(duration_s), 0) FROM sources),
            (SELECT coalesce(sum(speech_s), 0) FROM sources),
            (SELECT coalesce(sum(duration_s), 0) FROM rejected WHERE {_REMOVES_INPUT_SQL}),
            (SELECT count(*) FROM rejected WHERE {_REMOVES_INPUT_SQL} AND duration_s IS NULL)
        """,
    )
    s["hours_in"] = (float(src_s) + float(rej_s)) / 3600.0
    s["hours_in_rejected"] = float(rej_s) / 3600.0
    s["rejected_duration_unknown"] = int(rej_unknown)
    s["hours_sources"] = float(src_s) / 3600.0
    s["hours_speech"] = float(speech_s) / 3600.0

    # ---- speech / transcription
    seg_s, n_segs, n_words = _one(
        con, f"SELECT coalesce(sum(dur_s), 0), count(*), coalesce(sum(n_words), 0) FROM ({_SEG})"
    )
    s["hours_transcribed"] = float(seg_s) / 3600.0
    s["hours_transcribed_by_language"] = {
        lang: float(sec) / 3600.0
        for lang, sec in con.execute(
            f"""
            SELECT coalesce(language, 'unknown') AS lang, sum(dur_s)
            FROM ({_SEG}) GROUP BY lang ORDER BY sum(dur_s) DESC, lang
            """
        ).fetchall()
    }

    spk = f"SELECT source_id, count(DISTINCT speaker) AS n FROM ({_SEG}) GROUP BY source_id"
    mn, mean, mx, n_src = _one(con, f"SELECT min(n), avg(n), max(n), count(*) FROM ({spk})")
    s["speakers_per_source"] = {
        "sources": int(n_src),
        "min": None if mn is None else int(mn),
        "mean": _num(mean),
        "max": None if mx is None else int(mx),
        "histogram": {
            str(int(k)): int(v)
            for k, v in con.execute(
                f"SELECT n, count(*) FROM ({spk}) GROUP BY n ORDER BY n"
            ).fetchall()
        },
    }

    per_src = f"""(
        SELECT source_id, sum(n_words) / (sum(dur_s) / 60.0) AS wpm
        FROM ({_SEG}) GROUP BY source_id HAVING sum(dur_s) > 0
    )"""
    wpm = _quantiles(con, "wpm", per_src)
    s["words_per_minute"] = {
        "overall": float(n_words) / (float(seg_s) / 60.0) if seg_s else None,
        "per_source": wpm,
    }

    low, n_prob = _one(
        con,
        f"""
        SELECT count(*) FILTER (WHERE p < {LOW_WORD_PROBABILITY}), count(p)
        FROM (SELECT unnest(words).probability AS p FROM segments WHERE words IS NOT NULL)
        """,
    )
    s["asr_scores"] = {
        "avg_logprob": _quantiles(con, "avg_logprob", "segments"),
        "no_speech_prob": _quantiles(con, "no_speech_prob", "segments"),
        "compression_ratio": _quantiles(con, "compression_ratio", "segments"),
        "low_probability_word_share": (int(low) / int(n_prob)) if n_prob else None,
        "low_probability_threshold": LOW_WORD_PROBABILITY,
        "words_with_probability": int(n_prob),
    }

    # ---- per stage
    def rej(stage: str, reason: str | None = None) -> int:
        if reason is None:
            return sum(by_stage.get(stage, {}).values())
        return by_stage.get(stage, {}).get(reason, 0)

    regions, region_srcs = _one(con, "SELECT count(*), count(DISTINCT source_id) FROM speech_regions")
    seg_srcs, n_speakers, spk_segs, spk_srcs = _one(
        con,
        """
        SELECT count(DISTINCT source_id), count(DISTINCT speaker),
               count(speaker), count(DISTINCT source_id) FILTER (WHERE speaker IS NOT NULL)
        FROM segments
        """,
    )
    per_stage: dict[str, dict[str, int]] = {
        "ingest": {"inputs": s["inputs"], "sources": s["tables"]["sources"], "rejected": rej("ingest")},
        "decode": {"rejected": rej("decode")},
        "vad": {
            "regions": int(regions),
            "sources_with_regions": int(region_srcs),
            "no_speech": rej("vad", "no_speech"),
            "rejected": rej("vad"),
        },
        "asr": {
            "sources_transcribed": int(seg_srcs),
            "transcripts": s["tables"]["transcripts"],
            "segments": int(n_segs),
            "words": int(n_words),
            "no_transcript": rej("asr", "no_transcript"),
            "rejected": rej("asr"),
        },
        "diarize": {
            "sources_diarized": int(spk_srcs),
            "speakers": int(n_speakers),
            "segments_with_speaker": int(spk_segs),
            "rejected": rej("diarize"),
        },
    }
    for stage in by_stage:  # stages this module does not know yet still show their losses
        per_stage.setdefault(stage, {"rejected": rej(stage)})
    s["per_stage"] = per_stage

    # ---- diarizer turns (overlap-aware): counts, speakers per source, overlapped speech share
    s["turns"] = turns_summary(con)
    s["turn_taking"] = turn_taking_summary(con)
    s["video"] = video_summary(con)
    s["quality"] = quality_summary(con)
    s["dedup"] = dedup_summary(con)
    s["curated"] = curated_summary(con)

    # ---- manifest
    m = load_manifest(out_dir)
    s["manifest"] = _manifest_summary(m, s["tables"]) if m is not None else None
    s["rephrase"] = rephrase_summary(con, m)
    s["run_id"] = m.get("run_id") if m else None
    s["code_version"] = m.get("code_version") if m else None
    s["models"] = list(m.get("models") or []) if m else []
    return s


def _manifest_summary(m: dict[str, Any], tables: dict[str, int]) -> dict[str, Any]:
    if "error" in m and "run_id" not in m:
        return {"error": m["error"]}
    declared = _as_map(m.get("tables"))
    mismatches = {
        t: {"manifest": declared[t], "parquet": tables.get(t, 0)}
        for t in sorted(declared)
        if declared[t] != tables.get(t, 0)
    }
    return {
        "run_id": m.get("run_id"),
        "finished_at": m.get("finished_at"),
        "code_version": m.get("code_version"),
        "inputs": list(m.get("inputs") or []),
        "stage_counts": _as_map(m.get("stage_counts")),
        "rejected": _as_map(m.get("rejected")),
        "shards": len(m.get("shards") or []),
        "tables_match": not mismatches,
        "table_mismatches": mismatches,
    }


# --------------------------------------------------------------------------- text


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _rows(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    """Left-aligned first column, right-aligned others."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """A readable multi-line report of `summarize()`; hours with 2 decimals."""
    s = summary
    L: list[str] = [f"mmcurate audit: {s.get('out_dir', '')}"]
    if s.get("run_id"):
        L.append(f"  run_id        {s['run_id']}")
        L.append(f"  code_version  {s.get('code_version')}")
    man = s.get("manifest")
    if man is None:
        L.append("  manifest.json missing")
    elif "error" in man:
        L.append(f"  manifest.json: {man['error']}")
    else:
        L.append(f"  finished_at   {man.get('finished_at')}")
        if not man["tables_match"]:
            for t, mm in man["table_mismatches"].items():
                L.append(f"  MANIFEST MISMATCH {t}: manifest {mm['manifest']} rows, parquet {mm['parquet']}")
    for mdl in s.get("models") or []:
        L.append(f"  model {mdl.get('role')}: {mdl.get('name')} {mdl.get('version') or ''}".rstrip())

    if s.get("problems"):
        L += ["", f"PROBLEMS ({len(s['problems'])}): this output is not consistent"]
        L += [f"  - {p}" for p in s["problems"]]
    if s.get("warnings"):
        L += ["", f"WARNINGS ({len(s['warnings'])})"]
        L += [f"  - {w}" for w in s["warnings"]]
    L += ["", "Tables (rows)"]
    L += _rows([(t, str(n)) for t, n in s["tables"].items()])

    inv = s["invariant"]
    L += ["", "Inputs"]
    L += _rows(
        [
            ("inputs", str(s["inputs"])),
            ("sources", str(inv["sources"])),
            ("source-level rejected", str(inv["source_level_rejected"])),
        ]
    )
    if s["invariant_ok"] and not s.get("problems"):
        L.append("  invariant OK: inputs == sources + source-level rejected (distinct uris agree)")
    else:
        L.append(
            f"  INVARIANT BROKEN: {inv['distinct_uris']} distinct uris vs {inv['inputs']} rows "
            f"({inv['uris_kept_and_rejected']} uris both kept and rejected, "
            f"{inv['duplicate_uris_in_sources']} duplicate in sources, "
            f"{inv['duplicate_uris_in_source_level_rejected']} duplicate in rejected)"
        )
    if inv["sub_source_rejections_without_source"]:
        L.append(f"  WARNING: {inv['sub_source_rejections_without_source']} sub-source rejections name no known source")

    L += ["", "Hours"]
    hrows = [
        ("in", _fmt(s["hours_in"])),
        ("sources", _fmt(s["hours_sources"])),
        ("rejected (source-level)", _fmt(s["hours_in_rejected"])),
        ("speech (VAD)", _fmt(s["hours_speech"])),
        ("transcribed", _fmt(s["hours_transcribed"])),
    ]
    hrows += [(f"transcribed [{lang}]", _fmt(h)) for lang, h in s["hours_transcribed_by_language"].items()]
    L += _rows(hrows)
    if s.get("rejected_duration_unknown"):
        L.append(f"  ({s['rejected_duration_unknown']} source-level rejections of unknown duration not in hours in)")

    L += ["", "Per stage"]
    L += _rows([(f"{st}.{k}", str(v)) for st, d in s["per_stage"].items() for k, v in d.items()])

    L += ["", "Rejected (stage / reason)"]
    rrows = [(f"{st}/{r}", str(n)) for st, d in s["rejected_by_stage"].items() for r, n in d.items()]
    L += _rows(rrows) if rrows else ["  none"]

    sp = s["speakers_per_source"]
    L += ["", "Speakers per source"]
    L += _rows(
        [
            ("sources", str(sp["sources"])),
            ("min / mean / max", f"{_fmt(sp['min'])} / {_fmt(sp['mean'])} / {_fmt(sp['max'])}"),
        ]
        + [(f"{k} speakers", f"{v} sources") for k, v in sp["histogram"].items()]
    )
    L += format_turns(s.get("turns"))
    L += format_turn_taking(s.get("turn_taking"))
    L += format_video(s.get("video"))
    L += format_quality(s.get("quality"))
    L += format_rephrase(s.get("rephrase"))
    L += format_dedup(s.get("dedup"), s.get("out_dir") or "DIR")
    L += format_curated(s.get("curated"))

    w = s["words_per_minute"]
    pw = w["per_source"]
    L += ["", "Words per minute"]
    L += _rows(
        [
            ("overall", _fmt(w["overall"], 1)),
            ("per source p10/p50/p90", f"{_fmt(pw['p10'], 1)} / {_fmt(pw['p50'], 1)} / {_fmt(pw['p90'], 1)}"),
        ]
    )

    a = s["asr_scores"]
    L += ["", "ASR scores (per segment)", "  " + "  ".join(["metric".ljust(18), *(c.rjust(8) for c in ("p10", "p50", "p90", "mean"))])]
    for k in ("avg_logprob", "no_speech_prob", "compression_ratio"):
        q = a[k]
        L.append("  " + "  ".join([k.ljust(18), *(_fmt(q[c], 3).rjust(8) for c in ("p10", "p50", "p90", "mean"))]))
    share = a["low_probability_word_share"]
    L.append(
        f"  words with probability < {a['low_probability_threshold']}: "
        + ("-" if share is None else f"{share * 100:.1f}% of {a['words_with_probability']}")
    )
    return "\n".join(L) + "\n"


def _cell(v: Any, width: int = 60) -> str:
    if v is None:
        text = "NULL"
    elif isinstance(v, (bytes, bytearray)):
        text = f"<{len(v)} bytes>"
    elif isinstance(v, float):
        text = f"{v:.6g}"
    elif isinstance(v, (list, dict, tuple)):
        text = json.dumps(v, default=str, ensure_ascii=False)
    else:
        text = str(v)
    text = printable(text)  # a name with ESC/OSC bytes or a newline must not drive the terminal
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(tbl: pa.Table, max_rows: int = 50) -> str:
    """Plain-text rendering of a query result (numbers right-aligned), at most max_rows rows."""
    names = list(tbl.column_names)
    if not names:
        return "(no columns)\n"
    head = tbl.slice(0, max_rows).to_pylist()
    rows = [[_cell(r[n]) for n in names] for r in head]
    numeric = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in tbl.schema
    ]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        return " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(names), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    more = tbl.num_rows - len(rows)
    out.append(f"({tbl.num_rows} row{'s' if tbl.num_rows != 1 else ''}" + (f", {more} not shown)" if more > 0 else ")"))
    return "\n".join(out) + "\n"
