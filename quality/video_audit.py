"""Audit of the video stage's output: figures over the `interleaved` and `documents` tables
(DuckDB, on the views `mmcurate.quality.db.connect` makes), and one document rendered as a
small HTML page the way a person would read it (`mmcurate audit DIR --show DOC_ID`)."""

from __future__ import annotations

import base64
import html
import os
from typing import Any

import duckdb


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple:
    return con.execute(sql, params or []).fetchone()


def _q(con: duckdb.DuckDBPyConnection, expr: str, frm: str) -> dict[str, float | None]:
    row = _one(con, f"SELECT quantile_cont({expr}, [0.1, 0.5, 0.9]), avg({expr}) FROM {frm}")
    qs, mean = row
    qs = qs or [None, None, None]
    num = (lambda v: None if v is None else float(v))
    return {"p10": num(qs[0]), "p50": num(qs[1]), "p90": num(qs[2]), "mean": num(mean)}


def video_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Documents, images per document, text tokens (words) per image, the share of video time
    covered by speech, and the `keyframes` ledger rows by reason (dropped frames, videos
    without a document)."""
    docs, images, texts, words, image_only, doc_s, doc_speech = _one(con, """
        SELECT count(*), coalesce(sum(num_images), 0), coalesce(sum(num_texts), 0),
               coalesce(sum(num_words), 0), count(*) FILTER (WHERE num_texts = 0),
               coalesce(sum(duration_s), 0), coalesce(sum(speech_s), 0)
        FROM documents""")
    videos, video_s, video_speech = _one(con, """
        SELECT count(*), coalesce(sum(duration_s), 0), coalesce(sum(speech_s), 0)
        FROM sources WHERE media_kind = 'video'""")
    drops = dict(con.execute("""
        SELECT reason, count(*) FROM rejected WHERE stage = 'keyframes'
        GROUP BY reason ORDER BY reason""").fetchall())
    per_doc = "(SELECT num_images, num_words / greatest(num_images, 1) AS wpi FROM documents)"
    return {
        "video_sources": int(videos),
        "documents": int(docs),
        "image_only_documents": int(image_only),
        "images": int(images),
        "text_items": int(texts),
        "words": int(words),
        "images_per_document": _q(con, "num_images", per_doc),
        "images_per_minute": (int(images) / (float(doc_s) / 60.0)) if doc_s else None,
        "text_tokens_per_image": (int(words) / int(images)) if images else None,
        "text_tokens_per_image_per_document": _q(con, "wpi", per_doc),
        # VAD speech seconds over video seconds: in the documents, and over every video source
        "speech_share_of_document_time": (float(doc_speech) / float(doc_s)) if doc_s else None,
        "speech_share_of_video_time": (float(video_speech) / float(video_s)) if video_s else None,
        "keyframes_ledger": {k: int(v) for k, v in drops.items()},
    }


def format_video(v: dict[str, Any] | None) -> list[str]:
    """Report lines for `video_summary` (nothing when no video was processed)."""
    if not v or not (v["video_sources"] or v["documents"]):
        return []

    def f(x: Any, nd: int = 2) -> str:
        return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))

    ipd, tpi = v["images_per_document"], v["text_tokens_per_image_per_document"]
    rows = [
        ("video sources", f(v["video_sources"])),
        ("documents (image-only)", f"{v['documents']} ({v['image_only_documents']})"),
        ("images / text items / words", f"{v['images']} / {v['text_items']} / {v['words']}"),
        ("images per document p10/p50/p90", f"{f(ipd['p10'], 1)} / {f(ipd['p50'], 1)} / {f(ipd['p90'], 1)}"),
        ("images per minute of video", f(v["images_per_minute"])),
        ("text tokens (words) per image", f(v["text_tokens_per_image"], 1)),
        ("  per document p10/p50/p90", f"{f(tpi['p10'], 1)} / {f(tpi['p50'], 1)} / {f(tpi['p90'], 1)}"),
        ("speech share of document time", _pct(v["speech_share_of_document_time"])),
        ("speech share of all video time", _pct(v["speech_share_of_video_time"])),
    ]
    rows += [(f"ledger keyframes/{r}", str(n)) for r, n in v["keyframes_ledger"].items()]
    w = max(len(r[0]) for r in rows)
    return ["", "Video documents"] + [f"  {a.ljust(w)}  {b}" for a, b in rows]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# --------------------------------------------------------------------------- one document


def resolve_document(con: duckdb.DuckDBPyConnection, key: str) -> str:
    """The document id meant by `key`: a document id, a source id, or a unique part of the
    source's uri (e.g. the file name). LookupError with the candidates otherwise."""
    for sql in ("SELECT document_id FROM documents WHERE document_id = ?",
                "SELECT document_id FROM documents WHERE source_id = ?",
                "SELECT document_id FROM documents WHERE starts_with(document_id, ?)",
                "SELECT document_id FROM documents WHERE contains(uri, ?)"):
        found = sorted({r[0] for r in con.execute(sql, [key]).fetchall()})
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise LookupError(f"{key!r} matches {len(found)} documents: {', '.join(found[:5])}")
    known = [r[0] for r in con.execute("SELECT uri FROM documents ORDER BY uri LIMIT 5").fetchall()]
    raise LookupError(f"no document {key!r}" + (f" (documents of e.g. {', '.join(known)})" if known else
                                                 " (this output has no documents)"))


