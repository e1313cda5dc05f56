"""The Beam wiring of each declared stage (`mmcurate.schemas.stages.STAGES`).

`REGISTRY[name]` pairs a stage's declaration with:
  * `build(ctx, streams)`: applies its transforms to the streams of earlier stages and returns
    {table or stream name: PCollection, "rejected": PCollection[Rejection]};
  * `handlers(cfg)`: its RunInference model handlers (their `model_info()` fills the manifest);
  * `check(cfg)`: start-up problems (a backend this CPU cannot run ...) found before any work.

`mmcurate.pipelines.curate.build` runs the selected stages in declaration order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import apache_beam as beam

from mmcurate.pipelines.config import CurateConfig
from mmcurate.schemas.stages import STAGES, StageSpec


@dataclass
class BuildContext:
    pipeline: beam.Pipeline
    inputs: list[str]
    output: str
    cfg: CurateConfig
    run_id: str
    stages: list[str]  # names of the stages that run
    overrides: dict[str, Any] = field(default_factory=dict)  # tests: {"asr_handler": ...}
    # local workers the stages may deal costed work to (mmcurate.pipelines.balance); 0 or 1: a
    # runner that rebalances by itself, or one worker
    workers: int = 1
    # keep each model step's results under OUT/_work/<run_id>/steps/ (checkpoints.CachedModelHandler)
    step_checkpoints: bool = False
    # where each stage marks the sources it was handed and put out (mmcurate.pipelines.progress;
    # None: no marks)
    progress: str | None = None
    # what a stage does once the run's manifest is committed: each is called with the committed
    # manifest (a PCollection of one dict) and applies its labelled steps to it (dedup publishes
    # its cross-run index partition there, so a run that never commits never publishes)
    on_commit: list[Callable[[Any], Any]] = field(default_factory=list)

    def cached(self, handler, step: str):
        """`handler` whose results are kept per request, when this run keeps checkpoints."""
        if not self.step_checkpoints or handler is None:
            return handler
        from mmcurate.pipelines.checkpoints import CachedModelHandler, step_dir

        return CachedModelHandler(handler, step_dir(self.output, self.run_id, step), step)

    @property
    def spread(self):
        from mmcurate.pipelines.balance import Spread

        return Spread(self.workers)


@dataclass(frozen=True)
class Stage:
    spec: StageSpec
    build: Callable[[BuildContext, dict[str, Any]], dict[str, Any]]
    handlers: Callable[[CurateConfig], list] = lambda cfg: []
    check: Callable[[CurateConfig], list[str]] = lambda cfg: []


# --------------------------------------------------------------------------- ingest


def _build_ingest(ctx: BuildContext, streams: dict) -> dict:
    from mmcurate.transforms.ingest import Ingest

    download_dir = ctx.cfg.ingest.download_dir or os.path.join(ctx.output, "_downloads")
    if "://" not in download_dir:
        from mmcurate.transforms.rss import remove_stale_parts

        # partial downloads of a killed earlier run (a live transfer writes at least every timeout)
        remove_stale_parts(download_dir, idle_s=max(2 * ctx.cfg.ingest.http_timeout_s, 60.0))
    out = ctx.pipeline | "Ingest" >> Ingest(ctx.inputs, ctx.cfg.ingest, ctx.run_id, download_dir,
                                            exclude=(ctx.output, download_dir))
    return {"media": out["media"], "rejected": out["rejected"]}


# --------------------------------------------------------------------------- vad


def _vad_handler(cfg: CurateConfig, keep_audio: bool = False):
    from mmcurate.transforms.vad import VadModelHandler

    return VadModelHandler(cfg.vad, cfg.decode, keep_audio=keep_audio)


def _build_vad(ctx: BuildContext, streams: dict) -> dict:
    from mmcurate.transforms.vad import DetectSpeech

    # the speech stage reads the samples this step decodes: keep them (one decode per source)
    keep = "speech" in ctx.stages
    handler = ctx.overrides.get("vad_handler") or _vad_handler(ctx.cfg, keep_audio=keep)
    # the video stage makes documents of videos without speech too: keep them as sources
    out = streams["media"] | "DetectSpeech" >> DetectSpeech(
        ctx.cfg.vad, ctx.cfg.decode, ctx.run_id, model_handler=handler,
        keep_video_without_speech="video" in ctx.stages, spread=ctx.spread)
    return {"sources": out["sources"], "speech_regions": out["regions"], "speech": out["speech"],
            "rejected": out["rejected"]}


# --------------------------------------------------------------------------- speech


def _speech_transform(cfg: CurateConfig, run_id: str, overrides: dict | None = None):
    from mmcurate.transforms.speech import TranscribeSpeech

    o = overrides or {}
    return TranscribeSpeech(cfg.asr, cfg.diarization, cfg.segments, run_id, events=cfg.turn_events,
                            sample_rate=cfg.decode.sample_rate,
                            asr_handler=o.get("asr_handler"),
                            diarization_handler=o.get("diarization_handler"))


def _dnsmos_handler(cfg: CurateConfig, overrides: dict | None = None):
    from mmcurate.transforms.segment_quality import DnsmosModelHandler

    return (overrides or {}).get("dnsmos_handler") or DnsmosModelHandler(
        cfg.quality.dnsmos_threads, cfg.decode.sample_rate, batch=cfg.quality.dnsmos_batch)


def _build_speech(ctx: BuildContext, streams: dict) -> dict:
    t = _speech_transform(ctx.cfg, ctx.run_id, ctx.overrides)
    # the quality stage's DNSMOS reads the samples this stage holds (no second decode): its
    # windows reach it on the transcript rows
    if "quality" in ctx.stages and ctx.cfg.quality.dnsmos:
        t.dnsmos_handler = _dnsmos_handler(ctx.cfg, ctx.overrides)
    # the two expensive steps keep their results as they come (a kill during ASR keeps the
    # transcripts made so far; mmcurate.pipelines.checkpoints)
    t.asr_handler = ctx.cached(t.asr_handler, "asr")
    t.diarization_handler = ctx.cached(t.diarization_handler, "diarization")
    out = streams["speech"] | "Speech" >> t
    return {"segments": out["segments"], "transcripts": out["transcripts"], "turns": out["turns"],
            "turn_events": out["turn_events"], "rejected": out["rejected"]}


def _speech_handlers(cfg: CurateConfig) -> list:
    t = _speech_transform(cfg, "")
    return [h for h in (t.asr_handler, t.diarization_handler) if h is not None]


def _check_speech(cfg: CurateConfig) -> list[str]:
    problems = []
    a = cfg.asr
    if not (a.backend == "whisperx" and a.whisperx_model_dir):  # else: the model is the workers'
        from mmcurate.transforms import models

        try:
            models.whisper_model_dir(a.model)  # an embedded name (joined, verified) or a dir
        except (OSError, models.ModelIntegrityError) as e:
            problems.append(f"asr.model: {e}")
    if cfg.diarization.backend != "none":
        from mmcurate.transforms import diarize

        check = getattr(diarize, "check_backend", None)
        if check is not None:
            try:
                check(cfg.diarization)
            except Exception as e:  # noqa: BLE001 - reported as a start-up problem
                problems.append(str(e))
    return problems


# --------------------------------------------------------------------------- quality


def _build_quality(ctx: BuildContext, streams: dict) -> dict:
    from mmcurate.transforms.segment_quality import JudgeQuality

    inputs = {k: streams[k] for k in ("segments", "sources", "speech_regions", "transcripts")}
    out = inputs | "Quality" >> JudgeQuality(ctx.cfg.quality, ctx.run_id)
    return {"segment_quality": out["segment_quality"], "kept_segments": out["kept_segments"],
            "rejected": out["rejected"]}


def _quality_handlers(cfg: CurateConfig) -> list:
    # DNSMOS runs in the speech stage's step (`_build_speech`) but is this stage's model
    return [_dnsmos_handler(cfg)] if cfg.quality.dnsmos else []


# --------------------------------------------------------------------------- video


def _build_video(ctx: BuildContext, streams: dict) -> dict:
    from mmcurate.transforms.video import InterleaveVideo

    # segments only when the speech stage ran: otherwise every document is image-only; the
    # words of segments the quality stage dropped (invented text, wrong language) stay out
    inputs = {"sources": streams["sources"]}
    if "kept_segments" in streams:
        inputs["segments"] = streams["kept_segments"]
    elif "segments" in streams:
        inputs["segments"] = streams["segments"]
    out = inputs | "Video" >> InterleaveVideo(ctx.cfg.video, ctx.run_id)
    return {"interleaved": out["interleaved"], "documents": out["documents"],
            "rejected": out["rejected"]}


# --------------------------------------------------------------------------- dedup


def _corpus_table(ctx: BuildContext, streams: dict, name: str, label: str):
    """A table of the output directory a corpus job runs over, when its manifest lists it and
    the job did not already hand it in (None otherwise)."""
    if name in streams:
        return streams[name]
    from mmcurate.quality.db import committed_shards
    from mmcurate.transforms.read import ReadTables

    listed, _ = committed_shards(ctx.output)
    if not (listed or {}).get(name):
        return None
    return (ctx.pipeline | label >> ReadTables(ctx.output, [name]))[name]


def _build_dedup(ctx: BuildContext, streams: dict) -> dict:
    from mmcurate.transforms.dedup import Deduplicate
    from mmcurate.transforms.dedup_index import PublishIndex, default_partition, read_index

    cfg = ctx.cfg.dedup
    # in-graph the job's media stream exists: this run's sources are fingerprinted from their
    # media; a corpus job re-uses the output's stored fingerprints and never opens old media
    corpus = "media" not in streams
    # the partition names this run's part of the cross-run index, one per output directory;
    # without an index it is the run id, so the same inputs and config give the same bytes in
    # any output directory
    partition = cfg.partition or (default_partition(ctx.output) if cfg.index_dir else ctx.run_id)
    inputs = {"sources": streams["sources"]}
    # text_mix: the rephrase stage runs first (declaration order), in-graph or as an earlier
    # corpus job of the same `mmcurate corpus` call
    for name in ("transcripts", "interleaved", "documents", "text_mix"):
        t = _corpus_table(ctx, streams, name, f"ReadDedupInput[{name}]") if corpus else streams.get(name)
        if t is not None:
            inputs[name] = t
    if corpus:
        prior = _corpus_table(ctx, streams, "dedup_signatures", "ReadStoredSignatures")
        if prior is not None:
            inputs["prior_signatures"] = prior
    index = read_index(ctx.pipeline, cfg, partition)
    if index is not None:
        inputs["index"] = index
    out = inputs | "Dedup" >> Deduplicate(
        cfg, ctx.run_id, partition, decode_media=not corpus or cfg.decode_missing,
        index_out=cfg.index_dir, output=ctx.output, embedder=ctx.overrides.get("embedder"),
        spread=ctx.spread)
    staged = out.pop("index_staged", None)
    if staged is not None:
        ctx.on_commit.append(lambda committed: committed | "PublishDedupIndex" >> PublishIndex(
            cfg.index_dir, staged))
    return out


class _EmbeddingModelInfo:
    def model_info(self) -> list[dict]:
        from mmcurate.transforms.embed import model_info

        return [model_info()]


def _dedup_handlers(cfg: CurateConfig) -> list:
    return [_EmbeddingModelInfo()] if "embedding" in cfg.dedup.methods else []


def _check_dedup(cfg: CurateConfig) -> list[str]:
    problems = []
    if "embedding" in cfg.dedup.methods:
        try:
            from mmcurate.transforms import embed

            embed.verify()
            import faiss  # noqa: F401 - faiss-cpu (core) or faiss-gpu (the gpu extra)
        except Exception as e:  # noqa: BLE001 - reported as a start-up problem
            problems.append(f"dedup.methods embedding: {type(e).__name__}: {e}")
    d = cfg.dedup.index_dir
    if d and "://" not in d and os.path.exists(d) and not os.path.isdir(d):
        problems.append(f"dedup.index_dir: {d} is not a directory")
    elif d:
        from mmcurate.transforms.dedup_index import index_problems

        problems += index_problems(cfg.dedup)  # other settings, missing or resized parts
    return problems


# --------------------------------------------------------------------------- rephrase


def _rephrase_transform(cfg: CurateConfig, run_id: str, overrides: dict | None = None):
    from mmcurate.transforms.rephrase import Rephrase

    o = overrides or {}
    return Rephrase(cfg.rephrase, run_id, generator_handler=o.get("rephrase_handler"),
                    embedder=o.get("rephrase_embedder"))


def _build_rephrase(ctx: BuildContext, streams: dict) -> dict:
    # segment_quality in-graph when the quality stage runs, or read back by a corpus job when
    # the output has it: then only the kept segments are passages
    inputs = {k: streams[k] for k in ("segments", "segment_quality") if k in streams}
    out = inputs | "Rephrase" >> _rephrase_transform(ctx.cfg, ctx.run_id, ctx.overrides)
    return {"text_mix": out["text_mix"], "rejected": out["rejected"], "stats": out["stats"]}


def _rephrase_handlers(cfg: CurateConfig) -> list:
    return [_rephrase_transform(cfg, "").generator_handler, _EmbeddingModelInfo()]


def _check_rephrase(cfg: CurateConfig) -> list[str]:
    from mmcurate.transforms.rephrase import check_config

    return check_config(cfg.rephrase)


_WIRING = {
    "ingest": dict(build=_build_ingest),
    "vad": dict(build=_build_vad, handlers=lambda cfg: [_vad_handler(cfg)]),
    "speech": dict(build=_build_speech, handlers=_speech_handlers, check=_check_speech),
    "quality": dict(build=_build_quality, handlers=_quality_handlers),
    "video": dict(build=_build_video),
    "dedup": dict(build=_build_dedup, handlers=_dedup_handlers, check=_check_dedup),
    "rephrase": dict(build=_build_rephrase, handlers=_rephrase_handlers, check=_check_rephrase),
}



def _module_wiring(spec: StageSpec) -> dict:
    """The wiring a stage module declares beside its STAGE (mmcurate.schemas.stages)."""
    import importlib

    mod = importlib.import_module(spec.module)
    return {k: getattr(mod, k) for k in ("build", "handlers", "check") if callable(getattr(mod, k, None))}


REGISTRY: dict[str, Stage] = {
    s.name: Stage(spec=s, **(_module_wiring(s) if s.module else _WIRING[s.name])) for s in STAGES}
