"""What each stage of the curation job is: the one declaration everything else derives from.

A `StageSpec` says what a stage reads (the job's inputs, a stream of an earlier stage, or
tables), which tables it writes, which config sections and model roles it uses, which values of
`rejected.stage` its ledger rows carry, and whether those rows remove a whole input. The
pipeline's `build()`, `--stages`, the CLI help, the audit's per-stage view and
`SOURCE_LEVEL_STAGES` are derived from `STAGES`; the Beam wiring of each stage lives in
`mmcurate.pipelines.stages` (this module imports nothing, so every layer can read it).

Stages that work on a whole corpus (dedup, rephrasing) are declared with `corpus=True`: they
read the tables of an earlier output directory (`mmcurate.transforms.read.ReadTables`) and
write new ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str  # one line for --help
    requires: tuple[str, ...]  # "inputs", a stream ("media", "speech") or table names
    produces: tuple[str, ...]  # tables written (the ledger, `rejected`, is everyone's)
    streams: tuple[str, ...]  # in-graph streams handed to later stages
    config: tuple[str, ...]  # config sections it reads
    ledger: tuple[str, ...]  # values of rejected.stage on its rows
    source_level: bool  # its ledger rows remove a whole input (inputs = sources + these)
    models: tuple[str, ...] = ()  # model roles, as in the manifest
    selectable: bool = True  # --stages may leave it out
    default: bool = True  # in the run's stage list when no --stages / `stages` key picks one
    corpus: bool = False  # reads tables of an earlier output directory
    uses: tuple[str, ...] = ()  # tables read when present (not prerequisites)
    # its rows for a source depend on that source alone: a run checkpoints them per source
    # (mmcurate.pipelines.checkpoints); False: it runs over every source's rows at once
    per_source: bool = True


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        name="ingest",
        summary="find inputs (files, folders, globs, manifests, feeds); hash and download them",
        requires=("inputs",), produces=(), streams=("media",), config=("ingest",),
        ledger=("ingest",), source_level=True, selectable=False,
    ),
    StageSpec(
        name="vad",
        summary="decode to 16 kHz mono and find speech regions (silero VAD)",
        requires=("media",), produces=("sources", "speech_regions"), streams=("speech",),
        config=("decode", "vad"), ledger=("decode", "vad"), source_level=True, models=("vad",),
    ),
    StageSpec(
        name="speech",
        summary="diarize + transcribe speech regions: speaker-attributed words, turns and "
                "turn-taking events",
        requires=("speech",), produces=("segments", "transcripts", "turns", "turn_events"), streams=(),
        config=("asr", "diarization", "segments", "turn_events"), ledger=("asr", "diarize"),
        source_level=False, models=("asr", "diarization-segmentation", "speaker-embedding"),
    ),
    StageSpec(
        name="quality",
        summary="score every segment (language, hallucination, DNSMOS, speaking rate, duration) "
                "and keep or drop it with a reason",
        # reads sources and speech_regions too (both exist whenever segments do)
        requires=("segments",), produces=("segment_quality",), streams=("kept_segments",),
        config=("quality",), ledger=("quality",), source_level=False, models=("speech-quality",),
        per_source=False,  # speaking-rate quartiles per language over the whole run
    ),
    StageSpec(
        name="video",
        summary="shot-aware keyframes of each video interleaved with its transcript's words "
                "(image-only without speech)",
        # reads `segments` too when the speech stage runs (optional: not a prerequisite)
        requires=("sources",), produces=("interleaved", "documents"), streams=(),
        config=("video",), ledger=("keyframes",), source_level=False,
        # the words of the quality stage's kept segments when it runs, else all segments (a
        # run therefore runs it after quality, over all sources, not among the per-source stages)
        uses=("segments", "kept_segments"),
    ),
    StageSpec(
        name="rephrase",
        summary="cut the kept transcript text into passages and mix in synthetic rephrasings "
                "(encyclopedic, question-answer, spoken-to-written) at rephrase.synthetic_ratio",
        # the kept segments when the quality stage's verdicts exist, else every segment
        requires=("segments",), produces=("text_mix",), streams=(), config=("rephrase",),
        ledger=("rephrase",), source_level=False, models=("rephrase", "sentence-embedding"),
        corpus=True, uses=("segment_quality",),
        default=False,  # opt-in: it calls a language model on every passage
        per_source=False,  # the synthetic share is a corpus-wide token ratio
    ),
    StageSpec(
        name="dedup",
        summary="exact, MinHash-LSH, audio/video fingerprint and embedding duplicates, within "
                "the run and against the cross-run index (dedup.index_dir)",
        # sources only is a prerequisite (--stages vad,dedup works); the text and image tables
        # are compared when present, text_mix too: declared after rephrase, so that the
        # synthetic rows are deduplicated against the natural ones in the same job
        requires=("sources",), produces=("dedup_clusters", "dedup_signatures"), streams=(),
        config=("dedup",), ledger=("dedup",), source_level=False, models=("sentence-embedding",),
        corpus=True, uses=("transcripts", "interleaved", "documents", "text_mix"),
        per_source=False,  # clusters span sources
    ),
)

BY_NAME: dict[str, StageSpec] = {s.name: s for s in STAGES}

# The ledger stages whose rows remove a whole input: count(inputs) == sources + these rows.
SOURCE_LEVEL_STAGES: tuple[str, ...] = tuple(l for s in STAGES if s.source_level for l in s.ledger)

# Ledger reasons at a source-level stage that annotate a KEPT source instead of removing the
# input (it is in `sources` too): not counted as inputs.
KEPT_SOURCE_REASONS: tuple[str, ...] = ("truncated_kept",)

# Which stage writes each table (the ledger is written by all of them).
PRODUCER: dict[str, str] = {t: s.name for s in STAGES for t in s.produces}


def selectable() -> list[str]:
    return [s.name for s in STAGES if s.selectable]


# The run's stage list when none is given (CurateConfig.stages; `mmcurate run --help`).
DEFAULT_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.selectable and s.default)


def resolve(selected: tuple[str, ...] | list[str]) -> list[StageSpec]:
    """The stages that run for a `--stages` selection, in order: the always-on ones plus the
    selected ones. Raises ValueError naming unknown stages or a missing prerequisite."""
    unknown = [s for s in selected if s not in BY_NAME or not BY_NAME[s].selectable]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {selectable()}")
    chosen = [s for s in STAGES if not s.selectable or s.name in selected]
    have = {"inputs"}
    for s in chosen:
        missing = [r for r in s.requires if r not in have]
        if missing:
            needers = [p.name for p in STAGES if set(missing) & (set(p.streams) | set(p.produces))]
            raise ValueError(f"stage {s.name!r} reads what stage(s) {', '.join(needers)} "
                             f"make ({', '.join(missing)}): add {', '.join(needers)} to --stages")
        have.update(s.streams)
        have.update(s.produces)
    return chosen
