"""Arrow schemas of every table mmcurate writes, derived from the records that declare them.

A table's columns (names, order, types, nullability, meaning) are declared once, as the fields
of its record class in mmcurate.schemas.records; this module turns each into its Arrow schema
(`mmcurate.schemas.columns.schema_of`) under the names the rest of the code reads. The run
manifest (RUN_MANIFEST, MODEL_INFO) is declared here in Arrow: it is no table and has no record
(transforms/sink.py writes it as JSON).

Times are seconds relative to the start of the source recording (Lhotse's convention).
Ids are deterministic functions of content, so a re-run of the same inputs gives the same ids.
Tables later stages add (interleaved documents, dedup clusters, synthetic rows) register here too:
a record class in records.py (added to RECORDS) and its name in TABLES below; a stage module's
tables (`mmcurate.schemas.stages.STAGE_MODULES`) come from its own RECORDS.
"""

from __future__ import annotations

import pyarrow as pa

from mmcurate.schemas.columns import HF_AUDIO, HF_IMAGE, hf_features, hf_schema, schema_of, struct_of  # noqa: F401
from mmcurate.schemas.records import (
    RECORDS,
    DedupCluster,
    DedupSignature,
    DnsmosWindow,
    Document,
    InterleavedItem,
    Rejection,
    Segment,
    SegmentQuality,
    SourceRecord,
    SpeechRegion,
    TextMix,
    Transcript,
    TurnEventRow,
    TurnRow,
    Word,
)

# kept under their old names: exporters build other HF-readable schemas with them
_hf_features = hf_features
_hf_schema = hf_schema

WORD = struct_of(Word)
DNSMOS_WINDOW = struct_of(DnsmosWindow)

SOURCES = schema_of(SourceRecord)
SPEECH_REGIONS = schema_of(SpeechRegion)
REJECTED = schema_of(Rejection)
SEGMENTS = schema_of(Segment)
TRANSCRIPTS = schema_of(Transcript)
TURNS = schema_of(TurnRow)
TURN_EVENTS = schema_of(TurnEventRow)
INTERLEAVED = schema_of(InterleavedItem)
DOCUMENTS = schema_of(Document)
SEGMENT_QUALITY = schema_of(SegmentQuality)
DEDUP_CLUSTERS = schema_of(DedupCluster)
DEDUP_SIGNATURES = schema_of(DedupSignature)
TEXT_MIX = schema_of(TextMix)

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
        # summed stage statistics, e.g. rephrase.synthetic_tokens / total_tokens / synthetic_ratio
        pa.field("stats", pa.map_(pa.string(), pa.float64())),
        # corpus jobs that extended this output (`mmcurate corpus`): stage -> run_id, config, ...
        pa.field("corpus_jobs", pa.map_(pa.string(), pa.string())),
    ]
)

# Every table written under <out>/<name>/*.parquet, in the order they are published.
TABLES: dict[str, pa.Schema] = {
    "sources": SOURCES,
    "speech_regions": SPEECH_REGIONS,
    "segments": SEGMENTS,
    "transcripts": TRANSCRIPTS,
    "turns": TURNS,
    "turn_events": TURN_EVENTS,
    "interleaved": INTERLEAVED,
    "documents": DOCUMENTS,
    "segment_quality": SEGMENT_QUALITY,
    "dedup_clusters": DEDUP_CLUSTERS,
    "dedup_signatures": DEDUP_SIGNATURES,
    "text_mix": TEXT_MIX,
    "rejected": REJECTED,
}

if set(TABLES) != set(RECORDS):
    raise TypeError(f"tables without a record {sorted(set(TABLES) - set(RECORDS))}, or records "
                    f"of undeclared tables {sorted(set(RECORDS) - set(TABLES))}")

# Stages whose rejections remove a whole source (count(inputs) == sources + these rejections):
# derived from the stage declarations.
from mmcurate.schemas.stages import PRODUCER, SOURCE_LEVEL_STAGES  # noqa: E402

# the tables of stage modules (mmcurate.schemas.stages.STAGE_MODULES), which loading that module
# added to RECORDS: published after the built-in ones, the ledger last
TABLES = {**{t: s for t, s in TABLES.items() if t != "rejected"},
          **{t: schema_of(r) for t, r in RECORDS.items() if t not in TABLES}, "rejected": REJECTED}

_undeclared = [t for t in TABLES if t != "rejected" and t not in PRODUCER]
if _undeclared or set(PRODUCER) - set(TABLES):
    raise TypeError(f"tables without a producing stage {_undeclared}, or stages producing "
                    f"undeclared tables {sorted(set(PRODUCER) - set(TABLES))}")
