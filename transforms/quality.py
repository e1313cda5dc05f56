"""The quality stage: score every segment, keep every score, keep or drop it with a reason.

    segments, sources, speech_regions
      | "Key*" -> "JoinBySource" (CoGroupByKey on source_id)
      | "ScoreText"      per source: transcript language; per segment: text language,
      |                  stock phrases, decoder loops, words outside the VAD, duration, rate
      | "DnsmosRequests" -> "Dnsmos" (RunInference: decodes the source once, DNSMOS P.835 per
      |                  segment; on several local workers a source's spans are cut into
      |                  pieces dealt by cost) -> "PiecesBySource" -> "WithDnsmos"
      |                                                     (quality.dnsmos = false: skipped)
      | "RateByLanguage" (characters/s quartiles per spoken language over the run) -> side input
      | "Judge"          the filters of mmcurate.quality.filters, in order
      -> segment_quality (every segment, kept or dropped, with its scores and verdict)
         kept_segments   (stream: the Segment records that passed, for later stages)
         rejected        (one ledger row per dropped segment: stage "quality", the first failing
                          filter's reason, item_id = segment_id, the scores in the detail;
                          "dnsmos_error" annotation rows, item_id = source_id, when decoding or
                          the model failed on a source: its segments are judged without DNSMOS)

Audio: the segments exist only after the speech stage's join, where the samples it decoded no
longer travel (only results cross a shuffle). So DNSMOS decodes each source that has segments
once more, streaming, and keeps only the samples of its segments until each is scored. Decoding
runs at about 2000x real time here, a few percent of DNSMOS's own cost. The same stage can so
also run over a stored output (`ReadTables`) without the speech stage.

The `segments` table stays as the speech stage wrote it (every segment ASR kept): re-tuning a
threshold is a query over `segment_quality` (`mmcurate.quality.filters.keep_sql`), and the
curated segments are `segments JOIN segment_quality USING (segment_id) WHERE keep` (the audit's
`kept_segments` view); in-graph, later stages read the `kept_segments` stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from mmcurate.quality import filters as qf
from mmcurate.quality.hallucination import default_matcher, outside_vad_share, repeat_share, tokens
from mmcurate.schemas.params import Rule, non_negative, positive, unit_interval
from mmcurate.schemas.printable import printable
from mmcurate.schemas.records import Rejection, Segment, SegmentQuality, SourceRecord

log = logging.getLogger("mmcurate.quality")

NS = "mmcurate"
REJECTED = "rejected"


@dataclass
class QualityConfig:
    """Thresholds of the quality filters (mmcurate.quality.filters). null turns a check off.

    Measured 2026-11-23 on the pipeline's segments (whisper-base int8, embedded diarizer) of all
    real speech in ../shared/media (67 segments, 611 words in 10 files) and on the text
    whisper-base invents on generated wordless hums (tests/nonspeech_fixtures.py), with the CPU
    instruction-set variables unset and set to AVX2: DNSMOS and langdetect scores were
    bit-identical (onnxruntime ignores those variables; langdetect is pure Python, seeded).
    See README "Quality" for the table."""

    # hallucination (mmcurate.quality.hallucination): a share above the maximum drops. Stock
    # phrases: invented stock text is 1.0, real speech measured 0.0 (max); decoder loops:
    # invented loops 1.0, real speech 0.0 (max); words outside the VAD: real speech at most
    # 0.25 (ASR decodes only inside regions; this catches other backends and stored inputs)
    max_phrase_share: float | None = 0.5
    max_repeat_share: float | None = 0.5
    max_outside_vad_share: float | None = 0.5
    # more letters per second than speech carries: real segments measured <= 33.3 (a 0.48 s
    # one; <= 20 over 2 s), invented text 58.1 ("I'm sure it's a good thing that you're not
    # going to be able..." in 0.86 s of a hum) and 1356 (a loop); 45 is about the midpoint
    max_chars_per_s: float | None = 45.0
    # language. Allow-list of spoken languages (Whisper's ISO 639-1 codes); empty: any
    languages: tuple[str, ...] = ()
    # Whisper language probability under which a row is flagged: Emilia-Pipe keeps > 0.8
    # (open-mmlab/Amphion preprocessors/Emilia/main.py)
    min_language_probability: float = 0.8
    # a text/spoken disagreement counts only for langdetect on >= 30 letters with p >= 0.9:
    # shorter text is unreliable ("Yeah." -> id, p 0.99999); measured 0 false mismatches on
    # real speech at these values
    min_text_language_probability: float = 0.9
    min_text_language_chars: int = 30
    language_flags: str = "flag"  # flag: columns only | drop: a flagged row is dropped
    # DNSMOS P.835 (mmcurate.quality.dnsmos): scored and kept for every segment; no minimum by
    # default. It rates recording quality, not whether there is speech: real segments here
    # scored OVRL 1.15-3.45 (the lowest: overlapped meeting speech and sub-second words), so
    # any floor drops real words (1.5: 14 of 611, 1.8: 29, 3.0 as in Emilia's TTS data: 269).
    # Set one for a clean subset, or re-tune over the kept scores in DuckDB.
    dnsmos: bool = True
    min_dnsmos_ovrl: float | None = None
    min_dnsmos_sig: float | None = None
    min_dnsmos_bak: float | None = None
    # onnxruntime intra-op threads of the shared session. 0: cores / workers when the local
    # runner has several workers, else onnxruntime's default (mmcurate.pipelines.curate.
    # local_parallelism); it scales (a 20 s segment: 1.52 s on 1 thread, 0.78 s on 2)
    dnsmos_threads: int = 0
    # 9.01 s windows per onnxruntime call: 1 keeps a window's activations in the CPU caches and
    # scales with workers (a whole clip at once: up to 4x slower, 2x more so beside a second
    # worker; quality/dnsmos.py). Raise it for a GPU provider. The scores do not change.
    dnsmos_batch: int = 1
    # duration: Emilia-Pipe cuts 1-30 s; here segments are utterances (speech.segments cuts at
    # 30 s) and real short answers ("Yes.", 0.3 s) are speech, so only empty spans are dropped
    min_duration_s: float | None = 0.1
    max_duration_s: float | None = 30.5
    # speaking rate: Tukey's fences at 1.5 x IQR of characters/s per language (Emilia's rule)
    # over the run's segments of at least rate_min_duration_s, only for a language with at least
    # rate_min_segments of them. Quartiles of a few dozen segments are too unstable: on the 28
    # real segments >= 2 s here, k 1.5 put LDC93S1 (16.1 chars/s, its only segment) outside
    # [7.4, 16.0]; a quartile's standard error is about 1.4 sigma / sqrt(n), 0.1 sigma at 200
    rate_iqr_k: float | None = 1.5
    rate_min_segments: int = 200
    rate_min_duration_s: float = 2.0
    # sources whose VAD speech ratio is below this lose their segments (low_speech_ratio)
    min_source_speech_ratio: float | None = None

    RULES: ClassVar[dict] = {
        "max_phrase_share": unit_interval("share of the text"),
        "max_repeat_share": unit_interval("share of the words"),
        "max_outside_vad_share": unit_interval("share of the words"),
        "max_chars_per_s": positive("letters and digits per second"),
        "min_language_probability": unit_interval("a probability"),
        "min_text_language_probability": unit_interval("a probability"),
        "min_text_language_chars": non_negative("letters"),
        "language_flags": Rule(choices=("flag", "drop")),
        "languages": Rule(check=lambda v: None if all(isinstance(x, str) and x == x.lower()
                                                       and 2 <= len(x) <= 3 for x in v)
                          else f"{list(v)}: use lower-case ISO 639-1 codes as Whisper gives them"),
        "min_dnsmos_ovrl": Rule(ge=1.0, le=5.0, why="DNSMOS is on a 1-5 MOS scale"),
        "min_dnsmos_sig": Rule(ge=1.0, le=5.0, why="DNSMOS is on a 1-5 MOS scale"),
        "min_dnsmos_bak": Rule(ge=1.0, le=5.0, why="DNSMOS is on a 1-5 MOS scale"),
        "dnsmos_threads": non_negative("0: cores / workers on the local runner, else onnxruntime's default"),
        "dnsmos_batch": Rule(ge=1, why="windows per onnxruntime call"),
        "min_duration_s": non_negative("seconds"),
        "max_duration_s": positive("seconds"),
        "rate_iqr_k": Rule(gt=0, why="Tukey's k"),
        "rate_min_segments": Rule(ge=4, why="quartiles need a few values"),
        "rate_min_duration_s": non_negative("seconds"),
        "min_source_speech_ratio": unit_interval("share of the source"),
    }

    def validate(self) -> list[str]:
        if (self.min_duration_s is not None and self.max_duration_s is not None
                and self.min_duration_s > self.max_duration_s):
            return [f"min_duration_s {self.min_duration_s} > max_duration_s {self.max_duration_s}"]
        return []


def build_filters(cfg: QualityConfig) -> list:
    """The filters a config runs, in verdict order."""
    return [
        qf.HallucinationFilter(cfg.max_phrase_share, cfg.max_repeat_share, cfg.max_outside_vad_share,
                               cfg.max_chars_per_s),
        qf.LanguageFilter(tuple(cfg.languages), cfg.min_language_probability,
                          cfg.min_text_language_probability, cfg.min_text_language_chars,
                          drop_flags=cfg.language_flags == "drop"),
        qf.SpeechQualityFilter(cfg.min_dnsmos_ovrl, cfg.min_dnsmos_sig, cfg.min_dnsmos_bak),
        qf.DurationFilter(cfg.min_duration_s, cfg.max_duration_s),
        qf.SpeakingRateFilter(cfg.rate_iqr_k, cfg.rate_min_duration_s),
        qf.SpeechRatioFilter(cfg.min_source_speech_ratio),
    ]


def keep_sql(cfg: QualityConfig) -> str:
    """The config's verdict as a DuckDB expression over `segment_quality` (re-tuning)."""
    return qf.keep_sql(build_filters(cfg))


