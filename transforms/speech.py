"""The speech stage: diarization + ASR inside the VAD regions -> speaker-attributed segments.

    SpeechInput (source, VAD regions, decoded samples)
      | "DecodeOnce"  (only when the VAD step did not keep the samples)
      +-- "PrepareAsr" -> "Transcribe" (RunInference, ASR model) -> "AsrOutcomes" ---------+
      +-- "PrepareDiarization" -> "Diarize" (RunInference, diarizer) -> "DiarizeOutcomes" -+-- "JoinAsrAndTurns"
      +-- "PrepareDnsmos" -> "Dnsmos" (RunInference, DNSMOS P.835) -> "DnsmosOutcomes" ----+    (CoGroupByKey)
      +-- "KeySources" --------------------------------------------------------------------+
                                                                                                 |
                                                        "AttributeSpeakers" -> segments, transcripts, turns

The two model steps are `RunInference` transforms with stable labels, so a runner can scale
them apart (ASR on GPU workers, diarization elsewhere; resource hints come from the model
handlers). Each worker process loads each model once and shares it across its threads. The
decoded samples travel only between fused steps (DetectSpeech -> Transcribe/Diarize, no
shuffle in between), so a source is decoded once for VAD, ASR, diarization and, when the
quality stage runs, DNSMOS (its windows of contiguous speech, `mmcurate.transforms.segment_quality`,
reach the quality stage on the transcript row); only results go through the join.

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
* an ASR segment dropped by the hallucination rules (`mmcurate.transforms.asr.drop_reason`)
  -> Rejection(stage "asr", reason "hallucination", item_id f"{source_id}-asr-{start:.3f}",
  the rule, scores and text in the detail).
* diarization.backend == "none": no "Diarize" step; every word is speaker 0; no turns rows.
* DNSMOS raising on one source -> Rejection(stage "quality", reason "dnsmos_error",
  item_id = source_id); its transcript has no windows and the quality stage judges its
  segments without DNSMOS.

The `turns` table holds the diarizer's own overlap-aware turns with the same speaker labels as
`segments` (f"{source_id}-spk{k}"), written whenever diarization succeeded on a source.

Why one module of this length: the fused step that holds a source's decoded samples through
diarization, ASR and DNSMOS, and the attribution of their results, pass private records.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from mmcurate.schemas.printable import dead_letter_text as _dead_letter_text
from mmcurate.schemas.printable import error_text as _error_text
from mmcurate.schemas.printable import printable
from mmcurate.schemas.records import (
    AsrResult,
    DiarizationResult,
    Rejection,
    Segment,
    SourceRecord,
    Transcript,
    Turn,
    TurnRow,
)
from mmcurate.transforms.asr import AsrConfig, AsrModelHandler, AsrRequest
from mmcurate.transforms.attribute import SegmentsConfig, Utterance, cut_utterances
from mmcurate.transforms.audio_codec import encode_flac, encode_opus  # noqa: F401 (tests, exports)
from mmcurate.transforms.diarize import DiarizationConfig, DiarizationModelHandler, DiarizeRequest
from mmcurate.transforms.turn_events import TurnEventsConfig, detect, event_rows
from mmcurate.transforms.vad import SpeechInput

log = logging.getLogger("mmcurate.speech")

NS = "mmcurate"
REJECTED = "rejected"


@dataclass(frozen=True)
class SpeechClip:
    """A stretch of the decoded samples that holds words, as 16-bit PCM: what crosses the join
    when segments.include_audio asks for each segment's audio (the source is not decoded again)."""

    start: int  # first sample in the source
    pcm: bytes  # int16 little-endian, mono, at the stage's sample rate

    @property
    def end(self) -> int:
        return self.start + len(self.pcm) // 2


@dataclass(frozen=True)
class AsrOutcome:
    """What "Transcribe" sends through the join: the result and the audio length (and, with
    segments.include_audio, the clips of the samples its words lie in)."""

    result: AsrResult
    audio_s: float
    clips: tuple[SpeechClip, ...] = ()

    @property
    def elapsed_s(self) -> float:
        return self.result.elapsed_s


@dataclass(frozen=True)
class DiarizeOutcome:
    """What "Diarize" sends through the join: overlap-aware turns and exclusive turns."""

    turns: list[Turn]  # overlap-aware, the diarizer's own speaker ids
    exclusive: list[Turn]  # one speaker at a time (the diarizer's own, or flattened by rule)
    model: str | None
    elapsed_s: float
    confidence: float | None = None  # of the speaker count (DiarizationResult.confidence)


