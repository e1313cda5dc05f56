"""Speech recognition with word timestamps: faster-whisper (embedded) and whisperx (production).

Both backends take the whole source as 16 kHz mono float32 plus the VAD speech regions, decode
only inside those regions, and return an `AsrResult` whose times are absolute seconds in the
source. Models load once, when the transcriber is built (the Beam stage builds it in
`DoFn.setup`); heavy imports happen there, never at import time.

Hallucination guard (both backends; `drop_reason`, thresholds in `AsrConfig`, measured under
six CPU instruction-set settings, see the comment above `drop_reason`): Whisper's own rules
(openai/whisper transcribe.py) plus three for input a VAD already called speech:
  * no_speech_prob > no_speech_alone_threshold (0.465) -> no_speech
  * no_speech_prob > no_speech_threshold (0.6; vad_no_speech_threshold 0.38 for VAD input)
    AND avg_logprob < log_prob_threshold (-1.0) -> no_speech (Whisper's rule)
  * every word probability < low_confidence_word_prob (0.1) AND no_speech_prob >
    low_confidence_no_speech (0.2) -> low_confidence
  * compression_ratio > compression_ratio_threshold (2.4, repetition loops) -> repetitive
  * text with no letter or digit at all (e.g. "♪", "...") -> no_words: it carries no words.
A missing score (whisperx reports no no_speech_prob; its words may have no probability) is no
evidence: a rule that needs it does not fire.
Dropped segments come back in the call's own result, `AsrResult.dropped`, as (reason,
AsrSegment) pairs so the caller can put them in the ledger (nothing is kept on the model
object: one model serves several threads).

Why one module of this length: the config, the two Whisper backends on one base, the
hallucination rules both apply, the windowing helpers both use and the RunInference handler.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from mmcurate.schemas.params import Rule, non_negative, positive, unit_interval
from mmcurate.schemas.records import AsrResult, AsrSegment, Word
from mmcurate.transforms import models


@dataclass
class AsrConfig:
    backend: str = "faster-whisper"  # faster-whisper (embedded) | whisperx (production)
    model: str = "whisper-base"  # whisper-base | whisper-tiny.en | path to a CTranslate2 dir
    device: str = "cpu"
    compute_type: str = "int8"
    # Beam resource hint for the Transcribe step (e.g. Dataflow's
    # "type:nvidia-l4;count:1;install-nvidia-driver"); None: DEFAULT_GPU_HINT when device is cuda
    accelerator: str | None = None
    # one model copy per worker process across processes too (Beam multi_process_shared); for
    # large GPU models where each process loading its own copy would not fit
    share_across_processes: bool = False
    beam_size: int = 5
    language: str | None = None  # None: detect from audio
    condition_on_previous_text: bool = False  # on, it feeds hallucination loops
    # False: one beam-search decode per window at temperature 0, so the same audio gives the same
    # text run after run. True: Whisper's fallback, re-decoding a window whose text looks
    # repetitive or unlikely by sampling at temperatures 0.2 .. 1.0. CTranslate2 seeds its sampler
    # once per thread, not per call, so those windows' text then changes between runs (mostly
    # invented text on noise, which the rules below drop either way).
    temperature_fallback: bool = False
    batch_size: int = 8
    # faster-whisper: decode the VAD regions as <= 30 s chunks, batch_size windows per encoder /
    # decoder call (faster-whisper's BatchedInferencePipeline, as whisperx does), one segment per
    # window; False: one window at a time, segments at Whisper's own timestamps. Speed and WER:
    # bench/README.md. The hallucination rules below hold on both: with asr_scores.py's batched
    # scores, noise/tone windows have no_speech_prob >= 0.578 (dropped: no_speech above 0.6, or
    # avg_logprob < -0.5, or repetitive) and real speech <= 0.442 with avg_logprob >= -0.46 (kept:
    # 565-566 of 565-566 words), native and under the AVX2 variables.
    batched: bool = True
    cpu_threads: int = 0  # 0: cores / workers on the local runner with several workers, else CTranslate2 default
    # CTranslate2 replicas that transcribe at the same time (faster-whisper's num_workers):
    # > 1 lets the worker threads of one process (multi-threading DirectRunner) each run a
    # source, with cpu_threads each (bench/README.md, bench_speech.py). 0: one per worker thread of the
    # local runner, else 1 (mmcurate.pipelines.curate.local_parallelism)
    num_workers: int = 0
    # whisperx only
    whisperx_model_dir: str | None = None  # local CT2 model dir (e.g. faster-whisper-large-v3)
    whisperx_model_size: str = "large-v3"
    align_model_dir: str | None = None  # local wav2vec2 alignment model; None: no alignment
    # Segments whose ASR scores say "no speech" are dropped (Whisper's own defaults; they also
    # go to the decoder, where they drive faster-whisper's temperature fallback)
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    # Rules for VAD-gated input (see the comment above `drop_reason`; measurements in
    # bench/README.md, "asr_scores.py: Whisper hallucination thresholds"). None: rule off.
    # no_speech_prob above this drops on its own: noise text >= 0.529, speech <= 0.401 (midpoint;
    # margins 0.064 / 0.064)
    no_speech_alone_threshold: float | None = 0.465
    # ... but between it and no_speech_threshold (0.6) only with avg_logprob below this: on an
    # AVX-512 CPU a 30 s window of real far-field meeting speech (ami/dev01, 53 fluent words)
    # scored no_speech_prob 0.484 with avg_logprob -0.354, while every invented text in that
    # band had avg_logprob <= -0.61 (above 0.6 confident loops reach -0.08, so
    # there no_speech_prob alone decides). None: no_speech_prob alone decides everywhere.
    no_speech_alone_max_logprob: float | None = -0.5
    # Whisper's AND-rule (avg_logprob < log_prob_threshold) with this no_speech threshold instead
    # of 0.6: noise with avg_logprob < -1.0 had no_speech_prob >= 0.529, speech <= 0.244
    # (margins 0.149 / 0.136); speech above 0.38 had avg_logprob >= -0.41
    vad_no_speech_threshold: float | None = 0.38
    # every word below this AND no_speech_prob above low_confidence_no_speech -> low_confidence:
    # noise "You"/"a": words <= 0.017 at no_speech_prob >= 0.529; speech above 0.2 has a word
    # >= 0.36; speech with all words < 0.1 ("test." 0.062) has no_speech_prob 0.004
    low_confidence_word_prob: float | None = 0.1
    low_confidence_no_speech: float = 0.2

    RULES: ClassVar[dict] = {
        "backend": Rule(choices=("faster-whisper", "whisperx")),
        "device": Rule(check=lambda d: None if d in ("cpu", "cuda", "auto") or d.startswith("cuda:")
                       else f"{d!r}: use cpu, cuda, cuda:N or auto"),
        "compute_type": Rule(choices=("default", "auto", "int8", "int8_float32", "int8_float16",
                                      "int8_bfloat16", "int16", "float16", "bfloat16", "float32"),
                             why="CTranslate2 compute types"),
        "beam_size": Rule(ge=1), "batch_size": Rule(ge=1),
        "num_workers": non_negative("0: one per worker thread of the local runner"),
        "cpu_threads": non_negative("0: cores / workers on the local runner, else CTranslate2's default"),
        "language": Rule(check=lambda v: None if v.isalpha() and 2 <= len(v) <= 3 else
                         f"{v!r}: a language code like 'en' or 'de', or null to detect"),
        "no_speech_threshold": unit_interval("a probability"),
        "log_prob_threshold": Rule(le=0.0, why="a mean log probability"),
        "compression_ratio_threshold": positive(),
        "no_speech_alone_threshold": unit_interval("a probability"),
        "no_speech_alone_max_logprob": Rule(le=0.0, why="a mean log-probability"),
        "vad_no_speech_threshold": unit_interval("a probability"),
        "low_confidence_word_prob": unit_interval("a probability"),
        "low_confidence_no_speech": unit_interval("a probability"),
        "align_model_dir": Rule(check=lambda p: None if os.path.isdir(p) else
                                f"{p!r} is not a directory (a local wav2vec2 model)"),
    }


log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Regions are decoded in groups of at most this much speech (memory stays bounded for hours-long
# sources; each group is one faster-whisper call, long enough that the 30 s windows stay full).
GROUP_SPEECH_S = 600.0
# A progress log line per this much source audio on long sources.
PROGRESS_EVERY_S = 300.0
# Silence put between joined regions so that a word never straddles two regions.
JOIN_GAP_S = 0.1
# Whisper's temperature schedule: the first is beam search, the rest are sampled.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _temperatures(cfg: AsrConfig) -> list[float]:
    return list(FALLBACK_TEMPERATURES if cfg.temperature_fallback else FALLBACK_TEMPERATURES[:1])


class Transcriber(Protocol):
    def transcribe(
        self,
        audio: np.ndarray,
        regions: list[tuple[float, float]] | None = None,
        language: str | None = None,
    ) -> AsrResult: ...

    def model_info(self) -> dict: ...


def load_transcriber(cfg: AsrConfig) -> Transcriber:
    """The configured backend with its model loaded (call once per worker, in DoFn.setup)."""
    if cfg.backend == "faster-whisper":
        return FasterWhisperTranscriber(cfg)
    if cfg.backend == "whisperx":
        return WhisperXTranscriber(cfg)
    raise ValueError(f"asr.backend {cfg.backend!r}: use 'faster-whisper' or 'whisperx'")


# ---------------------------------------------------------------------------------------------
# shared helpers


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: UTF-8 bytes / zlib-compressed bytes."""
    b = text.encode("utf-8")
    return len(b) / len(zlib.compress(b)) if b else 0.0