# --------------------------------------------------------------------------- text scores


def chars(text: str) -> int:
    """Letters and digits: what speaking rate counts (spaces and punctuation take no time)."""
    return sum(1 for c in text if c.isalnum())


def score_segment(seg: Segment, regions: list[tuple[float, float]] | None,
                  transcript_lang: tuple[str | None, float | None],
                  source_speech_ratio: float | None, run_id: str) -> SegmentQuality:
    """Every score of one segment that needs no audio and no other source (DNSMOS and the
    rate quartiles are filled in later); the verdict is not yet set."""
    from mmcurate.quality.language import detect

    duration = max(0.0, float(seg.end) - float(seg.start))
    n_chars = chars(seg.text)
    match = default_matcher().match(seg.text)
    toks = tokens(seg.text)
    words = seg.words or []
    text_lang, text_p = detect(seg.text)
    return SegmentQuality(
        segment_id=seg.segment_id, source_id=seg.source_id, start=float(seg.start),
        end=float(seg.end), duration_s=duration,
        num_words=len(words) if words else len(toks), chars=n_chars,
        chars_per_s=(n_chars / duration) if duration > 0 else None,
        language=seg.language, language_probability=seg.language_probability,
        text_language=text_lang, text_language_probability=text_p,
        transcript_language=transcript_lang[0], transcript_language_probability=transcript_lang[1],
        language_mismatch=False, language_low_confidence=False,
        phrase_share=match.share if toks else None, phrases=list(match.phrases),
        repeat_share=repeat_share(toks),
        outside_vad_share=outside_vad_share([(w.start, w.end) for w in words], regions),
        dnsmos_sig=None, dnsmos_bak=None, dnsmos_ovrl=None, rate_q1=None, rate_q3=None,
        source_speech_ratio=source_speech_ratio, failed=[], keep=True, reason=None, run_id=run_id,
    )


