"""Arrow schemas of every table mmcurate writes: the single source of truth.

Times are seconds relative to the start of the source recording (Lhotse's convention).
Ids are deterministic functions of content, so a re-run of the same inputs gives the same ids.
Tables later stages add (interleaved documents, dedup clusters, synthetic rows) register here too.
"""

from __future__ import annotations

import pyarrow as pa

SOURCES = pa.schema(
    [
        pa.field("source_id", pa.string(), nullable=False),  # content hash (sha256 prefix)
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),  # where the user said it is
        pa.field("media_uri", pa.string(), nullable=False),  # where the bytes are read from
        pa.field("ingested_via", pa.string(), nullable=False),  # file | manifest | rss
        pa.field("media_kind", pa.string(), nullable=False),  # audio | video
        pa.field("container", pa.string()),
        pa.field("audio_codec", pa.string()),
        pa.field("video_codec", pa.string()),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("sample_rate", pa.int32()),  # native rate of the audio stream
        pa.field("channels", pa.int32()),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("speech_s", pa.float64(), nullable=False),
        pa.field("speech_ratio", pa.float64(), nullable=False),
        pa.field("metadata", pa.map_(pa.string(), pa.string())),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

SPEECH_REGIONS = pa.schema(
    [
        pa.field("region_id", pa.string(), nullable=False),  # f"{source_id}-vad-{n:05d}"
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

REJECTED = pa.schema(
    [
        pa.field("rejection_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),  # ingest | decode | vad | asr | diarize | ...
        pa.field("reason", pa.string(), nullable=False),  # machine code, e.g. no_speech
        pa.field("detail", pa.string(), nullable=False),  # human-readable
        pa.field("uri", pa.string(), nullable=False),  # the input as given (escaped if not UTF-8)
        pa.field("source_id", pa.string()),  # when known
        pa.field("item_id", pa.string()),  # sub-source item (segment id ...) when not the whole source
        pa.field("duration_s", pa.float64()),  # audio lost, when known
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

WORD = pa.struct(
    [
        pa.field("word", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("probability", pa.float64()),
    ]
)

SEGMENTS = pa.schema(
    [
        pa.field("segment_id", pa.string(), nullable=False),  # f"{source_id}-seg-{n:05d}"
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("speaker", pa.string()),  # f"{source_id}-spk{k}"
        pa.field("text", pa.string(), nullable=False),
        pa.field("language", pa.string()),
        pa.field("language_probability", pa.float64()),
        pa.field("words", pa.list_(WORD)),
        pa.field("avg_logprob", pa.float64()),
        pa.field("no_speech_prob", pa.float64()),
        pa.field("compression_ratio", pa.float64()),
        pa.field("asr_model", pa.string()),
        pa.field("asr_model_version", pa.string()),
        pa.field("diarization_model", pa.string()),
        pa.field("audio_uri", pa.string(), nullable=False),  # reference: source media + offsets
        pa.field("audio_flac", pa.binary()),  # optional inline audio (config segments.include_audio)
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

TRANSCRIPTS = pa.schema(
    [
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),  # "[spk0] ...\n[spk1] ..." speaker-attributed
        pa.field("language", pa.string()),
        pa.field("language_probability", pa.float64()),
        pa.field("num_speakers", pa.int32(), nullable=False),
        pa.field("num_segments", pa.int32(), nullable=False),
        pa.field("num_words", pa.int32(), nullable=False),
        pa.field("speech_s", pa.float64(), nullable=False),
        pa.field("asr_model", pa.string()),
        pa.field("diarization_model", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# The diarizer's own turns, overlap-aware (several speakers may hold a turn at one time), as it
# produced them: what DER is scored on (`mmcurate audit DIR --rttm OUT` writes them as RTTM) and
# what turn-taking and per-speaker streams read. Segments carry the exclusive (one speaker at a
# time) attribution derived from these.
TURNS = pa.schema(
    [
        pa.field("turn_id", pa.string(), nullable=False),  # f"{source_id}-turn-{n:05d}", by start
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),  # f"{source_id}-spk{k}", as in segments
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("overlapped", pa.bool_(), nullable=False),  # another speaker talks during it
        pa.field("diarization_model", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

MODEL_INFO = pa.struct(
    [
        pa.field("role", pa.string()),  # vad | asr | diarization | ...
        pa.field("name", pa.string()),
        pa.field("version", pa.string()),
        pa.field("path", pa.string()),
        pa.field("sha256", pa.string()),
    ]
)

RUN_MANIFEST = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("finished_at", pa.string(), nullable=False),  # ISO-8601 UTC; not part of the run id
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("config", pa.string(), nullable=False),  # the resolved config as JSON
        pa.field("inputs", pa.list_(pa.string()), nullable=False),
        pa.field("models", pa.list_(MODEL_INFO), nullable=False),
        pa.field("tables", pa.map_(pa.string(), pa.int64()), nullable=False),  # rows per table
        pa.field("stage_counts", pa.map_(pa.string(), pa.int64()), nullable=False),  # "stage.counter"
        pa.field("rejected", pa.map_(pa.string(), pa.int64()), nullable=False),  # "stage/reason"
        pa.field("shards", pa.list_(pa.string()), nullable=False),
    ]
)

# Every table written under <out>/<name>/*.parquet, in the order they are published.
TABLES: dict[str, pa.Schema] = {
    "sources": SOURCES,
    "speech_regions": SPEECH_REGIONS,
    "segments": SEGMENTS,
    "transcripts": TRANSCRIPTS,
    "turns": TURNS,
    "rejected": REJECTED,
}

# Stages whose rejections remove a whole source (count(inputs) == sources + these rejections):
# derived from the stage declarations.
from mmcurate.schemas.stages import PRODUCER, SOURCE_LEVEL_STAGES  # noqa: E402

_undeclared = [t for t in TABLES if t != "rejected" and t not in PRODUCER]
if _undeclared or set(PRODUCER) - set(TABLES):
    raise TypeError(f"tables without a producing stage {_undeclared}, or stages producing "
                    f"undeclared tables {sorted(set(PRODUCER) - set(TABLES))}")
