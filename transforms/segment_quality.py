"""The quality stage: score every segment, keep every score, keep or drop it with a reason.

    segments, sources, speech_regions, transcripts (with the DNSMOS windows)
      | "Key*" -> "JoinBySource" (CoGroupByKey on source_id)
      | "ScoreText"      per source: transcript language; per segment: text language,
      |                  stock phrases, decoder loops, words outside the VAD, duration, rate,
      |                  DNSMOS from the source's windows (`segment_dnsmos`)
      | "RateByLanguage" (characters/s quartiles per spoken language over the run) -> side input
      | "Judge"          the filters of mmcurate.quality.scorers.filters, in order
      -> segment_quality (every segment, kept or dropped, with its scores and verdict)
         kept_segments   (stream: the Segment records that passed, for later stages)
         rejected        (one ledger row per dropped segment: stage "quality", the first failing
                          filter's reason, item_id = segment_id, the scores in the detail)

DNSMOS runs where the decoded samples are: in the speech stage, beside ASR and diarization
(`DnsmosModelHandler`, wired when this stage runs), over contiguous speech (VAD regions merged
across pauses < 1 s) in 9.01 s windows, each run once: about one network run per 9 s of speech,
whatever the segments. The windows travel on the `transcripts` rows (`dnsmos_windows`); a
segment's DNSMOS is the duration-weighted mean of the windows it overlaps. When the model fails
on a source the speech stage writes a "dnsmos_error" row (stage "quality", item_id = source_id)
and its segments are judged without DNSMOS.

The `segments` table stays as the speech stage wrote it (every segment ASR kept): re-tuning a
threshold is a query over `segment_quality` (`mmcurate.quality.scorers.filters.keep_sql`), and the
curated segments are `segments JOIN segment_quality USING (segment_id) WHERE keep` (the audit's
`kept_segments` view); in-graph, later stages read the `kept_segments` stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from mmcurate.quality.scorers import filters as qf
from mmcurate.quality.scorers.hallucination import default_matcher, outside_vad_share, repeat_share, tokens
from mmcurate.schemas.params import Rule, non_negative, positive, unit_interval
from mmcurate.schemas.printable import printable
from mmcurate.schemas.records import DnsmosWindow, Rejection, Segment, SegmentQuality, SourceRecord
from mmcurate.transforms.attribute import LONG_PAUSE_S

log = logging.getLogger("mmcurate.quality")

NS = "mmcurate"
REJECTED = "rejected"


@dataclass
class QualityConfig:
    """Thresholds of the quality filters (mmcurate.quality.scorers.filters). null turns a check off.

    Measured 2026-11-23 on the pipeline's segments (whisper-base int8, embedded diarizer) of all
    real speech in ../shared/media (67 segments, 611 words in 10 files) and on the text
    whisper-base invents on generated wordless hums (tests/nonspeech_fixtures.py), with the CPU
    instruction-set variables unset and set to AVX2: DNSMOS and langdetect scores were
    bit-identical (onnxruntime ignores those variables; langdetect is pure Python, seeded).
    See README "Quality" for the table."""

    # hallucination (mmcurate.quality.scorers.hallucination): a share above the maximum drops. Stock
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
    # DNSMOS P.835 (mmcurate.quality.scorers.dnsmos): scored and kept for every segment (the windows of
    # contiguous speech it overlaps, `segment_dnsmos`); no minimum by default. It rates
    # recording quality, not whether there is speech: real segments here scored OVRL 1.15-3.45
    # when each was scored alone (the lowest: overlapped meeting speech and sub-second words),
    # so any floor drops real words (1.5: 14 of 611, 1.8: 29, 3.0 as in Emilia's TTS data: 269).
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
    # worker; quality/scorers/dnsmos.py). Raise it for a GPU provider. The scores do not change.
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
    from mmcurate.quality.scorers.language import detect

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
    """Joined (source_id, {segments, sources, regions, transcripts}) -> SourceScores: the text
    scores and, when DNSMOS ran on the source, each segment's DNSMOS (`segment_dnsmos`)."""

    def __init__(self, run_id: str, dnsmos: bool = True):
        self._run_id = run_id
        self._dnsmos = dnsmos
        self._segments = Metrics.counter(NS, "quality.segments")
        self._unscored = Metrics.counter(NS, "quality.dnsmos_unscored_segments")

    def setup(self):
        from mmcurate.quality.scorers.language import factory

        default_matcher()  # phrase automaton and language profiles: once per worker process
        factory()

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]):
        from mmcurate.quality.scorers.language import detect

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
            transcripts = list(groups.get("transcripts", []))
            windows = transcripts[0].dnsmos_windows if transcripts and self._dnsmos else None
            if windows is not None:
                rows = [self._with_dnsmos(row, windows) for row in rows]
            self._segments.inc(len(rows))
            yield SourceScores(source, segments, rows)

    def _with_dnsmos(self, row: SegmentQuality, windows: list[DnsmosWindow]) -> SegmentQuality:
        s = segment_dnsmos(row.start, row.end, windows)
        if s is None:
            self._unscored.inc()
            return row
        Metrics.distribution(NS, "quality.dnsmos_ovrl_x100").update(int(round(100 * s[2])))
        return dataclasses.replace(row, dnsmos_sig=s[0], dnsmos_bak=s[1], dnsmos_ovrl=s[2])


