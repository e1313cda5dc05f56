"""Typed records the transforms pass around: each `_Row` class declares its table's columns.

A record's fields are exactly its table's columns, in order, and the one place they are declared:
mmcurate.schemas.tables derives every table's Arrow schema from them
(`mmcurate.schemas.columns.schema_of`: str -> string, float -> float64, int -> int64, ...,
`X | None` -> nullable, anything else not null; `column(...)` where a column differs: it gives
the field no default unless it says `default=`). A field's comment says what the column means.
Adding a column is adding a field here; tests/test_columns.py then shows the schema change.
The first field is the row's id, unique in its table: the sink buckets and sorts shards by it.

Times are seconds relative to the start of the source recording (Lhotse's convention).
Ids are deterministic functions of content, so a re-run of the same inputs gives the same ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from mmcurate.schemas.columns import HF_AUDIO, HF_IMAGE, column, schema_of


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


# the base of every table's record, under the name a stage module's RECORDS use
# (mmcurate.schemas.stages: "How to add a stage")
Row = _Row


@dataclass(frozen=True)
class SourceRecord(_Row):
    TABLE: ClassVar[str] = "sources"
    source_id: str  # content hash (sha256 prefix)
    sha256: str
    uri: str  # where the user said it is
    media_uri: str  # where the bytes are read from
    ingested_via: str  # file | manifest | rss
    media_kind: str  # audio | video
    container: str | None
    audio_codec: str | None
    video_codec: str | None
    duration_s: float
    sample_rate: int | None = column(pa.int32())  # native rate of the audio stream
    channels: int | None = column(pa.int32())
    bytes: int
    speech_s: float
    speech_ratio: float
    metadata: dict[str, str] = column(nullable=True)
    run_id: str


@dataclass(frozen=True)
class SpeechRegion(_Row):
    TABLE: ClassVar[str] = "speech_regions"
    region_id: str  # f"{source_id}-vad-{n:05d}"
    source_id: str
    start: float
    end: float
    run_id: str


@dataclass(frozen=True)
class Rejection(_Row):
    TABLE: ClassVar[str] = "rejected"
    rejection_id: str
    stage: str  # ingest | decode | vad | asr | diarize | ...
    reason: str  # machine code, e.g. no_speech
    detail: str  # human-readable
    uri: str  # the input as given (escaped if not UTF-8)
    source_id: str | None  # when known
    item_id: str | None  # sub-source item (segment id ...) when not the whole source
    duration_s: float | None  # audio lost, when known
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
    """One word of a segment (`segments.words`, the Arrow struct `mmcurate.schemas.tables.WORD`;
    its members are all nullable in the tables, as they were first declared)."""

    word: str = column(nullable=True)
    start: float = column(nullable=True)
    end: float = column(nullable=True)
    probability: float | None  # None where times are interpolated (whisperx without alignment)


@dataclass(frozen=True)
class DnsmosWindow:
    """DNSMOS P.835 (1-5) of one 9.01 s window of a source's contiguous speech, and the part of
    the source [start, end) its score stands for (mmcurate.quality.scorers.dnsmos.stretch_windows): the
    speech stage scores each window once; a segment's dnsmos_* are the duration-weighted mean of
    the windows it overlaps (`transcripts.dnsmos_windows`, the Arrow struct
    `mmcurate.schemas.tables.DNSMOS_WINDOW`; its members are all nullable in the tables, as they
    were first declared)."""

    start: float = column(nullable=True)
    end: float = column(nullable=True)
    sig: float = column(nullable=True)
    bak: float = column(nullable=True)
    ovrl: float = column(nullable=True)


@dataclass(frozen=True)
class Segment(_Row):
    TABLE: ClassVar[str] = "segments"
    segment_id: str  # f"{source_id}-seg-{n:05d}"
    source_id: str
    start: float
    end: float
    speaker: str | None  # f"{source_id}-spk{k}"
    text: str
    language: str | None
    language_probability: float | None
    words: list[Word] = column(nullable=True)  # a list in every record; the column allows null
    avg_logprob: float | None
    no_speech_prob: float | None
    compression_ratio: float | None
    asr_model: str | None
    asr_model_version: str | None
    diarization_model: str | None
    audio_uri: str  # reference: source media + offsets
    # the segment's own audio, inline, as Hugging Face `datasets` stores one (Audio feature):
    # {bytes: FLAC or Ogg Opus file, path: f"{segment_id}.flac|.opus"}; null unless
    # segments.include_audio (then cut from the source's one decode, 16 kHz mono)
    audio: dict | None = column(HF_AUDIO, hf="Audio")
    run_id: str


@dataclass(frozen=True)
class Transcript(_Row):
    TABLE: ClassVar[str] = "transcripts"
    source_id: str
    text: str  # "[spk0] ...\n[spk1] ..." speaker-attributed
    language: str | None
    language_probability: float | None
    num_speakers: int = column(pa.int32())
    num_segments: int = column(pa.int32())
    num_words: int = column(pa.int32())
    speech_s: float
    asr_model: str | None
    diarization_model: str | None
    run_id: str
    # the source's speech in DNSMOS windows, by start (null: the quality stage did not run,
    # quality.dnsmos was off, or the model failed: a quality/dnsmos_error ledger row)
    dnsmos_windows: list[DnsmosWindow] | None = None
    # how sure the diarizer is of the source's speaker count, 0..1: the smallest relative
    # change of its clustering threshold that gives another count, over 15 %
    # (transforms/diarize_core.count_margin); null: no diarization, the count given by
    # hints, or a backend that reports none. `mmcurate audit` lists the sources under 0.5
    diarization_confidence: float | None = None


@dataclass(frozen=True)
class TurnRow(_Row):
    """One row of the `turns` table: the diarizer's own turns, overlap-aware (several speakers
    may hold a turn at one time), as it produced them: what DER is scored on (`mmcurate audit DIR
    --rttm OUT` writes them as RTTM) and what turn-taking and per-speaker streams read. Segments
    carry the exclusive (one speaker at a time) attribution derived from these."""

    TABLE: ClassVar[str] = "turns"
    turn_id: str  # f"{source_id}-turn-{n:05d}", by start
    source_id: str
    speaker: str  # f"{source_id}-spk{k}", as in segments
    start: float
    end: float
    overlapped: bool  # another speaker talks during it
    diarization_model: str | None
    run_id: str
    diarization_confidence: float | None = None  # the source's, as in transcripts


@dataclass(frozen=True)
class TurnEventRow(_Row):
    """One row of the `turn_events` table: turn-taking events derived from `turns`
    (transforms/turn_events.py says how): floor transfers (gap, overlap, interruption) with their
    floor-transfer offsets, back-channels and pauses. What turn-taking statistics, dialogue-data
    exports and temporal QA read."""

    TABLE: ClassVar[str] = "turn_events"
    event_id: str  # f"{source_id}-event-{n:05d}", by start
    source_id: str
    kind: str  # gap | overlap | interruption | backchannel | pause
    # gap, pause: the silence; overlap, interruption: both talking; backchannel: the utterance
    start: float
    end: float
    speaker: str  # who acts: newcomer, back-channeller, pauser
    other_speaker: str | None  # the floor holder before (null for a pause)
    # floor-transfer offset: the newcomer's onset minus the holder's end (< 0: overlap);
    # a pause's length; null for a back-channel
    offset_s: float | None
    num_words: int | None = column(pa.int32())  # back-channel: transcribed words (null: none)
    text: str | None  # back-channel: its words
    lexical: bool | None  # back-channel: all its words on the language's list
    diarization_model: str | None
    run_id: str
    diarization_confidence: float | None = None  # the source's, as in transcripts


@dataclass(frozen=True)
class InterleavedItem(_Row):
    """One item of an interleaved video document (the `interleaved` table). Videos as
    interleaved image-text documents (the video stage): one row per item, NeMo Curator's
    (sample_id, position, modality, text | media) layout. Images are stored inline (JPEG/WebP at
    video.max_side), so the table is readable without the source video. Image rows carry the
    frame's quality scores; text rows the words said while the image before them was on screen."""

    TABLE: ClassVar[str] = "interleaved"
    item_id: str  # f"{document_id}-{position:05d}"
    document_id: str  # f"{source_id}-doc"
    source_id: str
    position: int = column(pa.int32())  # 0, 1, ... in reading order
    modality: str  # image | text
    start: float  # image: the span it stands for; text: its words
    end: float
    speaker: str | None = None  # text: f"{source_id}-spk{k}" as in segments
    text: str | None = None  # text items only
    num_words: int | None = column(pa.int32(), default=None)  # text items only
    image: bytes | None = None  # image items: encoded bytes
    image_format: str | None = None  # jpeg | webp
    width: int | None = column(pa.int32(), default=None)
    height: int | None = column(pa.int32(), default=None)
    phash: str | None = None  # 64-bit DCT perceptual hash, 16 hex digits
    # the same hash of the picture inside black bars, and of that picture's centre 90%
    # (transforms/image_hash.py): image dedup compares these too, so that bars and crops match
    picture_phash: str | None = None
    centre_phash: str | None = None
    keyframe_id: str | None = None  # f"{source_id}-kf-{n:05d}" (ledger item_id of drops)
    frame_time: float | None = None  # when the chosen frame is shown
    cut: str | None = None  # why a keyframe starts here: start | shot | interval
    cut_score: float | None = None  # the shot detector's change at a shot cut
    luma_mean: float | None = None  # quality scores (mmcurate.transforms.keyframes)
    luma_std: float | None = None
    luma_p99: float | None = None
    dominant_share: float | None = None
    sharpness: float | None = None
    run_id: str = ""


