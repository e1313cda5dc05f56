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

from mmcurate.transforms.asr import AsrConfig
from mmcurate.transforms.attribute import SegmentsConfig
from mmcurate.transforms.decode import DecodeConfig
from mmcurate.transforms.diarize import DiarizationConfig
from mmcurate.transforms.ingest import IngestConfig
from mmcurate.transforms.sink import OutputConfig
from mmcurate.transforms.vad import VadConfig

__all__ = ["AsrConfig", "CurateConfig", "DecodeConfig", "DiarizationConfig", "IngestConfig",
           "OutputConfig", "SegmentsConfig", "VadConfig"]


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
