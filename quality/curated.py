"""The curated view of an output: per table, the rows kept by the quality stage and not dropped by
dedup. The one definition every consumer reads (the audit's views and counts, `mmcurate export`).

* a source is curated unless dedup made it a non-representative (kind `source`: same bytes or
  the same recording in another encoding, a near-duplicate video);
* its transcript is curated when its source is and dedup did not drop the transcript as a text
  duplicate (kind `transcript`);
* a segment is curated when the quality stage kept it (`kept_segments`) and its transcript is
  curated: a duplicate's segments go with its source or its transcript, the representative's
  stay (a second reading of the same text is all in `kept_segments`);
* turns, turn events and speech regions follow their source;
* a document is curated when its source is and dedup did not drop it (kind `document`); its
  row is the whole document, as written. `curated_interleaved` holds the items of curated
  documents less the duplicate images and text items dedup dropped inside them;
* a text_mix row is curated when its source is and dedup did not drop it (kinds `passage`,
  `synthetic`); a rephrasing goes with its passage.

Without the quality stage every segment is kept; without dedup nothing is dropped. Dedup drops
are the non-representative rows of `dedup_clusters` (their ledger rows are in `rejected`).
"""

from __future__ import annotations

from typing import Any

_DROPPED = "(SELECT item_id FROM dedup_clusters WHERE kind = '{kind}' AND NOT is_representative)"


def _dropped(kind: str) -> str:
    return _DROPPED.format(kind=kind)


# view -> its SELECT, in dependency order; every view has its table's columns
CURATED_VIEWS: dict[str, str] = {
    "curated_sources": f"SELECT * FROM sources WHERE source_id NOT IN {_dropped('source')}",
    "curated_transcripts": (
        "SELECT * FROM transcripts WHERE source_id IN (SELECT source_id FROM curated_sources) "
        f"AND source_id NOT IN {_dropped('transcript')}"),
    "curated_segments": (
        "SELECT * FROM kept_segments WHERE source_id IN (SELECT source_id FROM curated_transcripts)"),
    "curated_turns": "SELECT * FROM turns WHERE source_id IN (SELECT source_id FROM curated_sources)",
    "curated_turn_events": (
        "SELECT * FROM turn_events WHERE source_id IN (SELECT source_id FROM curated_sources)"),
    "curated_speech_regions": (
        "SELECT * FROM speech_regions WHERE source_id IN (SELECT source_id FROM curated_sources)"),
    "curated_documents": (
        "SELECT * FROM documents WHERE source_id IN (SELECT source_id FROM curated_sources) "
        f"AND document_id NOT IN {_dropped('document')}"),
    "curated_interleaved": (
        "SELECT * FROM interleaved WHERE document_id IN (SELECT document_id FROM curated_documents) "
        f"AND NOT (modality = 'image' AND item_id IN {_dropped('image')}) "
        f"AND NOT (modality = 'text' AND item_id IN {_dropped('text_item')})"),
    "curated_text_mix": (
        "SELECT * FROM text_mix t WHERE source_id IN (SELECT source_id FROM curated_sources) "
        f"AND text_id NOT IN {_dropped('passage')} AND text_id NOT IN {_dropped('synthetic')} "
        f"AND (parent_id IS NULL OR parent_id NOT IN {_dropped('passage')})"),
}


def create_curated_views(con) -> None:
    """Register the `curated_*` views on an audit connection (`mmcurate.quality.db.connect`),
    which already has the table views and `kept_segments`."""
    for name, select in CURATED_VIEWS.items():
        con.execute(f"CREATE VIEW {name} AS {select}")


def curated_summary(con) -> dict[str, Any]:
    """Rows per curated view beside its table's, and the curated hours of speech."""
    rows = {}
    for name in CURATED_VIEWS:
        table = name.removeprefix("curated_")
        n, total = con.execute(f"SELECT (SELECT count(*) FROM {name}), (SELECT count(*) FROM {table})").fetchone()
        rows[table] = {"curated": int(n), "rows": int(total)}
    secs, = con.execute('SELECT coalesce(sum("end" - start), 0) FROM curated_segments').fetchone()
    return {"rows": rows, "hours_segments": float(secs) / 3600.0}


def format_curated(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    lines = ["", "Curated (kept by quality, not dropped by dedup: views curated_<table>)"]
    width = max(len(t) for t in c["rows"])
    for table, r in c["rows"].items():
        if r["rows"]:
            lines.append(f"  {table:<{width}}  {r['curated']:>6} of {r['rows']}")
    lines.append(f"  {'hours':<{width}}  {c['hours_segments']:.3f} of curated segments")
    return lines