@dataclass(frozen=True)
class SourceScores:
    """One source's segments with their text scores, on their way to DNSMOS and the verdict."""

    source: SourceRecord
    segments: list[Segment]
    rows: list[SegmentQuality]


class _ScoreTextFn(beam.DoFn):
    def __init__(self, run_id: str):
        self._run_id = run_id
        self._segments = Metrics.counter(NS, "quality.segments")

    def setup(self):
        from mmcurate.quality.language import factory

        default_matcher()  # phrase automaton and language profiles: once per worker process
        factory()

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]):
        from mmcurate.quality.language import detect

        source_id, groups = element
        sources = list(groups["sources"])
        segments = sorted(groups["segments"], key=lambda s: (s.start, s.segment_id))
        if sources and segments:  # a source without segments has nothing to judge
            source: SourceRecord = sources[0]
            # no region rows (regions unknown, e.g. a stored output without them): no evidence
            regions = sorted((r.start, r.end) for r in groups["regions"]) or None
            transcript = detect(" ".join(s.text for s in segments))
            rows = [score_segment(s, regions, transcript, source.speech_ratio, self._run_id)
                    for s in segments]
            self._segments.inc(len(rows))
            yield SourceScores(source, segments, rows)


# --------------------------------------------------------------------------- DNSMOS