# Rules for VAD-gated input. Whisper keeps a "no speech" window that decodes confidently (it has
# no VAD and must not skip quiet speech); our input is VAD speech, and whisper-base invents text
# on noise a VAD passes. Only no_speech_prob (nsp) separates reliably: noise text 0.529-0.787,
# speech <= 0.401 under six CPU ISA settings (avg_logprob and word probabilities overlap: noise
# text is mostly sampled). no_speech: nsp > 0.465 (the gap's midpoint), below 0.6 only with
# avg_logprob < -0.5 (fluent ami/dev01 speech: nsp 0.484, avg_logprob -0.354); or Whisper's
# AND-rule at nsp > 0.38 (speech under avg_logprob -1.0 had nsp <= 0.244). low_confidence: every
# word < 0.1 with nsp > 0.2 (noise "You"/"a" <= 0.017; speech above nsp 0.2 has a word >= 0.36).
# Measurements: bench/README.md, "asr_scores.py: Whisper hallucination thresholds, noise vs
# speech scores (2026-11-23)".


def drop_reason(seg: AsrSegment, cfg: AsrConfig) -> str | None:
    """Why a segment is a hallucination, as a stable code, or None to keep it.

    Codes: no_speech, low_confidence, repetitive, no_words (rules above, measurements in
    bench/README.md; thresholds from `cfg`). A score that is None (whisperx: no no_speech_prob; interpolated
    words: no probability) never counts as evidence, so those rules do not fire without it.
    """
    nsp, lp = seg.no_speech_prob, seg.avg_logprob
    if nsp is not None:
        if cfg.no_speech_alone_threshold is not None and nsp > cfg.no_speech_alone_threshold:
            doubt = cfg.no_speech_alone_max_logprob
            if doubt is None or lp is None or lp < doubt or nsp > cfg.no_speech_threshold:
                return "no_speech"
        and_threshold = cfg.no_speech_threshold  # Whisper's AND-rule, lower for VAD input
        if cfg.vad_no_speech_threshold is not None:
            and_threshold = min(and_threshold, cfg.vad_no_speech_threshold)
        if lp is not None and nsp > and_threshold and lp < cfg.log_prob_threshold:
            return "no_speech"
        probs = [w.probability for w in seg.words if w.probability is not None]
        if (
            cfg.low_confidence_word_prob is not None
            and probs
            and nsp > cfg.low_confidence_no_speech
            and max(probs) < cfg.low_confidence_word_prob
        ):
            return "low_confidence"
    if seg.compression_ratio is not None and seg.compression_ratio > cfg.compression_ratio_threshold:
        return "repetitive"
    if not any(c.isalnum() for c in seg.text):
        return "no_words"
    return None


