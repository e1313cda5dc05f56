"""`mmcurate audit DIR --html report.html`: the audit as one self-contained page to work in.

One HTML file, no server, no network: inline CSS, inline SVG charts (mmcurate.quality.svgplot)
and one small inline script that sorts and filters the tables. Every figure comes from the
committed shards through a read-only DuckDB connection (mmcurate.quality.audit):

  headline numbers    inputs, sources, hours in / speech / transcribed / kept, segments and
                      words kept, problems of the output (if any)
  charts              hours per stage, hours kept per language, DNSMOS, durations, rejections,
                      speakers per source, ASR scores; where present keyframes per document,
                      dropped keyframes, duplicates per kind/method, cluster sizes, synthetic
                      token share
  text sections       as the text audit: turns and overlap, words per minute, dedup per kind
                      and method with the largest clusters, text mix, curated rows
  drill-down tables   ledger rows (stage/reason, detail, uri), segments kept and dropped with
                      their scores (a detail per row, an audio player for a sample), duplicate
                      clusters with their members; sortable, filterable
  keyframes           thumbnails linking to the `--show` page of their document, written next
                      to the report (REPORT.docs/<document_id>.html)

Rows, players and thumbnails are sampled to caps (mmcurate.quality.report_tables) and the page
says so; the page of any output stays under PAGE_CAP_BYTES.

Why one module of this length: the page is one template; its sections are built from one
`report_data` dict (charts: svgplot, tables: report_tables).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import urllib.parse
from typing import Any

from mmcurate.quality import report_tables, svgplot
from mmcurate.quality.audit import summarize
from mmcurate.quality.db import connect, load_manifest
from mmcurate.quality.dedup_audit import cluster_members_command
from mmcurate.quality.report_tables import PAGE_CAP_BYTES, Caps

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
table.kv th { text-align: left; padding: 4px 14px; font-size: 13px; color: #4a5568; }
section.dt .scroll { max-height: 640px; overflow: auto; background: #fff; border: 1px solid #e2e8f0; }
table.rows { border-collapse: collapse; font-size: 13px; width: 100%; }
table.rows th { position: sticky; top: 0; background: #edf2f7; text-align: left; padding: 4px 8px;
                cursor: pointer; user-select: none; white-space: nowrap; }
table.rows th[data-dir=asc]::after { content: " \\25b2"; } table.rows th[data-dir=desc]::after { content: " \\25bc"; }
table.rows td { padding: 3px 8px; border-top: 1px solid #edf2f7; vertical-align: top; }
table.rows td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.rows tr[hidden] { display: none; }
.chips { margin: 6px 0; } .chip { border: 1px solid #cbd5e0; background: #fff; border-radius: 12px;
  padding: 2px 10px; margin: 2px; font-size: 12px; cursor: pointer; }
.chip.on { background: #2b6cb0; color: #fff; border-color: #2b6cb0; } .chip .k { opacity: .7; }
input[type=search] { width: 320px; padding: 4px 8px; margin: 4px 0 8px; }
details summary { cursor: pointer; color: #2b6cb0; } p.facts { max-width: 640px; font-size: 12px; } details p.text { max-width: 640px; }
.player { display: flex; align-items: center; gap: 8px; margin: 6px 0; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; } figure.thumb { margin: 0; background: #fff;
  border: 1px solid #e2e8f0; padding: 4px; font-size: 12px; color: #4a5568; }
code { font-size: 12px; word-break: break-all; }
"""


