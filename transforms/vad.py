"""Speech regions with silero VAD, streamed over the decoded audio (constant memory).

Model: the silero VAD v6 ONNX files that ship in the `silero-vad` wheel (`silero_vad/data/`),
located without importing the package (its `model.py` calls `torch.set_num_threads(1)` for the
whole process) and run through onnxruntime directly:

- `silero_vad_16k_sequence.onnx` (default): the same network exported to take a whole block of
  512-sample windows (each prefixed with the 64 samples before it) in one call, carrying the
  LSTM state (h, c) between calls. Its probabilities are bit-identical to the streaming model's
  (tests/test_vad.py checks it) and it runs 2.4-3.5x faster (bench/bench_foundation.py), the
  per-window Python loop being gone.
- `silero_vad.onnx` (or faster-whisper's `silero_vad_v6.onnx`): the streaming model, one
  window per call with state [2, 1, 128]; used when `model_path` points at such a file.

One ONNX thread (`intra_op_threads=1`) is fastest for this small LSTM (measured: 2 threads were
slower, both stepwise and in blocks) and leaves the other cores to other workers.

`get_speech_timestamps`' hysteresis is reimplemented as a streaming state machine: a window
with probability >= threshold starts speech; speech ends where the probability stays below
`threshold - 0.15` for at least min_silence_ms; regions shorter than min_speech_ms are dropped;
each region is then padded by speech_pad_ms (half the gap when two regions are closer than two
pads). Regions match silero's own function to the sample (max_speech_duration_s = inf).

Why one module of this length: the streaming VAD model, its RunInference handler and the Beam
stage around it, with the stage's failure records.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from typing import ClassVar, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from mmcurate.transforms.decode import DecodeConfig, MediaInfo, SampleBuffer
from mmcurate.schemas.params import Rule, non_negative, unit_interval
from mmcurate.schemas.printable import printable
from mmcurate.schemas.records import MediaRef, Rejection, SourceRecord, SpeechRegion


@dataclass
class VadConfig:
    # silero-vad's own defaults (silero_vad.utils_vad.get_speech_timestamps)
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30
    min_speech_ratio: float = 0.0  # sources with speech_s == 0 (or below this ratio) -> no_speech
    model_path: str | None = None  # None: silero v6 sequence model from the silero-vad wheel

    RULES: ClassVar[dict] = {
        "threshold": unit_interval("a speech probability"),
        "min_speech_ms": non_negative("milliseconds"),
        "min_silence_ms": non_negative("milliseconds"),
        "speech_pad_ms": non_negative("milliseconds"),
        "min_speech_ratio": unit_interval("share of the source"),
        "model_path": Rule(check=lambda p: None if os.path.isfile(p) else
                           f"{p!r} is not a file (a silero VAD .onnx model)"),
    }


log = logging.getLogger("mmcurate.vad")

SAMPLE_RATE = 16000  # the only rate the 16k models take
WINDOW = 512  # samples per VAD window at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window prefixed to each window
DEFAULT_MODEL_FILE = "silero_vad_16k_sequence.onnx"
PROGRESS_EVERY_S = 600.0  # a progress line per 10 minutes of audio decoded


def _silero_data_dir() -> str:
    spec = importlib.util.find_spec("silero_vad")  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the silero-vad package is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def default_model_path() -> str:
    return os.path.join(_silero_data_dir(), DEFAULT_MODEL_FILE)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def vad_model_info(model_path: str | None = None) -> dict:
    """What the run's manifest records about the VAD model (no ONNX session is loaded)."""
    from importlib.metadata import PackageNotFoundError, version

    path = os.path.abspath(model_path or default_model_path())
    st = os.stat(path)
    try:
        pkg = f"silero-vad {version('silero-vad')}"
    except PackageNotFoundError:
        pkg = "silero-vad (package not installed)"
    return {
        "role": "vad",
        "name": f"silero-vad v6 ({os.path.basename(path)})",
        "version": f"{pkg}; onnxruntime",
        "path": path,
        "sha256": _sha256(path, st.st_size, st.st_mtime),
    }




