"""Typed records the transforms pass around, checked against the Arrow schemas at import.

A record's fields are exactly its table's columns, in order; `check_records()` runs at import so
a schema change that forgets its record class fails loudly, not at write time.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from mmcurate.schemas import tables


def stable_id(*parts: object, n: int = 16) -> str:
    """Deterministic short id from parts (sha1 hex prefix)."""
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8", "backslashreplace"))
    return h.hexdigest()[:n]


class _Row:
    TABLE: ClassVar[str]

    def to_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        if "metadata" in row and isinstance(row["metadata"], dict):
            row["metadata"] = sorted(row["metadata"].items())
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]):
        """The record of a row read back from its table (the inverse of `to_row`)."""
        values = dict(row)
        if "metadata" in values and values["metadata"] is not None and not isinstance(values["metadata"], dict):
            values["metadata"] = dict(values["metadata"])
        if "words" in values and values["words"] is not None:
            values["words"] = [w if isinstance(w, Word) else Word(**w) for w in values["words"]]
        if values.get("dnsmos_windows") is not None:
            values["dnsmos_windows"] = [w if isinstance(w, DnsmosWindow) else DnsmosWindow(**w)
                                        for w in values["dnsmos_windows"]]
        return cls(**{f.name: values.get(f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class SourceRecord(_Row):
    TABLE: ClassVar[str] = "sources"
    source_id: str
    sha256: str
    uri: str
    media_uri: str
    ingested_via: str
    media_kind: str
    container: str | None
    audio_codec: str | None
    video_codec: str | None
    duration_s: float
    sample_rate: int | None
    channels: int | None
    bytes: int
    speech_s: float
    speech_ratio: float
    metadata: dict[str, str]
    run_id: str


@dataclass(frozen=True)
class SpeechRegion(_Row):
    TABLE: ClassVar[str] = "speech_regions"
    region_id: str
    source_id: str
    start: float
    end: float
    run_id: str


@dataclass(frozen=True)
class Rejection(_Row):
    TABLE: ClassVar[str] = "rejected"
    rejection_id: str
    stage: str
    reason: str
    detail: str
    uri: str
    source_id: str | None
    item_id: str | None
    duration_s: float | None
    run_id: str

    @classmethod
    def make(
        cls,
        *,
        stage: str,
        reason: str,
        detail: str,
        uri: str,
        run_id: str,
        source_id: str | None = None,
        item_id: str | None = None,
        duration_s: float | None = None,
    ) -> "Rejection":
        rid = stable_id(stage, reason, uri, source_id, item_id)
        return cls(rid, stage, reason, detail, uri, source_id, item_id, duration_s, run_id)


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float | None  # None where times are interpolated (whisperx without alignment)


@dataclass(frozen=True)
class DnsmosWindow:
    """DNSMOS P.835 of one 9.01 s window of contiguous speech; [start, end) is the part of the
    source its score stands for (`mmcurate.schemas.tables.DNSMOS_WINDOW`)."""

    start: float
    end: float
    sig: float
    bak: float
    ovrl: float


@dataclass(frozen=True)
class Segment(_Row):
    TABLE: ClassVar[str] = "segments"
    segment_id: str
    source_id: str
    start: float
    end: float
    speaker: str | None
    text: str
    language: str | None
    language_probability: float | None
    words: list[Word]
    avg_logprob: float | None
    no_speech_prob: float | None
    compression_ratio: float | None
    asr_model: str | None
    asr_model_version: str | None
    diarization_model: str | None
    audio_uri: str
    audio: dict | None  # {"bytes": FLAC/Opus file, "path": f"{segment_id}.flac"} (segments.include_audio)
    run_id: str


@dataclass(frozen=True)
class Transcript(_Row):
    TABLE: ClassVar[str] = "transcripts"
    source_id: str
    text: str
    language: str | None
    language_probability: float | None
    num_speakers: int
    num_segments: int
    num_words: int
    speech_s: float
    asr_model: str | None
    diarization_model: str | None
    run_id: str
    dnsmos_windows: list[DnsmosWindow] | None = None
    diarization_confidence: float | None = None  # of the speaker count (tables.TRANSCRIPTS)


@dataclass(frozen=True)
class TurnRow(_Row):
    """One row of the `turns` table (see mmcurate.schemas.tables.TURNS)."""

    TABLE: ClassVar[str] = "turns"
    turn_id: str
    source_id: str
    speaker: str
    start: float
    end: float
    overlapped: bool
    diarization_model: str | None
    run_id: str
    diarization_confidence: float | None = None  # the source's, as in transcripts


@dataclass(frozen=True)
class TurnEventRow(_Row):
    """One row of the `turn_events` table (see mmcurate.schemas.tables.TURN_EVENTS)."""

    TABLE: ClassVar[str] = "turn_events"
    event_id: str
    source_id: str
    kind: str
    start: float
    end: float
    speaker: str
    other_speaker: str | None
    offset_s: float | None
    num_words: int | None
    text: str | None
    lexical: bool | None
    diarization_model: str | None
    run_id: str
    diarization_confidence: float | None = None


@dataclass(frozen=True)
class InterleavedItem(_Row):
    """One item of an interleaved video document (see mmcurate.schemas.tables.INTERLEAVED)."""

    TABLE: ClassVar[str] = "interleaved"
    item_id: str
    document_id: str
    source_id: str
    position: int
    modality: str  # image | text
    start: float
    end: float
    speaker: str | None = None
    text: str | None = None
    num_words: int | None = None
    image: bytes | None = None
    image_format: str | None = None
    width: int | None = None
    height: int | None = None
    phash: str | None = None
    keyframe_id: str | None = None
    frame_time: float | None = None
    cut: str | None = None
    cut_score: float | None = None
    luma_mean: float | None = None
    luma_std: float | None = None
    luma_p99: float | None = None
    dominant_share: float | None = None
    sharpness: float | None = None
    run_id: str = ""


@dataclass(frozen=True)
class Document(_Row):
    """One video as an interleaved document, OBELICS-style parallel lists
    (see mmcurate.schemas.tables.DOCUMENTS)."""

    TABLE: ClassVar[str] = "documents"
    document_id: str
    source_id: str
    uri: str
    duration_s: float
    speech_s: float
    language: str | None
    num_images: int
    num_texts: int
    num_words: int
    images: list[dict | None]  # {"bytes": ..., "path": f"{keyframe_id}.jpg"} at image positions
    texts: list[str | None]
    starts: list[float]
    ends: list[float]
    run_id: str


@dataclass(frozen=True)
class SegmentQuality(_Row):
    """The quality stage's scores and verdict for one segment (mmcurate.schemas.tables.SEGMENT_QUALITY)."""

    TABLE: ClassVar[str] = "segment_quality"
    segment_id: str
    source_id: str
    start: float
    end: float
    duration_s: float
    num_words: int
    chars: int
    chars_per_s: float | None
    language: str | None
    language_probability: float | None
    text_language: str | None
    text_language_probability: float | None
    transcript_language: str | None
    transcript_language_probability: float | None
    language_mismatch: bool
    language_low_confidence: bool
    phrase_share: float | None
    phrases: list[str]
    repeat_share: float | None
    outside_vad_share: float | None
    dnsmos_sig: float | None
    dnsmos_bak: float | None
    dnsmos_ovrl: float | None
    rate_q1: float | None
    rate_q3: float | None
    source_speech_ratio: float | None
    failed: list[str]
    keep: bool
    reason: str | None
    run_id: str