def normalize_regions(
    regions: Sequence[tuple[float, float]] | None, duration_s: float
) -> list[tuple[float, float]]:
    """Regions clipped to the audio, sorted, overlaps merged, empty ones dropped."""
    if regions is None:
        return [(0.0, duration_s)] if duration_s > 0 else []
    out: list[list[float]] = []
    for s, e in sorted((max(0.0, float(s)), min(duration_s, float(e))) for s, e in regions):
        if e - s < 1.0 / SAMPLE_RATE:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _check_audio(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"audio must be mono 1-D 16 kHz samples, got shape {a.shape}")
    return a.astype(np.float32, copy=False)


class _TimeMap:
    """Maps times in joined-regions audio back to absolute source seconds."""

    def __init__(self) -> None:
        self.joined_starts: list[float] = []
        self.joined_ends: list[float] = []
        self.abs_starts: list[float] = []

    def add(self, joined_start: float, abs_start: float, length: float) -> None:
        self.joined_starts.append(joined_start)
        self.joined_ends.append(joined_start + length)
        self.abs_starts.append(abs_start)

    def __call__(self, t: float, is_end: bool = False) -> float:
        i = max(0, bisect.bisect_right(self.joined_starts, t) - 1)
        if t > self.joined_ends[i]:  # in the gap after region i
            if is_end or i + 1 == len(self.joined_starts):
                t = self.joined_ends[i]
            else:
                i += 1
                t = self.joined_starts[i]
        return float(round(self.abs_starts[i] + (float(t) - self.joined_starts[i]), 3))

    def span(self, start: float, end: float) -> tuple[float, float]:
        """A word's (start, end) in source seconds. A word is never split by a cut: when its
        joined-audio span covers a join, it goes whole into the region holding most of it.
        Whisper's word times come from attention alignment and can spill over the 0.1 s join
        (under AVX2 kernels, jfk's "ask", spoken at 3.3 s after a cut pause, came out as
        2.1-3.7 s: 0.3 s in the region before the cut, 0.7 s after it), and the audio cut
        out between two regions was never heard by the model."""
        i = max(0, bisect.bisect_right(self.joined_starts, start) - 1)
        j = max(0, bisect.bisect_right(self.joined_starts, end) - 1)
        if i != j:
            k = max(range(i, j + 1), key=lambda r: (
                min(end, self.joined_ends[r]) - max(start, self.joined_starts[r]), -r))
            start, end = max(start, self.joined_starts[k]), min(end, self.joined_ends[k])
        return self(start), self(end, is_end=True)