def _q(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def _config(out_dir: str) -> dict:
    try:
        return json.loads((load_manifest(out_dir) or {}).get("config") or "{}")
    except (ValueError, TypeError):
        return {}


def report_data(out_dir: str, caps: Caps | None = None) -> dict[str, Any]:
    """Every number, row and clip the page shows, sampled to `caps` (JSON-serialisable; the
    tests read it too)."""
    caps = caps or Caps()
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
                "per_document": _q(con, """
                    SELECT any_value(d.uri), count(*) FROM interleaved i
                    LEFT JOIN documents d USING (document_id)
                    WHERE i.modality = 'image' GROUP BY i.document_id ORDER BY 2 DESC, 1"""),
                "dropped": _q(con, "SELECT reason, count(*) FROM rejected WHERE stage = 'keyframes' "
                                   "AND item_id LIKE '%-kf-%' GROUP BY ALL ORDER BY 2 DESC, 1"),
            }
        d["cluster_sizes"] = _q(con, """SELECT n, count(*) FROM (SELECT count(*) AS n FROM dedup_clusters
                                        GROUP BY cluster_id) GROUP BY n ORDER BY n""")
        d["caps"] = caps.__dict__
        d["tables"] = report_tables.drilldown(con, caps, has_q)
        picked = report_tables.pick_clips(d["tables"]["segments"]["rows"], caps.clips)
        d["clips"] = report_tables.clips(con, picked, caps)
        d["thumbnails"], d["images"] = report_tables.thumbnails(con, caps)
        d["config"] = _config(out_dir)
        return d
    finally:
        con.close()


def _kv(rows: list[tuple[str, str]]) -> str:
    return ('<table class="kv">' + "".join(
        f'<tr><td>{html.escape(k)}</td><td class="n">{html.escape(v)}</td></tr>' for k, v in rows)
        + "</table>")


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _basename(uri: str | None) -> str:
    return (uri or "?").rstrip("/").rsplit("/", 1)[-1]


def _figure(fid: str, svg: str, caption: str) -> str:
    return (f'<figure class="plot" id="plot-{fid}" data-plot="{fid}">{svg}'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def render(d: dict[str, Any], out_dir: str, docs_href: str | None = None) -> str:
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
        if len(per) <= 30:  # a bar per document: a histogram of a few documents is all 0-1 bars
            figs.append(_figure("keyframes", svgplot.bar_chart(
                "Keyframes per video document", [_basename(u) for u, _ in per], [n for _, n in per],
                xlabel="images", value_format="{:.0f}"),
                "Images kept in each interleaved video document (named by its video)."))
        else:
            counts_per = [n for _, n in per]
            edges, counts = svgplot.bins(counts_per, 0.0, max(counts_per) + 1.0, 1.0)
            figs.append(_figure("keyframes", svgplot.histogram(
                "Keyframes per video document", edges, {"documents": counts}, xlabel="images",
                ylabel="documents"), f"Images kept in each of the {len(per)} interleaved video documents."))
        if k["dropped"]:
            figs.append(_figure("keyframes-dropped", svgplot.bar_chart(
                "Dropped keyframes by reason", [r[0] for r in k["dropped"]],
                [r[1] for r in k["dropped"]], xlabel="frames", value_format="{:.0f}"),
                "Candidate frames the video stage dropped (black, blurry, near-duplicate ...)."))
    dd = s.get("dedup")
    if dd:
        pm = dd["per_method"]
        figs.append(_figure("dedup-methods", svgplot.bar_chart(
            "Duplicates per kind / method", [f"{r['kind']}/{r['method']}" for r in pm],
            [r["duplicates"] for r in pm], xlabel="duplicates (items dropped)", value_format="{:.0f}"),
            "Items the dedup stage dropped as duplicates of a kept representative, by kind and by "
            "the method of their strongest link; of the items compared: " + ", ".join(
                f"{r['kind']}/{r['method']} {_pct(r['rate'])}" for r in pm) + "."))
        sizes = d.get("cluster_sizes") or []
        figs.append(_figure("dedup-clusters", svgplot.bar_chart(
            "Duplicate clusters by size", [f"{n} members" for n, _ in sizes], [c for _, c in sizes],
            xlabel="clusters", value_format="{:.0f}"),
            f"{dd['clusters']} clusters of 2 or more items (representative included); "
            f"{dd['duplicates_of_earlier_partitions']} members are duplicates of earlier partitions."))
    tm = s.get("rephrase")
    if tm:
        labels, shares = ["synthetic token share"], [tm["synthetic_ratio"]]
        if tm.get("target_ratio") is not None:
            labels.append("target (rephrase.synthetic_ratio)")
            shares.append(float(tm["target_ratio"]))
        if tm.get("after_dedup"):
            labels.append("share after dedup")
            shares.append(tm["after_dedup"]["synthetic_ratio"])
        figs.append(_figure("text-mix", svgplot.bar_chart(
            "Synthetic share of the text mix", labels, shares, xlabel="share of tokens",
            value_format="{:.1%}"),
            f"text_mix: {tm['passages']} passages and {tm['synthetic_rows']} synthetic rephrasings, "
            f"{tm['synthetic_tokens']} of {tm['tokens']} tokens synthetic."))

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
            f"<h2>Plots</h2><div class=\"grid\">{''.join(figs)}</div>"
            f"{_sections(s, out_dir)}{_tables(d)}{_thumbnails(d, docs_href)}"
            f"<script>{SCRIPT}</script></body></html>\n")


