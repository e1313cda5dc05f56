"""The quality filters: each a small unit that reads the scores in a `SegmentQuality` row and
returns keep (None) or the reason it drops the row, and writes the same rule as SQL.

Scores are computed once (mmcurate.transforms.segment_quality: text scores here and in
`mmcurate.quality.scorers.hallucination` / `mmcurate.quality.scorers.language`, DNSMOS by its model handler)
and every one is kept in the `segment_quality` table, kept rows and dropped rows alike. A
filter's verdict is a pure function of the row and its thresholds, and `keep_sql()` says the
same in DuckDB SQL, so re-tuning a threshold is a query over the stored scores:

    SELECT segment_id FROM segment_quality WHERE <keep_sql(filters with the new thresholds)>

selects exactly what a re-run with those thresholds keeps (tests/test_quality_stage.py).
A score that is null (no words, DNSMOS off, too few segments for quartiles) is no evidence:
the filter that needs it passes.

Reason codes (the ledger's `reason` at stage `quality`, in the order the filters run; a row's
`reason` is the first that fails, `failed` lists all of them):
  hallucination_phrase   the text is mostly stock phrases ("thanks for watching", ...)
  repeated_ngrams        the words are mostly a decoder loop
  outside_vad            the words are mostly where the VAD heard no speech
  implausible_rate       more characters per second than anyone speaks (text the audio
                         cannot hold: whisper-base wrote 50 characters into 0.86 s of a hum)
  language_not_allowed   spoken language not in the allow-list
  language_mismatch      (only with language_flags = "drop") text language != spoken language
  language_low_confidence (only with language_flags = "drop") Whisper unsure of the language
  low_dnsmos             DNSMOS P.835 OVRL (or SIG / BAK) below its minimum
  too_short, too_long    segment duration outside [min, max]
  speaking_rate          characters per second beyond k x IQR of its language in this run
  low_speech_ratio       the source is mostly not speech (sources.speech_ratio)
The first four, with ASR's own asr/hallucination rows, are the hallucination family
(HALLUCINATION_REASONS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

HALLUCINATION_REASONS = ("hallucination_phrase", "repeated_ngrams", "outside_vad", "implausible_rate")


def _lit(x: float) -> str:
    """A float as an exact SQL DOUBLE literal (repr round-trips in DuckDB)."""
    if not math.isfinite(x):
        raise ValueError(f"threshold {x!r} is not finite")
    return f"CAST({x!r} AS DOUBLE)"


def _str_list(items: Sequence[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


class Filter(Protocol):
    codes: tuple[str, ...]  # the reason codes it can return

    def failures(self, row: Any) -> list[str]: ...  # every code that fails, in `codes` order

    def keep_sql(self) -> str: ...


class _JudgeByFirstFailure:
    """A filter's `judge(row)` from its `failures(row)` (every failing code): None to keep the
    row, else the first code."""

    def judge(self, row: Any) -> str | None:
        failed = self.failures(row)  # type: ignore[attr-defined]
        return failed[0] if failed else None


# --------------------------------------------------------------------------- hallucination


@dataclass(frozen=True)
class HallucinationFilter(_JudgeByFirstFailure):
    """Stock phrases, decoder loops, words outside the VAD (mmcurate.quality.scorers.hallucination) and
    more characters per second than speech can carry.

    A value above its maximum drops the row; None turns that check off."""

    max_phrase_share: float | None = 0.5
    max_repeat_share: float | None = 0.5
    max_outside_vad_share: float | None = 0.5
    max_chars_per_s: float | None = 45.0
    codes: tuple[str, ...] = HALLUCINATION_REASONS

    def failures(self, row: Any) -> list[str]:
        return [code for code, value, limit in self._checks(row)
                if limit is not None and value is not None and value > limit]

    def _checks(self, row: Any):
        return (("hallucination_phrase", getattr(row, "phrase_share", None), self.max_phrase_share),
                ("repeated_ngrams", getattr(row, "repeat_share", None), self.max_repeat_share),
                ("outside_vad", getattr(row, "outside_vad_share", None), self.max_outside_vad_share),
                ("implausible_rate", getattr(row, "chars_per_s", None), self.max_chars_per_s))

    def keep_sql(self) -> str:
        parts = [f"({col} IS NULL OR {col} <= {_lit(limit)})"
                 for col, limit in (("phrase_share", self.max_phrase_share),
                                    ("repeat_share", self.max_repeat_share),
                                    ("outside_vad_share", self.max_outside_vad_share),
                                    ("chars_per_s", self.max_chars_per_s))
                 if limit is not None]
        return " AND ".join(parts) or "TRUE"


# --------------------------------------------------------------------------- language


@dataclass(frozen=True)
class LanguageFilter(_JudgeByFirstFailure):
    """Allow-list of spoken languages (Whisper's, or the transcript's text language when Whisper
    gave none), and two flags:

    * language_mismatch: the segment's text language (langdetect) disagrees with the spoken one,
      counted only for text of at least `min_text_chars` letters whose langdetect probability is
      at least `min_text_probability` (langdetect is unreliable on a few words);
    * language_low_confidence: Whisper's spoken-language probability below
      `min_spoken_probability`.
    With `drop_flags` a flagged row is dropped; otherwise the flags are only columns."""

    allowed: tuple[str, ...] = ()
    min_spoken_probability: float = 0.8
    min_text_probability: float = 0.9
    min_text_chars: int = 30
    drop_flags: bool = False
    codes: tuple[str, ...] = ("language_not_allowed", "language_mismatch", "language_low_confidence")

    def mismatch(self, row: Any) -> bool:
        return bool(row.text_language is not None and row.language is not None
                    and row.text_language_probability is not None
                    and row.chars >= self.min_text_chars
                    and row.text_language_probability >= self.min_text_probability
                    and row.text_language != row.language)

    def low_confidence(self, row: Any) -> bool:
        p = row.language_probability
        return bool(p is not None and p < self.min_spoken_probability)

    def failures(self, row: Any) -> list[str]:
        out = []
        spoken = row.language if row.language is not None else row.transcript_language
        if self.allowed and spoken not in self.allowed:
            out.append("language_not_allowed")
        if self.drop_flags and self.mismatch(row):
            out.append("language_mismatch")
        if self.drop_flags and self.low_confidence(row):
            out.append("language_low_confidence")
        return out

    def mismatch_sql(self) -> str:
        return (f"(text_language IS NOT NULL AND language IS NOT NULL AND "
                f"text_language_probability IS NOT NULL AND chars >= {int(self.min_text_chars)} "
                f"AND text_language_probability >= {_lit(self.min_text_probability)} "
                f"AND text_language <> language)")

    def low_confidence_sql(self) -> str:
        return (f"(language_probability IS NOT NULL AND "
                f"language_probability < {_lit(self.min_spoken_probability)})")

    def keep_sql(self) -> str:
        parts = []
        if self.allowed:
            parts.append(f"coalesce(coalesce(language, transcript_language) IN "
                         f"(SELECT unnest({_str_list(self.allowed)})), FALSE)")
        if self.drop_flags:
            parts += [f"NOT {self.mismatch_sql()}", f"NOT {self.low_confidence_sql()}"]
        return " AND ".join(parts) or "TRUE"


# --------------------------------------------------------------------------- speech quality


@dataclass(frozen=True)
class SpeechQualityFilter(_JudgeByFirstFailure):
    """DNSMOS P.835 minimums (mmcurate.quality.scorers.dnsmos); None turns a minimum off."""

    min_ovrl: float | None = None
    min_sig: float | None = None
    min_bak: float | None = None
    codes: tuple[str, ...] = ("low_dnsmos",)

    def _checks(self, row: Any):
        return ((row.dnsmos_ovrl, self.min_ovrl), (row.dnsmos_sig, self.min_sig),
                (row.dnsmos_bak, self.min_bak))

    def failures(self, row: Any) -> list[str]:
        low = any(m is not None and v is not None and v < m for v, m in self._checks(row))
        return ["low_dnsmos"] if low else []

    def keep_sql(self) -> str:
        parts = [f"({col} IS NULL OR {col} >= {_lit(low)})"
                 for col, low in (("dnsmos_ovrl", self.min_ovrl), ("dnsmos_sig", self.min_sig),
                                  ("dnsmos_bak", self.min_bak)) if low is not None]
        return " AND ".join(parts) or "TRUE"


# --------------------------------------------------------------------------- duration, rate


@dataclass(frozen=True)
class DurationFilter(_JudgeByFirstFailure):
    min_s: float | None = None
    max_s: float | None = None
    codes: tuple[str, ...] = ("too_short", "too_long")

    def failures(self, row: Any) -> list[str]:
        if self.min_s is not None and row.duration_s < self.min_s:
            return ["too_short"]
        if self.max_s is not None and row.duration_s > self.max_s:
            return ["too_long"]
        return []

    def keep_sql(self) -> str:
        parts = []
        if self.min_s is not None:
            parts.append(f"duration_s >= {_lit(self.min_s)}")
        if self.max_s is not None:
            parts.append(f"duration_s <= {_lit(self.max_s)}")
        return " AND ".join(parts) or "TRUE"


def rate_bounds(q1: float, q3: float, k: float) -> tuple[float, float]:
    """Tukey's fences: [q1 - k x IQR, q3 + k x IQR] (the SQL computes them the same way)."""
    iqr = q3 - q1
    return q1 - k * iqr, q3 + k * iqr


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """Q1 and Q3 by linear interpolation between order statistics: numpy's default and
    DuckDB's quantile_cont, so the stored quartiles can be recomputed in SQL."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("no values")

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return q(0.25), q(0.75)


@dataclass(frozen=True)
class SpeakingRateFilter(_JudgeByFirstFailure):
    """Characters per second outside Tukey's fences (k x IQR) of its language's segments in this
    run, as Emilia-Pipe filters on average character duration. Only segments of at least
    `min_duration_s` are judged (and make the quartiles: on a short segment the word boundaries
    dominate the rate); no verdict where the language had too few segments for quartiles
    (rate_q1 / rate_q3 null). iqr_k None turns it off."""

    iqr_k: float | None = 1.5
    min_duration_s: float = 0.0
    codes: tuple[str, ...] = ("speaking_rate",)

    def failures(self, row: Any) -> list[str]:
        if self.iqr_k is None or row.rate_q1 is None or row.rate_q3 is None or row.chars_per_s is None:
            return []
        if row.duration_s < self.min_duration_s:
            return []
        lo, hi = rate_bounds(row.rate_q1, row.rate_q3, self.iqr_k)
        return ["speaking_rate"] if row.chars_per_s < lo or row.chars_per_s > hi else []

    def keep_sql(self) -> str:
        if self.iqr_k is None:
            return "TRUE"
        k = _lit(self.iqr_k)
        return (f"(rate_q1 IS NULL OR rate_q3 IS NULL OR chars_per_s IS NULL OR "
                f"duration_s < {_lit(self.min_duration_s)} OR "
                f"(chars_per_s >= rate_q1 - {k} * (rate_q3 - rate_q1) AND "
                f"chars_per_s <= rate_q3 + {k} * (rate_q3 - rate_q1)))")


@dataclass(frozen=True)
class SpeechRatioFilter(_JudgeByFirstFailure):
    min_ratio: float | None = None
    codes: tuple[str, ...] = ("low_speech_ratio",)

    def failures(self, row: Any) -> list[str]:
        r = row.source_speech_ratio
        return ["low_speech_ratio"] if (self.min_ratio is not None and r is not None
                                        and r < self.min_ratio) else []

    def keep_sql(self) -> str:
        if self.min_ratio is None:
            return "TRUE"
        return f"(source_speech_ratio IS NULL OR source_speech_ratio >= {_lit(self.min_ratio)})"


# --------------------------------------------------------------------------- composition


def judge(row: Any, filters: Sequence[Filter]) -> list[str]:
    """Every failing check's reason, in filter order (empty: keep the row; the first is the
    row's `reason`)."""
    return [code for f in filters for code in f.failures(row)]


def keep_sql(filters: Sequence[Filter]) -> str:
    """A DuckDB boolean expression over `segment_quality`'s columns: true exactly for the rows
    `judge` keeps."""
    return " AND ".join(f"({f.keep_sql()})" for f in filters) or "TRUE"