def _join(audio: np.ndarray, regions: list[tuple[float, float]]) -> tuple[np.ndarray, _TimeMap]:
    gap = np.zeros(int(JOIN_GAP_S * SAMPLE_RATE), dtype=np.float32)
    pieces: list[np.ndarray] = []
    tmap = _TimeMap()
    pos = 0
    for s, e in regions:
        a, b = int(round(s * SAMPLE_RATE)), int(round(e * SAMPLE_RATE))
        if pieces:
            pieces.append(gap)
            pos += len(gap)
        piece = audio[a:b]
        tmap.add(pos / SAMPLE_RATE, a / SAMPLE_RATE, len(piece) / SAMPLE_RATE)
        pieces.append(piece)
        pos += len(piece)
    return np.concatenate(pieces), tmap


def _groups(regions: list[tuple[float, float]], max_speech_s: float) -> list[list[tuple[float, float]]]:
    groups: list[list[tuple[float, float]]] = []
    total = 0.0
    for r in regions:
        if not groups or total + (r[1] - r[0]) > max_speech_s:
            groups.append([])
            total = 0.0
        groups[-1].append(r)
        total += r[1] - r[0]
    return groups


# Batched decoding windows: Whisper's own 30 s input.
BATCH_WINDOW_S = 30.0


def batch_windows(joined: np.ndarray, tmap: "_TimeMap", max_s: float = BATCH_WINDOW_S
                  ) -> list[tuple[float, float]]:
    """Windows (seconds in the joined audio) of at most `max_s` for batched decoding.

    Consecutive regions are packed into one window while it stays <= max_s (whisperx's
    merge_chunks rule; the 0.1 s joins between regions are inside); a region longer than
    max_s is cut at its quietest 100 ms (RMS) in the last third of each window, so a cut
    falls in a pause between words where there is one.
    """
    spans: list[tuple[float, float]] = []
    for s, e in zip(tmap.joined_starts, tmap.joined_ends):
        while e - s > max_s:
            lo, hi = int((s + max_s * 2 / 3) * SAMPLE_RATE), int((s + max_s) * SAMPLE_RATE)
            frame = SAMPLE_RATE // 10
            seg = joined[lo:hi]
            n = len(seg) // frame
            if n > 0:
                rms = np.sqrt((seg[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1))
                cut = (lo + int(np.argmin(rms)) * frame + frame // 2) / SAMPLE_RATE
            else:
                cut = s + max_s
            spans.append((s, cut))
            s = cut
        spans.append((s, e))
    windows: list[list[float]] = []
    for s, e in spans:
        if windows and e - windows[-1][0] <= max_s:
            windows[-1][1] = e
        else:
            windows.append([s, e])
    limit = len(joined) / SAMPLE_RATE
    return [(round(s, 3), min(round(e, 3), limit)) for s, e in windows]


def interpolate_words(text: str, start: float, end: float) -> list[Word]:
    """Words of `text` with times spread over [start, end] by character length (no model).

    probability is None: these times are an estimate, not a measurement.
    """
    tokens = text.split()
    if not tokens:
        return []
    weights = [len(t) + 1 for t in tokens]  # +1: the space before each word takes time too
    total = float(sum(weights))
    span = max(0.0, end - start)
    words, acc = [], 0.0
    for tok, w in zip(tokens, weights):
        ws = start + span * acc / total
        acc += w
        we = start + span * acc / total
        words.append(Word(tok, round(ws, 3), round(we, 3), None))  # type: ignore[arg-type]
    return words


# ---------------------------------------------------------------------------------------------
# faster-whisper (embedded default)


class _WhisperBackend:
    """What both backends share: the manifest's model info, the input checks of a call and the
    hallucination rules' split of its segments into kept and dropped."""

    backend: ClassVar[str]
    cfg: AsrConfig
    _info: dict
    name: str
    version: str

    def model_info(self) -> dict:
        return {**self._info, "backend": self.backend, "source": self._info["version"],
                "version": self.version, "model": self.name}

    def _call(self, audio: np.ndarray, regions, language: str | None):
        """(audio, regions, language hint) of a transcribe call, checked and normalised."""
        audio = _check_audio(audio)
        return audio, normalize_regions(regions, len(audio) / SAMPLE_RATE), language or self.cfg.language

    def _result(self, lang: str | None, lang_p: float | None, segments: list[AsrSegment]) -> AsrResult:
        """The call's result: each segment kept, or dropped with its reason (`drop_reason`)."""
        kept, dropped = [], []
        for seg in segments:
            reason = drop_reason(seg, self.cfg)
            if reason:
                dropped.append((reason, seg))
            else:
                kept.append(seg)
        return AsrResult(lang, lang_p, kept, self.name, self.version, dropped)


class FasterWhisperTranscriber(_WhisperBackend):
    """faster-whisper with an embedded CTranslate2 Whisper model (default: whisper-base).

    Regions are joined (0.1 s of silence between them) in groups of at most 10 minutes of
    speech, decoded with word_timestamps=True and vad_filter=False (the regions already are
    the VAD), and times mapped back to the source. The language is detected once per call on
    the first group (i.e. on speech, not on a music intro) unless a hint is given, and then
    kept for the other groups; batched, on the group's first window, whose encoder output the
    decoding then reuses (`_detect_first_window`).
    """

    backend = "faster-whisper"

    def __init__(self, cfg: AsrConfig):
        import ctranslate2
        import faster_whisper

        self.cfg = cfg
        self._info = models.model_info("asr", cfg.model)
        self.model = faster_whisper.WhisperModel(
            self._info["path"],
            device=cfg.device,
            compute_type=cfg.compute_type,
            cpu_threads=cfg.cpu_threads,
            num_workers=max(1, cfg.num_workers),
            local_files_only=True,
        )
        self._batched = faster_whisper.BatchedInferencePipeline(self.model)
        self._first = _FirstWindowEncoding(self.model.encode)
        self.model.encode = self._first  # every encode of this model goes through the memo
        self.name = f"{self._info['name']} (faster-whisper)"
        self.version = (
            f"faster-whisper {faster_whisper.__version__}, ctranslate2 {ctranslate2.__version__}, "
            f"model sha256 {self._info['sha256'][:12]}"
        )

    def transcribe(
        self,
        audio: np.ndarray,
        regions: list[tuple[float, float]] | None = None,
        language: str | None = None,
    ) -> AsrResult:
        audio, regions, lang = self._call(audio, regions, language)
        lang_p = None
        detect = lang is None
        segments: list[AsrSegment] = []
        duration_s = len(audio) / SAMPLE_RATE
        next_log = PROGRESS_EVERY_S
        for group in _groups(regions, GROUP_SPEECH_S):
            joined, tmap = _join(audio, group)
            common = dict(language=lang, beam_size=self.cfg.beam_size, word_timestamps=True,
                          temperature=_temperatures(self.cfg),
                          no_speech_threshold=self.cfg.no_speech_threshold,
                          log_prob_threshold=self.cfg.log_prob_threshold,
                          compression_ratio_threshold=self.cfg.compression_ratio_threshold)
            if self.cfg.batched:
                windows = batch_windows(joined, tmap, BATCH_WINDOW_S)
                if lang is None and self.model.model.is_multilingual:
                    lang, lang_p = self._detect_first_window(joined, windows[0])
                    common["language"] = lang
                seg_iter, info = self._batched.transcribe(
                    joined, batch_size=self.cfg.batch_size,
                    clip_timestamps=[{"start": a, "end": b} for a, b in windows], **common)
            else:
                seg_iter, info = self.model.transcribe(
                    joined, condition_on_previous_text=self.cfg.condition_on_previous_text,
                    vad_filter=False, **common)
            if detect and lang_p is None:  # first group: detected on speech (English-only: "en", 1)
                lang, lang_p = info.language, float(info.language_probability)
            else:  # hinted (or detected earlier); an English-only model reports "en" anyway
                lang = info.language
            for s in seg_iter:
                words = [
                    Word(w.word.strip(), *tmap.span(w.start, w.end), float(w.probability))
                    for w in (s.words or [])
                    if w.word.strip()
                ]
                start, end = tmap(s.start), tmap(s.end, is_end=True)
                if words:
                    start, end = min(start, words[0].start), max(end, words[-1].end)
                if end >= next_log and duration_s >= PROGRESS_EVERY_S:
                    log.info("asr: %.0f / %.0f s of audio transcribed", end, duration_s)
                    next_log = (end // PROGRESS_EVERY_S + 1) * PROGRESS_EVERY_S
                segments.append(AsrSegment(
                    start=start,
                    end=max(start, end),
                    text=s.text.strip(),
                    words=words,
                    avg_logprob=float(s.avg_logprob),
                    no_speech_prob=float(s.no_speech_prob),
                    compression_ratio=float(s.compression_ratio),
                ))
        return self._result(lang, lang_p, segments)

    def _detect_first_window(self, joined: np.ndarray, window: tuple[float, float]) -> tuple[str, float]:
        """Whisper's language detection on the first batch window, exactly as the batch will
        feed it to the encoder (faster-whisper's clip slicing, features, padding), with the
        encoder output kept for that batch. faster-whisper detects on the first 30 s of the
        concatenated speech instead, one more encoder pass per source: ~0.6 CPU-s on one
        thread, a fifth of the ASR of the shared media's short files (bench/README.md,
        bench_cli_whisperx.py)."""
        from faster_whisper.audio import pad_or_trim

        a, b = window
        chunk = joined[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)]
        features = pad_or_trim(self.model.feature_extractor(chunk)[..., :-1])
        self._first.keep(features)
        lang, p, _ = self.model.detect_language(features=features)
        return lang, float(p)


class _FirstWindowEncoding:
    """WhisperModel.encode, with the encoder output of one kept window (per thread: one model
    serves several) handed back when a later batch starts with the same features, so that
    window is encoded once. The rest of that batch is encoded as usual."""

    def __init__(self, encode):
        self._encode = encode
        self._local = threading.local()

    def keep(self, features: np.ndarray) -> None:
        self._local.features, self._local.output = features, None

    def __call__(self, features: np.ndarray):
        import ctranslate2

        kept = getattr(self._local, "features", None)
        if kept is None:
            return self._encode(features)
        batch = features if features.ndim == 3 else features[None]
        if self._local.output is None:  # the detection's own call: encode and keep
            if batch.shape[0] != 1 or not np.array_equal(batch[0], kept):
                return self._encode(features)
            out = self._encode(features)
            self._local.output = np.array(out)  # a copy on the host: [1, frames, width]
            return out
        if not np.array_equal(batch[0], kept):
            return self._encode(features)
        first = self._local.output
        self._local.features = self._local.output = None  # one use
        if batch.shape[0] == 1:
            return ctranslate2.StorageView.from_array(first)
        rest = np.array(self._encode(batch[1:]))
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.concatenate([first, rest])))