# --------------------------------------------------------------------------- text sections


def _sections(s: dict[str, Any], out_dir: str) -> str:
    """What the text audit prints beside the charts: turns and overlap, words per minute,
    dedup per kind and method with its largest clusters, the text mix, the curated rows."""
    out: list[str] = []
    t = s.get("turns")
    if t and t.get("turns"):
        sp = t["speakers_per_source"]
        share = t["overlapped_speech_share"]
        out.append("<h2>Turns (diarization)</h2>" + _kv([
            ("turns", str(t["turns"])), ("sources with turns", str(t["sources"])),
            ("speakers min / mean / max", f"{_n(sp['min'])} / {_n(sp['mean'])} / {_n(sp['max'])}"),
            ("diarized speech (h)", f"{t['speech_s'] / 3600:.3f}"),
            ("overlapped speech", "-" if share is None else f"{_pct(share)} ({t['overlapped_s']:.1f} s)"),
            ("overlapped turns", str(t["overlapped_turns"]))]))
    tt = s.get("turn_taking")
    if tt and tt["per_source"]:
        from mmcurate.quality.turn_taking import SOURCE_COLUMNS, source_line

        fto = tt["fto_p10_p50_p90"]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in SOURCE_COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in source_line(p)) + "</tr>"
                       for p in tt["per_source"][:200])
        out.append("<h2>Turn-taking</h2>" + _kv([
            ("floor transfers", f"{tt['floor_transfers']} ({_n(tt['transfers_per_minute'], 1)} per minute)"),
            ("events", ", ".join(f"{k} {v}" for k, v in sorted(tt["events"].items()))),
            ("floor-transfer offset p10 / p50 / p90 (s)", "-" if not fto else " / ".join(_n(v) for v in fto)),
            ("overlap / interruption rate", f"{_pct(tt['overlap_rate'])} / {_pct(tt['interruption_rate'])}"),
            ("back-channels per minute", _n(tt["backchannels_per_minute"], 1)),
            ("offset histogram (s)", ", ".join(f"{k}: {v}" for k, v in tt["fto_histogram"].items()))])
            + f"<table><tr>{head}</tr>{body}</table>")
    w = s["words_per_minute"]
    pw = w["per_source"]
    out.append("<h2>Words per minute</h2>" + _kv([
        ("overall", _n(w["overall"], 1)),
        ("per source p10 / p50 / p90", f"{_n(pw['p10'], 1)} / {_n(pw['p50'], 1)} / {_n(pw['p90'], 1)}")]))
    dd = s.get("dedup")
    if dd:
        rows = "".join(
            f"<tr><td>{html.escape(r['kind'])}/{html.escape(r['method'])}</td><td class=\"n\">"
            f"{r['duplicates']}</td><td class=\"n\">{_n(r['items'])}</td><td class=\"n\">"
            f"{_pct(r['rate'])}</td></tr>" for r in dd["per_method"])
        largest = "".join(
            f"<li><a href=\"#t-clusters\" data-search=\"{html.escape(c['cluster_id'])}\">"
            f"{html.escape(c['cluster_id'])}</a>: {c['members']} {html.escape(c['kind'])} members, "
            f"representative {html.escape(str(c['representative_id']))}"
            + (f" @ {html.escape(c['representative_partition'])}" if c["representative_partition"] else "")
            + "</li>" for c in dd["largest_clusters"])
        cmd = (f"<p class=\"meta\">Members of the largest, in a shell: <code>"
               f"{html.escape(cluster_members_command(out_dir, dd['largest_clusters'][0]['cluster_id']))}"
               f"</code></p>" if dd["largest_clusters"] else "")
        out.append("<h2>Dedup</h2><table class=\"kv\"><tr><th>kind/method</th><th>duplicates</th>"
                   f"<th>items compared</th><th>rate</th></tr>{rows}</table>"
                   f"<p>{dd['clusters']} clusters; duplicates of earlier partitions (index) "
                   f"{dd['duplicates_of_earlier_partitions']}.</p>"
                   + (f"<p>Largest clusters (a click shows its members below):</p><ul>{largest}</ul>"
                      if largest else "") + cmd)
    tm = s.get("rephrase")
    if tm:
        rows = [("passages / synthetic rows", f"{tm['passages']} / {tm['synthetic_rows']}"),
                ("tokens / synthetic tokens", f"{tm['tokens']} / {tm['synthetic_tokens']}"),
                ("synthetic token share", f"{tm['synthetic_ratio']:.4f}" + (
                    f" (target {tm['target_ratio']:.2f})" if tm.get("target_ratio") is not None else ""))]
        k = tm.get("after_dedup")
        if k:
            rows.append(("after dedup", f"share {k['synthetic_ratio']:.4f} of {k['tokens']} tokens; dropped "
                                        f"{k['dropped_passages']} passage(s), {k['dropped_synthetic']} synthetic row(s)"))
        if tm["by_style"]:
            rows.append(("synthetic rows by style", ", ".join(f"{a} {b}" for a, b in tm["by_style"].items())))
        if tm["rejected_by_reason"]:
            rows.append(("rephrasings rejected", ", ".join(f"{a} {b}" for a, b in tm["rejected_by_reason"].items())))
        if tm["orphans"]:
            rows.append(("PROBLEM", f"{tm['orphans']} synthetic row(s) without a natural parent"))
        out.append("<h2>Text mix (rephrase)</h2>" + _kv(rows))
    c = s.get("curated")
    if c:
        rows = [(t, f"{r['curated']} of {r['rows']}") for t, r in c["rows"].items() if r["rows"]]
        rows.append(("hours of curated segments", f"{c['hours_segments']:.3f}"))
        out.append("<h2>Curated (kept by quality, not dropped by dedup: views curated_&lt;table&gt;)</h2>"
                   + _kv(rows))
    return "".join(out)