@dataclass(frozen=True)
class DnsmosRequest:
    """Score these spans (segment_id, start, end in seconds) of one source's audio."""

    media_uri: str
    spans: list[tuple[str, float, float]]


@dataclass(frozen=True)
class DnsmosResult:
    scores: dict[str, tuple[float, float, float] | None]  # segment_id -> (sig, bak, ovrl)
    audio_s: float  # seconds decoded
    elapsed_s: float


def score_spans(model, chunks: Iterable[np.ndarray], spans: list[tuple[str, float, float]],
                sample_rate: int = 16000) -> tuple[dict[str, tuple[float, float, float] | None], int]:
    """DNSMOS of each span, streaming: only the samples of spans not yet scored are kept;
    decoding stops after the last span."""
    todo = sorted(((int(round(s * sample_rate)), int(round(e * sample_rate)), sid)
                   for sid, s, e in spans), key=lambda t: (t[0], t[1], t[2]))
    parts: dict[str, list[np.ndarray]] = {sid: [] for _, _, sid in todo}
    out: dict[str, tuple[float, float, float] | None] = {}
    pos = 0

    def finish(a: int, b: int, sid: str):
        samples = np.concatenate(parts.pop(sid)) if parts.get(sid) else np.zeros(0, np.float32)
        if samples.shape[0] == 0:
            out[sid] = None  # the span lies past the decoded audio
            return
        s = model.score(np.clip(samples, -1.0, 1.0))
        out[sid] = (s.sig, s.bak, s.ovrl)

    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        end = pos + chunk.shape[0]
        for a, b, sid in todo:
            if a < end and b > pos:
                parts[sid].append(chunk[max(a, pos) - pos : min(b, end) - pos])
        done = [t for t in todo if t[1] <= end]
        todo = [t for t in todo if t[1] > end]
        for a, b, sid in done:
            finish(a, b, sid)
        pos = end
        if not todo:
            break
    for a, b, sid in todo:
        finish(a, b, sid)
    return out, pos


class DnsmosModelHandler(ModelHandler):
    """DNSMOS P.835 for `RunInference`: example = `DnsmosRequest` (one source), inference =
    `DnsmosResult`, model = `mmcurate.quality.dnsmos.Dnsmos` (one ONNX session per worker
    process, shared by its threads). The source is decoded here, once, streaming."""

    def __init__(self, threads: int = 1, sample_rate: int = 16000, loader=None, batch: int = 1):
        super().__init__()
        self._threads = threads
        self._batch = batch
        self._sr = sample_rate
        self._loader = loader  # tests: a fake model factory()

    def load_model(self):
        if self._loader is not None:
            return self._loader()
        from mmcurate.quality.dnsmos import Dnsmos
        from mmcurate.transforms.worker import exit_fast_after_harness

        exit_fast_after_harness()  # a worker process that loads ORT: no slow teardown
        return Dnsmos(intra_op_threads=self._threads, batch=self._batch)

    def run_inference(self, batch, model, inference_args=None):
        from mmcurate.transforms.decode import iter_audio

        for req in batch:
            t0 = time.perf_counter()
            scores, n = score_spans(model, iter_audio(req.media_uri, self._sr), req.spans, self._sr)
            yield PredictionResult(req, DnsmosResult(scores, n / self._sr, time.perf_counter() - t0),
                                   "dnsmos")

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": 1}  # one source is one call

    def get_metrics_namespace(self) -> str:
        return "mmcurate.quality"

    def model_info(self) -> list[dict]:
        from mmcurate.quality.dnsmos import model_info

        return [model_info()]


