"""Arrow schemas of every table mmcurate writes: the single source of truth.

Times are seconds relative to the start of the source recording (Lhotse's convention).
Ids are deterministic functions of content, so a re-run of the same inputs gives the same ids.
Tables later stages add (interleaved documents, dedup clusters, synthetic rows) register here too.
"""

from __future__ import annotations

import json

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

# Media as Hugging Face `datasets` stores them (its Image and Audio features): encoded file bytes
# plus a file name. The two are the same Arrow type; the features metadata tells them apart.
HF_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
HF_AUDIO = HF_IMAGE

WORD = pa.struct(
    [
        pa.field("word", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("probability", pa.float64()),
    ]
)


# DNSMOS P.835 (1-5) of one 9.01 s window of a source's contiguous speech, and the part of the
# source [start, end) its score stands for (mmcurate.quality.dnsmos.stretch_windows): the speech
# stage scores each window once; a segment's dnsmos_* are the duration-weighted mean of the
# windows it overlaps
DNSMOS_WINDOW = pa.struct(
    [
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("sig", pa.float64()),
        pa.field("bak", pa.float64()),
        pa.field("ovrl", pa.float64()),
    ]
)


def _hf_features(fields: list[pa.Field], media: dict[str, str]) -> dict:
    """The `datasets` Features (as its JSON) for these columns, `media` naming the columns (or
    list columns) of `HF_IMAGE`/`HF_AUDIO` structs and their feature ("Image" | "Audio"), so
    `load_dataset("parquet", ...)` decodes them to PIL images / audio arrays without a cast."""
    def feature(t: pa.DataType, kind: str | None):
        if kind and t == HF_IMAGE:
            return {"_type": kind}
        if pa.types.is_list(t):
            return [feature(t.value_type, kind)]
        if pa.types.is_struct(t):
            return {f.name: feature(f.type, None) for f in t}
        dtype = {pa.string(): "string", pa.float64(): "float64", pa.int32(): "int32",
                 pa.int64(): "int64", pa.binary(): "binary", pa.bool_(): "bool"}[t]
        return {"dtype": dtype, "_type": "Value"}

    return {f.name: feature(f.type, media.get(f.name)) for f in fields}


def _hf_schema(fields: list[pa.Field], media: dict[str, str]) -> pa.Schema:
    return pa.schema(fields, metadata={"huggingface": json.dumps(
        {"info": {"features": _hf_features(fields, media)}})})


_SEGMENT_FIELDS = [
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
    # the segment's own audio, inline, as Hugging Face `datasets` stores one (Audio feature):
    # {bytes: FLAC or Ogg Opus file, path: f"{segment_id}.flac|.opus"}; null unless
    # segments.include_audio (then cut from the source's one decode, 16 kHz mono)
    pa.field("audio", HF_AUDIO),
    pa.field("run_id", pa.string(), nullable=False),
]
SEGMENTS = _hf_schema(_SEGMENT_FIELDS, {"audio": "Audio"})

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
        # the source's speech in DNSMOS windows, by start (null: the quality stage did not run,
        # quality.dnsmos was off, or the model failed: a quality/dnsmos_error ledger row)
        pa.field("dnsmos_windows", pa.list_(DNSMOS_WINDOW)),
        # how sure the diarizer is of the source's speaker count, 0..1: the smallest relative
        # change of its clustering threshold that gives another count, over 15 %
        # (transforms/diarize_core.count_margin); null: no diarization, the count given by
        # hints, or a backend that reports none. `mmcurate audit` lists the sources under 0.5
        pa.field("diarization_confidence", pa.float64()),
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
        pa.field("diarization_confidence", pa.float64()),  # the source's, as in transcripts
    ]
)

# Turn-taking events derived from `turns` (transforms/turn_events.py says how): floor transfers
# (gap, overlap, interruption) with their floor-transfer offsets, back-channels and pauses. What
# turn-taking statistics, dialogue-data exports and temporal QA read.
TURN_EVENTS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),  # f"{source_id}-event-{n:05d}", by start
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # gap | overlap | interruption | backchannel | pause
        # gap, pause: the silence; overlap, interruption: both talking; backchannel: the utterance
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),  # who acts: newcomer, back-channeller, pauser
        pa.field("other_speaker", pa.string()),  # the floor holder before (null for a pause)
        # floor-transfer offset: the newcomer's onset minus the holder's end (< 0: overlap);
        # a pause's length; null for a back-channel
        pa.field("offset_s", pa.float64()),
        pa.field("num_words", pa.int32()),  # back-channel: transcribed words (null: none)
        pa.field("text", pa.string()),  # back-channel: its words
        pa.field("lexical", pa.bool_()),  # back-channel: all its words on the language's list
        pa.field("diarization_model", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("diarization_confidence", pa.float64()),  # the source's, as in transcripts
    ]
)