# ---------------------------------------------------------------------------------------------
# The model and the streaming hysteresis.


class _Hysteresis:
    """silero's get_speech_timestamps_from_probs (max_speech_duration_s=inf), one window at a time."""

    def __init__(self, threshold: float, min_speech: float, min_silence: float):
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.min_speech = min_speech  # samples
        self.min_silence = min_silence  # samples
        self.triggered = False
        self.start = 0
        self.temp_end = 0
        self.index = 0  # next window index
        self.speeches: list[list[int]] = []

    def feed(self, probs: np.ndarray) -> None:
        thr, neg = self.threshold, self.neg_threshold
        for p in probs.tolist():
            cur = self.index * WINDOW
            self.index += 1
            if p >= thr and self.temp_end:
                self.temp_end = 0
            if p >= thr and not self.triggered:
                self.triggered = True
                self.start = cur
                continue
            if p < neg and self.triggered:
                if not self.temp_end:
                    self.temp_end = cur
                if cur - self.temp_end < self.min_silence:
                    continue
                if self.temp_end - self.start > self.min_speech:
                    self.speeches.append([self.start, self.temp_end])
                self.triggered = False
                self.temp_end = 0

    def finish(self, n_samples: int, pad: float) -> list[tuple[int, int]]:
        sp = self.speeches
        if self.triggered and n_samples - self.start > self.min_speech:
            sp.append([self.start, n_samples])
        for i, s in enumerate(sp):
            if i == 0:
                s[0] = int(max(0, s[0] - pad))
            if i != len(sp) - 1:
                gap = sp[i + 1][0] - s[1]
                if gap < 2 * pad:
                    s[1] += int(gap // 2)
                    sp[i + 1][0] = int(max(0, sp[i + 1][0] - gap // 2))
                else:
                    s[1] = int(min(n_samples, s[1] + pad))
                    sp[i + 1][0] = int(max(0, sp[i + 1][0] - pad))
            else:
                s[1] = int(min(n_samples, s[1] + pad))
        return [(int(s), int(e)) for s, e in sp]


@dataclass(frozen=True)
class VadResult:
    regions: list[tuple[float, float]]  # seconds
    num_samples: int  # audio length seen, at 16 kHz

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE

    @property
    def speech_s(self) -> float:
        return sum(e - s for s, e in self.regions)


class SileroVad:
    """silero VAD over a stream of 16 kHz mono float32 chunks; loads its ONNX session here.

    Defaults are silero-vad's own (`get_speech_timestamps`): threshold 0.5, min_speech 250 ms,
    min_silence 100 ms, speech_pad 30 ms. `block_windows` windows (512 = 16.4 s) go to the
    sequence model per call.
    """

    def __init__(
        self,
        model_path: str | None = None,
        threshold: float = 0.5,
        min_speech_ms: int = 250,
        min_silence_ms: int = 100,
        speech_pad_ms: int = 30,
        block_windows: int = 512,
        intra_op_threads: int = 1,
    ):
        import onnxruntime as ort

        self.model_path = os.path.abspath(model_path or default_model_path())
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.min_silence_ms = min_silence_ms
        self.speech_pad_ms = speech_pad_ms
        self.block_windows = max(1, int(block_windows))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.model_path, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self._session.get_inputs()}
        if {"input", "h", "c"} <= names:
            self.kind = "sequence"
        elif {"input", "state", "sr"} <= names:
            self.kind = "stepwise"
        else:
            raise ValueError(f"{self.model_path}: not a silero VAD model (inputs {sorted(names)})")

    def model_info(self) -> dict:
        return vad_model_info(self.model_path)

    def probabilities(self, chunks: Iterable[np.ndarray], sample_rate: int = SAMPLE_RATE
                      ) -> Iterator[np.ndarray]:
        """Per-window speech probabilities, block by block.

        The last partial window is zero-padded, as silero does. All state is local to the call,
        so one model serves several threads at once.
        """
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"silero VAD here takes {SAMPLE_RATE} Hz audio, got {sample_rate}")
        prev = np.zeros(CONTEXT, dtype=np.float32)
        h = np.zeros((1, 1, 128), dtype=np.float32)
        c = np.zeros((1, 1, 128), dtype=np.float32)
        state = np.zeros((2, 1, 128), dtype=np.float32)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        rest = np.zeros(0, dtype=np.float32)

        def run(frames: np.ndarray) -> np.ndarray:
            nonlocal prev, h, c, state
            n = frames.shape[0]
            x = np.empty((n, CONTEXT + WINDOW), dtype=np.float32)
            x[:, CONTEXT:] = frames
            x[0, :CONTEXT] = prev
            x[1:, :CONTEXT] = frames[:-1, -CONTEXT:]
            prev = frames[-1, -CONTEXT:].copy()
            if self.kind == "sequence":
                p, h, c = self._session.run(None, {"input": x, "h": h, "c": c})
                return p.reshape(-1)
            p = np.empty(n, dtype=np.float32)
            for i in range(n):
                out, state = self._session.run(None, {"input": x[i : i + 1], "state": state, "sr": sr})
                p[i] = out[0, 0]
            return p

        for chunk in chunks:
            chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
            buf = np.concatenate([rest, chunk]) if rest.shape[0] else chunk
            nwin = buf.shape[0] // WINDOW
            for b in range(0, nwin, self.block_windows):
                e = min(nwin, b + self.block_windows)
                yield run(buf[b * WINDOW : e * WINDOW].reshape(e - b, WINDOW))
            rest = buf[nwin * WINDOW :].copy()
        if rest.shape[0]:
            last = np.zeros((1, WINDOW), dtype=np.float32)
            last[0, : rest.shape[0]] = rest
            yield run(last)

    def detect(self, chunks: Iterable[np.ndarray], sample_rate: int = SAMPLE_RATE) -> VadResult:
        per_ms = SAMPLE_RATE / 1000
        hyst = _Hysteresis(self.threshold, self.min_speech_ms * per_ms, self.min_silence_ms * per_ms)
        seen = [0]

        def counted(it: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            for chunk in it:
                chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
                seen[0] += chunk.shape[0]
                yield chunk

        for probs in self.probabilities(counted(chunks), sample_rate):
            hyst.feed(probs)
        n = seen[0]
        spans = hyst.finish(n, self.speech_pad_ms * per_ms)
        return VadResult([(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in spans], n)

    def regions(self, chunks: Iterable[np.ndarray], sample_rate: int = SAMPLE_RATE
                ) -> list[tuple[float, float]]:
        """Speech regions (start_s, end_s) of the audio in `chunks` (16 kHz mono float32)."""
        return self.detect(chunks, sample_rate).regions


# ---------------------------------------------------------------------------------------------
# The model handler (Beam RunInference) and the stage.


@dataclass(frozen=True)
class VadFailure:
    """Why an input is a ledger row instead of a source: the fields of its Rejection."""

    stage: str  # "decode" or "vad"
    reason: str  # the ledger's reason code, e.g. "no_audio_stream", "too_long", "vad_error"
    detail: str
    duration_s: float | None = None


@dataclass(frozen=True)
class VadOutcome:
    """One input after decode + VAD: everything the call found, nothing kept on the model.

    `error` is set when the input is a ledger row instead of a source; `audio` holds the
    decoded 16 kHz samples only when the handler was asked to keep them (the speech stage runs
    next and must not decode the source again). It goes from RunInference to the next DoFn
    fused, one per source, never through a shuffle.
    """

    info: MediaInfo | None
    result: VadResult | None
    audio: np.ndarray | None
    error: VadFailure | None
    elapsed_s: float
    # kept although damaged (decode.truncated = "keep"): (seconds lost or None, what happened)
    truncated: tuple[float | None, str] | None = None


class _AudioDecodeFailed(Exception):
    """An unexpected (non-DecodeError) exception raised while decoding, kept apart from VAD's."""


class _Watched:
    """Passes decoded chunks to the VAD: counts them, keeps them when asked, logs progress
    every PROGRESS_EVERY_S of audio, and tells decoder failures from model failures."""

    def __init__(self, chunks: Iterator[np.ndarray], uri: str, keep: SampleBuffer | None,
                 stop_on_damage: bool = False):
        self.chunks, self.uri, self.keep = chunks, uri, keep
        self.seen = 0
        # decode.truncated = "keep": a decode failure after some audio ends the stream there
        # (the decodable part is the source) and is remembered here instead of raised
        self.stop_on_damage = stop_on_damage
        self.damage: str | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        from mmcurate.transforms.decode import DecodeError

        t0 = time.perf_counter()
        mark = PROGRESS_EVERY_S * SAMPLE_RATE
        it = iter(self.chunks)
        while True:
            try:
                chunk = next(it)
            except StopIteration:
                return
            except DecodeError as e:
                if self.stop_on_damage and self.seen and e.reason == "decode_error":
                    self.damage = f"decoding failed after {self.seen / SAMPLE_RATE:.2f} s: {e.detail}"
                    return
                raise
            except Exception as e:  # noqa: BLE001 - anything PyAV throws is this input's problem
                if self.stop_on_damage and self.seen:
                    self.damage = (f"decoding failed after {self.seen / SAMPLE_RATE:.2f} s: "
                                   f"{type(e).__name__}: {e}")
                    return
                raise _AudioDecodeFailed(f"{type(e).__name__}: {e}") from e
            self.seen += chunk.shape[0]
            if self.keep is not None:
                self.keep.append(chunk)
            if self.seen >= mark:
                mark += PROGRESS_EVERY_S * SAMPLE_RATE
                audio_s = self.seen / SAMPLE_RATE
                log.info("%s: %.0f min of audio decoded (%.0fx realtime)", printable(self.uri), audio_s / 60,
                         audio_s / max(time.perf_counter() - t0, 1e-9))
            yield chunk


class VadModelHandler(ModelHandler[MediaRef, VadOutcome, SileroVad]):
    """silero VAD for `RunInference`: example = a MediaRef, inference = a `VadOutcome`.

    The input is decoded here, streamed chunk by chunk into the model (memory stays constant
    unless `keep_audio`), so a source is decoded once for VAD and, with `keep_audio`, for the
    speech models after it. One ONNX session per worker process serves every thread
    (RunInference keeps it in a `shared.Shared`; all per-call state is local to the call).
    Decode failures and model errors are outcomes (ledger rows), never exceptions: one bad
    input must not fail a batch.
    """

    def __init__(self, vad: VadConfig, decode: DecodeConfig, keep_audio: bool = False):
        super().__init__()
        self.vad_cfg = dataclasses.replace(vad)
        self.decode_cfg = dataclasses.replace(decode)
        self.keep_audio = keep_audio

    def load_model(self) -> SileroVad:
        from mmcurate.transforms.worker import exit_fast_after_harness

        exit_fast_after_harness()  # a worker process that loads ORT: no slow teardown
        v = self.vad_cfg
        return SileroVad(model_path=v.model_path, threshold=v.threshold, min_speech_ms=v.min_speech_ms,
                         min_silence_ms=v.min_silence_ms, speech_pad_ms=v.speech_pad_ms)

    def run_inference(self, batch: Sequence[MediaRef], model: SileroVad,
                      inference_args: dict | None = None) -> Iterable[PredictionResult]:
        for ref in batch:
            yield PredictionResult(ref, self.detect(ref, model), "silero-vad")

    def detect(self, ref: MediaRef, model: SileroVad) -> VadOutcome:
        from mmcurate.transforms.decode import DecodeError, SampleBuffer, stream_audio

        sr = self.decode_cfg.sample_rate
        max_s = self.decode_cfg.max_duration_s
        t0 = time.perf_counter()
        watched = None
        info = None

        def failed(stage: str, reason: str, detail: str, duration_s: float | None = None):
            return VadOutcome(None, None, None, VadFailure(stage, reason, detail, duration_s),
                              time.perf_counter() - t0)

        try:
            with stream_audio(ref.media_uri, sr, chunk_s=30.0, max_duration_s=max_s) as (info, chunks):
                if info.duration_s and info.duration_s > max_s:
                    return failed("decode", "too_long", f"the container says {info.duration_s:.0f} s "
                                  f"> max_duration_s {max_s:.0f}", info.duration_s)
                keep = SampleBuffer(info.duration_s, sr, max_s) if self.keep_audio else None
                watched = _Watched(chunks, ref.uri, keep,
                                   stop_on_damage=self.decode_cfg.truncated == "keep")
                result = model.detect(watched, sr)
        except DecodeError as e:
            seen = watched.seen / sr if watched is not None else None
            out = failed("decode", e.reason, e.detail, seen if e.reason == "too_long" else None)
            # a container without audio still says what it is: a video may be kept (video stage)
            return dataclasses.replace(out, info=info) if e.reason == "no_audio_stream" else out
        except _AudioDecodeFailed as e:
            return failed("decode", "decode_error", str(e))
        except Exception as e:  # noqa: BLE001 - the model failing on one input must not end the run
            return failed("vad", "vad_error", f"{type(e).__name__}: {e}")
        truncated = self._truncation(info, result.num_samples / sr, watched.damage)
        if truncated is not None and self.decode_cfg.truncated == "reject":
            lost, what = truncated
            return failed("decode", "truncated", what, lost)
        audio = keep.finish() if keep is not None and result.speech_s > 0 else None
        return VadOutcome(info, result, audio, None, time.perf_counter() - t0, truncated)

    def _truncation(self, info: MediaInfo, decoded_s: float, damage: str | None
                    ) -> tuple[float | None, str] | None:
        """(seconds lost or None, what happened) when the input is damaged or shorter than its
        container declares beyond max(truncation_tolerance_s, ratio x declared); else None.
        Measured on ../shared/media: intact files decode within 0.011 s of their declared
        duration; the first 10% of an mp4 declaring 122.7 s decodes to 8.5 s."""
        d = self.decode_cfg
        declared = info.duration_s
        lost = None
        if declared and declared > 0:
            lost = max(0.0, declared - decoded_s)
            if lost > max(d.truncation_tolerance_s, d.truncation_tolerance_ratio * declared):
                what = (f"the container declares {declared:.2f} s, {decoded_s:.2f} s decode "
                        f"({lost:.2f} s lost)")
                return round(lost, 3), what + (f"; {damage}" if damage else "")
        if damage:
            return (round(lost, 3) if lost else None), damage
        return None

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": 1}  # one source is one call

    def get_metrics_namespace(self) -> str:
        return "mmcurate.vad"

    def model_info(self) -> list[dict]:
        """The run manifest's entry for this model (files hashed, nothing loaded)."""
        return [vad_model_info(self.vad_cfg.model_path)]


class _ToSourcesFn(beam.DoFn):
    """(MediaRef, VadOutcome) -> SourceRecord + SpeechRegions (tagged) + the speech element,
    or exactly one Rejection."""

    def __init__(self, vad: VadConfig, run_id: str, keep_video_without_speech: bool = False):
        self._vad_cfg = vad
        self._run_id = run_id
        self._keep_video = keep_video_without_speech
        self._silent_videos = beam.metrics.Metrics.counter("mmcurate", "vad.video_without_speech")
        self._ok = beam.metrics.Metrics.counter("mmcurate", "decode.ok")
        self._rejected = beam.metrics.Metrics.counter("mmcurate", "decode.rejected")
        self._no_speech = beam.metrics.Metrics.counter("mmcurate", "vad.no_speech")
        self._vad_failed = beam.metrics.Metrics.counter("mmcurate", "vad.failed")
        self._truncated = beam.metrics.Metrics.counter("mmcurate", "decode.truncated_kept")
        self._ratio = beam.metrics.Metrics.distribution("mmcurate", "vad.speech_ratio_pct")

    def _reject(self, ref: MediaRef, stage: str, reason: str, detail: str,
                duration_s: float | None = None):
        if stage == "decode":
            self._rejected.inc()
        elif reason == "vad_error":
            self._vad_failed.inc()
        log.info("%s: rejected at %s (%s): %s", printable(ref.uri), stage, reason, printable(detail))
        return beam.pvalue.TaggedOutput("rejected", Rejection.make(
            stage=stage, reason=reason, detail=detail, uri=ref.uri, run_id=self._run_id,
            source_id=ref.source_id, duration_s=duration_s))

    def _is_kept_video(self, out: VadOutcome) -> bool:
        """With the video stage running, a video without speech (or without audio) is a source
        for its images; an audio-only input without speech stays a ledger row."""
        return self._keep_video and out.info is not None and out.info.media_kind == "video"

    def _video_without_speech(self, ref: MediaRef, out: VadOutcome, why: str):
        """The `sources` row of a kept video without speech: speech_s 0, no regions, not sent
        to the speech models (no SpeechInput)."""
        info, result = out.info, out.result
        duration = result.duration_s if result is not None and result.num_samples else 0.0
        duration = duration or info.duration_s or 0.0
        sid = ref.source_id
        self._ok.inc()
        self._silent_videos.inc()
        log.info("%s: video without speech (%s): kept for its images, not transcribed", printable(ref.uri), why)
        yield beam.pvalue.TaggedOutput("sources", SourceRecord(
            source_id=sid, sha256=ref.sha256, uri=ref.uri, media_uri=ref.media_uri,
            ingested_via=ref.ingested_via, media_kind=info.media_kind, container=info.container,
            audio_codec=info.audio_codec, video_codec=info.video_codec, duration_s=duration,
            sample_rate=info.sample_rate, channels=info.channels, bytes=ref.bytes,
            speech_s=0.0, speech_ratio=0.0, metadata=dict(ref.metadata), run_id=self._run_id))
        if out.truncated is not None:  # as for any source kept although damaged
            lost, what = out.truncated
            self._truncated.inc()
            yield beam.pvalue.TaggedOutput("rejected", Rejection.make(
                stage="decode", reason="truncated_kept", detail=f"kept the decodable part: {what}",
                uri=ref.uri, run_id=self._run_id, source_id=sid, item_id=f"{sid}-truncated",
                duration_s=lost))

    def process(self, prediction: PredictionResult):
        ref: MediaRef = prediction.example
        out: VadOutcome = prediction.inference
        failure = out.error
        if failure is not None:
            if failure.reason == "no_audio_stream" and self._is_kept_video(out):
                yield from self._video_without_speech(ref, out, "no audio stream")
                return
            yield self._reject(ref, failure.stage, failure.reason, failure.detail, failure.duration_s)
            return
        result, info = out.result, out.info
        if result.num_samples == 0:
            if self._is_kept_video(out):
                yield from self._video_without_speech(ref, out, "its audio decodes to zero samples")
                return
            yield self._reject(ref, "decode", "empty_audio", "the audio track decodes to zero samples")
            return
        self._ok.inc()
        duration = result.duration_s
        speech_s = round(result.speech_s, 3)
        ratio = speech_s / duration
        self._ratio.update(int(round(100 * ratio)))
        log.info("%s: %.1f s audio, speech %.1f%%, %d region(s), %.0fx realtime",
                 printable(ref.uri), duration, 100 * ratio, len(result.regions), duration / max(out.elapsed_s, 1e-9))
        if speech_s <= 0 or ratio < self._vad_cfg.min_speech_ratio:
            if self._is_kept_video(out):
                yield from self._video_without_speech(
                    ref, out, f"speech {speech_s:.2f} s of {duration:.2f} s (min_speech_ratio "
                              f"{self._vad_cfg.min_speech_ratio})")
                return
            self._no_speech.inc()
            yield self._reject(ref, "vad", "no_speech",
                               f"speech {speech_s:.2f} s of {duration:.2f} s "
                               f"(min_speech_ratio {self._vad_cfg.min_speech_ratio})", duration)
            return
        sid = ref.source_id
        source = SourceRecord(
            source_id=sid, sha256=ref.sha256, uri=ref.uri, media_uri=ref.media_uri,
            ingested_via=ref.ingested_via, media_kind=info.media_kind, container=info.container,
            audio_codec=info.audio_codec, video_codec=info.video_codec, duration_s=duration,
            sample_rate=info.sample_rate, channels=info.channels, bytes=ref.bytes,
            speech_s=speech_s, speech_ratio=ratio, metadata=dict(ref.metadata),
            run_id=self._run_id)
        regions = [SpeechRegion(f"{sid}-vad-{n:05d}", sid, round(s, 3), round(e, 3), self._run_id)
                   for n, (s, e) in enumerate(result.regions)]
        yield beam.pvalue.TaggedOutput("sources", source)
        if out.truncated is not None:
            lost, what = out.truncated
            self._truncated.inc()
            log.warning("%s: truncated or damaged, the decodable %.1f s are kept: %s",
                        printable(ref.uri), duration, printable(what))
            yield beam.pvalue.TaggedOutput("rejected", Rejection.make(
                stage="decode", reason="truncated_kept", detail=f"kept the decodable part: {what}",
                uri=ref.uri, run_id=self._run_id, source_id=sid, item_id=f"{sid}-truncated",
                duration_s=lost))
        for r in regions:
            yield beam.pvalue.TaggedOutput("regions", r)
        yield SpeechInput(source, regions, out.audio)


@dataclass(frozen=True)
class SpeechInput:
    """A source with speech, on its way to the speech models: its VAD regions and, when the
    VAD step kept them, its decoded 16 kHz samples (None: the consumer decodes)."""

    source: SourceRecord
    regions: list[SpeechRegion]
    audio: np.ndarray | None = None


class DetectSpeech(beam.PTransform):
    """PCollection[MediaRef] -> {"sources", "regions", "rejected", "speech"}.

    "speech" holds a `SpeechInput` per source with speech (with the decoded samples when
    `keep_audio`); a source without speech is only a Rejection (stage vad, reason no_speech,
    duration_s set); an input that does not decode is only a Rejection (stage decode,
    DecodeError's reason). One outcome per input.

    `keep_video_without_speech` (set when the video stage runs): a VIDEO without speech, or
    whose container has no audio stream (or audio that decodes to nothing), is a `sources` row
    with speech_s 0 and no regions instead of a vad/no_speech or decode/no_audio_stream
    rejection, and is not sent to the speech models; audio-only inputs are unaffected.

    Truncated or damaged media: whatever FFmpeg decodes is the source (a truncated mp3 becomes a
    shorter source, its duration the decoded one, not the header's); when decoding raises, even
    after some audio was read, the input is a decode_error rejection and nothing else (see
    mmcurate.transforms.decode). An unexpected error in the model is a vad/vad_error rejection.

    `spread(cost=..., key=..., what=...)` is how the pipeline layer deals the sources to the
    model steps (a PTransform, or None for Beam's `Reshuffle`): the stage knows nothing of
    the runner it runs on.
    """

    def __init__(self, vad: VadConfig, decode: DecodeConfig, run_id: str, *,
                 keep_audio: bool = False, model_handler: ModelHandler | None = None,
                 keep_video_without_speech: bool = False, spread=None):
        super().__init__()
        self._spread = spread
        self._vad = vad
        self._keep_video = keep_video_without_speech
        self._handler = model_handler or VadModelHandler(vad, decode, keep_audio)
        self._run_id = run_id

    def expand(self, media):
        out = (
            media
            | "SpreadInputs" >> ((self._spread and self._spread()) or beam.Reshuffle())
            | "DecodeAndDetect" >> RunInference(self._handler)
            | "ToSources" >> beam.ParDo(_ToSourcesFn(self._vad, self._run_id, self._keep_video)).with_outputs(
                "sources", "regions", "rejected", main="speech")
        )
        return {"sources": out.sources, "regions": out.regions, "rejected": out.rejected,
                "speech": out.speech}