def _n(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- drill-down tables

# (key, header, kind): kind "num" sorts as numbers and shows `nd` decimals, "str" as text
REJECTED_COLUMNS = [("stage", "stage", "str"), ("reason", "reason", "str"), ("detail", "detail", "str"),
                    ("uri", "uri", "str"), ("item_id", "item", "str"), ("duration_s", "seconds", "num")]
SEGMENT_COLUMNS = [("verdict", "verdict", "str"), ("segment_id", "segment", "str"),
                   ("start", "start", "num"), ("duration_s", "seconds", "num"),
                   ("language", "lang", "str"), ("dnsmos_ovrl", "OVRL", "num"),
                   ("phrase_share", "phrases", "num"), ("repeat_share", "repeats", "num"),
                   ("outside_vad_share", "outside VAD", "num"), ("chars_per_s", "chars/s", "num"),
                   ("avg_logprob", "logprob", "num"), ("curated_yn", "curated", "str"),
                   ("text", "text", "str")]
CLUSTER_COLUMNS = [("cluster_id", "cluster", "str"), ("members", "members", "num"),
                   ("kind", "kind", "str"), ("method", "method", "str"), ("item_id", "item", "str"),
                   ("is_representative", "kept", "str"), ("similarity", "similarity", "num"),
                   ("uri", "uri", "str")]


def _cell(v: Any, kind: str, width: int = 90) -> str:
    if v is None:
        return '<td data-v=""></td>'
    if kind == "num":
        return f'<td class="n" data-v="{float(v)!r}">{float(v):.3g}</td>'
    text = _text(v)
    if len(text) <= width:
        return f"<td>{html.escape(text)}</td>"
    return f"<td>{html.escape(text[: width - 1])}\u2026</td>"  # the whole text is in the detail


def _text(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _datatable(tid: str, title: str, columns: list, rows: list[dict], total: int, facet: str,
               note: str, detail=None, sampling: str | None = None) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r[facet])] = counts.get(str(r[facet]), 0) + 1
    chips = '<button type="button" class="chip on" data-all="1">all</button>' + "".join(
        f'<button type="button" class="chip" data-f="{html.escape(v)}">{html.escape(v)} '
        f'<span class="k">{n}</span></button>' for v, n in sorted(counts.items()))
    head = "".join(f'<th class="{kind}">{html.escape(h)}</th>' for _, h, kind in columns)
    body = []
    for r in rows:
        cells = "".join(_cell(r.get(k), kind) for k, _, kind in columns)
        if detail is not None:
            cells += f"<td>{detail(r)}</td>"
        body.append(f'<tr class="row" data-f="{html.escape(str(r[facet]))}">{cells}</tr>')
    shown = len(rows)
    sampling = sampling or (f"all {total} rows" if shown >= total else
                f"a sample of {shown} of {total} rows: the same number from each {note}, "
                f"chosen by a hash of the id (the same output gives the same sample)")
    return (f'<section class="dt" id="t-{tid}"><h2>{html.escape(title)}</h2>'
            f'<p class="meta">{html.escape(sampling)}. Click a header to sort, a chip to '
            f'filter; <span class="count"></span>.</p>'
            f'<div class="chips">{chips}</div><input type="search" placeholder="search these rows" '
            f'aria-label="search {html.escape(title)}"><div class="scroll"><table class="rows"><thead><tr>'
            f'{head}{"<th>detail</th>" if detail else ""}</tr></thead><tbody>{"".join(body)}</tbody>'
            f'</table></div></section>')


