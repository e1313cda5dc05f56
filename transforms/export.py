"""Training-ready exports of an output's curated view (`mmcurate export DIR --format X --to OUT`).

Every format reads the `curated_*` views (`mmcurate.quality.curated`) and nothing else. A format
is one `Exporter` in `EXPORTERS`: `plan` lists its shards from the curated rows' metadata (ids,
times, texts; no audio bytes) on the driver, `write_shard` writes one shard on a worker, `finish`
writes what spans shards on the driver. `mmcurate.pipelines.export` runs the shards as a Beam
pipeline; a shard already written (its files in place) is not written again, so a killed export
is resumed by running it again. Files are written under temporary names and renamed into place,
with no time stamps inside, so the same output gives the same bytes.

* `lhotse`: `recordings.jsonl.gz` (the source media), `supervisions.jsonl.gz` (speaker, language,
  text, word alignments), `cuts.jsonl.gz` (one cut per curated segment): Lhotse's own manifests.
* `shar`: Lhotse Shar shards, `cuts.NNNNNN.jsonl.gz` + `recording.NNNNNN.tar` (FLAC, 16 kHz
  mono), loadable with no source media: the segment's stored audio (segments.include_audio), else
  cut from one decode of its source.
* `nemo`: `manifest.json`, NeMo's ASR/TTS JSON lines (audio_filepath, offset, duration, text,
  speaker, lang): the stored audio as files under `audio/`, else the source media with offsets.
* `webdataset`: tar shards of segments (`<segment_id>.flac` + `.json`) and of documents
  (`<document_id>.json` with the texts/images order + one member per image), for the
  `webdataset` library.
* `hf`: Parquet shards under `segments/` and `documents/` whose schema carries the Hugging Face
  features (`Audio`, `List(Image)`), and a `README.md` card naming the two configs, for
  `datasets.load_dataset`.
* `duplex`: full-duplex dialogue data (Moshi / FLM-Audio style), `dialogues-<rate>hz-NNNNNN.parquet`:
  per speaker of each curated source with two or more speakers in `turns`, one row with that
  speaker's audio channel (the source inside its turns, silence elsewhere), a word-per-frame text
  stream at `frame_rate` (default 12.5 Hz) and its sentences; sources with fewer speakers are
  counted, not exported (`mmcurate.transforms.duplex` documents the streams).
* `qa`: temporal and turn-taking question-answer items, `qa-NNNNNN.parquet` + `summary.json`: per
  clip (default 30 s) of each curated source with two or more speakers, questions (count, first,
  last, order, duration, interrupt, backchannel) whose answers are read off `turns`,
  `turn_events` and `segments`; items of low-confidence diarizations are dropped and counted
  (`mmcurate.transforms.qa` documents the kinds and the layout).

`webdataset` and `hf` hold segments and documents: a document is its curated items in reading
order (`curated_interleaved`: an image or text item dedup dropped inside it is left out).

Why one module of this length: the exporters share the shard plan, the curated-view reader and
the audio/image codecs; the derived formats (duplex, qa) are modules of their own.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

from mmcurate.transforms.commit import atomic_file, write_atomic
from mmcurate.transforms.duplex import DEFAULT_FRAME_RATE  # 12.5 Hz (export reads duplex, not back)
from mmcurate.transforms.intervals import merge_intervals
from mmcurate.transforms.qa import DEFAULT_CLIP_S, DEFAULT_DISTRACTORS, DEFAULT_MIN_CONFIDENCE, speaker_order

log = logging.getLogger("mmcurate.export")

SAMPLE_RATE = 16000  # what the run decodes to and stores (transforms/decode.py)
DEFAULT_SHARD_SIZE = 1000  # segments (documents) per shard (Lhotse Shar's own default)

# the curated segments with what every format needs of their source; no audio bytes
SEGMENT_ROWS = """
    SELECT g.segment_id, g.source_id, g.start, g."end", g.speaker, g.text, g.language, g.words,
           g.audio IS NOT NULL AS has_audio, g.audio.path AS audio_path,
           s.media_uri, s.duration_s AS source_duration_s, s.sample_rate AS source_sample_rate,
           s.channels AS source_channels
    FROM curated_segments g JOIN curated_sources s USING (source_id)
