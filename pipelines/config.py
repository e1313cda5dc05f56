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

from mmcurate.schemas import params
from mmcurate.schemas.params import ConfigError
from mmcurate.schemas.stages import DEFAULT_STAGES, STAGE_CONFIG
from mmcurate.transforms.asr import AsrConfig
from mmcurate.transforms.attribute import SegmentsConfig
from mmcurate.transforms.decode import DecodeConfig
from mmcurate.transforms.dedup_config import DedupConfig
from mmcurate.transforms.diarize import DiarizationConfig
from mmcurate.transforms.ingest import IngestConfig
from mmcurate.transforms.segment_quality import QualityConfig
from mmcurate.transforms.rephrase import RephraseConfig
from mmcurate.transforms.sink import OutputConfig
from mmcurate.transforms.turn_events import TurnEventsConfig
from mmcurate.transforms.vad import VadConfig
from mmcurate.transforms.video_config import VideoConfig

__all__ = ["AsrConfig", "ConfigError", "CurateConfig", "DecodeConfig", "DedupConfig", "DiarizationConfig", "IngestConfig",
           "OutputConfig", "QualityConfig", "RephraseConfig", "SegmentsConfig", "TurnEventsConfig", "VadConfig",
           "VideoConfig"]


@dataclass
class CurateConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    diarization: DiarizationConfig = field(default_factory=DiarizationConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    turn_events: TurnEventsConfig = field(default_factory=TurnEventsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    rephrase: RephraseConfig = field(default_factory=RephraseConfig)
    # The stages to run, in registry order (--stages; `mmcurate run --help` lists them): speech is
    # diarization + ASR + segments, video keyframes interleaved with the words. Default: every
    # stage the registry declares default (rephrase is opt-in).
    stages: tuple[str, ...] = DEFAULT_STAGES

    def validate(self) -> list[str]:
        """Cross-section problems: the stage selection (known, prerequisites present)."""
        from mmcurate.schemas.stages import resolve

        try:
            resolve(self.stages)
        except ValueError as e:
            return [f"stages: {e}"]
        return []

    def problems(self) -> list[str]:
        """Every problem of this config (types are checked when it is built from data)."""
        return params.check(self, "", [])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CurateConfig":
        """Build and check; raises ConfigError listing every problem (nothing half-checked)."""
        problems: list[str] = []
        cfg = params.build(cls, data, "", problems)
        for section in dataclasses.fields(cfg):
            value = getattr(cfg, section.name)
            if dataclasses.is_dataclass(value) and section.name not in (data or {}):
                params.check(value, section.name, problems)  # defaults can be wrong too (env)
        if problems:
            raise ConfigError(problems)
        return cfg

    @classmethod
    def load(cls, path: str | Path | None) -> "CurateConfig":
        return cls.from_dict(read_config_file(path)) if path is not None else cls()


if STAGE_CONFIG:  # the sections of stage modules (mmcurate.schemas.stages), after the built-in ones
    CurateConfig = dataclasses.make_dataclass(  # type: ignore[misc]
        "CurateConfig", [(name, cls, field(default_factory=cls)) for name, cls in STAGE_CONFIG.items()],
        bases=(CurateConfig,), namespace={"__module__": __name__, "__doc__": CurateConfig.__doc__})


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a .toml/.yaml/.json file; ConfigError with one clear line otherwise."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"--config {p}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"--config {p}: cannot read it ({e})"]) from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError([f"--config {p}: use a .toml, .yaml or .json file"])
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - every parser's syntax error, one line
        msg = " ".join(str(e).split())
        raise ConfigError([f"--config {p}: not valid {p.suffix[1:].upper()}: {msg}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"--config {p}: expected a mapping of sections at the top, got "
                           f"{type(data).__name__}"])
    return data