# Videos as interleaved image-text documents (the video stage): one row per item, NeMo Curator's
# (sample_id, position, modality, text | media) layout. Images are stored inline (JPEG/WebP at
# video.max_side), so the table is readable without the source video. Image rows carry the
# frame's quality scores; text rows the words said while the image before them was on screen.
INTERLEAVED = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),  # f"{document_id}-{position:05d}"
        pa.field("document_id", pa.string(), nullable=False),  # f"{source_id}-doc"
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),  # 0, 1, ... in reading order
        pa.field("modality", pa.string(), nullable=False),  # image | text
        pa.field("start", pa.float64(), nullable=False),  # image: the span it stands for; text: its words
        pa.field("end", pa.float64(), nullable=False),
        pa.field("speaker", pa.string()),  # text: f"{source_id}-spk{k}" as in segments
        pa.field("text", pa.string()),  # text items only
        pa.field("num_words", pa.int32()),  # text items only
        pa.field("image", pa.binary()),  # image items: encoded bytes
        pa.field("image_format", pa.string()),  # jpeg | webp
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("phash", pa.string()),  # 64-bit DCT perceptual hash, 16 hex digits
        pa.field("keyframe_id", pa.string()),  # f"{source_id}-kf-{n:05d}" (ledger item_id of drops)
        pa.field("frame_time", pa.float64()),  # when the chosen frame is shown
        pa.field("cut", pa.string()),  # why a keyframe starts here: start | shot | interval
        pa.field("cut_score", pa.float64()),  # the shot detector's change at a shot cut
        pa.field("luma_mean", pa.float64()),  # quality scores (mmcurate.transforms.keyframes)
        pa.field("luma_std", pa.float64()),
        pa.field("luma_p99", pa.float64()),
        pa.field("dominant_share", pa.float64()),
        pa.field("sharpness", pa.float64()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

_DOCUMENT_FIELDS = [
    pa.field("document_id", pa.string(), nullable=False),
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("duration_s", pa.float64(), nullable=False),
    pa.field("speech_s", pa.float64(), nullable=False),  # VAD speech in the source
    pa.field("language", pa.string()),
    pa.field("num_images", pa.int32(), nullable=False),
    pa.field("num_texts", pa.int32(), nullable=False),
    pa.field("num_words", pa.int32(), nullable=False),
    # OBELICS / Multimodal-Textbook layout: parallel lists, one entry per position; at an image
    # position `texts` is null, at a text position `images` is null
    pa.field("images", pa.list_(HF_IMAGE)),
    pa.field("texts", pa.list_(pa.string())),
    pa.field("starts", pa.list_(pa.float64())),
    pa.field("ends", pa.list_(pa.float64())),
    pa.field("run_id", pa.string(), nullable=False),
]


DOCUMENTS = _hf_schema(_DOCUMENT_FIELDS, {"images": "Image"})

# The quality stage's verdict on every segment, kept or dropped, with every score its filters
# read (mmcurate.quality.filters): a threshold is re-tuned with a DuckDB query over this table
# (`mmcurate.quality.filters.keep_sql`) without re-running a model. Rows of one source share its
# source-level context (transcript language, speech ratio) and each language shares the
# speaking-rate quartiles of this run.
SEGMENT_QUALITY = pa.schema(
    [
        pa.field("segment_id", pa.string(), nullable=False),  # as in segments
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("num_words", pa.int32(), nullable=False),
        pa.field("chars", pa.int32(), nullable=False),  # letters and digits of the text
        pa.field("chars_per_s", pa.float64()),  # speaking rate
        pa.field("language", pa.string()),  # spoken, from Whisper (segments.language)
        pa.field("language_probability", pa.float64()),
        pa.field("text_language", pa.string()),  # langdetect on the segment's text
        pa.field("text_language_probability", pa.float64()),
        pa.field("transcript_language", pa.string()),  # langdetect on the source's whole text
        pa.field("transcript_language_probability", pa.float64()),
        pa.field("language_mismatch", pa.bool_(), nullable=False),  # flag (see quality.*)
        pa.field("language_low_confidence", pa.bool_(), nullable=False),  # flag
        pa.field("phrase_share", pa.float64()),  # of the text covered by stock hallucinations
        pa.field("phrases", pa.list_(pa.string())),  # the stock phrases found
        pa.field("repeat_share", pa.float64()),  # of the words inside decoder loops
        pa.field("outside_vad_share", pa.float64()),  # of the words outside every VAD region
        # DNSMOS P.835, 1-5: the duration-weighted mean of the scores of the 9.01 s windows of
        # the source's speech the segment overlaps (transcripts.dnsmos_windows); a segment inside
        # one window has that window's score (exactly a window: the reference implementation's
        # score of those samples). Null: not scored (quality.dnsmos off, the model failed, or
        # the segment lies outside every window)
        pa.field("dnsmos_sig", pa.float64()),
        pa.field("dnsmos_bak", pa.float64()),
        pa.field("dnsmos_ovrl", pa.float64()),
        pa.field("rate_q1", pa.float64()),  # chars_per_s quartiles of this language in the run
        pa.field("rate_q3", pa.float64()),  # (null: too few segments of the language)
        pa.field("source_speech_ratio", pa.float64()),  # sources.speech_ratio
        pa.field("failed", pa.list_(pa.string()), nullable=False),  # every failing filter, in order
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),  # the first failing filter's code (the ledger reason)
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# Deduplication (the dedup stage, mmcurate.transforms.dedup): one row per item of this run that
# is in a cluster of 2+ (singletons have no row). Exactly one row per cluster and run has
# is_representative (unless the representative was curated by an earlier partition of the
# cross-run index: representative_partition names it). Kept set of a kind:
# items NOT IN (SELECT item_id FROM dedup_clusters WHERE kind = ... AND NOT is_representative).
DEDUP_CLUSTERS = pa.schema(
    [
        pa.field("member_id", pa.string(), nullable=False),  # f"{kind}:{item_id}"
        pa.field("item_id", pa.string(), nullable=False),  # its id: source_id (source, transcript), interleaved item_id, document_id
        pa.field("kind", pa.string(), nullable=False),  # source | transcript | text_item | image | document | passage | synthetic (text_mix rows)
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("cluster_id", pa.string(), nullable=False),  # "dc-" + hash of the representative
        pa.field("representative_id", pa.string(), nullable=False),  # item_id of the kept item
        pa.field("representative_partition", pa.string()),  # null: this run; else the index partition
        pa.field("is_representative", pa.bool_(), nullable=False),
        pa.field("method", pa.string(), nullable=False),  # the item's strongest verified link
        pa.field("similarity", pa.float64(), nullable=False),  # of that link (1.0 exact)
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# Every signature the dedup stage computed for this run's items, one row per item and method:
# what the cross-run index stores (dedup.index_dir) and what a corpus job re-uses, so media are
# never decoded twice. `signature`: sha256 digest | sha1 of normalised text | MinHash uint32
# values | audio fingerprint uint32 per 32 ms | video (float32 t, uint64 pHash) per sample |
# pHash uint64 | float32 embedding; all little-endian. The rank fields are the representative
# rule's (mmcurate.transforms.dedup.node_of).
DEDUP_SIGNATURES = pa.schema(
    [
        pa.field("signature_id", pa.string(), nullable=False),  # f"{kind}:{item_id}:{method}"
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("signature", pa.binary(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),  # of the item's source
        pa.field("fidelity", pa.float64(), nullable=False),  # source sample rate x channels
        pa.field("bytes", pa.int64(), nullable=False),  # source bytes
        pa.field("length", pa.float64(), nullable=False),  # characters, pixels or seconds
        pa.field("partition", pa.string(), nullable=False),  # the run's index partition; no index: the run id
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# The text mix (the rephrase stage): the kept transcript text cut into passages on sentence
# boundaries (natural rows, is_synthetic false) plus the accepted synthetic rephrasings of some of
# them (is_synthetic true, parent_id = the natural passage's text_id), chosen so that synthetic
# tokens / all tokens ~ rephrase.synthetic_ratio. Every row of the table is in the final mix:
#   SELECT text FROM text_mix                      -- the mix
#   SELECT sum(tokens) FILTER (WHERE is_synthetic) / sum(tokens) FROM text_mix  -- synthetic share
# Rephrasings the guards rejected are ledger rows (stage rephrase, item_id = their text_id).
TEXT_MIX = pa.schema(
    [
        pa.field("text_id", pa.string(), nullable=False),  # f"{source_id}-psg-{n:05d}"[-syn-{style}]
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("is_synthetic", pa.bool_(), nullable=False),
        pa.field("parent_id", pa.string()),  # synthetic: the natural passage it rephrases
        pa.field("position", pa.int32(), nullable=False),  # passage number within its source
        pa.field("text", pa.string(), nullable=False),
        pa.field("tokens", pa.int32(), nullable=False),  # words + punctuation (the mix's unit)
        pa.field("text_sha1", pa.string(), nullable=False),  # of the text (exact-duplicate key)
        pa.field("start", pa.float64(), nullable=False),  # seconds in the source (the parent's)
        pa.field("end", pa.float64(), nullable=False),
        pa.field("segment_ids", pa.list_(pa.string()), nullable=False),  # the segments it covers
        pa.field("language", pa.string()),
        pa.field("style", pa.string()),  # synthetic: encyclopedic | qa | spoken_to_written
        pa.field("prompt_version", pa.string()),  # synthetic: the style template's version
        pa.field("prompt_sha256", pa.string()),  # of the template file
        pa.field("generator", pa.string()),  # synthetic: model name
        pa.field("generator_sha256", pa.string()),  # of the model's weights, when known
        pa.field("finish_reason", pa.string()),
        pa.field("copy_jaccard", pa.float64()),  # guard scores (mmcurate.quality.rephrase_guards)
        pa.field("drift_cosine", pa.float64()),
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

# Stages whose rejections remove a whole source (count(inputs) == sources + these rejections):
# derived from the stage declarations.
from mmcurate.schemas.stages import PRODUCER, SOURCE_LEVEL_STAGES  # noqa: E402

_undeclared = [t for t in TABLES if t != "rejected" and t not in PRODUCER]
if _undeclared or set(PRODUCER) - set(TABLES):
    raise TypeError(f"tables without a producing stage {_undeclared}, or stages producing "
                    f"undeclared tables {sorted(set(PRODUCER) - set(TABLES))}")