def _segment_detail(clips: dict[str, dict]):
    def detail(r: dict) -> str:
        sid = r["segment_id"]
        kv = [("segment", sid), ("source", r["source_id"]), ("uri", r.get("uri") or "-"),
              ("time", f"{r['start']:.2f}-{r['end']:.2f} s"), ("speaker", r.get("speaker") or "-"),
              ("failed filters", ", ".join(r.get("failed") or []) or "none"),
              ("curated", "yes" if r.get("curated") else "no")]
        kv += [(k, _n(r.get(k), 3)) for k in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "no_speech_prob",
                                              "compression_ratio", "num_words")]
        long = r.get("text") or ""
        long = long if len(long) > 90 else ""  # else the row shows it whole
        c = clips.get(sid)
        player = ""
        if c and c.get("src"):
            aid = "a-" + sid
            player = (f'<div class="player"><button type="button" class="play" data-audio="{html.escape(aid)}">'
                      f'play</button><audio id="{html.escape(aid)}" controls preload="none" '
                      f'src="{c["src"]}"></audio> <span class="meta">{c["seconds"]} s, from the '
                      f'{"stored segment audio" if c["from"] == "stored" else "source media"}</span></div>')
        elif c:
            player = f'<div class="meta">no audio: {html.escape(c["error"])}</div>'
        return (f'<details class="seg" data-segment="{html.escape(sid)}"><summary>open</summary>'
                f'{player}<p class="text">{html.escape(long)}</p>{_facts(kv)}</details>')
    return detail