_CSS = """
body { font-family: Georgia, serif; max-width: 46em; margin: 2em auto; color: #222; line-height: 1.5; }
header { font-family: sans-serif; font-size: 0.85em; color: #555; border-bottom: 1px solid #ddd; margin-bottom: 1.5em; }
figure { margin: 1.5em 0 0.5em; }
figure img { max-width: 100%; border: 1px solid #ccc; }
figcaption, .t { font-family: sans-serif; font-size: 0.75em; color: #777; }
p { margin: 0.4em 0; }
"""


def document_html(con: duckdb.DuckDBPyConnection, key: str) -> tuple[str, str]:
    """(document id, a self-contained HTML page of it): images inline, text in reading order."""
    doc_id = resolve_document(con, key)
    d = con.execute("""SELECT uri, duration_s, speech_s, language, num_images, num_texts, num_words
                       FROM documents WHERE document_id = ?""", [doc_id]).fetchone()
    items = con.execute("""
        SELECT position, modality, start, "end", speaker, text, image, image_format, width,
               height, keyframe_id, frame_time, cut, sharpness
        FROM interleaved WHERE document_id = ? ORDER BY position""", [doc_id]).fetchall()
    uri, dur, speech, lang, n_img, n_txt, n_words = d
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(doc_id)}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<header><b>{e(doc_id)}</b><br>{e(uri)}<br>{dur:.1f} s of video, {speech:.1f} s of "
           f"speech, language {e(lang or '-')}; {n_img} images, {n_txt} text items, {n_words} "
           f"words</header>"]
    for pos, mod, start, end, spk, text, image, fmt, w, h, kid, ft, cut, sharp in items:
        if mod == "image":
            data = base64.b64encode(bytes(image or b"")).decode("ascii")
            out.append(f"<figure><img src='data:image/{e(fmt or 'jpeg')};base64,{data}' width='{w}' "
                       f"height='{h}' alt='{e(kid or '')}'><figcaption>#{pos} {start:.1f}-{end:.1f} s "
                       f"({e(cut or '')}; frame at {ft:.1f} s, sharpness {sharp:.0f}) {e(kid or '')}"
                       f"</figcaption></figure>")
        else:
            who = e(spk.rsplit("-", 1)[-1]) if spk else "spk?"
            out.append(f"<p><span class='t'>{start:.1f}-{end:.1f} s {who}</span> {e(text or '')}</p>")
    out.append("</body></html>")
    return doc_id, "\n".join(out) + "\n"


def write_document_html(out_dir: str, key: str, path: str | None = None) -> str:
    """Write the page of document `key` (see `resolve_document`) to `path` (default:
    ./<document_id>.html); returns the path written."""
    from mmcurate.quality.db import connect

    con = connect(out_dir)
    try:
        doc_id, page = document_html(con, key)
    finally:
        con.close()
    path = path or f"{doc_id}.html"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path