@dataclass(frozen=True)
class DedupCluster(_Row):
    """One item of this run in a duplicate cluster (mmcurate.schemas.tables.DEDUP_CLUSTERS)."""

    TABLE: ClassVar[str] = "dedup_clusters"
    member_id: str
    item_id: str
    kind: str
    source_id: str
    cluster_id: str
    representative_id: str
    representative_partition: str | None
    is_representative: bool
    method: str
    similarity: float
    run_id: str


@dataclass(frozen=True)
class DedupSignature(_Row):
    """One signature of one item (mmcurate.schemas.tables.DEDUP_SIGNATURES)."""

    TABLE: ClassVar[str] = "dedup_signatures"
    signature_id: str
    item_id: str
    kind: str
    method: str
    source_id: str
    uri: str
    signature: bytes
    duration_s: float
    fidelity: float
    bytes: int
    length: float
    partition: str
    run_id: str


@dataclass(frozen=True)
class MediaRef:
    """An input between ingest and decode: bytes located and hashed, not yet decoded."""

    uri: str  # as the user gave it (escaped if the name is not UTF-8)
    media_uri: str  # readable location (local path, gs://, downloaded copy)
    ingested_via: str
    sha256: str
    bytes: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def source_id(self) -> str:
        return self.sha256[:20]