def _exclusive(turns: list[Turn]) -> list[Turn]:
    """Exclusive (non-overlapping) turns by rule, for diarizers that give none of their own."""
    from mmcurate.transforms.diarize import exclusive_turns

    return exclusive_turns(turns)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


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
            log.warning("%s: ignoring metadata %s=%r (not an integer)", source.source_id, printable(key), raw)
            continue
        if value > 0:
            hints[key] = value
    return hints


def _asr_reject(source: SourceRecord, run_id: str, reason: str, detail: str) -> Rejection:
    return Rejection.make(stage="asr", reason=reason, detail=detail, uri=source.uri,
                          run_id=run_id, source_id=source.source_id, duration_s=source.speech_s)


class _DecodeOnceFn(beam.DoFn):
    """SpeechInput without samples (the VAD step did not keep them) -> decoded once, here."""

    def __init__(self, sample_rate: int, run_id: str):
        self._sr = sample_rate
        self._run_id = run_id
        self._errors = Metrics.counter(NS, "asr.model_error")

    def process(self, element: SpeechInput):
        if element.audio is not None:
            yield element
            return
        from mmcurate.transforms.decode import DecodeError, decode_audio

        source = element.source
        try:
            audio = decode_audio(source.media_uri, sample_rate=self._sr)
        except Exception as e:  # noqa: BLE001 - one bad source must not stop the run
            self._errors.inc()
            reason = e.reason if isinstance(e, DecodeError) else "model_error"
            log.warning("%s: decoding for ASR failed: %s", source.source_id, printable(_error_text(e)))
            yield pvalue.TaggedOutput(REJECTED, _asr_reject(source, self._run_id, reason, _error_text(e)))
            return
        yield dataclasses.replace(element, audio=audio)


class _PrepareAsrFn(beam.DoFn):
    """SpeechInput -> (source, AsrRequest), or the no_transcript row when there is no region."""

    def __init__(self, cfg: AsrConfig, run_id: str):
        self._cfg = cfg
        self._run_id = run_id
        self._sources = Metrics.counter(NS, "asr.sources")
        self._no_transcript = Metrics.counter(NS, "asr.no_transcript")

    def process(self, element: SpeechInput):
        source, regions = element.source, element.regions
        self._sources.inc()
        if regions is not None and not regions:
            self._no_transcript.inc()
            yield pvalue.TaggedOutput(REJECTED, _asr_reject(source, self._run_id, "no_transcript",
                                                            "no VAD speech region to transcribe"))
            return
        spans = None if regions is None else [(r.start, r.end) for r in regions]
        language = (source.metadata or {}).get("language") or self._cfg.language
        yield source, AsrRequest(element.audio, spans, language)


def speech_clips(audio, result: AsrResult, sample_rate: int) -> tuple[SpeechClip, ...]:
    """The samples under every word and ASR segment of `result`, in clips merged across gaps
    shorter than the pause that always ends an utterance (`LONG_PAUSE_S`): each utterance cut
    from these words lies inside one clip. Silence between utterances is not carried."""
    import numpy as np

    from mmcurate.transforms.attribute import LONG_PAUSE_S

    spans = sorted((w.start, w.end) for seg in result.segments for w in [seg, *seg.words])
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a - merged[-1][1] < LONG_PAUSE_S:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    n = audio.shape[0]
    clips = []
    for a, b in merged:
        i, j = max(0, int(a * sample_rate) - 1), min(n, int(np.ceil(b * sample_rate)) + 1)
        if j > i:
            pcm = (np.clip(audio[i:j], -1.0, 1.0) * 32767.0).astype("<i2")
            clips.append(SpeechClip(i, pcm.tobytes()))
    return tuple(clips)


