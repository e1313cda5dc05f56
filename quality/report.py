"""`mmcurate audit DIR --html report.html`: the audit as one self-contained page a person reads.

One HTML file, no script, no server, no network: inline CSS and inline SVG charts
(mmcurate.quality.svgplot) with axes, ticks and labels. Every figure comes from the committed
shards through a read-only DuckDB connection (mmcurate.quality.audit):

  headline numbers    inputs, sources, hours in / speech / transcribed / kept, segments and
                      words kept, problems of the output (if any)
  hours funnel        hours at each stage: inputs -> sources -> VAD speech -> transcribed ->
                      kept by the quality filters
  languages           hours kept per spoken language (Whisper), dropped hours beside them
  DNSMOS              OVRL histogram of kept and dropped segments, the minimum as a line
  durations           segment duration histogram, kept and dropped
  rejection reasons   ledger rows per stage/reason
  speakers per source how many sources have 1, 2, ... speakers
  ASR scores          avg_logprob, no_speech_prob and compression_ratio histograms
  where present       keyframes per video document and dropped keyframes by reason; dedup and
                      synthetic shares (tables whose name says so, once those stages exist)
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from typing import Any

from mmcurate.quality import svgplot
from mmcurate.quality.audit import connect, load_manifest, summarize
from mmcurate.schemas.tables import TABLES

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif;
       margin: 24px auto; max-width: 1360px; color: #1a202c; background: #f7fafc; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
.meta { color: #4a5568; font-size: 13px; }
table.kv { border-collapse: collapse; background: #fff; font-size: 14px; }
table.kv td { padding: 4px 14px; border-bottom: 1px solid #e2e8f0; }
table.kv td.n { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
figure.plot { background: #fff; border: 1px solid #e2e8f0; border-radius: 6px; margin: 0;
              padding: 8px; }
figure.plot figcaption { font-size: 13px; color: #4a5568; max-width: 640px; padding: 4px; }
.problems { background: #fff5f5; border: 1px solid #feb2b2; padding: 8px 16px; }
"""


