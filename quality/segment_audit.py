"""The quality stage in the audit: figures of the `segment_quality` table (`summarize()["quality"]`,
what gate files read as `quality.*`) and their lines in the text report."""

from __future__ import annotations

from typing import Any

# The curated segments: every segment the quality stage did not drop (all of them when it did not
# run). A view of the audit's connection (mmcurate.quality.db.connect).
KEPT_SEGMENTS_VIEW = ("CREATE VIEW kept_segments AS SELECT * FROM segments WHERE segment_id NOT IN "
                      "(SELECT segment_id FROM segment_quality WHERE NOT keep)")


def quality_summary(con) -> dict[str, Any] | None:
    """Counts, shares and DNSMOS quantiles of segment_quality; None when it has no rows."""
    n, kept, words, words_kept, secs, secs_kept = con.execute("""
        SELECT count(*), count(*) FILTER (WHERE keep), coalesce(sum(num_words), 0),
               coalesce(sum(num_words) FILTER (WHERE keep), 0), coalesce(sum(duration_s), 0),
               coalesce(sum(duration_s) FILTER (WHERE keep), 0)
        FROM segment_quality""").fetchone()
    if not n:
        return None
    by_reason = {r: int(c) for r, c in con.execute(
        "SELECT reason, count(*) FROM segment_quality WHERE NOT keep GROUP BY ALL ORDER BY 1").fetchall()}
    langs = {str(lang): float(h) / float(secs_kept) if secs_kept else 0.0 for lang, h in con.execute("""
        SELECT coalesce(language, transcript_language, 'unknown') AS lang, sum(duration_s)
        FROM segment_quality WHERE keep GROUP BY lang ORDER BY 2 DESC, 1""").fetchall()}
    q = con.execute("""SELECT quantile_cont(dnsmos_ovrl, 0.1), quantile_cont(dnsmos_ovrl, 0.5),
                              quantile_cont(dnsmos_ovrl, 0.9), count(dnsmos_ovrl)
                       FROM segment_quality WHERE keep""").fetchone()
    flags = con.execute("""SELECT count(*) FILTER (WHERE language_mismatch),
                                  count(*) FILTER (WHERE language_low_confidence)
                           FROM segment_quality""").fetchone()
    return {
        "segments": int(n),
        "kept": int(kept),
        "dropped": int(n) - int(kept),
        "reject_rate": (int(n) - int(kept)) / int(n),
        "words": int(words),
        "words_kept": int(words_kept),
        "words_kept_share": int(words_kept) / int(words) if words else None,
        "hours": float(secs) / 3600.0,
        "hours_kept": float(secs_kept) / 3600.0,
        "dropped_by_reason": by_reason,
        "kept_language_share": langs,  # of kept hours, per spoken language
        "kept_dnsmos_ovrl": {"p10": q[0], "p50": q[1], "p90": q[2], "n": int(q[3])},
        "language_mismatch_flags": int(flags[0]),
        "language_low_confidence_flags": int(flags[1]),
    }


def format_quality(q: dict[str, Any] | None) -> list[str]:
    if not q:
        return []
    lines = ["", "Quality (segment_quality)",
             f"  kept {q['kept']} of {q['segments']} segments ({100 * (1 - q['reject_rate']):.1f}%), "
             f"{q['words_kept']} of {q['words']} words, {q['hours_kept']:.3f} of {q['hours']:.3f} h"]
    for reason, n in q["dropped_by_reason"].items():
        lines.append(f"  dropped {reason:<24} {n}")
    d = q["kept_dnsmos_ovrl"]
    if d["n"]:
        lines.append(f"  kept DNSMOS OVRL p10/p50/p90  {d['p10']:.2f} / {d['p50']:.2f} / {d['p90']:.2f}")
    shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in q["kept_language_share"].items())
    if shares:
        lines.append(f"  kept hours by language       {shares}")
    lines.append(f"  flags: language mismatch {q['language_mismatch_flags']}, "
                 f"low language confidence {q['language_low_confidence_flags']}")
    return lines