class _AsrOutcomeFn(beam.DoFn):
    """(source, PredictionResult) -> (source_id, AsrOutcome) + hallucination ledger rows, or
    the no_transcript row. The samples stop here: only results (and, with include_audio, the
    clips the words lie in) go through the join."""

    def __init__(self, sample_rate: int, run_id: str, keep_clips: bool = False):
        self._sr = sample_rate
        self._run_id = run_id
        self._keep_clips = keep_clips
        self._no_transcript = Metrics.counter(NS, "asr.no_transcript")
        self._dropped = Metrics.counter(NS, "asr.dropped_segments")
        self._rtf = Metrics.distribution(NS, "asr.rtf_x1000")

    def process(self, keyed):
        source, prediction = keyed
        req: AsrRequest = prediction.example
        result: AsrResult = prediction.inference
        audio_s = req.audio.shape[0] / self._sr
        elapsed = result.elapsed_s
        if audio_s > 0:
            self._rtf.update(int(round(1000 * elapsed / audio_s)))
        for reason, seg in result.dropped:
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
            spans = req.regions
            speech_s = sum(b - a for a, b in spans) if spans is not None else audio_s
            log.info("%s: %.1f s audio, ASR %.1f s (rtf %.3f): no transcript",
                     source.source_id, audio_s, elapsed, elapsed / max(audio_s, 1e-9))
            yield pvalue.TaggedOutput(REJECTED, _asr_reject(
                source, self._run_id, "no_transcript",
                f"ASR ({result.model}) found no speech in {speech_s:.1f} s of VAD regions"
                + (f" ({len(result.dropped)} segment(s) dropped as hallucinations)"
                   if result.dropped else ""),
            ))
            return
        log.info("asr: %s: %.1f s audio in %.1f s (rtf %.3f), %d ASR segment(s), language %s",
                 printable(source.uri), audio_s, elapsed, elapsed / max(audio_s, 1e-9), len(result.segments),
                 result.language)
        clips = speech_clips(req.audio, result, self._sr) if self._keep_clips else ()
        yield source.source_id, AsrOutcome(dataclasses.replace(result, dropped=[]), audio_s, clips)


def _asr_failures(run_id: str):
    def rows(dead_letter):
        batch, error = dead_letter
        for source, _req in batch:
            Metrics.counter(NS, "asr.model_error").inc()
            log.warning("%s: ASR failed: %s", source.source_id, printable(_dead_letter_text(error)))
            yield _asr_reject(source, run_id, "model_error", _dead_letter_text(error))
    return rows


def _diarize_requests(cfg: DiarizationConfig):
    def requests(element: SpeechInput):
        # no region: nothing to attribute ("PrepareAsr" writes the ledger row)
        if element.regions is None or element.regions:
            Metrics.counter(NS, "diarize.sources").inc()
            yield element.source, DiarizeRequest(element.audio, **_speaker_hints(element.source, cfg))
    return requests


def _diarize_outcome(keyed):
    source, prediction = keyed
    result: DiarizationResult = prediction.inference
    audio_s = prediction.example.audio.shape[0] / 16000
    if audio_s > 0:
        Metrics.distribution(NS, "diarize.rtf_x1000").update(int(round(1000 * result.elapsed_s / audio_s)))
    turns = list(result.turns)
    exclusive = list(result.exclusive) if result.exclusive and turns else _exclusive(turns)
    log.info("diarize: %s: %.1f s audio in %.1f s (rtf %.3f), %d speaker(s)", printable(source.uri),
             audio_s, result.elapsed_s, result.elapsed_s / max(audio_s, 1e-9),
             len({t.speaker for t in turns}))
    return source.source_id, DiarizeOutcome(turns, exclusive, result.model, result.elapsed_s, result.confidence)


def _diarize_failures(run_id: str):
    def rows(dead_letter):
        batch, error = dead_letter
        for source, _req in batch:
            Metrics.counter(NS, "diarize.model_error").inc()
            log.warning("%s: diarization failed: %s", source.source_id, printable(_dead_letter_text(error)))
            yield Rejection.make(
                stage="diarize", reason="diarization_failed",
                detail=f"speakers left unattributed (speaker None): {_dead_letter_text(error)}",
                uri=source.uri, run_id=run_id, source_id=source.source_id, item_id=source.source_id,
            )
    return rows


def overlapped_flags(turns: list[Turn]) -> list[bool]:
    """For each turn: does a turn of another speaker intersect it (overlapped speech)?"""
    order = sorted(range(len(turns)), key=lambda i: (turns[i].start, turns[i].end))
    flags = [False] * len(turns)
    active: list[int] = []  # indices whose end is after the current start
    for i in order:
        t = turns[i]
        active = [j for j in active if turns[j].end > t.start]
        for j in active:
            if turns[j].speaker != t.speaker and min(turns[j].end, t.end) > t.start:
                flags[i] = flags[j] = True
        active.append(i)
    return flags