def _facts(rows: list[tuple[str, str]]) -> str:
    """A detail's key/value pairs, compact (a page holds thousands of them)."""
    return '<p class="facts">' + " &middot; ".join(
        f"<b>{html.escape(k)}</b> {html.escape(str(v))}" for k, v in rows) + "</p>"


def _rejected_detail(r: dict) -> str:
    kv = [("rejection", r["rejection_id"]), ("stage / reason", r["stage_reason"]), ("uri", r["uri"]),
          ("source", r.get("source_id") or "-"), ("item", r.get("item_id") or "-"),
          ("seconds", _n(r.get("duration_s"), 2))]
    long = r["detail"] if len(r["detail"] or "") > 90 else ""  # else the row shows it whole
    return (f'<details><summary>open</summary><p class="text">{html.escape(long)}</p>'
            f"{_facts(kv)}</details>")


def _tables(d: dict[str, Any]) -> str:
    t = d["tables"]
    clips = d.get("clips") or {}
    n_clips = sum(1 for c in clips.values() if c.get("src"))
    caps = d.get("caps") or {}
    out = [_datatable("rejected", "Rejected (the ledger)", REJECTED_COLUMNS, t["rejected"]["rows"],
                      t["rejected"]["total"], "stage_reason", "stage/reason", _rejected_detail)]
    players = (f"Audio players for {n_clips} of {t['segments']['total']} segments (dropped ones first, "
               f"every drop reason in turn, then kept ones; at most {caps.get('clips')}), each its "
               f"first {caps.get('clip_s')} s as Opus at {(caps.get('opus_bps') or 0) // 1000} kb/s.")
    out.append(_datatable("segments", "Segments, kept and dropped, with their scores", SEGMENT_COLUMNS,
                          t["segments"]["rows"], t["segments"]["total"], "verdict",
                          "verdict (kept or the drop reason)", _segment_detail(clips)).replace(
        "</h2>", f'</h2><p class="meta">{html.escape(players)}</p>', 1))
    c = t["clusters"]
    if c["total"]:
        whole = (None if len(c["rows"]) >= c["total"] else
                 f"the largest clusters whole, {len(c['rows'])} of {c['total']} member rows")
        out.append(_datatable("clusters", "Duplicate clusters and their members", CLUSTER_COLUMNS,
                              c["rows"], c["total"], "kind", "kind", sampling=whole))
    return "".join(out)


def _thumbnails(d: dict[str, Any], docs_href: str | None) -> str:
    thumbs = d.get("thumbnails") or []
    if not thumbs:
        return ""
    items = []
    for th in thumbs:
        img = (f'<img src="{th["src"]}" width="{th["width"]}" height="{th["height"]}" '
               f'alt="{html.escape(str(th["keyframe_id"] or th["item_id"]))}">')
        if docs_href:
            href = f"{docs_href}/{urllib.parse.quote(th['document_id'])}.html"
            img = f'<a href="{html.escape(href)}">{img}</a>'
        t = th.get("frame_time")
        items.append(f'<figure class="thumb">{img}<figcaption>{html.escape(_basename(th["uri"]))}'
                     f'{"" if t is None else f" @ {t:.1f} s"}</figcaption></figure>')
    note = (f"{len(thumbs)} of {d['images']} keyframes (the same number from each document, in "
            f"reading order)" + ("; a click opens the document's page (as `mmcurate audit DIR --show "
                                  "DOC_ID` writes it)" if docs_href else "") + ".")
    return (f'<h2>Keyframes</h2><p class="meta">{html.escape(note)}</p>'
            f'<div class="thumbs">{"".join(items)}</div>')


