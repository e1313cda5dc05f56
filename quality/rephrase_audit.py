"""The rephrase stage in `mmcurate audit`: the text mix's synthetic token share and what the
guards rejected (read from the text_mix table and the ledger; the manifest's stats agree)."""

from __future__ import annotations

from typing import Any


def rephrase_summary(con, manifest: dict | None = None) -> dict[str, Any] | None:
    """None when the output has no text_mix rows."""
    n, syn, tokens, syn_tokens = con.execute("""
        SELECT count(*), count(*) FILTER (WHERE is_synthetic), coalesce(sum(tokens), 0),
               coalesce(sum(tokens) FILTER (WHERE is_synthetic), 0)
        FROM text_mix""").fetchone()
    if not n:
        return None
    styles = dict(con.execute("""SELECT style, count(*) FROM text_mix WHERE is_synthetic
                                 GROUP BY ALL ORDER BY 1""").fetchall())
    rejected = dict(con.execute("""SELECT reason, count(*) FROM rejected WHERE stage = 'rephrase'
                                   GROUP BY ALL ORDER BY 1""").fetchall())
    orphans = con.execute("""SELECT count(*) FROM text_mix s WHERE s.is_synthetic AND NOT EXISTS (
                                 SELECT 1 FROM text_mix p WHERE p.text_id = s.parent_id
                                 AND NOT p.is_synthetic)""").fetchone()[0]
    # the mix that stays once dedup has compared it (its signatures are there), without the
    # passage / synthetic members dedup dropped; None when dedup never saw the mix
    kept = None
    if con.execute("""SELECT count(*) FROM dedup_signatures
                      WHERE kind IN ('passage', 'synthetic')""").fetchone()[0]:
        kept_tokens, kept_syn = con.execute("""
            SELECT coalesce(sum(tokens), 0), coalesce(sum(tokens) FILTER (WHERE is_synthetic), 0)
            FROM text_mix WHERE text_id NOT IN (
                SELECT item_id FROM dedup_clusters
                WHERE kind IN ('passage', 'synthetic') AND NOT is_representative)""").fetchone()
        dropped = dict(con.execute("""SELECT kind, count(*) FROM dedup_clusters
                                      WHERE kind IN ('passage', 'synthetic') AND NOT is_representative
                                      GROUP BY ALL""").fetchall())
        kept = {"tokens": int(kept_tokens), "synthetic_tokens": int(kept_syn),
                "synthetic_ratio": int(kept_syn) / int(kept_tokens) if kept_tokens else 0.0,
                "dropped_passages": int(dropped.get("passage", 0)),
                "dropped_synthetic": int(dropped.get("synthetic", 0))}
    stats = (manifest or {}).get("stats") or {}
    target = None
    try:
        import json

        target = json.loads((manifest or {}).get("config") or "{}").get("rephrase", {}).get("synthetic_ratio")
        jobs = (manifest or {}).get("corpus_jobs", {}).get("rephrase")
        if jobs:
            target = json.loads(jobs["config"]).get("rephrase", {}).get("synthetic_ratio", target)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return {
        "passages": int(n) - int(syn),
        "synthetic_rows": int(syn),
        "tokens": int(tokens),
        "synthetic_tokens": int(syn_tokens),
        "synthetic_ratio": int(syn_tokens) / int(tokens) if tokens else 0.0,
        "target_ratio": target,
        "manifest_ratio": stats.get("rephrase.synthetic_ratio"),
        "by_style": {str(k): int(v) for k, v in styles.items()},
        "rejected_by_reason": {str(k): int(v) for k, v in rejected.items()},
        "orphans": int(orphans),
        "after_dedup": kept,
    }


def format_rephrase(s: dict[str, Any] | None) -> list[str]:
    if not s:
        return []
    target = f" (target {s['target_ratio']:.2f})" if s.get("target_ratio") is not None else ""
    lines = ["", "Text mix (rephrase)",
             f"  passages / synthetic rows    {s['passages']} / {s['synthetic_rows']}",
             f"  tokens / synthetic tokens    {s['tokens']} / {s['synthetic_tokens']}",
             f"  synthetic token share        {s['synthetic_ratio']:.4f}{target}"]
    k = s.get("after_dedup")
    if k:
        lines.append(f"  after dedup                  share {k['synthetic_ratio']:.4f} of {k['tokens']} "
                     f"tokens; dropped {k['dropped_passages']} passage(s), "
                     f"{k['dropped_synthetic']} synthetic row(s)")
    if s["by_style"]:
        lines.append("  synthetic rows by style      " + ", ".join(f"{k} {v}" for k, v in s["by_style"].items()))
    if s["rejected_by_reason"]:
        lines.append("  rephrasings rejected         " + ", ".join(
            f"{k} {v}" for k, v in s["rejected_by_reason"].items()))
    if s["orphans"]:
        lines.append(f"  PROBLEM: {s['orphans']} synthetic row(s) without a natural parent")
    return lines