def turn_rows(source_id: str, turns: list[Turn], labels: dict[int, int], model: str | None,
              run_id: str, confidence: float | None = None) -> list[TurnRow]:
    """`turns` table rows; `labels` maps the diarizer's speaker ids to the segments' numbers
    (speakers without words are numbered after those, by first turn)."""
    labels = dict(labels)
    for t in sorted(turns, key=lambda t: (t.start, t.end, t.speaker)):
        if t.speaker not in labels:
            labels[t.speaker] = len(labels)
    flags = overlapped_flags(turns)
    ordered = sorted(zip(turns, flags), key=lambda tf: (tf[0].start, tf[0].end, labels[tf[0].speaker]))
    return [
        TurnRow(turn_id=f"{source_id}-turn-{n:05d}", source_id=source_id,
                speaker=f"{source_id}-spk{labels[t.speaker]}", start=float(t.start), end=float(t.end),
                overlapped=bool(f), diarization_model=model, run_id=run_id,
                diarization_confidence=confidence)
        for n, (t, f) in enumerate(ordered)
    ]


def _dnsmos_requests(sample_rate: int):
    def requests(element: SpeechInput):
        from mmcurate.transforms.segment_quality import DnsmosRequest, speech_stretches

        # no region: no segment to score
        if element.regions is None or element.regions:
            spans = ([(0.0, element.audio.shape[0] / sample_rate)] if element.regions is None
                     else [(r.start, r.end) for r in element.regions])
            yield element.source, DnsmosRequest(element.audio, speech_stretches(spans))
    return requests


def _dnsmos_outcome(keyed):
    source, prediction = keyed
    Metrics.counter(NS, "quality.dnsmos_windows").inc(len(prediction.inference))
    return source.source_id, list(prediction.inference)


def _dnsmos_failures(run_id: str):
    def rows(dead_letter):
        batch, error = dead_letter
        for source, _req in batch:
            Metrics.counter(NS, "quality.dnsmos_error").inc()
            log.warning("%s: DNSMOS failed: %s", source.source_id, printable(_dead_letter_text(error)))
            yield Rejection.make(
                stage="quality", reason="dnsmos_error",
                detail=f"segments judged without DNSMOS: {_dead_letter_text(error)}",
                uri=source.uri, run_id=run_id, source_id=source.source_id, item_id=source.source_id)
    return rows


class _AttributeFn(beam.DoFn):
    """Joined (source_id, {source, asr, turns}) -> Segment rows + one Transcript row + turns."""

    def __init__(self, segments: SegmentsConfig, sample_rate: int, run_id: str, diarize: bool,
                 events: TurnEventsConfig):
        self._cfg = segments
        self._events = events
        self._sr = sample_rate
        self._run_id = run_id
        self._diarize = diarize
        self._segments = Metrics.counter(NS, "asr.segments")
        self._words = Metrics.counter(NS, "asr.words")
        self._unattributed = Metrics.counter(NS, "diarize.unattributed_segments")
        self._turns = Metrics.counter(NS, "diarize.turns")
        self._n_events = Metrics.counter(NS, "diarize.turn_events")
        self._audio_bytes = Metrics.counter(NS, "segments.audio_bytes")
        self._redecoded = Metrics.counter(NS, "segments.audio_redecoded")

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]):
        source_id, groups = element
        sources = list(groups["source"])
        asrs = list(groups["asr"])
        diar: DiarizeOutcome | None = next(iter(groups.get("turns", [])), None)
        dnsmos = next(iter(groups.get("dnsmos", [])), None)
        if not sources:
            return
        source: SourceRecord = sources[0]
        if not asrs:
            # ASR rejected this source (its ledger row is written by the ASR steps); the
            # diarizer's turns are still real and auditable
            if diar is not None and diar.turns:
                yield from self._turn_rows(source_id, diar, {}, (), None)
            return
        asr: AsrOutcome = asrs[0]

        turns: list[Turn] = []
        default_speaker: int | None = 0  # no diarization step: one speaker
        diarization_model = confidence = None
        if self._diarize:
            diarization_model = diar.model if diar else None
            confidence = diar.confidence if diar else None
            default_speaker = None  # diarization failed or found no turn: unknown speaker
            if diar is not None and diar.turns == []:
                yield pvalue.TaggedOutput(REJECTED, Rejection.make(
                    stage="diarize", reason="no_turns",
                    detail="diarization found no speaker turn where ASR found words; "
                           "segments written with speaker None",
                    uri=source.uri, run_id=self._run_id, source_id=source_id, item_id=source_id,
                ))
            elif diar is not None and diar.turns:
                turns = diar.exclusive
        utts = cut_utterances(
            asr.result, turns, source_id=source_id,
            max_duration_s=self._cfg.max_duration_s, default_speaker=default_speaker,
        )
        res = asr.result
        if diar is not None and diar.turns:
            labels = {u.raw_speaker: u.speaker for u in utts if u.raw_speaker is not None}
            words = [(f"{source_id}-spk{u.speaker}", w.start, w.end, w.word)
                     for u in utts if u.speaker is not None for w in u.words]
            yield from self._turn_rows(source_id, diar, labels, words, res.language)
        lines = []
        cut = _SegmentAudio(self._cfg, self._sr, asr.clips, source) if self._cfg.include_audio else None
        for u in utts:
            audio = None
            if cut is not None:
                audio = cut.encoded(u)
                self._audio_bytes.inc(len(audio["bytes"]))
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
                audio=audio,
                run_id=self._run_id,
            )
            lines.append(f"[{'spk?' if u.speaker is None else f'spk{u.speaker}'}] {u.text}")
        if cut is not None and cut.redecoded:
            self._redecoded.inc()
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
            dnsmos_windows=dnsmos,
            diarization_confidence=confidence,
        ))
        _log_source(source_id, asr, diar if self._diarize else None, utts, n_speakers)

    def _turn_rows(self, source_id: str, diar: DiarizeOutcome, labels: dict[int, int],
                   words: list[tuple[str, float, float, str]], language: str | None):
        """The `turns` rows and the turn-taking events derived from them (and the words, which
        tell a back-channel's length in words)."""
        rows = turn_rows(source_id, diar.turns, labels, diar.model, self._run_id, diar.confidence)
        self._turns.inc(len(rows))
        for row in rows:
            yield pvalue.TaggedOutput("turns", row)
        events = detect([(r.speaker, r.start, r.end) for r in rows], self._events, words, language)
        self._n_events.inc(len(events))
        for row in event_rows(source_id, events, self._run_id, diar.model, diar.confidence):
            yield pvalue.TaggedOutput("turn_events", row)