# ---------------------------------------------------------------------------------------------
# whisperx (production)

NO_ALIGN_WARNING = (
    "whisperx: no local alignment model configured (asr.align_model_dir); "
    "word times are interpolated within segments"
)


def _offline_hub() -> None:
    """No hub, ever: set the offline switches, also in modules that already read them."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        import transformers.utils.hub as th

        if hasattr(th, "_is_offline_mode"):
            th._is_offline_mode = True
    except ImportError:
        pass


def _offline_sentence_splitter() -> None:
    """whisperx.align splits sentences with NLTK's punkt_tab data and, when that data is not
    installed, calls nltk.download (network). Shim: whisperx.alignment's loader falls back to
    an untrained PunktSentenceTokenizer (splits on sentence punctuation, no learned
    abbreviations) instead of downloading. Installed punkt_tab data is still used first."""
    import whisperx.alignment as wxa

    if getattr(wxa.nltk_load, "_mmcurate_offline", False):
        return
    real_load = wxa.nltk_load

    def load(resource_url, *args, **kwargs):
        try:
            return real_load(resource_url, *args, **kwargs)
        except LookupError:
            from nltk.tokenize.punkt import PunktSentenceTokenizer

            log.info("whisperx: NLTK %s not installed; untrained Punkt splits sentences",
                     resource_url)
            return PunktSentenceTokenizer()

    load._mmcurate_offline = True  # type: ignore[attr-defined]
    wxa.nltk_load = load


class WhisperXTranscriber(_WhisperBackend):
    """whisperx 3.8: batched faster-whisper over pyannote-VAD chunks, optional wav2vec2 alignment.

    * Model: `asr.whisperx_model_dir` (a local CTranslate2 dir, e.g. faster-whisper-large-v3);
      without it the embedded `asr.model` dir is used (tests, small runs).
    * VAD: whisperx's pyannote segmentation model shipped inside the whisperx wheel
      (whisperx/assets/pytorch_model.bin); HF_HUB_OFFLINE is forced so nothing reaches a hub.
      Its speech is intersected with our `regions`, then whisperx merges it into <= 30 s
      windows (its published method), so short pauses inside a window are decoded with their
      neighbours.
    * Language: detected by us on the first 30 s of region speech (so we get its probability)
      unless hinted, then passed to whisperx.
    * Words: with `asr.align_model_dir` (a local Hugging Face wav2vec2 CTC model directory)
      whisperx.align gives word times and scores. WITHOUT it a warning is logged once at load
      and words are the segment text split on spaces, times interpolated by character length
      inside the segment, probability None. Those times are estimates (segment-level accuracy).
      Sentence splitting inside whisperx.align never downloads NLTK data (see
      `_offline_sentence_splitter`).
    * Scores: whisperx's batched decoding reports avg_logprob only (no no_speech_prob, no
      temperature fallback); compression_ratio is computed from the text, and the same drop
      rules as the embedded backend apply to what is available.
    """

    backend = "whisperx"

    def __init__(self, cfg: AsrConfig):
        from pathlib import Path

        self.cfg = cfg
        if cfg.align_model_dir is not None:
            p = Path(cfg.align_model_dir).expanduser()
            if not (p.is_dir() and (p / "config.json").is_file()):
                raise FileNotFoundError(
                    f"asr.align_model_dir {cfg.align_model_dir!r} is not a local wav2vec2 model "
                    "directory (needs config.json, weights and the processor/tokenizer files); "
                    "set it to such a directory or leave it unset to skip alignment"
                )
            self.align_dir: str | None = str(p.resolve())
        else:
            self.align_dir = None
        _offline_hub()
        import ctranslate2
        import whisperx
        import whisperx.vads.pyannote as wx_pyannote

        self._whisperx = whisperx
        asset = Path(wx_pyannote.__file__).resolve().parents[1] / "assets" / "pytorch_model.bin"
        if not asset.is_file():
            raise FileNotFoundError(f"whisperx's packaged pyannote VAD model is missing: {asset}")
        if cfg.whisperx_model_dir:
            self._info = models.model_info("asr", cfg.whisperx_model_dir)
        else:
            log.info("whisperx: no asr.whisperx_model_dir; using embedded %s", cfg.model)
            self._info = models.model_info("asr", cfg.model)
        self.pipeline = whisperx.load_model(
            self._info["path"],
            cfg.device,
            compute_type=cfg.compute_type,
            asr_options={
                "beam_size": cfg.beam_size,
                "condition_on_previous_text": cfg.condition_on_previous_text,
                "no_speech_threshold": cfg.no_speech_threshold,
                "log_prob_threshold": cfg.log_prob_threshold,
                "compression_ratio_threshold": cfg.compression_ratio_threshold,
                "temperatures": _temperatures(cfg),
            },
            language=cfg.language,
            vad_method="pyannote",
            local_files_only=True,
            threads=cfg.cpu_threads,
        )
        self._pyannote_vad = self.pipeline.vad_model
        self._lock = threading.Lock()
        self._align: dict[str, tuple] = {}
        if self.align_dir is None:
            log.warning(NO_ALIGN_WARNING)
        else:
            _offline_sentence_splitter()
            if cfg.language:
                self._align_model(cfg.language)
        self.name = f"{self._info['name']} (whisperx)"
        self.version = (
            f"whisperx {_dist_version('whisperx')}, ctranslate2 {ctranslate2.__version__}, "
            f"model sha256 {self._info['sha256'][:12]}"
            + (f", align {Path(self.align_dir).name}" if self.align_dir else ", no alignment")
        )

    def model_info(self) -> dict:
        return {**super().model_info(), "align_model_dir": self.align_dir}

    def _align_model(self, language: str) -> tuple:
        if language not in self._align:
            model, meta = self._whisperx.load_align_model(
                language, self.cfg.device, model_name=self.align_dir, model_cache_only=True
            )
            self._align[language] = (model, meta)
        return self._align[language]

    def _detect_language(self, audio: np.ndarray, regions: list[tuple[float, float]]) -> tuple[str, float]:
        speech, _ = _join(audio, _groups(regions, 30.0)[0])
        lang, prob, _ = self.pipeline.model.detect_language(audio=speech[: 30 * SAMPLE_RATE])
        return lang, float(prob)

    def transcribe(
        self,
        audio: np.ndarray,
        regions: list[tuple[float, float]] | None = None,
        language: str | None = None,
    ) -> AsrResult:
        audio, regions, lang = self._call(audio, regions, language)
        lang_p = None
        if not regions:
            return AsrResult(lang, lang_p, [], self.name, self.version)
        if not self.pipeline.model.model.is_multilingual:
            lang = "en"
        elif lang is None:
            lang, lang_p = self._detect_language(audio, regions)
        with self._lock:
            self.pipeline.vad_model = _region_vad_class()(self._pyannote_vad, regions)
            try:
                out = self.pipeline.transcribe(audio, batch_size=self.cfg.batch_size, language=lang)
            finally:
                self.pipeline.vad_model = self._pyannote_vad
        raw = [s for s in out["segments"] if s.get("text", "").strip()]
        if self.align_dir is not None and raw:
            model, meta = self._align_model(lang)
            aligned = self._whisperx.align(
                raw, model, meta, audio, self.cfg.device, return_char_alignments=False
            )
            raw = aligned["segments"]
        segments: list[AsrSegment] = []
        for s in raw:
            text = s["text"].strip()
            start, end = float(s["start"]), float(s["end"])
            if "words" in s:
                words = _aligned_words(s["words"], start, end)
            else:
                words = interpolate_words(text, start, end)
            avg = s.get("avg_logprob")
            segments.append(AsrSegment(
                start=round(start, 3),
                end=round(max(start, end), 3),
                text=text,
                words=words,
                avg_logprob=float(avg) if avg is not None else None,
                no_speech_prob=None,
                compression_ratio=compression_ratio(text),
            ))
        return self._result(lang, lang_p, segments)


def _aligned_words(words: list[dict], seg_start: float, seg_end: float) -> list[Word]:
    """whisperx aligned words; words the aligner could not place (digits, symbols) get times
    interpolated between their placed neighbours and probability None."""
    out: list[Word] = []
    for i, w in enumerate(words):
        text = str(w.get("word", "")).strip()
        if not text:
            continue
        if "start" in w and "end" in w and w["start"] is not None:
            p = w.get("score")
            out.append(Word(text, round(float(w["start"]), 3), round(float(w["end"]), 3),
                            float(p) if p is not None else None))  # type: ignore[arg-type]
            continue
        prev_end = out[-1].end if out else seg_start
        nxt = next((x for x in words[i + 1:] if x.get("start") is not None), None)
        next_start = float(nxt["start"]) if nxt else seg_end
        out.append(Word(text, round(prev_end, 3), round(max(prev_end, next_start), 3), None))  # type: ignore[arg-type]
    return out


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


@functools.cache
def _region_vad_class() -> type:
    """whisperx VAD adapter: pyannote scores binarized as whisperx does, then cut to our regions.

    Built at first use (whisperx is imported lazily); it must subclass whisperx's Vad because
    FasterWhisperPipeline.transcribe only calls a VAD's own merge_chunks for Vad subclasses.
    """
    import torch
    from whisperx.diarize import Segment as SegmentX
    from whisperx.vads.pyannote import Binarize
    from whisperx.vads.vad import Vad

    class RegionVad(Vad):
        def __init__(self, inner, regions: list[tuple[float, float]]):
            self.inner, self.regions = inner, regions  # Vad.__init__ only checks an onset

        def __call__(self, audio, **kwargs):
            return self.inner(audio, **kwargs)  # pyannote frame scores

        @staticmethod
        def preprocess_audio(audio):
            return torch.from_numpy(audio).unsqueeze(0)

        def merge_chunks(self, scores, chunk_size, onset=0.5, offset=None):
            binarized = Binarize(max_duration=chunk_size, onset=onset, offset=offset)(scores)
            cut = []
            for turn in binarized.get_timeline():
                for rs, re_ in self.regions:
                    s, e = max(turn.start, rs), min(turn.end, re_)
                    if e > s:
                        cut.append(SegmentX(s, e, "UNKNOWN"))
            cut.sort(key=lambda x: x.start)
            if not cut:
                return []
            return Vad.merge_chunks(cut, chunk_size, onset, offset)

    return RegionVad


# ---------------------------------------------------------------------------------------------
# The model handler (Beam RunInference)

# The accelerator a GPU step asks for when the config names none (Dataflow's syntax).
DEFAULT_GPU_HINT = "type:nvidia-l4;count:1;install-nvidia-driver"


@dataclass(frozen=True)
class AsrRequest:
    """One source for the ASR model: its 16 kHz mono samples, the VAD regions to decode
    (None: the whole source) and a language hint."""

    audio: np.ndarray
    regions: list[tuple[float, float]] | None
    language: str | None = None


def resource_hints(device: str, accelerator: str | None) -> dict:
    """Beam resource hints for a model step: an accelerator when the model runs on a GPU."""
    if accelerator:
        return {"accelerator": accelerator}
    return {"accelerator": DEFAULT_GPU_HINT} if str(device).startswith("cuda") else {}


class AsrModelHandler(ModelHandler):
    """ASR for `RunInference`: example = `AsrRequest`, inference = `AsrResult` (with the
    segments this call dropped as hallucinations and its wall time), model = a `Transcriber`.

    One model per worker process, shared by its threads (RunInference's `shared.Shared`);
    `share_across_processes` shares one copy between processes too. One source is one call
    (batching happens inside the backend over the source's VAD chunks). `model_info()` is what
    the run manifest records, computed on the driver without loading the model.
    """

    def __init__(self, cfg: AsrConfig, loader=None):
        super().__init__()
        self.cfg = cfg
        self._loader = loader  # tests: a fake Transcriber factory(cfg)

    def load_model(self) -> Transcriber:
        from mmcurate.transforms.worker import exit_fast_after_harness

        exit_fast_after_harness()  # a worker process that loads Whisper: no slow teardown
        return (self._loader or load_transcriber)(self.cfg)

    def run_inference(self, batch, model: Transcriber, inference_args=None):
        for req in batch:
            t0 = time.perf_counter()
            result = model.transcribe(req.audio, regions=req.regions, language=req.language)
            result = dataclasses.replace(result, elapsed_s=time.perf_counter() - t0)
            yield PredictionResult(req, result, result.model)

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": 1}

    def get_metrics_namespace(self) -> str:
        return "mmcurate.asr"

    def get_resource_hints(self) -> dict:
        return resource_hints(self.cfg.device, self.cfg.accelerator)

    def share_model_across_processes(self) -> bool:
        return bool(self.cfg.share_across_processes)

    def model_info(self) -> list[dict]:
        """role/name/version/path/sha256 of the ASR model(s), for the run manifest.

        Files are hashed, no model is loaded. A model directory that exists only on the workers
        (production paths) gives a config-only entry with sha256 None rather than failing."""
        a = self.cfg
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
            infos.append({"role": "asr-alignment",
                          "name": os.path.basename(a.align_model_dir.rstrip("/")),
                          "version": "local wav2vec2 dir", "path": a.align_model_dir, "sha256": None})
        keys = ("role", "name", "version", "path", "sha256")
        return [{k: i.get(k) for k in keys} for i in infos]
