"""Turn-taking figures in the audit, from the `turn_events` and `turns` tables (SQL over DuckDB).

Per source: floor transfers per minute of the source, each speaker's share of the diarized
speech, the floor-transfer-offset (FTO) distribution (p10 / p50 / p90; < 0 is overlap), and
the rates of overlaps and interruptions (per floor transfer) and of back-channels (per
minute). Over the run: the same rates and an FTO histogram. Under ``"turn_taking"`` in
``audit.summarize()``; `format_turn_taking` prints them, the HTML report shows them.
"""

from __future__ import annotations

from typing import Any

# floor-transfer-offset histogram bin edges, seconds
FTO_EDGES = (-2.0, -1.0, -0.5, -0.2, 0.0, 0.2, 0.5, 1.0, 2.0)
PER_SOURCE_SHOWN = 10  # the text audit lists this many sources; --json has them all

_PER_SOURCE = """
    SELECT s.source_id, s.duration_s,
           count(e.kind) FILTER (WHERE e.kind IN ('gap', 'overlap', 'interruption')) AS transfers,
           count(e.kind) FILTER (WHERE e.kind = 'overlap') AS overlaps,
           count(e.kind) FILTER (WHERE e.kind = 'interruption') AS interruptions,
           count(e.kind) FILTER (WHERE e.kind = 'backchannel') AS backchannels,
           count(e.kind) FILTER (WHERE e.kind = 'pause') AS pauses,
           quantile_cont(e.offset_s, [0.1, 0.5, 0.9])
               FILTER (WHERE e.kind IN ('gap', 'overlap', 'interruption')) AS fto
    FROM sources s LEFT JOIN turn_events e USING (source_id)
    WHERE s.source_id IN (SELECT DISTINCT source_id FROM turns)
    GROUP BY s.source_id, s.duration_s ORDER BY s.source_id
"""

_SHARES = """
    SELECT source_id, speaker, sum("end" - start) AS s FROM turns GROUP BY source_id, speaker
    ORDER BY source_id, s DESC, speaker
"""


def _r(v: Any, nd: int = 3) -> float | None:
    return None if v is None else round(float(v), nd)


def turn_taking_summary(con) -> dict[str, Any] | None:
    """None when the run has no turns (every table is a view of the audit connection, empty
    when the run did not write it)."""
    if not con.execute("SELECT count(*) FROM turns").fetchone()[0]:
        return None
    shares: dict[str, list[dict]] = {}
    for sid, spk, s in con.execute(_SHARES).fetchall():
        shares.setdefault(sid, []).append({"speaker": spk, "speech_s": _r(s)})
    per_source = []
    for sid, dur, n, ov, intr, bc, pauses, fto in con.execute(_PER_SOURCE).fetchall():
        minutes = (dur or 0.0) / 60.0
        total = sum(x["speech_s"] for x in shares.get(sid, [])) or 0.0
        per_source.append({
            "source_id": sid,
            "minutes": _r(minutes),
            "floor_transfers": int(n),
            "transfers_per_minute": _r(n / minutes) if minutes > 0 else None,
            "speaker_shares": [{**x, "share": _r(x["speech_s"] / total) if total else None}
                               for x in shares.get(sid, [])],
            "fto_p10_p50_p90": [_r(v) for v in fto] if fto else None,
            "overlap_rate": _r(ov / n) if n else None,
            "interruption_rate": _r(intr / n) if n else None,
            "backchannels_per_minute": _r(bc / minutes) if minutes > 0 else None,
            "counts": {"overlap": int(ov), "interruption": int(intr), "backchannel": int(bc), "pause": int(pauses),
                       "gap": int(n - ov - intr)},
        })
    kinds = dict(con.execute("SELECT kind, count(*) FROM turn_events GROUP BY kind ORDER BY kind").fetchall())
    transfers = sum(kinds.get(k, 0) for k in ("gap", "overlap", "interruption"))
    minutes = sum(p["minutes"] or 0.0 for p in per_source)
    q = con.execute("SELECT quantile_cont(offset_s, [0.1, 0.5, 0.9]) FROM turn_events "
                    "WHERE kind IN ('gap', 'overlap', 'interruption')").fetchone()[0]
    edges = FTO_EDGES
    bins = " ".join(f"WHEN offset_s < {e} THEN {i}" for i, e in enumerate(edges))
    hist = dict(con.execute(
        f"SELECT CASE {bins} ELSE {len(edges)} END AS b, count(*) FROM turn_events "
        "WHERE kind IN ('gap', 'overlap', 'interruption') GROUP BY b ORDER BY b").fetchall())
    labels = [f"< {edges[0]:g}"] + [f"{a:g}..{b:g}" for a, b in zip(edges, edges[1:])] + [f">= {edges[-1]:g}"]
    return {
        "events": {k: int(v) for k, v in kinds.items()},
        "floor_transfers": transfers,
        "transfers_per_minute": _r(transfers / minutes) if minutes else None,
        "fto_p10_p50_p90": [_r(v) for v in q] if q else None,
        "fto_histogram": {labels[i]: int(hist.get(i, 0)) for i in range(len(labels))},
        "overlap_rate": _r(kinds.get("overlap", 0) / transfers) if transfers else None,
        "interruption_rate": _r(kinds.get("interruption", 0) / transfers) if transfers else None,
        "backchannels_per_minute": _r(kinds.get("backchannel", 0) / minutes) if minutes else None,
        "per_source": per_source,
    }