class _SegmentAudio:
    """Each utterance's audio, cut from the clips that came through the join and encoded as
    segments.audio_format: {"bytes": the file, "path": f"{segment_id}.{ext}"}. An utterance no
    clip holds (a backend whose words lie outside its own segments) decodes the source again,
    once, with a log line."""

    def __init__(self, cfg: SegmentsConfig, sample_rate: int, clips: tuple[SpeechClip, ...],
                 source: SourceRecord):
        self._cfg, self._sr, self._clips, self._source = cfg, sample_rate, clips, source
        self._full = None
        self.redecoded = False

    def samples(self, a: int, b: int):
        import numpy as np

        for c in self._clips:
            if c.start <= a and b <= c.end:
                pcm = np.frombuffer(c.pcm, dtype="<i2")[a - c.start : b - c.start]
                return pcm.astype(np.float32) / 32767.0
        if self._full is None:
            from mmcurate.transforms.decode import decode_audio

            log.warning("%s: segment audio outside the clips kept from the decode: decoding the "
                        "source again", self._source.source_id)
            self._full = decode_audio(self._source.media_uri, sample_rate=self._sr)
            self.redecoded = True
        return self._full[a:b]

    def encoded(self, u: Utterance) -> dict:
        a, b = int(u.start * self._sr), int(round(u.end * self._sr))
        samples = self.samples(a, max(a, b))
        if self._cfg.audio_format == "opus":
            data = encode_opus(samples, self._sr, self._cfg.opus_bitrate_kbps * 1000)
        else:
            data = encode_flac(samples, self._sr)
        return {"bytes": data, "path": f"{u.segment_id}.{self._cfg.audio_format}"}


def _log_source(source_id: str, asr: AsrOutcome, diar: DiarizeOutcome | None,
                utts: list[Utterance], n_speakers: int) -> None:
    a = asr.audio_s or float("nan")
    diar_part = "diarization off"
    if diar is not None:
        diar_part = f"diarization {diar.elapsed_s:.1f} s (rtf {diar.elapsed_s / a:.3f})"
    log.info(
        "%s: %.1f s audio, ASR %.1f s (rtf %.3f), %s; %d segments, %d speakers, language %s",
        source_id, asr.audio_s, asr.elapsed_s, asr.elapsed_s / a, diar_part, len(utts),
        n_speakers, asr.result.language,
    )