def span_windows(start: float, end: float, sample_rate: int = 16000) -> int:
    """Windows the DNSMOS network runs on for a span (`mmcurate.quality.dnsmos.network_runs`
    of its samples, cut as `score_spans` cuts them): its cost, ~0.15 s each on one thread.
    Exact, not its duration: a 4 s segment takes 4 (tiled to 16 s), a 12 s one 3, a 29 s one 7."""
    from mmcurate.quality.dnsmos import network_runs

    return max(1, network_runs(int(round(end * sample_rate)) - int(round(start * sample_rate))))


def dnsmos_cost(e: SourceScores) -> float:
    """DNSMOS windows a source's segments take (`span_windows` summed)."""
    return sum(span_windows(s.start, s.end) for s in e.segments)


# a source's DNSMOS work is cut into pieces of about this many windows (~3.5 s on one thread)
# when the local runner spreads it over workers: dealt whole, the talk and the meeting left
# one worker of a 2-worker merge 1.6-1.9 s alone at the end (bench/README.md, bench_orchestration.py)
PIECE_WINDOWS = 24.0


def dnsmos_pieces(e: SourceScores, max_pieces: int = 1) -> list[tuple[SourceScores, DnsmosRequest]]:
    """`e`'s DNSMOS requests: its spans in time order, cut into at most `max_pieces` runs of
    about equal windows (about PIECE_WINDOWS each; one piece when max_pieces is 1). Each piece
    decodes the source from its start to its last span, so the cap bounds the extra decoding
    (~2000x real time) a long source costs."""
    spans = [(s.segment_id, float(s.start), float(s.end)) for s in e.segments]
    total = dnsmos_cost(e)
    n = max(1, min(max_pieces, len(spans), math.ceil(total / PIECE_WINDOWS)))
    pieces: list[list[tuple[str, float, float]]] = [[]]
    done = 0.0
    for span in sorted(spans, key=lambda t: (t[1], t[2], t[0])):
        if pieces[-1] and len(pieces) < n and done >= total * len(pieces) / n:
            pieces.append([])
        pieces[-1].append(span)
        done += span_windows(span[1], span[2])
    return [(e, DnsmosRequest(e.source.media_uri, piece)) for piece in pieces]


def _piece_cost(piece: tuple[SourceScores, DnsmosRequest]) -> float:
    return sum(span_windows(a, b) for _, a, b in piece[1].spans)


def _piece_key(piece: tuple[SourceScores, DnsmosRequest]):
    return (piece[0].source.source_id, piece[0].source.uri, piece[1].spans[0][0] if piece[1].spans else "")


def _scored_piece(keyed):
    e, prediction = keyed
    return e.source.source_id, (e, prediction.inference, None)


def _failed_pieces(dead_letter):
    batch, error = dead_letter
    why = _dead_letter_text(error)
    for e, _req in batch:
        yield e.source.source_id, (e, None, why)