SCRIPT = """
(function () {
  function val(tr, i) { var c = tr.cells[i]; var v = c.getAttribute('data-v'); return v === null ? c.textContent : v; }
  document.querySelectorAll('section.dt').forEach(function (box) {
    var tbody = box.querySelector('tbody'), rows = Array.prototype.slice.call(tbody.rows);
    var search = box.querySelector('input[type=search]'), count = box.querySelector('.count');
    var chips = box.querySelectorAll('button.chip'), on = new Set();
    function apply() {
      var q = search.value.trim().toLowerCase(), shown = 0;
      rows.forEach(function (tr) {
        var ok = (!on.size || on.has(tr.dataset.f)) && (!q || tr.textContent.toLowerCase().indexOf(q) >= 0);
        tr.hidden = !ok; if (ok) shown++;
      });
      count.textContent = shown + ' of ' + rows.length + ' rows shown';
    }
    box.apply = apply;
    chips.forEach(function (b) {
      b.addEventListener('click', function () {
        if (b.dataset.all) on.clear();
        else if (on.has(b.dataset.f)) on.delete(b.dataset.f);
        else on.add(b.dataset.f);
        chips.forEach(function (c) { c.classList.toggle('on', c.dataset.all ? !on.size : on.has(c.dataset.f)); });
        apply();
      });
    });
    search.addEventListener('input', apply);
    box.querySelectorAll('thead th').forEach(function (th, i) {
      if (th.textContent === 'detail') return;
      th.addEventListener('click', function () {
        var dir = th.dataset.dir === 'asc' ? -1 : 1, num = th.classList.contains('num');
        box.querySelectorAll('thead th').forEach(function (h) { delete h.dataset.dir; });
        th.dataset.dir = dir > 0 ? 'asc' : 'desc';
        rows.sort(function (a, b) {
          var x = val(a, i), y = val(b, i);
          if (num) { x = x === '' ? -Infinity : +x; y = y === '' ? -Infinity : +y; return x === y ? 0 : (x < y ? -dir : dir); }
          return x.localeCompare(y) * dir;
        });
        rows.forEach(function (tr) { tbody.appendChild(tr); });
      });
    });
    apply();
  });
  document.addEventListener('click', function (e) {
    var b = e.target.closest('button.play');
    if (b) { var a = document.getElementById(b.dataset.audio); a.currentTime = 0; a.play(); return; }
    var l = e.target.closest('a[data-search]');
    if (l) {
      var box = document.querySelector(l.getAttribute('href'));
      if (box) { box.querySelector('input[type=search]').value = l.dataset.search; box.apply(); }
    }
  });
})();
"""


def write_report(out_dir: str, path: str, data: dict[str, Any] | None = None,
                 caps: Caps | None = None, page_cap: int = PAGE_CAP_BYTES) -> str:
    """Write the page for `out_dir` to `path` (from `data`, `report_data(out_dir, caps)` if not
    given) and the `--show` page of every document with a thumbnail on it into `PATH.docs/`;
    returns the path. A page over `page_cap` bytes is sampled again with halved caps."""
    from mmcurate.quality.video_audit import write_document_html
    from mmcurate.transforms.commit import write_atomic

    caps = caps or Caps()
    d = data or report_data(out_dir, caps)
    docs_dir = os.path.splitext(os.path.abspath(path))[0] + ".docs"
    docs_href = urllib.parse.quote(os.path.basename(docs_dir))
    page = render(d, out_dir, docs_href)
    while len(page.encode("utf-8")) > page_cap and caps != caps.halved():
        caps = caps.halved()
        d = report_data(out_dir, caps)
        page = render(d, out_dir, docs_href)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    docs = list(dict.fromkeys(t["document_id"] for t in d.get("thumbnails") or []))[: caps.pages]
    for doc_id in docs:
        write_document_html(out_dir, doc_id, os.path.join(docs_dir, f"{doc_id}.html"))
    write_atomic(path, page.encode("utf-8"))
    return path