@dataclass(frozen=True)
class Document(_Row):
    """One video as an interleaved document, OBELICS-style parallel lists (the `documents`
    table)."""

    TABLE: ClassVar[str] = "documents"
    document_id: str
    source_id: str
    uri: str
    duration_s: float
    speech_s: float  # VAD speech in the source
    language: str | None
    num_images: int = column(pa.int32())
    num_texts: int = column(pa.int32())
    num_words: int = column(pa.int32())
    # OBELICS / Multimodal-Textbook layout: parallel lists, one entry per position; at an image
    # position `texts` is null, at a text position `images` is null. Lists in every record; the
    # columns allow null.
    # {"bytes": ..., "path": f"{keyframe_id}.jpg"} at image positions (datasets' Image feature)
    images: list[dict | None] = column(pa.list_(HF_IMAGE), nullable=True, hf="Image")
    texts: list[str | None] = column(nullable=True)
    starts: list[float] = column(nullable=True)
    ends: list[float] = column(nullable=True)
    run_id: str


@dataclass(frozen=True)
class SegmentQuality(_Row):
    """The quality stage's scores and verdict for one segment (the `segment_quality` table).

    The quality stage's verdict on every segment, kept or dropped, with every score its filters
    read (mmcurate.quality.scorers.filters): a threshold is re-tuned with a DuckDB query over this table
    (`mmcurate.quality.scorers.filters.keep_sql`) without re-running a model. Rows of one source share
    its source-level context (transcript language, speech ratio) and each language shares the
    speaking-rate quartiles of this run."""

    TABLE: ClassVar[str] = "segment_quality"
    segment_id: str  # as in segments
    source_id: str
    start: float
    end: float
    duration_s: float
    num_words: int = column(pa.int32())
    chars: int = column(pa.int32())  # letters and digits of the text
    chars_per_s: float | None  # speaking rate
    language: str | None  # spoken, from Whisper (segments.language)
    language_probability: float | None
    text_language: str | None  # langdetect on the segment's text
    text_language_probability: float | None
    transcript_language: str | None  # langdetect on the source's whole text
    transcript_language_probability: float | None
    language_mismatch: bool  # flag (see quality.*)
    language_low_confidence: bool  # flag
    phrase_share: float | None  # of the text covered by stock hallucinations
    phrases: list[str] = column(nullable=True)  # the stock phrases found (a list in every record)
    repeat_share: float | None  # of the words inside decoder loops
    outside_vad_share: float | None  # of the words outside every VAD region
    # DNSMOS P.835, 1-5: the duration-weighted mean of the scores of the 9.01 s windows of
    # the source's speech the segment overlaps (transcripts.dnsmos_windows); a segment inside
    # one window has that window's score (exactly a window: the reference implementation's
    # score of those samples). Null: not scored (quality.dnsmos off, the model failed, or
    # the segment lies outside every window)
    dnsmos_sig: float | None
    dnsmos_bak: float | None
    dnsmos_ovrl: float | None
    rate_q1: float | None  # chars_per_s quartiles of this language in the run
    rate_q3: float | None  # (null: too few segments of the language)
    source_speech_ratio: float | None  # sources.speech_ratio
    failed: list[str]  # every failing filter, in order
    keep: bool
    reason: str | None  # the first failing filter's code (the ledger reason)
    run_id: str


