"""Run configuration: typed sections with defaults that say where they come from.

Loaded from TOML, YAML or JSON (`--config FILE`); unknown keys are errors, so a typo does not
silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class IngestConfig:
    max_bytes: int = 20 * 1024**3  # refuse inputs above 20 GiB ("huge"): reason too_large
    http_timeout_s: float = 30.0
    http_retries: int = 3
    http_backoff_s: float = 0.5
    max_download_bytes: int = 4 * 1024**3
    download_dir: str | None = None  # default: <output>/_downloads
    media_extensions: tuple[str, ...] = (
        ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".oga", ".wma",
        ".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v",
    )


@dataclass
class DecodeConfig:
    sample_rate: int = 16000  # what every speech model here expects
    max_duration_s: float = 12 * 3600.0  # longer sources are rejected (too_long)


@dataclass
class VadConfig:
    # silero-vad's own defaults (silero_vad.utils_vad.get_speech_timestamps)
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30
    min_speech_ratio: float = 0.0  # sources with speech_s == 0 (or below this ratio) -> no_speech
    model_path: str | None = None  # None: silero v6 sequence model from the silero-vad wheel


@dataclass
class AsrConfig:
    backend: str = "faster-whisper"  # faster-whisper (embedded) | whisperx (production)
    model: str = "whisper-base"  # whisper-base | whisper-tiny.en | path to a CTranslate2 dir
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = 5
    language: str | None = None  # None: detect from audio
    condition_on_previous_text: bool = False  # on, it feeds hallucination loops
    batch_size: int = 8
    cpu_threads: int = 0  # 0: CTranslate2 default
    # whisperx only
    whisperx_model_dir: str | None = None  # local CT2 model dir (e.g. faster-whisper-large-v3)
    whisperx_model_size: str = "large-v3"
    align_model_dir: str | None = None  # local wav2vec2 alignment model; None: no alignment
    # Segments whose ASR scores say "no speech" are dropped (Whisper's own defaults)
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    # Inside VAD speech, no_speech_prob above this drops a segment on its own: measured on
    # noise/tones that passed as speech (0.67-0.74) vs real speech here (<= 0.29). None: off.
    no_speech_alone_threshold: float | None = 0.6


@dataclass
class DiarizationConfig:
    backend: str = "embedded"  # embedded | senko | pyannote (production) | none
    pipeline_dir: str | None = None  # pyannote pipeline directory (config.yaml + weights)
    device: str = "cpu"
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    # torch intra-op threads per worker process; 0 keeps torch's default (all cores). Set it to
    # cores / workers when several workers share a machine (multi_processing, Flink, Spark):
    # oversubscribed torch threads slowed a 30 s diarization from 3 s to minutes here.
    torch_threads: int = 0


@dataclass
class SegmentsConfig:
    max_duration_s: float = 30.0  # one utterance at most (Whisper's window)
    include_audio: bool = False  # inline FLAC bytes; default is a reference


@dataclass
class OutputConfig:
    target_shard_mb: float = 256.0
    buckets: int = 8  # rows are bucketed by id hash; each bucket is cut into shards


@dataclass
class CurateConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    diarization: DiarizationConfig = field(default_factory=DiarizationConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    stages: tuple[str, ...] = ("vad", "speech")  # speech: diarization + ASR + segments

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CurateConfig":
        return _build(cls, data, "config")

    @classmethod
    def load(cls, path: str | Path | None) -> "CurateConfig":
        if path is None:
            return cls()
        p = Path(path)
        text = p.read_text()
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"--config {p}: use .toml, .yaml or .json")
        return cls.from_dict(data)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a table/mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