def _q(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def _config(out_dir: str) -> dict:
    try:
        return json.loads((load_manifest(out_dir) or {}).get("config") or "{}")
    except (ValueError, TypeError):
        return {}


def report_data(out_dir: str) -> dict[str, Any]:
    """Every number the page shows (JSON-serialisable; the tests read it too)."""
    s = summarize(out_dir)
    con = connect(out_dir, read_only=True)
    try:
        d: dict[str, Any] = {"summary": s}
        has_q = bool(_q(con, "SELECT count(*) FROM segment_quality")[0][0])
        d["has_quality"] = has_q
        kept_h = None
        if has_q:
            kept_h = _q(con, "SELECT coalesce(sum(duration_s), 0) / 3600 FROM segment_quality WHERE keep")[0][0]
        d["funnel"] = [("inputs", s["hours_in"]), ("decoded sources", s["hours_sources"]),
                       ("speech (VAD)", s["hours_speech"]), ("transcribed", s["hours_transcribed"])]
        if kept_h is not None:
            d["funnel"].append(("kept by quality", float(kept_h)))
        if has_q:
            d["languages"] = _q(con, """
                SELECT coalesce(language, transcript_language, 'unknown') AS lang,
                       sum(duration_s) FILTER (WHERE keep) / 3600,
                       sum(duration_s) FILTER (WHERE NOT keep) / 3600
                FROM segment_quality GROUP BY lang ORDER BY 2 DESC NULLS LAST, lang""")
            d["dnsmos"] = {k: [r[0] for r in _q(con, f"SELECT dnsmos_ovrl FROM segment_quality "
                                                   f"WHERE dnsmos_ovrl IS NOT NULL AND {w}")]
                           for k, w in (("kept", "keep"), ("dropped", "NOT keep"))}
            d["durations"] = {k: [r[0] for r in _q(con, f"SELECT duration_s FROM segment_quality WHERE {w}")]
                              for k, w in (("kept", "keep"), ("dropped", "NOT keep"))}
            n_kept, n_all, w_kept, w_all = _q(con, """
                SELECT count(*) FILTER (WHERE keep), count(*),
                       coalesce(sum(num_words) FILTER (WHERE keep), 0), coalesce(sum(num_words), 0)
                FROM segment_quality""")[0]
            d["segments_kept"], d["segments_judged"] = int(n_kept), int(n_all)
            d["words_kept"], d["words_judged"] = int(w_kept), int(w_all)
        else:
            d["languages"] = [(k, v, 0.0) for k, v in s["hours_transcribed_by_language"].items()]
            d["dnsmos"] = {}
            d["durations"] = {"segments": [r[0] for r in _q(
                con, 'SELECT greatest("end" - start, 0) FROM segments')]}
        d["rejections"] = _q(con, "SELECT stage || '/' || reason, count(*) FROM rejected "
                                  "GROUP BY ALL ORDER BY 2 DESC, 1")
        d["speakers"] = sorted((int(k), int(v)) for k, v in s["speakers_per_source"]["histogram"].items())
        d["asr"] = {c: [r[0] for r in _q(con, f"SELECT {c} FROM segments WHERE {c} IS NOT NULL")]
                    for c in ("avg_logprob", "no_speech_prob", "compression_ratio")}
        d["keyframes"] = None
        if _q(con, "SELECT count(*) FROM interleaved")[0][0]:
            d["keyframes"] = {
                "per_document": [r[0] for r in _q(con, "SELECT count(*) FROM interleaved WHERE "
                                                       "modality = 'image' GROUP BY document_id")],
                "dropped": _q(con, "SELECT reason, count(*) FROM rejected WHERE stage = 'keyframes' "
                                   "AND item_id LIKE '%-kf-%' GROUP BY ALL ORDER BY 2 DESC, 1"),
            }
        # corpus stages that do not exist yet register tables named after what they hold
        d["shares"] = []
        n_seg = s["tables"].get("segments", 0)
        for t in TABLES:
            if ("dedup" in t or "synthetic" in t) and s["tables"].get(t):
                d["shares"].append((t, s["tables"][t], n_seg))
        d["config"] = _config(out_dir)
        return d
    finally:
        con.close()


def _kv(rows: list[tuple[str, str]]) -> str:
    return ('<table class="kv">' + "".join(
        f'<tr><td>{html.escape(k)}</td><td class="n">{html.escape(v)}</td></tr>' for k, v in rows)
        + "</table>")


def _figure(fid: str, svg: str, caption: str) -> str:
    return (f'<figure class="plot" id="plot-{fid}" data-plot="{fid}">{svg}'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def render(d: dict[str, Any], out_dir: str) -> str:
    s = d["summary"]
    qcfg = (d.get("config") or {}).get("quality") or {}
    figs: list[str] = []
    figs.append(_figure("funnel", svgplot.bar_chart(
        "Hours per stage", [k for k, _ in d["funnel"]], [v for _, v in d["funnel"]],
        xlabel="hours", value_format="{:.3f} h"),
        "Audio hours that reach each stage: inputs (decoded and rejected at ingest/decode/VAD, "
        "where known), decoded sources, VAD speech, transcribed segments and, with the quality "
        "stage, the segments its filters keep."))
    langs = d["languages"]
    figs.append(_figure("languages", svgplot.bar_chart(
        "Hours kept per spoken language", [str(r[0]) for r in langs], [float(r[1] or 0) for r in langs],
        xlabel="hours kept", value_format="{:.3f} h"),
        "Spoken language from Whisper per segment (the transcript's text language where Whisper "
        "gave none). Dropped hours per language: " + (", ".join(
            f"{r[0]} {float(r[2] or 0):.3f} h" for r in langs) or "none") + "."))
    mn = qcfg.get("min_dnsmos_ovrl")
    edges, kept = svgplot.bins(d["dnsmos"].get("kept", []), 1.0, 5.0, 0.25)
    _, dropped = svgplot.bins(d["dnsmos"].get("dropped", []), 1.0, 5.0, 0.25)
    figs.append(_figure("dnsmos", svgplot.histogram(
        "DNSMOS P.835 overall quality (OVRL)", edges, {"kept": kept, "dropped": dropped},
        xlabel="OVRL (1 bad - 5 excellent)",
        marker=(float(mn), f"min {mn}") if isinstance(mn, (int, float)) else None),
        "Per segment, computed on the segment's audio. " + (
            f"The dashed line is quality.min_dnsmos_ovrl ({mn})." if isinstance(mn, (int, float))
            else "No minimum is set (quality.min_dnsmos_ovrl); re-tune over the scores in DuckDB.")))
    series = {k: svgplot.bins(v, 0.0, 32.0, 1.0)[1] for k, v in d["durations"].items()}
    figs.append(_figure("durations", svgplot.histogram(
        "Segment durations", svgplot.bins([], 0.0, 32.0, 1.0)[0], series, xlabel="seconds"),
        "Utterance length; the speech stage cuts at speaker changes, sentence ends and 30 s."))
    rej = d["rejections"]
    figs.append(_figure("rejections", svgplot.bar_chart(
        "Rejections by stage / reason", [r[0] for r in rej], [r[1] for r in rej],
        xlabel="ledger rows", value_format="{:.0f}"),
        "Every row of the rejection ledger: inputs removed at ingest/decode/VAD, and sub-source "
        "rows (ASR hallucinations, quality drops, dropped keyframes)."))
    spk = d["speakers"]
    figs.append(_figure("speakers", svgplot.bar_chart(
        "Speakers per source", [f"{k} speaker{'s' if k != 1 else ''}" for k, _ in spk],
        [v for _, v in spk], xlabel="sources", value_format="{:.0f}"),
        "Distinct diarized speakers among each source's segments."))
    for col, lo, hi, step, label in (("avg_logprob", -2.0, 0.0, 0.1, "average token log-probability"),
                                     ("no_speech_prob", 0.0, 1.0, 0.05, "no-speech probability"),
                                     ("compression_ratio", 0.0, 3.0, 0.1, "gzip compression ratio")):
        edges, counts = svgplot.bins(d["asr"][col], lo, hi, step)
        figs.append(_figure(f"asr-{col}", svgplot.histogram(
            f"ASR {col}", edges, {"segments": counts}, xlabel=label),
            f"Whisper's {label} per segment (the ASR step drops hallucinations on these)."))
    if d.get("keyframes"):
        k = d["keyframes"]
        per = k["per_document"]
        edges, counts = svgplot.bins(per, 0.0, max(per + [1]) + 1.0, 1.0)
        figs.append(_figure("keyframes", svgplot.histogram(
            "Keyframes per video document", edges, {"documents": counts}, xlabel="images",
            ylabel="documents"), "Images kept in each interleaved video document."))
        if k["dropped"]:
            figs.append(_figure("keyframes-dropped", svgplot.bar_chart(
                "Dropped keyframes by reason", [r[0] for r in k["dropped"]],
                [r[1] for r in k["dropped"]], xlabel="frames", value_format="{:.0f}"),
                "Candidate frames the video stage dropped (black, blurry, near-duplicate ...)."))
    for t, n, n_seg in d["shares"]:
        figs.append(_figure(t, svgplot.bar_chart(
            f"{t}: rows", [t, "segments"], [n, n_seg], xlabel="rows", value_format="{:.0f}"),
            f"Rows of {t} beside the segments."))

    heads = [("inputs", str(s["inputs"])), ("sources", str(s["tables"].get("sources", 0))),
             ("hours in", f"{s['hours_in']:.3f}"), ("hours of speech (VAD)", f"{s['hours_speech']:.3f}"),
             ("hours transcribed", f"{s['hours_transcribed']:.3f}")]
    if d["has_quality"]:
        heads += [("hours kept", f"{d['funnel'][-1][1]:.3f}"),
                  ("segments kept", f"{d['segments_kept']} of {d['segments_judged']}"),
                  ("words kept", f"{d['words_kept']} of {d['words_judged']}")]
    heads.append(("rejections (ledger rows)", str(sum(n for _, n in rej))))
    problems = ""
    if s.get("problems"):
        problems = ('<div class="problems"><b>Problems of this output</b><ul>' + "".join(
            f"<li>{html.escape(p)}</li>" for p in s["problems"]) + "</ul></div>")
    if s.get("warnings"):
        problems += ('<div class="problems"><b>Warnings</b><ul>' + "".join(
            f"<li>{html.escape(w)}</li>" for w in s["warnings"]) + "</ul></div>")
    meta = (f"run {html.escape(str(s.get('run_id')))} &middot; code "
            f"{html.escape(str(s.get('code_version')))} &middot; report written "
            f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>mmcurate audit: {html.escape(os.path.basename(os.path.abspath(out_dir)))}</title>"
            f"<style>{CSS}</style></head><body>"
            f"<h1>mmcurate audit</h1><div class=\"meta\">{html.escape(os.path.abspath(out_dir))}"
            f"<br>{meta}</div>{problems}<h2>Summary</h2>{_kv(heads)}"
            f"<h2>Plots</h2><div class=\"grid\">{''.join(figs)}</div></body></html>\n")


def write_report(out_dir: str, path: str, data: dict[str, Any] | None = None) -> str:
    """Write the page for `out_dir` to `path` (from `data`, `report_data(out_dir)` if not
    given); returns the path."""
    page = render(data or report_data(out_dir), out_dir)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path