@dataclass(frozen=True)
class DedupCluster(_Row):
    """One item of this run in a duplicate cluster (the `dedup_clusters` table).

    Deduplication (the dedup stage, mmcurate.transforms.dedup): one row per item of this run
    that is in a cluster of 2+ (singletons have no row). Exactly one row per cluster and run has
    is_representative (unless the representative was curated by an earlier partition of the
    cross-run index: representative_partition names it). Kept set of a kind:
    items NOT IN (SELECT item_id FROM dedup_clusters WHERE kind = ... AND NOT is_representative).
    """

    TABLE: ClassVar[str] = "dedup_clusters"
    member_id: str  # f"{kind}:{item_id}"
    item_id: str  # its id: source_id (source, transcript), interleaved item_id, document_id
    kind: str  # source | transcript | text_item | image | document | passage | synthetic (text_mix rows)
    source_id: str
    cluster_id: str  # "dc-" + hash of the representative
    representative_id: str  # item_id of the kept item
    representative_partition: str | None  # null: this run; else the index partition
    is_representative: bool
    method: str  # the item's strongest verified link
    similarity: float  # of that link (1.0 exact)
    run_id: str


@dataclass(frozen=True)
class DedupSignature(_Row):
    """One signature of one item (the `dedup_signatures` table).

    Every signature the dedup stage computed for this run's items, one row per item and method:
    what the cross-run index stores (dedup.index_dir) and what a corpus job re-uses, so media
    are never decoded twice. `signature`: sha256 digest | sha1 of normalised text | MinHash
    uint32 values | audio fingerprint uint32 per 32 ms | video (float32 t, uint64 pHash) per
    sample | pHash uint64 | float32 embedding; all little-endian. The rank fields are the
    representative rule's (mmcurate.transforms.dedup_nodes.node_of)."""

    TABLE: ClassVar[str] = "dedup_signatures"
    signature_id: str  # f"{kind}:{item_id}:{method}"
    item_id: str
    kind: str
    method: str
    source_id: str
    uri: str
    signature: bytes
    duration_s: float  # of the item's source
    fidelity: float  # source sample rate x channels
    bytes: int  # source bytes
    length: float  # characters, pixels or seconds
    partition: str  # the run's index partition; no index: the run id
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
    """One passage of the text mix, natural or synthetic (the `text_mix` table).

    The text mix (the rephrase stage): the kept transcript text cut into passages on sentence
    boundaries (natural rows, is_synthetic false) plus the accepted synthetic rephrasings of
    some of them (is_synthetic true, parent_id = the natural passage's text_id), chosen so that
    synthetic tokens / all tokens ~ rephrase.synthetic_ratio. Every row of the table is in the
    final mix:
      SELECT text FROM text_mix                      -- the mix
      SELECT sum(tokens) FILTER (WHERE is_synthetic) / sum(tokens) FROM text_mix  -- synthetic share
    Rephrasings the guards rejected are ledger rows (stage rephrase, item_id = their text_id)."""

    TABLE: ClassVar[str] = "text_mix"
    text_id: str  # f"{source_id}-psg-{n:05d}"[-syn-{style}]
    source_id: str
    is_synthetic: bool
    parent_id: str | None  # synthetic: the natural passage it rephrases
    position: int = column(pa.int32())  # passage number within its source
    text: str
    tokens: int = column(pa.int32())  # words + punctuation (the mix's unit)
    text_sha1: str  # of the text (exact-duplicate key)
    start: float  # seconds in the source (the parent's)
    end: float
    segment_ids: list[str]  # the segments it covers
    language: str | None
    style: str | None  # synthetic: encyclopedic | qa | spoken_to_written
    prompt_version: str | None  # synthetic: the style template's version
    prompt_sha256: str | None  # of the template file
    generator: str | None  # synthetic: model name
    generator_sha256: str | None  # of the model's weights, when known
    finish_reason: str | None
    copy_jaccard: float | None  # guard scores (mmcurate.quality.scorers.rephrase_guards)
    drift_cosine: float | None
    run_id: str


RECORDS: dict[str, type[_Row]] = {
    c.TABLE: c for c in (SourceRecord, SpeechRegion, Rejection, Segment, Transcript, TurnRow,
                         TurnEventRow, InterleavedItem, Document, SegmentQuality, DedupCluster,
                         DedupSignature, TextMix)
}


def to_table(name: str, records: list[Any]) -> pa.Table:
    """Records (or row dicts) of table `name` as an Arrow table with the declared schema."""
    rows = [r.to_row() if isinstance(r, _Row) else r for r in records]
    return pa.Table.from_pylist(rows, schema=schema_of(RECORDS[name]))