"""
ORDER = " ORDER BY g.source_id, g.start, g.segment_id"


def segment_rows(con, ids: list[str] | None = None, with_audio: bool = False) -> list[dict]:
    """Curated segments (ordered by source, start) as dicts; `ids`: only those; `with_audio`:
    with the stored audio's bytes (`audio_bytes`)."""
    sql = SEGMENT_ROWS
    if with_audio:
        sql = sql.replace("g.audio.path AS audio_path,", "g.audio.path AS audio_path, g.audio.bytes AS audio_bytes,")
    params: list = []
    if ids is not None:
        sql += " WHERE g.segment_id IN (SELECT unnest(?::VARCHAR[]))"
        params = [ids]
    cur = con.execute(sql + ORDER, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


# a curated document's items in reading order; no image bytes unless asked for
ITEM_ROWS = """
    SELECT document_id, position, modality, start, "end", speaker, text, num_words, image_format,
           width, height, keyframe_id{image}
    FROM curated_interleaved WHERE document_id IN (SELECT unnest(?::VARCHAR[]))
    ORDER BY document_id, position
"""


def document_rows(con, ids: list[str] | None = None, with_images: bool = False) -> list[dict]:
    """Curated documents (ordered by id) as dicts, each with its curated `items` in reading
    order; `ids`: only those; `with_images`: with the image items' bytes (`image`)."""
    sql = "SELECT document_id, source_id, uri, duration_s, speech_s, language FROM curated_documents"
    params: list = []
    if ids is not None:
        sql += " WHERE document_id IN (SELECT unnest(?::VARCHAR[]))"
        params = [ids]
    cur = con.execute(sql + " ORDER BY document_id", params)
    names = [d[0] for d in cur.description]
    docs = [dict(zip(names, row), items=[]) for row in cur.fetchall()]
    by_id = {d["document_id"]: d for d in docs}
    cur = con.execute(ITEM_ROWS.format(image=", image" if with_images else ""), [list(by_id)])
    names = [d[0] for d in cur.description]
    for row in cur.fetchall():
        item = dict(zip(names, row))
        by_id[item["document_id"]]["items"].append(item)
    return docs


def image_name(item: dict) -> str:
    """An image item's file name, as the documents table names it (`{keyframe_id}.jpg|webp`)."""
    ext = "jpg" if item["image_format"] == "jpeg" else item["image_format"]
    return f"{item['keyframe_id']}.{ext}"


def _read(out_dir: str, rows_of, ids: tuple[str, ...], **kw) -> list[dict]:
    """A shard's curated rows, read on a worker from its own connection."""
    from mmcurate.quality.db import connect

    con = connect(out_dir, read_only=True)
    try:
        return rows_of(con, list(ids), **kw)
    finally:
        con.close()


def segment_audio(rows: list[dict]) -> Iterator[tuple[dict, bytes, str]]:
    """Each segment row (`with_audio`) with its audio file's bytes and extension: the stored audio
    (segments.include_audio: FLAC or Opus as configured), else FLAC 16 kHz mono cut from one
    decode of its source (rows come ordered by source: one decode each)."""
    from mmcurate.transforms.audio_codec import encode_flac

    decoded: dict[str, Any] = {}
    for r in rows:
        data = r["audio_bytes"]
        if data is not None:
            yield r, data, os.path.splitext(r["audio_path"] or ".flac")[1][1:]
            continue
        if r["source_id"] not in decoded:
            from mmcurate.transforms.decode import decode_audio

            decoded.clear()
            decoded[r["source_id"]] = decode_audio(r["media_uri"], sample_rate=SAMPLE_RATE)
        audio = decoded[r["source_id"]]
        a, b = int(r["start"] * SAMPLE_RATE), int(round(r["end"] * SAMPLE_RATE))
        yield r, encode_flac(audio[a:max(a, b)], SAMPLE_RATE), "flac"


@dataclass(frozen=True)
class ExportShard:
    index: int  # its number among the shards of its kind
    ids: tuple[str, ...]  # the curated items it holds
    kind: str = "segments"  # segments | documents


def _cut(kind: str, ids: list[str], size: int) -> list[ExportShard]:
    size = max(1, size)
    return [ExportShard(k, tuple(ids[i : i + size]), kind) for k, i in enumerate(range(0, len(ids), size))]


@dataclass
class Exporter:
    """A format: its shards, how one is written, and what spans them."""

    name: ClassVar[str]
    help: ClassVar[str]
    KINDS: ClassVar[tuple[str, ...]] = ("segments",)  # what it exports: segments, documents
    shard_size: int = DEFAULT_SHARD_SIZE
    stats: dict[str, Any] = field(default_factory=dict)

    def plan(self, con) -> list[ExportShard]:
        rows = segment_rows(con)
        ids = [r["segment_id"] for r in rows]
        self.stats = {"segments": len(rows), "hours": sum(r["end"] - r["start"] for r in rows) / 3600.0,
                      "stored_audio": sum(1 for r in rows if r["has_audio"])}
        shards = _cut("segments", ids, self.shard_size)
        if "documents" in self.KINDS:
            docs = [d for d, in con.execute(
                "SELECT document_id FROM curated_documents ORDER BY document_id").fetchall()]
            self.stats["documents"] = len(docs)
            shards += _cut("documents", docs, self.shard_size)
        return shards

    def shard_files(self, to: str, shard: ExportShard) -> list[str]:
        """The files a written shard leaves (all present: the shard is done)."""
        return []

    def write_shard(self, out_dir: str, to: str, shard: ExportShard) -> None:
        """Write one shard's files (workers)."""

    def finish(self, con, to: str, shards: list[ExportShard]) -> list[str]:
        """Write what spans shards (driver); the files written."""
        return []

    def describe(self) -> str:
        """What the plan holds, for the log line and the CLI's summary."""
        docs = f", {self.stats['documents']} document(s)" if "documents" in self.stats else ""
        return f"{self.stats['segments']} curated segment(s), {self.stats['hours']:.3f} h{docs}"

    def report(self) -> list[str]:
        """Further lines for the log and the CLI's summary, after `finish`."""
        return []


def _gzip(data: bytes) -> bytes:
    """gzip with no name or time in the header: same data, same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", filename="", mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def _jsonl_gz(items: list[dict]) -> bytes:
    return _gzip("".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n"
                         for item in items).encode("utf-8"))


def _audio_source_type(uri: str) -> str:
    return "url" if "://" in uri else "file"


def lhotse_supervision(r: dict, recording_id: str, offset: float = 0.0):
    """The SupervisionSegment of a segment row; times relative to `offset` in the recording."""
    from lhotse import SupervisionSegment
    from lhotse.supervision import AlignmentItem

    words = [AlignmentItem(symbol=w["word"].strip(), start=round(w["start"] - offset, 6),
                           duration=round(max(0.0, w["end"] - w["start"]), 6),
                           score=w["probability"])
             for w in (r["words"] or []) if w["word"].strip()]
    return SupervisionSegment(
        id=r["segment_id"], recording_id=recording_id, start=round(r["start"] - offset, 6),
        duration=round(r["end"] - r["start"], 6), channel=0, text=r["text"].strip(),
        language=r["language"], speaker=r["speaker"], alignment={"word": words} if words else None)


def lhotse_recording(r: dict):
    """The Recording of a segment row's source media (its native rate and channels)."""
    from lhotse import AudioSource, Recording
    from lhotse.utils import compute_num_samples

    sr = int(r["source_sample_rate"] or SAMPLE_RATE)
    channels = list(range(int(r["source_channels"] or 1)))
    n = compute_num_samples(r["source_duration_s"], sr)
    return Recording(id=r["source_id"], sources=[AudioSource(_audio_source_type(r["media_uri"]), channels, r["media_uri"])],
                     sampling_rate=sr, num_samples=n, duration=n / sr)


class LhotseExporter(Exporter):
    name = "lhotse"
    help = "Lhotse RecordingSet, SupervisionSet and CutSet (JSONL.gz), recordings = the source media"
    FILES = ("recordings.jsonl.gz", "supervisions.jsonl.gz", "cuts.jsonl.gz")

    def finish(self, con, to, shards):
        from lhotse import MonoCut

        recordings, supervisions, cuts = {}, [], []
        for r in segment_rows(con):
            rec = recordings.get(r["source_id"]) or recordings.setdefault(r["source_id"], lhotse_recording(r))
            sup = lhotse_supervision(r, rec.id)
            supervisions.append(sup.to_dict())
            cut = MonoCut(id=r["segment_id"], start=sup.start, duration=sup.duration, channel=0,
                          recording=rec, supervisions=[sup.with_offset(-sup.start)])
            cuts.append(cut.to_dict())
        paths = [os.path.join(to, f) for f in self.FILES]
        for path, items in zip(paths, ([rec.to_dict() for rec in recordings.values()], supervisions, cuts)):
            write_atomic(path, _jsonl_gz(items))
        return paths


class SharExporter(Exporter):
    name = "shar"
    help = "Lhotse Shar shards: cuts + FLAC audio (16 kHz mono), readable without the source media"

    def shard_files(self, to, shard):
        return [os.path.join(to, f"cuts.{shard.index:06d}.jsonl.gz"),
                os.path.join(to, f"recording.{shard.index:06d}.tar")]

    def write_shard(self, out_dir, to, shard):
        import shutil
        import tempfile

        from lhotse import MonoCut, Recording
        from lhotse.shar import SharWriter

        rows = _read(out_dir, segment_rows, shard.ids, with_audio=True)
        tmp = tempfile.mkdtemp(prefix=f".shar-{shard.index:06d}-", dir=to)
        try:
            with SharWriter(tmp, fields={"recording": "flac"}, shard_size=len(rows) + 1,
                            shard_offset=shard.index) as writer:
                for r, data, _ext in segment_audio(rows):
                    rec = Recording.from_bytes(data, recording_id=r["segment_id"])
                    sup = lhotse_supervision(r, rec.id, offset=r["start"])
                    writer.write(MonoCut(id=r["segment_id"], start=0.0, duration=rec.duration, channel=0,
                                         recording=rec, supervisions=[sup]))
            cuts = os.path.join(tmp, os.path.basename(self.shard_files(to, shard)[0]))
            with gzip.open(cuts, "rb") as fh:  # again without the time Lhotse's gzip header holds
                text = fh.read()
            with open(cuts, "wb") as fh:
                fh.write(_gzip(text))
            for path in self.shard_files(to, shard):  # the writer used the shard's own number
                os.replace(os.path.join(tmp, os.path.basename(path)), path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class NemoExporter(Exporter):
    name = "nemo"
    help = ("NeMo ASR/TTS manifest (JSON lines: audio_filepath, offset, duration, text, speaker, lang); "
            "the stored audio as files under audio/, else the source media with offsets")

    def shard_files(self, to, shard):
        return [os.path.join(to, "_parts", f"nemo.{shard.index:06d}.jsonl")]

    def write_shard(self, out_dir, to, shard):
        from mmcurate.quality.db import connect

        con = connect(out_dir, read_only=True)
        try:
            rows = segment_rows(con, list(shard.ids), with_audio=True)
        finally:
            con.close()
        lines = []
        for r in rows:
            entry = nemo_entry(r)
            if r["audio_bytes"] is not None:
                path = os.path.join(to, "audio", r["source_id"], r["audio_path"])
                write_atomic(path, r["audio_bytes"])
                entry.update(audio_filepath=os.path.relpath(path, to), offset=0.0)
            lines.append(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        write_atomic(self.shard_files(to, shard)[0], "".join(lines).encode("utf-8"))

    def finish(self, con, to, shards):
        data = b"".join(open(self.shard_files(to, s)[0], "rb").read() for s in shards)
        path = os.path.join(to, "manifest.json")
        write_atomic(path, data)
        return [path]


def nemo_entry(r: dict) -> dict:
    """One NeMo manifest line of a segment row: the source media, offset and duration in seconds
    (NeMo's convention; extra keys are kept by its readers)."""
    return {"audio_filepath": r["media_uri"], "offset": round(r["start"], 6),
            "duration": round(r["end"] - r["start"], 6), "text": r["text"].strip(),
            "speaker": r["speaker"], "lang": r["language"], "segment_id": r["segment_id"],
            "source_id": r["source_id"]}


def _tar(path: str, members: Iterator[tuple[str, bytes]]) -> None:
    """A tar of (name, bytes) members in the given order, with no time, owner or mode of this
    machine inside (same members, same bytes), written beside `path` and renamed into place."""
    with atomic_file(path) as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))


def _json_bytes(item: dict) -> bytes:
    return json.dumps(item, ensure_ascii=False, sort_keys=True).encode("utf-8")


def segment_json(r: dict) -> dict:
    """A segment's metadata beside its audio: times in the source recording (as in the tables),
    the clip holds [start, end)."""
    return {"segment_id": r["segment_id"], "source_id": r["source_id"], "start": r["start"], "end": r["end"],
            "duration": round(r["end"] - r["start"], 6), "text": r["text"].strip(), "speaker": r["speaker"],
            "language": r["language"], "words": r["words"] or [], "sample_rate": SAMPLE_RATE}


def document_json(d: dict) -> dict:
    """A document in the OBELICS layout (parallel lists, one entry per position: at an image
    position `texts` is null and `images` names the image's member, at a text position the
    reverse) with its metadata."""
    items = d["items"]
    texts = [it["text"] if it["modality"] == "text" else None for it in items]
    return {"document_id": d["document_id"], "source_id": d["source_id"], "uri": d["uri"],
            "duration_s": d["duration_s"], "speech_s": d["speech_s"], "language": d["language"],
            "num_images": sum(1 for t in texts if t is None), "num_texts": sum(1 for t in texts if t is not None),
            "num_words": sum(it["num_words"] or 0 for it in items if it["modality"] == "text"),
            "texts": texts, "images": [_member_ext(it) if it["modality"] == "image" else None for it in items],
            "speakers": [it["speaker"] for it in items], "starts": [it["start"] for it in items],
            "ends": [it["end"] for it in items]}


def _member_ext(item: dict) -> str:
    """An image item's member in its document's sample: WebDataset keys a member by the name up
    to the first dot, so `<document_id>.<position>.jpg` is the sample's `<position>.jpg`."""
    return f"{item['position']:05d}.{image_name(item).rsplit('.', 1)[1]}"


class WebDatasetExporter(Exporter):
    name = "webdataset"
    help = ("WebDataset tars: segments-NNNNNN.tar (<segment_id>.flac + .json) and documents-NNNNNN.tar "
            "(<document_id>.json with the texts/images order + <document_id>.<position>.jpg|webp)")
    KINDS = ("segments", "documents")

    def shard_files(self, to, shard):
        return [os.path.join(to, f"{shard.kind}-{shard.index:06d}.tar")]

    def write_shard(self, out_dir, to, shard):
        _tar(self.shard_files(to, shard)[0], self._members(out_dir, shard))

    def _members(self, out_dir: str, shard: ExportShard) -> Iterator[tuple[str, bytes]]:
        if shard.kind == "segments":
            for r, data, ext in segment_audio(_read(out_dir, segment_rows, shard.ids, with_audio=True)):
                yield f"{r['segment_id']}.json", _json_bytes(segment_json(r))
                yield f"{r['segment_id']}.{ext}", data
            return
        for d in _read(out_dir, document_rows, shard.ids, with_images=True):
            yield f"{d['document_id']}.json", _json_bytes(document_json(d))
            for it in d["items"]:
                if it["modality"] == "image":
                    yield f"{d['document_id']}.{_member_ext(it)}", it["image"]


# the hf export's columns: the tables' own fields and Hugging Face features
HF_SEGMENT_COLUMNS = ("segment_id", "source_id", "start", "end", "speaker", "text", "language", "words", "audio")
HF_DOCUMENT_COLUMNS = ("document_id", "source_id", "uri", "duration_s", "speech_s", "language", "num_images",
                       "num_texts", "num_words", "images", "texts", "starts", "ends")
HF_CONFIG = """- config_name: {kind}
  data_files:
  - split: train
    path: {kind}/*.parquet
"""
HF_CARD = """---
configs:
{configs}---
Curated speech segments (`segments`: 16 kHz audio as `Audio`, text, speaker, language, word
timings) and interleaved image-text documents (`documents`: `images` as `List(Image)`, `texts`,
one entry per position) written by `mmcurate export --format hf`. Times are seconds in the
source recording.
"""


def _hf_columns(schema, names: tuple[str, ...]):
    """These columns of a table's schema, with their Hugging Face features (schema metadata)."""
    import pyarrow as pa

    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    return pa.schema([schema.field(n) for n in names], metadata={"huggingface": json.dumps(
        {"info": {"features": {n: features[n] for n in names}}}, sort_keys=True)})


class HuggingFaceExporter(Exporter):
    name = "hf"
    help = ("Hugging Face datasets Parquet: segments/ (audio as Audio) and documents/ (images as "
            "List(Image)) with a README.md card naming both configs")
    KINDS = ("segments", "documents")

    def shard_files(self, to, shard):
        return [os.path.join(to, shard.kind, f"{shard.kind}-{shard.index:06d}.parquet")]

    def write_shard(self, out_dir, to, shard):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from mmcurate.schemas.tables import DOCUMENTS, SEGMENTS

        if shard.kind == "segments":
            rows = [{**{c: r[c] for c in HF_SEGMENT_COLUMNS if c != "audio"}, "text": r["text"].strip(),
                     "audio": {"bytes": data, "path": f"{r['segment_id']}.{ext}"}}
                    for r, data, ext in segment_audio(_read(out_dir, segment_rows, shard.ids, with_audio=True))]
            table = pa.Table.from_pylist(rows, schema=_hf_columns(SEGMENTS, HF_SEGMENT_COLUMNS))
        else:
            rows = []
            for d in _read(out_dir, document_rows, shard.ids, with_images=True):
                doc = document_json(d)
                doc["images"] = [{"bytes": it["image"], "path": image_name(it)} if it["modality"] == "image" else None
                                 for it in d["items"]]
                rows.append({c: doc[c] for c in HF_DOCUMENT_COLUMNS})
            table = pa.Table.from_pylist(rows, schema=_hf_columns(DOCUMENTS, HF_DOCUMENT_COLUMNS))
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        write_atomic(self.shard_files(to, shard)[0], buf.getvalue())

    def finish(self, con, to, shards):
        """The dataset card: its YAML names a config per kind that has rows, so
        `load_dataset(to, "segments")` finds the files."""
        kinds = [k for k in self.KINDS if any(s.kind == k for s in shards)]
        path = os.path.join(to, "README.md")
        write_atomic(path, HF_CARD.format(configs="".join(HF_CONFIG.format(kind=k) for k in kinds)).encode("utf-8"))
        return [path]


REPORT_STREAMS = 20  # streams listed one per line in the summary
DUPLEX_SHARD_SIZE = 8  # sources per duplex shard: each holds its speakers' whole-source audio

# the curated sources, with how many speakers their curated turns have and the diarizer's
# confidence in that count: what the dialogue formats (duplex, qa) plan from
CONVERSATION_SOURCES = """
    SELECT s.source_id, s.media_uri, s.duration_s,
           (SELECT count(DISTINCT t.speaker) FROM curated_turns t
            WHERE t.source_id = s.source_id AND t."end" > t.start) AS speakers,
           (SELECT max(x.diarization_confidence) FROM curated_transcripts x
            WHERE x.source_id = s.source_id) AS confidence
    FROM curated_sources s ORDER BY s.source_id
"""


@dataclass
class DuplexExporter(Exporter):
    """Full-duplex dialogue streams: one Parquet row per (source, speaker) (`mmcurate.transforms.duplex`)."""

    name: ClassVar[str] = "duplex"
    help: ClassVar[str] = ("full-duplex dialogue Parquet: per speaker of each source with >= 2 speakers, its own "
                           "audio channel (silence outside its turns), a word-per-frame text stream "
                           "(--frame-rate, default 12.5 Hz) and its sentences")
    KINDS: ClassVar[tuple[str, ...]] = ("sources",)
    shard_size: int = DUPLEX_SHARD_SIZE
    frame_rate: float = DEFAULT_FRAME_RATE

    def plan(self, con) -> list[ExportShard]:
        rows = con.execute(CONVERSATION_SOURCES).fetchall()
        used = [r for r in rows if r[3] >= 2]
        ids = [r[0] for r in used]
        segments, words, unassigned = con.execute("""
            SELECT count(*), coalesce(sum(len(words)), 0),
                   coalesce(sum(len(words)) FILTER (WHERE speaker IS NULL OR speaker NOT IN (
                       SELECT speaker FROM curated_turns t WHERE t.source_id = g.source_id)), 0)
            FROM curated_segments g WHERE source_id IN (SELECT unnest(?::VARCHAR[]))""", [ids]).fetchone()
        self.stats = {"segments": int(segments), "hours": sum(r[2] for r in used) / 3600.0,
                      "sources": len(ids), "sources_skipped": len(rows) - len(ids),
                      "streams": sum(r[3] for r in used), "frame_rate": self.frame_rate,
                      "words_without_stream": int(unassigned), "words": int(words)}
        return _cut("sources", ids, self.shard_size)

    def describe(self) -> str:
        s = self.stats
        return (f"{s['sources']} dialogue source(s) (>= 2 speakers; {s['sources_skipped']} with fewer skipped), "
                f"{s['streams']} speaker stream(s), {s['hours']:.3f} h")

    def shard_files(self, to, shard):
        # the frame rate is in the name: a re-run at another rate does not take these as done
        return [os.path.join(to, f"dialogues-{self.frame_rate:g}hz-{shard.index:06d}.parquet")]

    def write_shard(self, out_dir, to, shard):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from mmcurate.quality.db import connect
        from mmcurate.schemas.tables import _hf_schema
        from mmcurate.transforms import duplex
        from mmcurate.transforms.audio_codec import encode_flac
        from mmcurate.transforms.decode import decode_audio

        schema = _hf_schema(duplex.DUPLEX_FIELDS, {"audio": "Audio"})
        con = connect(out_dir, read_only=True)
        try:
            sources = con.execute("SELECT source_id, media_uri FROM curated_sources WHERE source_id IN "
                                  "(SELECT unnest(?::VARCHAR[])) ORDER BY source_id", [list(shard.ids)]).fetchall()
            turns = con.execute('SELECT source_id, speaker, start, "end" FROM curated_turns WHERE source_id IN '
                                "(SELECT unnest(?::VARCHAR[])) ORDER BY source_id, start, \"end\", turn_id",
                                [list(shard.ids)]).fetchall()
            segs = con.execute("SELECT source_id, speaker, words FROM curated_segments WHERE source_id IN "
                               "(SELECT unnest(?::VARCHAR[])) AND speaker IS NOT NULL "
                               "ORDER BY source_id, start, segment_id", [list(shard.ids)]).fetchall()
        finally:
            con.close()
        path = self.shard_files(to, shard)[0]
        with atomic_file(path) as fh, pq.ParquetWriter(fh, schema, compression="zstd") as writer:
            for sid, media_uri in sources:
                spans: dict[str, list[tuple[float, float]]] = {}
                for t_sid, spk, start, end in turns:
                    if t_sid == sid and end > start:
                        spans.setdefault(spk, []).append((start, end))
                speakers = sorted(spans, key=speaker_order)
                audio = decode_audio(media_uri, sample_rate=SAMPLE_RATE)
                frames = duplex.num_frames(audio.shape[0], self.frame_rate, SAMPLE_RATE)
                for spk in speakers:
                    own = merge_intervals(spans[spk])
                    words = [w for g_sid, g_spk, ws in segs if g_sid == sid and g_spk == spk for w in (ws or [])]
                    text = duplex.text_stream(words, frames, self.frame_rate)
                    row = {"source_id": sid, "speaker": spk, "speakers": speakers, "sample_rate": SAMPLE_RATE,
                           "num_samples": int(audio.shape[0]),
                           "audio": {"bytes": encode_flac(duplex.speaker_audio(audio, own, SAMPLE_RATE), SAMPLE_RATE),
                                     "path": f"{spk}.flac"},
                           "turns": [{"start": s, "end": e} for s, e in own], "frame_rate": float(self.frame_rate),
                           "tokens": text.tokens, "num_words": text.num_words, "words_dropped": text.words_dropped,
                           "pad_share": text.pad_share, "sentences": duplex.sentences(words)}
                    writer.write_table(pa.Table.from_pylist([row], schema=schema))  # a row group per stream
                del audio

    def finish(self, con, to, shards):
        """The per-stream figures, read back from the shards (without their audio)."""
        import pyarrow.parquet as pq

        streams = []
        for s in shards:
            table = pq.read_table(self.shard_files(to, s)[0], columns=["source_id", "speaker", "tokens", "num_words",
                                                                        "words_dropped", "pad_share"])
            for r in table.to_pylist():
                streams.append({"source_id": r["source_id"], "speaker": r["speaker"], "frames": len(r["tokens"]),
                                "words": r["num_words"], "words_dropped": r["words_dropped"],
                                "pad_share": r["pad_share"]})
        frames = sum(s["frames"] for s in streams)
        self.stats["pad_shares"] = streams
        self.stats["pad_share"] = (sum(s["pad_share"] * s["frames"] for s in streams) / frames) if frames else None
        self.stats["words_dropped"] = sum(s["words_dropped"] for s in streams)
        return []

    def report(self) -> list[str]:
        s = self.stats
        streams = s.get("pad_shares") or []
        lines = [f"duplex: {len(streams)} speaker stream(s) of {s['sources']} source(s) at {s['frame_rate']:g} Hz, "
                 + (f"pad share {s['pad_share']:.4f} of all frames (per stream "
                    f"{min(x['pad_share'] for x in streams):.4f}-{max(x['pad_share'] for x in streams):.4f})"
                    if streams else "no stream")
                 + f"; {s['sources_skipped']} source(s) with fewer than 2 speakers skipped; "
                 f"{s['words_dropped']} word(s) with no free frame, {s['words_without_stream']} word(s) of "
                 "segments with no speaker in turns"]
        lines += [f"  {x['speaker']}: {x['frames']} frames, {x['words']} words, pad share {x['pad_share']:.4f}"
                  for x in streams[:REPORT_STREAMS]]
        if len(streams) > REPORT_STREAMS:
            lines.append(f"  ... {len(streams) - REPORT_STREAMS} more (each stream's pad_share is in its row)")
        return lines


QA_SHARD_SIZE = 64  # sources per qa shard: items are small, a source gives ~10 per clip


@dataclass
class QAExporter(Exporter):
    """Temporal and turn-taking question-answer items about clips of curated conversations
    (`mmcurate.transforms.qa` documents the kinds, the drops and the layout)."""

    name: ClassVar[str] = "qa"
    help: ClassVar[str] = ("temporal / turn-taking question-answer Parquet (count, first, last, order, duration, "
                           "interrupt, backchannel) over --clip-s clips of sources with >= 2 speakers, "
                           "answers from the tables")
    KINDS: ClassVar[tuple[str, ...]] = ("sources",)
    shard_size: int = QA_SHARD_SIZE
    clip_s: float = DEFAULT_CLIP_S
    distractors: int = DEFAULT_DISTRACTORS
    min_confidence: float = DEFAULT_MIN_CONFIDENCE

    def qa_options(self):
        from mmcurate.transforms.qa import QAOptions

        return QAOptions(self.clip_s, self.distractors, self.min_confidence)

    def _tag(self) -> str:
        """The options' digest: a shard written with other options is not taken as done."""
        import hashlib

        o = self.qa_options()
        return hashlib.sha256(f"{o.clip_s!r}|{o.distractors}|{o.min_confidence!r}".encode()).hexdigest()[:10]

    def plan(self, con) -> list[ExportShard]:
        rows = con.execute(CONVERSATION_SOURCES).fetchall()
        used = [r for r in rows if r[3] >= 2]
        self.stats = {"segments": 0, "hours": sum(r[2] or 0.0 for r in used) / 3600.0, "sources": len(used),
                      "sources_skipped": len(rows) - len(used),
                      "options": {"clip_s": self.clip_s, "distractors": self.distractors,
                                  "min_confidence": self.min_confidence}}
        return _cut("sources", [r[0] for r in used], self.shard_size)

    def describe(self) -> str:
        s = self.stats
        return (f"{s['sources']} conversation source(s) (>= 2 speakers; {s['sources_skipped']} with fewer "
                f"skipped), {s['hours']:.3f} h in {self.clip_s:g} s clips")

    def shard_files(self, to, shard):
        return [os.path.join(to, f"qa-{shard.index:06d}.parquet"),
                os.path.join(to, "_parts", f"qa-{self._tag()}-{shard.index:06d}.json")]

    def write_shard(self, out_dir, to, shard):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from mmcurate.quality.db import connect
        from mmcurate.transforms import qa

        ids = [list(shard.ids)]
        con = connect(out_dir, read_only=True)
        try:
            sources = con.execute("""SELECT s.source_id, s.duration_s, (SELECT max(x.diarization_confidence)
                                     FROM curated_transcripts x WHERE x.source_id = s.source_id)
                                     FROM curated_sources s WHERE s.source_id IN (SELECT unnest(?::VARCHAR[]))
                                     ORDER BY s.source_id""", ids).fetchall()
            turns = con.execute('SELECT source_id, turn_id, speaker, start, "end", overlapped FROM curated_turns '
                                "WHERE source_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY source_id, start, turn_id",
                                ids).fetchall()
            events = con.execute('SELECT source_id, event_id, kind, start, "end", speaker, other_speaker, offset_s '
                                 "FROM curated_turn_events WHERE source_id IN (SELECT unnest(?::VARCHAR[])) "
                                 "ORDER BY source_id, start, event_id", ids).fetchall()
            segs = con.execute("SELECT source_id, segment_id, words FROM curated_segments WHERE source_id IN "
                               "(SELECT unnest(?::VARCHAR[])) ORDER BY source_id, start, segment_id", ids).fetchall()
        finally:
            con.close()
        by: dict[str, dict[str, list]] = {sid: {"turns": [], "events": [], "segs": []} for sid, _d, _c in sources}
        for sid, *r in turns:
            by[sid]["turns"].append(qa.Turn(r[0], r[1], float(r[2]), float(r[3]), bool(r[4])))
        for sid, *r in events:
            by[sid]["events"].append(qa.Event(*r))
        for sid, seg_id, words in segs:
            by[sid]["segs"].append((seg_id, words or []))
        items, counts = [], qa.Counts()
        for sid, duration, confidence in sources:
            got, c = qa.source_items(sid, float(duration or 0.0), by[sid]["turns"], by[sid]["events"],
                                     by[sid]["segs"], confidence, self.qa_options())
            items += got
            counts.add(c)
        counts_path, path = self.shard_files(to, shard)[1], self.shard_files(to, shard)[0]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(items, schema=qa.QA_SCHEMA), buf, compression="zstd")
        os.makedirs(os.path.dirname(counts_path), exist_ok=True)
        write_atomic(path, buf.getvalue())
        write_atomic(counts_path, json.dumps(counts.to_dict(), sort_keys=True).encode("utf-8"))  # last: done

    def finish(self, con, to, shards):
        """The summary: items per kind, drops, sources, summed over the shards' counts."""
        from mmcurate.transforms import qa

        total = qa.Counts()
        for s in shards:
            with open(self.shard_files(to, s)[1], encoding="utf-8") as fh:
                total.add(qa.Counts.from_dict(json.load(fh)))
        d = total.to_dict()
        self.stats.update({"items": d["items"], "dropped_low_confidence": d["dropped_low_confidence"],
                           "dropped_overlapped": d["dropped_overlapped"],
                           "sources_low_confidence": d["sources_low_confidence"], "clips": d["clips"]})
        summary = {k: self.stats[k] for k in ("sources", "sources_skipped", "sources_low_confidence", "clips",
                                              "items", "dropped_low_confidence", "dropped_overlapped", "options")}
        path = os.path.join(to, "summary.json")
        write_atomic(path, (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        return [path]

    def report(self) -> list[str]:
        s = self.stats
        items = s.get("items") or {}
        per = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "none"  # noqa: E731
        return [f"qa: {sum(items.values())} item(s) from {s.get('clips', 0)} clip(s) of {s['sources']} source(s) "
                f"({per(items)}); {s['sources_skipped']} source(s) with fewer than 2 speakers skipped",
                f"qa: dropped for diarization confidence < {self.min_confidence:g}: "
                f"{sum((s.get('dropped_low_confidence') or {}).values())} item(s) of "
                f"{s.get('sources_low_confidence', 0)} source(s) ({per(s.get('dropped_low_confidence') or {})}); "
                f"dropped for an overlapped deciding turn: {per(s.get('dropped_overlapped') or {})}"]


EXPORTERS: dict[str, type[Exporter]] = {e.name: e for e in (LhotseExporter, SharExporter, NemoExporter,
                                                            WebDatasetExporter, HuggingFaceExporter,
                                                            DuplexExporter, QAExporter)}
