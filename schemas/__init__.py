"""Schemas and typed records: the one place table layouts are declared."""

from mmcurate.schemas.records import (  # noqa: F401
    AsrResult,
    AsrSegment,
    Document,
    InterleavedItem,
    MediaRef,
    Rejection,
    Segment,
    SegmentQuality,
    SourceRecord,
    SpeechRegion,
    Transcript,
    Turn,
    TurnRow,
    Word,
    stable_id,
    to_table,
)
from mmcurate.schemas.tables import SOURCE_LEVEL_STAGES, TABLES  # noqa: F401
