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
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger("mmcurate.export")

SAMPLE_RATE = 16000  # what the run decodes to and stores (transforms/decode.py)
DEFAULT_SHARD_SIZE = 1000  # segments per shard (Lhotse Shar's own default)

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


@dataclass(frozen=True)
class ExportShard:
    index: int
    ids: tuple[str, ...]  # the curated items it holds


@dataclass
class Exporter:
    """A format: its shards, how one is written, and what spans them."""

    name: ClassVar[str]
    help: ClassVar[str]
    shard_size: int = DEFAULT_SHARD_SIZE
    stats: dict[str, Any] = field(default_factory=dict)

    def plan(self, con) -> list[ExportShard]:
        rows = segment_rows(con)
        ids = [r["segment_id"] for r in rows]
        self.stats = {"segments": len(rows), "hours": sum(r["end"] - r["start"] for r in rows) / 3600.0,
                      "stored_audio": sum(1 for r in rows if r["has_audio"])}
        size = max(1, self.shard_size)
        return [ExportShard(k, tuple(ids[i : i + size])) for k, i in enumerate(range(0, len(ids), size))]

    def shard_files(self, to: str, shard: ExportShard) -> list[str]:
        """The files a written shard leaves (all present: the shard is done)."""
        return []

    def write_shard(self, out_dir: str, to: str, shard: ExportShard) -> None:
        """Write one shard's files (workers)."""

    def finish(self, con, to: str, shards: list[ExportShard]) -> list[str]:
        """Write what spans shards (driver); the files written."""
        return []


def write_atomic(path: str, data: bytes) -> None:
    from mmcurate.transforms.commit import write_atomic as write

    write(path, data)


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

        from mmcurate.quality.audit import connect
        from mmcurate.transforms.speech import encode_flac

        con = connect(out_dir, read_only=True)
        try:
            rows = segment_rows(con, list(shard.ids), with_audio=True)
        finally:
            con.close()
        decoded: dict[str, Any] = {}  # the shard's rows come by source: one decode each
        tmp = tempfile.mkdtemp(prefix=f".shar-{shard.index:06d}-", dir=to)
        try:
            with SharWriter(tmp, fields={"recording": "flac"}, shard_size=len(rows) + 1,
                            shard_offset=shard.index) as writer:
                for r in rows:
                    data = r["audio_bytes"]
                    if data is None:
                        if r["source_id"] not in decoded:
                            from mmcurate.transforms.decode import decode_audio

                            decoded.clear()
                            decoded[r["source_id"]] = decode_audio(r["media_uri"], sample_rate=SAMPLE_RATE)
                        audio = decoded[r["source_id"]]
                        a, b = int(r["start"] * SAMPLE_RATE), int(round(r["end"] * SAMPLE_RATE))
                        data = encode_flac(audio[a:max(a, b)], SAMPLE_RATE)
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
        from mmcurate.quality.audit import connect

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


EXPORTERS: dict[str, type[Exporter]] = {e.name: e for e in (LhotseExporter, SharExporter, NemoExporter)}