def _f(v: Any, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def source_line(p: dict[str, Any]) -> tuple[str, ...]:
    """One source's figures as table cells (text and HTML audits)."""
    fto = p["fto_p10_p50_p90"]
    shares = " ".join(f"{x['speaker'].rsplit('-', 1)[-1]}:{_pct(x['share'])}" for x in p["speaker_shares"])
    return (p["source_id"], _f(p["transfers_per_minute"], 1), shares,
            "-" if not fto else " / ".join(_f(v) for v in fto),
            _pct(p["overlap_rate"]), _pct(p["interruption_rate"]), _f(p["backchannels_per_minute"], 1))


SOURCE_COLUMNS = ("source", "transfers/min", "speaker shares", "FTO p10 / p50 / p90 (s)", "overlap",
                  "interruption", "back-channels/min")


def format_turn_taking(t: dict[str, Any] | None) -> list[str]:
    """Report lines for the ``"turn_taking"`` summary (none without turn events)."""
    if not t or not t["per_source"]:
        return []
    ev = t["events"]
    fto = t["fto_p10_p50_p90"]
    rows = [
        ("floor transfers", f"{t['floor_transfers']} ({_f(t['transfers_per_minute'], 1)} per minute)"),
        ("events", ", ".join(f"{k} {ev.get(k, 0)}" for k in ("gap", "overlap", "interruption", "backchannel",
                                                           "pause"))),
        ("floor-transfer offset p10 / p50 / p90", "-" if not fto else " / ".join(f"{_f(v)} s" for v in fto)),
        ("overlap / interruption rate", f"{_pct(t['overlap_rate'])} / {_pct(t['interruption_rate'])} of transfers"),
        ("back-channels per minute", _f(t["backchannels_per_minute"], 1)),
        ("offset histogram (s)", "  ".join(f"{k}: {v}" for k, v in t["fto_histogram"].items())),
    ]
    w = max(len(r[0]) for r in rows)
    out = ["", "Turn-taking (turn_events)"] + [f"  {a.ljust(w)}  {b}" for a, b in rows]
    cells = [SOURCE_COLUMNS] + [source_line(p) for p in t["per_source"][:PER_SOURCE_SHOWN]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(SOURCE_COLUMNS))]
    out += ["  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    if len(t["per_source"]) > PER_SOURCE_SHOWN:
        out.append(f"  ... {len(t['per_source']) - PER_SOURCE_SHOWN} more source(s): --json lists all")
    return out