class TranscribeSpeech(beam.PTransform):
    """PCollection[SpeechInput] -> {"segments", "transcripts", "turns", "turn_events", "rejected"}.

    The models are `RunInference` model handlers (defaults: `AsrModelHandler(asr)`,
    `DiarizationModelHandler(diarization)`); tests pass handlers with fake loaders.
    `dnsmos_handler` (`mmcurate.transforms.segment_quality.DnsmosModelHandler`, when the quality stage
    runs) scores the same samples for DNSMOS; None: no DNSMOS step. Regions
    None in a SpeechInput means "transcribe the whole source" (no VAD ran); audio None means
    the samples were not kept upstream and are decoded here, once for both models.
    """

    def __init__(self, asr: AsrConfig, diarization: DiarizationConfig, segments: SegmentsConfig,
                 run_id: str, *, sample_rate: int = 16000, events: TurnEventsConfig | None = None,
                 asr_handler: ModelHandler | None = None,
                 diarization_handler: ModelHandler | None = None,
                 dnsmos_handler: ModelHandler | None = None):
        super().__init__()
        self.dnsmos_handler = dnsmos_handler
        self._asr = asr
        self._diar = diarization
        self._segments = segments
        self._events = events or TurnEventsConfig()
        self._run_id = run_id
        self._sr = sample_rate
        self.asr_handler = asr_handler or AsrModelHandler(asr)
        self.diarize = diarization.backend != "none"
        self.diarization_handler = (diarization_handler or DiarizationModelHandler(diarization)
                                    if self.diarize else None)

    def model_info(self) -> list[dict]:
        """The run manifest's model entries: the handlers' own."""
        infos = list(self.asr_handler.model_info())
        if self.diarization_handler is not None:
            infos.extend(self.diarization_handler.model_info())
        return infos

    def expand(self, pcoll):
        run_id = self._run_id
        decoded = pcoll | "DecodeOnce" >> beam.ParDo(_DecodeOnceFn(self._sr, run_id)).with_outputs(
            REJECTED, main="decoded")
        speech = decoded.decoded
        rejected = [decoded[REJECTED]]

        asr_requests = speech | "PrepareAsr" >> beam.ParDo(_PrepareAsrFn(self._asr, run_id)).with_outputs(
            REJECTED, main="requests")
        rejected.append(asr_requests[REJECTED])
        asr_results, asr_failed = asr_requests.requests | "Transcribe" >> RunInference(
            KeyedModelHandler(self.asr_handler)).with_exception_handling()
        asr = asr_results | "AsrOutcomes" >> beam.ParDo(
            _AsrOutcomeFn(self._sr, run_id, keep_clips=self._segments.include_audio)).with_outputs(
            REJECTED, main="asr")
        rejected += [asr[REJECTED],
                     asr_failed.failed_inferences | "AsrFailures" >> beam.FlatMap(_asr_failures(run_id))]

        keyed_sources = speech | "KeySources" >> beam.Map(lambda e: (e.source.source_id, e.source))
        groups = {"source": keyed_sources, "asr": asr.asr}
        if self.diarize:
            diar_results, diar_failed = (
                speech
                | "PrepareDiarization" >> beam.FlatMap(_diarize_requests(self._diar))
                | "Diarize" >> RunInference(KeyedModelHandler(self.diarization_handler)).with_exception_handling()
            )
            groups["turns"] = diar_results | "DiarizeOutcomes" >> beam.Map(_diarize_outcome)
            rejected.append(diar_failed.failed_inferences
                            | "DiarizationFailures" >> beam.FlatMap(_diarize_failures(run_id)))
        if self.dnsmos_handler is not None:
            dnsmos_results, dnsmos_failed = (
                speech
                | "PrepareDnsmos" >> beam.FlatMap(_dnsmos_requests(self._sr))
                | "Dnsmos" >> RunInference(KeyedModelHandler(self.dnsmos_handler)).with_exception_handling()
            )
            groups["dnsmos"] = dnsmos_results | "DnsmosOutcomes" >> beam.Map(_dnsmos_outcome)
            rejected.append(dnsmos_failed.failed_inferences
                            | "DnsmosFailures" >> beam.FlatMap(_dnsmos_failures(run_id)))
        attributed = (
            groups
            | "JoinAsrAndTurns" >> beam.CoGroupByKey()
            | "AttributeSpeakers" >> beam.ParDo(
                _AttributeFn(self._segments, self._sr, run_id, self.diarize, self._events)).with_outputs(
                "transcripts", "turns", "turn_events", REJECTED, main="segments")
        )
        rejected.append(attributed[REJECTED])
        return {
            "segments": attributed.segments,
            "transcripts": attributed.transcripts,
            "turns": attributed.turns,
            "turn_events": attributed.turn_events,
            "rejected": rejected | "FlattenSpeechRejections" >> beam.Flatten(),
        }
