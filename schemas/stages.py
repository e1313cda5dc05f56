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

A stage added later is one module that holds all of it (README, "How to add a stage"): its
declaration `STAGE`, its tables `RECORDS`, its config sections `CONFIG` and its wiring `build`
(optionally `handlers`, `check`). Naming that module in `STAGE_MODULES` below, or in the
environment variable MMCURATE_STAGE_MODULES (a stage kept outside this repository), appends it
to `STAGES`; the tables (`mmcurate.schemas.tables.TABLES`), the config
(`mmcurate.pipelines.config.CurateConfig`), the registry, `--stages`, the help and the audit
derive from there. Such a module is imported while this one loads: at its top it imports the
standard library and `mmcurate.schemas.stages` / `records` / `columns` only (Beam and models
inside `build`), as the built-in wiring does.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
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
    # the module that wires a stage declared there (`STAGE_MODULES`); None: a built-in stage,
    # wired in mmcurate.pipelines.stages
    module: str | None = None


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

# Modules that each declare and wire one more stage (module docstring), appended to STAGES in
# this order, after them those of MMCURATE_STAGE_MODULES (comma-separated module names).
STAGE_MODULES: tuple[str, ...] = ()

# What the stage modules bring besides their declarations: config sections (name -> dataclass,
# composed into CurateConfig), and problems loading them (reported at start-up, one line each;
# the run refuses to start).
STAGE_CONFIG: dict[str, type] = {}
STAGE_MODULE_PROBLEMS: list[str] = []


def _load_stage_modules() -> list[StageSpec]:
    names = list(STAGE_MODULES) + [m.strip() for m in os.environ.get("MMCURATE_STAGE_MODULES", "").split(",")
                                   if m.strip()]
    loaded: list[StageSpec] = []
    taken = {s.name for s in STAGES}
    for name in dict.fromkeys(names):
        where = f"stage module {name!r}" + ("" if name in STAGE_MODULES else " (MMCURATE_STAGE_MODULES)")
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a start-up problem, reported in one line
            STAGE_MODULE_PROBLEMS.append(f"{where}: cannot import it: {type(e).__name__}: {e}")
            continue
        spec = getattr(mod, "STAGE", None)
        problem = _stage_module_problem(mod, spec, taken)
        if problem:
            STAGE_MODULE_PROBLEMS.append(f"{where}: {problem}")
            continue
        from mmcurate.schemas.records import RECORDS  # loaded first by mmcurate.schemas

        RECORDS.update(getattr(mod, "RECORDS", {}))
        STAGE_CONFIG.update(getattr(mod, "CONFIG", {}))
        taken.add(spec.name)
        loaded.append(dataclasses.replace(spec, module=name))
    return loaded


def _stage_module_problem(mod, spec, taken: set[str]) -> str | None:
    """Why a stage module cannot be added (None: it can)."""
    if not isinstance(spec, StageSpec):
        return "it has no STAGE = StageSpec(...)"
    if spec.name in taken:
        return f"a stage named {spec.name!r} exists already"
    if not callable(getattr(mod, "build", None)):
        return "it has no build(ctx, streams) function"
    records = getattr(mod, "RECORDS", {})
    for table in spec.produces:
        if table not in records:
            return f"its stage produces {table!r} but RECORDS declares no record for it"
    from mmcurate.schemas.records import RECORDS

    clash = [t for t in records if t in RECORDS]
    if clash:
        return f"RECORDS redeclares table(s) {clash}"
    configs = getattr(mod, "CONFIG", {})
    missing = [c for c in spec.config if c not in configs and c not in _BUILTIN_SECTIONS]
    if missing:
        return f"its stage reads config section(s) {missing} that CONFIG does not declare"
    clash = [c for c in configs if c in _BUILTIN_SECTIONS or c in STAGE_CONFIG or c == "stages"]
    if clash:
        return f"CONFIG redeclares config section(s) {clash}"
    return None


# the sections of mmcurate.pipelines.config.CurateConfig (test_stage_modules checks the list)
_BUILTIN_SECTIONS = ("ingest", "decode", "vad", "asr", "diarization", "segments", "turn_events",
                     "output", "video", "quality", "dedup", "rephrase")

STAGES = STAGES + tuple(_load_stage_modules())

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