class _WithDnsmosFn(beam.DoFn):
    """A source's DNSMOS pieces -> its SourceScores with the scores. When any piece failed,
    every segment of the source is judged without DNSMOS (no score is no evidence; the same
    verdicts whatever the pieces) and the ledger gets one "dnsmos_error" annotation row."""

    def __init__(self, run_id: str):
        self._run_id = run_id

    def process(self, element):
        _source_id, parts = element
        parts = list(parts)
        e: SourceScores = parts[0][0]
        errors = sorted(why for _e, _r, why in parts if why is not None)
        if errors:
            Metrics.counter(NS, "quality.dnsmos_error").inc()
            log.warning("%s: DNSMOS failed: %s", printable(e.source.uri), printable(errors[0]))
            yield pvalue.TaggedOutput(REJECTED, Rejection.make(
                stage="quality", reason="dnsmos_error",
                detail=f"segments judged without DNSMOS: {errors[0]}", uri=e.source.uri,
                run_id=self._run_id, source_id=e.source.source_id, item_id=e.source.source_id))
            yield e
            return
        results: list[DnsmosResult] = [r for _e, r, _why in parts]
        scores = {k: v for r in results for k, v in r.scores.items()}
        elapsed = sum(r.elapsed_s for r in results)
        audio_s = max(r.audio_s for r in results)
        rows = []
        for row in e.rows:
            s = scores.get(row.segment_id)
            if s is not None:
                row = dataclasses.replace(row, dnsmos_sig=s[0], dnsmos_bak=s[1], dnsmos_ovrl=s[2])
                Metrics.distribution(NS, "quality.dnsmos_ovrl_x100").update(int(round(100 * s[2])))
            rows.append(row)
        if audio_s > 0:
            Metrics.distribution(NS, "quality.dnsmos_rtf_x1000").update(int(round(1000 * elapsed / audio_s)))
        log.info("quality: %s: DNSMOS of %d segment(s) in %.1f s (%d piece(s))", printable(e.source.uri), len(rows),
                 elapsed, len(results))
        yield dataclasses.replace(e, rows=rows)


def _dead_letter_text(error: Any) -> str:
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}"
    elif isinstance(error, tuple) and len(error) >= 2:
        text = str(error[1])
    else:
        text = str(error)
    return text if len(text) <= 500 else text[:497] + "..."


# --------------------------------------------------------------------------- rate, verdict


def rate_language(row: SegmentQuality) -> str:
    return row.language or row.transcript_language or "unknown"


class _QuartilesFn(beam.CombineFn):
    """Exact Q1/Q3 of a language's characters/s (None below `min_n` values)."""

    def __init__(self, min_n: int):
        self._min_n = min_n

    def create_accumulator(self):
        return []

    def add_input(self, acc, value):
        acc.append(value)
        return acc

    def merge_accumulators(self, accs):
        return [v for a in accs for v in a]

    def extract_output(self, acc):
        return qf.quartiles(acc) if len(acc) >= self._min_n else None