# --------------------------------------------------------------------------- DNSMOS

# VAD regions closer than this are one stretch of speech for DNSMOS, the pause between them
# included: it is the pause that always ends an utterance (`attribute.LONG_PAUSE_S`), so a
# segment lies inside one stretch, and short regions share windows instead of each being tiled
# to a whole one
STRETCH_GAP_S = LONG_PAUSE_S
# windows per `score_windows` call: bounds the samples copied out at once (~0.6 MB a window)
WINDOWS_PER_CALL = 8


def speech_stretches(regions: Iterable[tuple[float, float]], gap_s: float = STRETCH_GAP_S
                     ) -> list[tuple[float, float]]:
    """Contiguous speech: (start, end) regions merged across pauses shorter than `gap_s`."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(regions):
        if out and a - out[-1][1] < gap_s:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


@dataclass(frozen=True)
class DnsmosRequest:
    """Score these stretches of speech (start, end in seconds) of one source's decoded samples."""

    audio: np.ndarray
    stretches: list[tuple[float, float]]


def score_stretches(model, audio: np.ndarray, stretches: list[tuple[float, float]],
                    sample_rate: int = 16000) -> list[DnsmosWindow]:
    """DNSMOS of each stretch in 9.01 s windows (`mmcurate.quality.scorers.dnsmos.stretch_windows`),
    each run once: one row per window, with the part of the source its score stands for."""
    from mmcurate.quality.scorers.dnsmos import stretch_window, stretch_windows

    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    out: list[DnsmosWindow] = []
    spans: list[tuple[float, float]] = []
    pending: list[np.ndarray] = []

    def flush():
        for (a, b), s in zip(spans, model.score_windows(np.stack(pending))):
            out.append(DnsmosWindow(a, b, s.sig, s.bak, s.ovrl))
        spans.clear()
        pending.clear()

    for start, end in stretches:
        i = max(0, int(round(start * sample_rate)))
        j = min(audio.shape[0], int(round(end * sample_rate)))
        stretch = np.clip(audio[i:j], -1.0, 1.0)
        for first, own_a, own_b in stretch_windows(j - i):
            pending.append(stretch_window(stretch, first))
            spans.append(((i + own_a) / sample_rate, (i + own_b) / sample_rate))
            if len(pending) == WINDOWS_PER_CALL:
                flush()
    if pending:
        flush()
    return out


