"""The rows and media under the report's charts (`mmcurate audit DIR --html`): the ledger, the
segments with their scores, the duplicate clusters, audio clips of some segments and keyframe
thumbnails, each sampled to a cap so that the page of any output stays small.

Sampling is deterministic (the same output gives the same page) and fair to rare cases: a
table's rows are grouped (ledger: stage/reason; segments: kept or the drop reason; clusters:
whole clusters, largest first) and every group gets the same quota, the largest quota whose
rows fit the cap; inside a group rows are taken in the order of a hash of their id. The page
states what was left out.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Any

from mmcurate.transforms.audio_codec import encode_opus

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what the run decodes to and stores (transforms/decode.py)


@dataclass(frozen=True)
class Caps:
    """How much of an output one page holds. With the defaults a page stays under
    `PAGE_CAP_BYTES` whatever the output's size (a row with its detail ~1 KB, clips <= 10 s of
    Opus at 12 kb/s ~ 20 KB in base64, thumbnails ~ 6 KB)."""

    rows: int = 1000  # per drill-down table
    clips: int = 40  # segments with an inline player: dropped ones first
    clip_s: float = 10.0  # a longer segment plays its first clip_s seconds
    opus_bps: int = 12000  # speech stays intelligible at 12 kb/s (16 kHz mono Opus)
    thumbs: int = 60  # keyframe thumbnails
    thumb_px: int = 160  # their longer side
    pages: int = 50  # `--show` pages written next to the report

    def halved(self) -> "Caps":
        return replace(self, rows=max(50, self.rows // 2), clips=max(4, self.clips // 2),
                       thumbs=max(4, self.thumbs // 2), pages=max(4, self.pages // 2))


PAGE_CAP_BYTES = 6 * 1024 * 1024  # the page of any output; README "The report"


def fair_quota(sizes: list[int], cap: int) -> int:
    """The largest per-group quota q with sum(min(n, q)) <= cap (every group if all fit)."""
    if sum(sizes) <= cap:
        return max(sizes or [0])
    lo, hi = 0, max(sizes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in sizes) <= cap:
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 1)


def _sampled(con, select: str, group: str, key: str, order: str, cap: int) -> tuple[list[dict], int]:
    """Rows of `select` (a subquery), at most `cap`: an equal quota per `group` value, by hash
    of `key` inside a group; returns (rows, rows in all)."""
    sizes = [n for n, in con.execute(f"SELECT count(*) FROM ({select}) GROUP BY {group}").fetchall()]
    q = fair_quota(sizes, cap)
    cur = con.execute(f"""
        SELECT * EXCLUDE (_rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY {group} ORDER BY hash({key}), {key}) AS _rn
            FROM ({select}))
        WHERE _rn <= {int(q)} ORDER BY {order} LIMIT {int(cap)}""")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()], sum(sizes)


REJECTED_ROWS = """
    SELECT rejection_id, stage, reason, stage || '/' || reason AS stage_reason, detail, uri,
           source_id, item_id, duration_s
    FROM rejected"""

SEGMENT_ROWS_QUALITY = """
    SELECT q.segment_id, q.source_id, src.uri, q.start, q."end", q.duration_s, q.keep,
           coalesce(q.reason, 'kept') AS verdict, q.failed, s.speaker,
           coalesce(q.language, s.language) AS language, q.num_words, q.chars_per_s,
           q.dnsmos_ovrl, q.dnsmos_sig, q.dnsmos_bak, q.phrase_share, q.repeat_share,
           q.outside_vad_share, s.avg_logprob, s.no_speech_prob, s.compression_ratio, s.text,
           q.segment_id IN (SELECT segment_id FROM curated_segments) AS curated,
           CASE WHEN q.segment_id IN (SELECT segment_id FROM curated_segments) THEN 'yes' ELSE 'no'
           END AS curated_yn
    FROM segment_quality q LEFT JOIN segments s USING (segment_id)
    LEFT JOIN sources src ON src.source_id = q.source_id"""

SEGMENT_ROWS_ASR = """
    SELECT s.segment_id, s.source_id, src.uri, s.start, s."end", s."end" - s.start AS duration_s,
           true AS keep, 'kept' AS verdict, []::VARCHAR[] AS failed, s.speaker, s.language,
           len(s.words) AS num_words, NULL::DOUBLE AS chars_per_s, NULL::DOUBLE AS dnsmos_ovrl,
           NULL::DOUBLE AS dnsmos_sig, NULL::DOUBLE AS dnsmos_bak, NULL::DOUBLE AS phrase_share,
           NULL::DOUBLE AS repeat_share, NULL::DOUBLE AS outside_vad_share, s.avg_logprob,
           s.no_speech_prob, s.compression_ratio, s.text,
           s.segment_id IN (SELECT segment_id FROM curated_segments) AS curated,
           CASE WHEN s.segment_id IN (SELECT segment_id FROM curated_segments) THEN 'yes' ELSE 'no'
           END AS curated_yn
    FROM segments s LEFT JOIN sources src USING (source_id)"""

CLUSTER_ROWS = """
    SELECT d.cluster_id, d.kind, d.kind || '/' || d.method AS kind_method, d.item_id,
           d.is_representative, d.representative_id, d.representative_partition, d.method,
           d.similarity, s.uri
    FROM dedup_clusters d LEFT JOIN sources s USING (source_id)"""


def drilldown(con, caps: Caps, has_quality: bool) -> dict[str, Any]:
    """{table: {"rows": [...], "total": n}} for the ledger, the segments and the clusters."""
    out: dict[str, Any] = {}
    rows, n = _sampled(con, REJECTED_ROWS, "stage, reason", "rejection_id",
                       "stage, reason, hash(rejection_id), rejection_id", caps.rows)
    out["rejected"] = {"rows": rows, "total": n}
    seg = SEGMENT_ROWS_QUALITY if has_quality else SEGMENT_ROWS_ASR
    rows, n = _sampled(con, seg, "verdict", "segment_id",
                       "keep, verdict, source_id, start, segment_id", caps.rows)
    out["segments"] = {"rows": rows, "total": n}
    # whole clusters, largest first, while they fit
    n, = con.execute("SELECT count(*) FROM dedup_clusters").fetchone()
    cur = con.execute(f"""
        WITH c AS (SELECT cluster_id, count(*) AS n FROM dedup_clusters GROUP BY cluster_id),
             r AS (SELECT cluster_id, n, sum(n) OVER (ORDER BY n DESC, cluster_id) AS upto FROM c)
        SELECT x.*, r.n AS members FROM ({CLUSTER_ROWS}) x JOIN r USING (cluster_id)
        WHERE r.upto <= {int(caps.rows)}
        ORDER BY r.n DESC, x.cluster_id, x.is_representative DESC, x.similarity DESC, x.item_id""")
    names = [d[0] for d in cur.description]
    out["clusters"] = {"rows": [dict(zip(names, r)) for r in cur.fetchall()], "total": int(n)}
    return out


# --------------------------------------------------------------------------- audio


def pick_clips(segments: list[dict], cap: int) -> list[str]:
    """Segment ids that get a player: dropped segments first, one reason after the other
    (round robin, so every reason has one), then kept ones; at most `cap`."""
    groups: dict[str, list[str]] = {}
    for r in segments:
        groups.setdefault(r["verdict"], []).append(r["segment_id"])
    dropped = [g for v, g in sorted(groups.items()) if v != "kept"]
    picked: list[str] = []
    while len(picked) < cap and any(dropped):
        for g in dropped:
            if g and len(picked) < cap:
                picked.append(g.pop(0))
    picked += groups.get("kept", [])[: max(0, cap - len(picked))]
    return picked


def _first_seconds(path: str, seconds: float, start: float = 0.0):
    """Mono float32 samples of [start, start + seconds) of a media file, decoding no further."""
    import numpy as np

    from mmcurate.transforms.decode import iter_audio

    a, b = int(start * SAMPLE_RATE), int((start + seconds) * SAMPLE_RATE)
    got: list = []
    have = 0
    for chunk in iter_audio(path, sample_rate=SAMPLE_RATE, chunk_s=10.0):
        got.append(chunk)
        have += chunk.shape[0]
        if have >= b:
            break
    return np.concatenate(got)[a:b] if got else np.zeros(0, np.float32)


def _stored_samples(data: bytes, name: str, seconds: float):
    suffix = os.path.splitext(name or "")[1] or ".flac"
    with tempfile.NamedTemporaryFile(suffix=suffix) as fh:
        fh.write(data)
        fh.flush()
        return _first_seconds(fh.name, seconds)


def clips(con, segment_ids: list[str], caps: Caps) -> dict[str, dict[str, Any]]:
    """{segment_id: {"src": data URI of an Ogg Opus clip, "seconds": s, "from": "stored" |
    "source"} or {"error": one line}}: the segment's stored audio where the run kept it
    (segments.include_audio), else cut from its source (decoded once per source, only as far as
    the clips need)."""
    if not segment_ids:
        return {}
    rows = con.execute("""
        SELECT s.segment_id, s.source_id, s.start, s."end", s.audio.bytes, s.audio.path, src.media_uri
        FROM segments s LEFT JOIN sources src USING (source_id)
        WHERE s.segment_id IN (SELECT unnest(?::VARCHAR[]))
        ORDER BY s.source_id, s.start""", [segment_ids]).fetchall()
    out: dict[str, dict[str, Any]] = {}
    by_source: dict[str, list[tuple]] = {}
    for r in rows:
        seg_id, src_id, start, end, data, name, uri = r
        seconds = min(caps.clip_s, max(0.0, end - start))
        if data is not None:
            try:
                samples = _stored_samples(bytes(data), name, seconds)
                out[seg_id] = {"samples": samples, "from": "stored"}
            except Exception as e:  # noqa: BLE001  a clip that does not decode is named, not fatal
                out[seg_id] = {"error": f"stored audio does not decode: {type(e).__name__}: {e}"}
        else:
            by_source.setdefault(uri or "", []).append((seg_id, start, seconds))
    for uri, segs in by_source.items():
        if not uri:
            for seg_id, _, _ in segs:
                out[seg_id] = {"error": "the segment's source is not in sources"}
            continue
        upto = max(start + s for _, start, s in segs)
        try:
            audio = _first_seconds(uri, upto)
        except Exception as e:  # noqa: BLE001  a moved or unreadable source: one line per clip
            for seg_id, _, _ in segs:
                out[seg_id] = {"error": f"source not readable ({uri}): {type(e).__name__}: {e}"}
            continue
        for seg_id, start, seconds in segs:
            a = int(start * SAMPLE_RATE)
            out[seg_id] = {"samples": audio[a:a + int(seconds * SAMPLE_RATE)], "from": "source"}
    for seg_id, c in out.items():
        if "samples" in c:
            samples = c.pop("samples")
            if samples.shape[0] == 0:
                c.clear()
                c["error"] = "no audio samples at the segment's times"
                continue
            data = encode_opus(samples, SAMPLE_RATE, caps.opus_bps, compression_level=5)
            c["src"] = "data:audio/ogg;base64," + base64.b64encode(data).decode("ascii")
            c["seconds"] = round(samples.shape[0] / SAMPLE_RATE, 2)
    return out


# --------------------------------------------------------------------------- keyframes


def thumbnails(con, caps: Caps) -> tuple[list[dict[str, Any]], int]:
    """Keyframes of the video documents as small JPEG data URIs, an equal quota per document
    (in reading order inside one); returns (thumbnails, images in all)."""
    select = """SELECT i.document_id, i.item_id, i.position, i.keyframe_id, i.frame_time, i.image,
                       d.uri
                FROM interleaved i LEFT JOIN documents d USING (document_id)
                WHERE i.modality = 'image' AND i.image IS NOT NULL"""
    sizes = [n for n, in con.execute(f"SELECT count(*) FROM ({select}) GROUP BY document_id").fetchall()]
    if not sizes:
        return [], 0
    q = fair_quota(sizes, caps.thumbs)
    rows = con.execute(f"""
        SELECT document_id, item_id, keyframe_id, frame_time, image, uri FROM (
            SELECT *, row_number() OVER (PARTITION BY document_id ORDER BY position) AS _rn
            FROM ({select}))
        WHERE _rn <= {int(q)} ORDER BY document_id, position LIMIT {int(caps.thumbs)}""").fetchall()
    from PIL import Image

    out = []
    for doc_id, item_id, kid, t, image, uri in rows:
        try:
            im = Image.open(io.BytesIO(bytes(image or b""))).convert("RGB")
            im.thumbnail((caps.thumb_px, caps.thumb_px))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=70)
        except Exception as e:  # noqa: BLE001  a broken image is shown as such, the page goes on
            log.warning("report: keyframe %s does not decode: %s", item_id, e)
            continue
        out.append({"document_id": doc_id, "item_id": item_id, "keyframe_id": kid,
                    "frame_time": t, "uri": uri, "width": im.width, "height": im.height,
                    "src": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")})
    return out, sum(sizes)