def _fmt(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


def _detail(row: SegmentQuality, text: str) -> str:
    """The ledger detail: every failing filter, the scores, the start of the text."""
    scores = {k: _fmt(getattr(row, k)) for k in (
        "duration_s", "chars_per_s", "language", "language_probability", "text_language",
        "text_language_probability", "phrase_share", "repeat_share", "outside_vad_share",
        "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "rate_q1", "rate_q3", "source_speech_ratio")
        if getattr(row, k) is not None}
    return (f"{', '.join(row.failed)}: {row.start:.2f}-{row.end:.2f} s {text[:160]!r}; "
            f"scores {json.dumps(scores, sort_keys=True, ensure_ascii=False)}")


class _JudgeFn(beam.DoFn):
    """SourceScores -> a SegmentQuality row per segment (main), the kept Segments ("kept")
    and a ledger row per dropped segment."""

    def __init__(self, cfg: QualityConfig, run_id: str):
        self._cfg = cfg
        self._run_id = run_id
        self._kept = Metrics.counter(NS, "quality.kept")
        self._dropped = Metrics.counter(NS, "quality.dropped")

    def setup(self):
        self._filters = build_filters(self._cfg)
        self._language = self._filters[1]

    def process(self, e: SourceScores, rates: dict):
        by_id = {s.segment_id: s for s in e.segments}
        for row in e.rows:
            q = rates.get(rate_language(row))
            row = dataclasses.replace(
                row, rate_q1=q[0] if q else None, rate_q3=q[1] if q else None,
                language_mismatch=self._language.mismatch(row),
                language_low_confidence=self._language.low_confidence(row))
            failed = qf.judge(row, self._filters)
            row = dataclasses.replace(row, failed=failed, keep=not failed,
                                      reason=failed[0] if failed else None)
            yield row
            seg = by_id[row.segment_id]
            if row.keep:
                self._kept.inc()
                yield pvalue.TaggedOutput("kept", seg)
                continue
            self._dropped.inc()
            Metrics.counter(NS, f"quality.dropped.{row.reason}").inc()
            yield pvalue.TaggedOutput(REJECTED, Rejection.make(
                stage="quality", reason=row.reason, detail=_detail(row, seg.text),
                uri=e.source.uri, run_id=self._run_id, source_id=row.source_id,
                item_id=row.segment_id, duration_s=row.duration_s))


class JudgeQuality(beam.PTransform):
    """{"segments", "sources", "speech_regions"} -> {"segment_quality", "kept_segments",
    "rejected"}. `dnsmos_handler` lets tests pass a handler with a fake model.

    `spread(cost=..., key=..., what=...)`: how the pipeline layer deals DNSMOS work to its
    workers (a PTransform, or None to leave the requests where they are); `dnsmos_pieces`:
    how many pieces a source's DNSMOS spans may be cut into for that (`dnsmos_pieces`; 1: a
    source is one request). Both are the pipeline layer's choice: the stage knows nothing of
    the runner."""

    def __init__(self, cfg: QualityConfig, run_id: str, *, dnsmos_handler: ModelHandler | None = None,
                 sample_rate: int = 16000, spread=None, dnsmos_pieces: int = 1):
        super().__init__()
        self._spread, self._pieces = spread, max(1, dnsmos_pieces)
        self._cfg = cfg
        self._run_id = run_id
        self.dnsmos_handler = (
            dnsmos_handler or DnsmosModelHandler(cfg.dnsmos_threads, sample_rate, batch=cfg.dnsmos_batch)
            if cfg.dnsmos else None)

    def expand(self, inputs: dict):
        run_id = self._run_id
        keyed = {
            "segments": inputs["segments"] | "KeySegments" >> beam.Map(lambda s: (s.source_id, s)),
            "sources": inputs["sources"] | "KeySources" >> beam.Map(lambda s: (s.source_id, s)),
            "regions": inputs["speech_regions"] | "KeyRegions" >> beam.Map(lambda r: (r.source_id, r)),
        }
        scored = (keyed
                  | "JoinBySource" >> beam.CoGroupByKey()
                  | "ScoreText" >> beam.ParDo(_ScoreTextFn(run_id)))
        rejected = []
        if self.dnsmos_handler is not None:
            pieces = scored | "DnsmosRequests" >> beam.FlatMap(dnsmos_pieces, self._pieces)
            # dealt by the windows the network runs: dealt whole, the talk and the meeting left
            # one worker of a 2-worker merge 11.5 s alone at the end (bench/README.md, bench_orchestration.py)
            spread = self._spread and self._spread(cost=_piece_cost, key=_piece_key, what="DNSMOS windows")
            if spread is not None:
                pieces = pieces | "SpreadDnsmos" >> spread
            results, failed = (
                pieces
                | "Dnsmos" >> RunInference(KeyedModelHandler(self.dnsmos_handler)).with_exception_handling()
            )
            with_scores = (
                (results | "ScoredPieces" >> beam.Map(_scored_piece),
                 failed.failed_inferences | "FailedPieces" >> beam.FlatMap(_failed_pieces))
                | "AllPieces" >> beam.Flatten()
                | "PiecesBySource" >> beam.GroupByKey()
                | "WithDnsmos" >> beam.ParDo(_WithDnsmosFn(run_id)).with_outputs(REJECTED, main="sources"))
            rejected.append(with_scores[REJECTED])
            scored = with_scores.sources
        min_s = self._cfg.rate_min_duration_s
        rates = (scored
                 | "RatePerSegment" >> beam.FlatMap(
                     lambda e: [(rate_language(r), r.chars_per_s) for r in e.rows
                                if r.chars_per_s is not None and r.duration_s >= min_s])
                 | "RateByLanguage" >> beam.CombinePerKey(_QuartilesFn(self._cfg.rate_min_segments)))
        judged = scored | "Judge" >> beam.ParDo(
            _JudgeFn(self._cfg, run_id), pvalue.AsDict(rates)).with_outputs("kept", REJECTED, main="rows")
        rejected.append(judged[REJECTED])
        return {
            "segment_quality": judged.rows,
            "kept_segments": judged.kept,
            "rejected": rejected | "FlattenQualityRejections" >> beam.Flatten(),
        }