def segment_dnsmos(start: float, end: float, windows: list[DnsmosWindow]
                   ) -> tuple[float, float, float] | None:
    """A segment's (sig, bak, ovrl): the scores of the windows whose part of the source it
    overlaps, weighted by the seconds of overlap (a segment inside one window: that window's
    scores as they are, so one that is exactly a window has the reference's numbers). A
    segment of no length takes the window it lies in; one outside every window has none."""
    parts = [(min(end, w.end) - max(start, w.start), w) for w in windows]
    parts = [(ov, w) for ov, w in parts if ov > 0]
    if len(parts) == 1:
        w = parts[0][1]
        return w.sig, w.bak, w.ovrl
    if parts:
        total = sum(ov for ov, _ in parts)
        return tuple(sum(ov * getattr(w, k) for ov, w in parts) / total for k in ("sig", "bak", "ovrl"))
    inside = [w for w in windows if w.start <= start <= w.end]
    return (inside[0].sig, inside[0].bak, inside[0].ovrl) if inside else None


class DnsmosModelHandler(ModelHandler):
    """DNSMOS P.835 for `RunInference`: example = `DnsmosRequest` (one source's samples, as the
    speech stage holds them, and its stretches of speech), inference = its `DnsmosWindow`s,
    model = `mmcurate.quality.scorers.dnsmos.Dnsmos` (one ONNX session per worker process, shared by
    its threads)."""

    def __init__(self, threads: int = 1, sample_rate: int = 16000, loader=None, batch: int = 1):
        super().__init__()
        self._threads = threads
        self._batch = batch
        self._sr = sample_rate
        self._loader = loader  # tests: a fake model factory()

    def load_model(self):
        if self._loader is not None:
            return self._loader()
        from mmcurate.quality.scorers.dnsmos import Dnsmos
        from mmcurate.transforms.worker import exit_fast_after_harness

        exit_fast_after_harness()  # a worker process that loads ORT: no slow teardown
        return Dnsmos(intra_op_threads=self._threads, batch=self._batch)

    def run_inference(self, batch, model, inference_args=None):
        for req in batch:
            yield PredictionResult(req, score_stretches(model, req.audio, req.stretches, self._sr), "dnsmos")

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": 1}  # one source is one call

    def get_metrics_namespace(self) -> str:
        return "mmcurate.quality"

    def model_info(self) -> list[dict]:
        from mmcurate.quality.scorers.dnsmos import model_info

        return [model_info()]


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
    """{"segments", "sources", "speech_regions", "transcripts"} -> {"segment_quality",
    "kept_segments", "rejected"}. The DNSMOS windows come on the transcripts (scored by the
    speech stage, `DnsmosModelHandler`); without transcripts, or with quality.dnsmos off, the
    DNSMOS columns stay null."""

    def __init__(self, cfg: QualityConfig, run_id: str):
        super().__init__()
        self._cfg = cfg
        self._run_id = run_id

    def expand(self, inputs: dict):
        run_id = self._run_id
        keyed = {
            "segments": inputs["segments"] | "KeySegments" >> beam.Map(lambda s: (s.source_id, s)),
            "sources": inputs["sources"] | "KeySources" >> beam.Map(lambda s: (s.source_id, s)),
            "regions": inputs["speech_regions"] | "KeyRegions" >> beam.Map(lambda r: (r.source_id, r)),
        }
        if "transcripts" in inputs:
            keyed["transcripts"] = inputs["transcripts"] | "KeyTranscripts" >> beam.Map(lambda t: (t.source_id, t))
        scored = (keyed
                  | "JoinBySource" >> beam.CoGroupByKey()
                  | "ScoreText" >> beam.ParDo(_ScoreTextFn(run_id, self._cfg.dnsmos)))
        min_s = self._cfg.rate_min_duration_s
        rates = (scored
                 | "RatePerSegment" >> beam.FlatMap(
                     lambda e: [(rate_language(r), r.chars_per_s) for r in e.rows
                                if r.chars_per_s is not None and r.duration_s >= min_s])
                 | "RateByLanguage" >> beam.CombinePerKey(_QuartilesFn(self._cfg.rate_min_segments)))
        judged = scored | "Judge" >> beam.ParDo(
            _JudgeFn(self._cfg, run_id), pvalue.AsDict(rates)).with_outputs("kept", REJECTED, main="rows")
        return {
            "segment_quality": judged.rows,
            "kept_segments": judged.kept,
            "rejected": judged[REJECTED],
        }