@dataclass(frozen=True)
class AsrSegment:
    """One ASR segment; times are absolute seconds in the source."""

    start: float
    end: float
    text: str
    words: list[Word]
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None


@dataclass(frozen=True)
class AsrResult:
    language: str | None
    language_probability: float | None
    segments: list[AsrSegment]
    model: str  # e.g. "whisper-base (faster-whisper)"
    model_version: str  # e.g. "faster-whisper 1.2.1 / ctranslate2 4.x / sha256:..."
    # segments this call dropped as hallucinations, as (rule, segment): part of the result, not
    # state on the model object, so one model shared by several threads cannot mix calls up
    dropped: list[tuple[str, AsrSegment]] = field(default_factory=list)
    elapsed_s: float = 0.0  # wall time of the call that made this result


@dataclass(frozen=True)
class Turn:
    """A diarization speaker turn; `speaker` is a 0-based index stable within one source."""

    start: float
    end: float
    speaker: int


@dataclass(frozen=True)
class DiarizationResult:
    """One diarization call: the overlap-aware turns, the diarizer's own exclusive (one speaker
    at a time) turns when it has them (pyannote does; None: derive them by rule), the model
    name and the call's wall time. Speaker ids agree between the two lists."""

    turns: list[Turn]
    exclusive: list[Turn] | None = None
    model: str | None = None
    elapsed_s: float = 0.0
    confidence: float | None = None  # of the speaker count, 0..1 (tables.TRANSCRIPTS)


@dataclass(frozen=True)
class TextMix(_Row):
    """One passage of the text mix, natural or synthetic (mmcurate.schemas.tables.TEXT_MIX)."""

    TABLE: ClassVar[str] = "text_mix"
    text_id: str
    source_id: str
    is_synthetic: bool
    parent_id: str | None
    position: int
    text: str
    tokens: int
    text_sha1: str
    start: float
    end: float
    segment_ids: list[str]
    language: str | None
    style: str | None
    prompt_version: str | None
    prompt_sha256: str | None
    generator: str | None
    generator_sha256: str | None
    finish_reason: str | None
    copy_jaccard: float | None
    drift_cosine: float | None
    run_id: str


RECORDS: dict[str, type[_Row]] = {
    c.TABLE: c for c in (SourceRecord, SpeechRegion, Rejection, Segment, Transcript, TurnRow,
                         InterleavedItem, Document, SegmentQuality, DedupCluster, DedupSignature,
                         TextMix)
}


def check_records() -> None:
    for name, cls in RECORDS.items():
        names = [f.name for f in dataclasses.fields(cls)]
        want = tables.TABLES[name].names
        if names != want:
            raise TypeError(f"record {cls.__name__} fields {names} != schema {name} columns {want}")
    word_fields = [f.name for f in dataclasses.fields(Word)]
    if word_fields != [f.name for f in tables.WORD]:
        raise TypeError("Word record does not match mmcurate.schemas.tables.WORD")
    if [f.name for f in dataclasses.fields(DnsmosWindow)] != [f.name for f in tables.DNSMOS_WINDOW]:
        raise TypeError("DnsmosWindow record does not match mmcurate.schemas.tables.DNSMOS_WINDOW")


def to_table(name: str, records: list[Any]) -> pa.Table:
    """Records (or row dicts) of table `name` as an Arrow table with the declared schema."""
    rows = [r.to_row() if isinstance(r, _Row) else r for r in records]
    return pa.Table.from_pylist(rows, schema=tables.TABLES[name])


check_records()
