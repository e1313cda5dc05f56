"""The main curation job: ingest -> decode + VAD -> diarization + ASR -> Parquet shards.

`run(argv)` is what the CLI, the Airflow DAG and the tests call; Beam runner flags pass
through `PipelineOptions` untouched, and `test_pipeline` lets a test inject its own pipeline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from mmcurate.pipelines.config import CurateConfig

log = logging.getLogger("mmcurate")

STAGES = ("vad", "speech")


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("mmcurate")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v


def make_run_id(inputs: list[str], cfg: CurateConfig, version: str) -> str:
    """Deterministic: the same inputs, config and code give the same run id."""
    h = hashlib.sha256(json.dumps([sorted(inputs), cfg.to_json(), version]).encode())
    return "run-" + h.hexdigest()[:16]


def model_infos(cfg: CurateConfig) -> list[dict]:
    """Names, versions and checksums of every model the run uses (computed on the driver)."""
    from mmcurate.transforms.vad import vad_model_info

    infos = [vad_model_info(cfg.vad.model_path)]
    if "speech" in cfg.stages:
        from mmcurate.transforms.speech import speech_model_info

        infos.extend(speech_model_info(cfg))
    return infos


@dataclass
class ManifestBuilder:
    """Completes the run manifest on the worker that publishes the shards."""

    run_id: str
    version: str
    config_json: str
    inputs: list[str]
    models: list[dict]

    def __call__(self, written: dict) -> dict:
        tables = written["tables"]
        rejected = written["rejected"]
        stage_counts = {f"{t}.rows": n for t, n in tables.items()}
        for key, n in rejected.items():
            stage = key.split("/", 1)[0]
            stage_counts[f"{stage}.rejected"] = stage_counts.get(f"{stage}.rejected", 0) + n
        from mmcurate.schemas.tables import SOURCE_LEVEL_STAGES

        stage_counts["ingest.inputs"] = tables.get("sources", 0) + sum(
            n for k, n in rejected.items() if k.split("/", 1)[0] in SOURCE_LEVEL_STAGES
        )
        return {
            "run_id": self.run_id,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": self.version,
            "config": self.config_json,
            "inputs": self.inputs,
            "models": self.models,
            "tables": tables,
            "stage_counts": dict(sorted(stage_counts.items())),
            "rejected": rejected,
            "shards": written["shards"],
        }


def build(p: beam.Pipeline, inputs: list[str], output: str, cfg: CurateConfig, run_id: str,
          manifest: ManifestBuilder) -> None:
    """Assemble the curation graph on `p` (labels are stable: monitoring keys on them)."""
    from mmcurate.transforms.ingest import Ingest
    from mmcurate.transforms.sink import WriteTables
    from mmcurate.transforms.vad import DetectSpeech

    download_dir = cfg.ingest.download_dir or os.path.join(output, "_downloads")
    ingested = p | "Ingest" >> Ingest(inputs, cfg.ingest, run_id, download_dir)
    detected = ingested["media"] | "DetectSpeech" >> DetectSpeech(cfg, run_id)
    tables = {"sources": detected["sources"], "speech_regions": detected["regions"]}
    rejected = [ingested["rejected"], detected["rejected"]]
    if "speech" in cfg.stages:
        from mmcurate.transforms.speech import TranscribeSpeech

        speech = detected["speech"] | "Speech" >> TranscribeSpeech(cfg, run_id)
        tables["segments"] = speech["segments"]
        tables["transcripts"] = speech["transcripts"]
        rejected.append(speech["rejected"])
    tables["rejected"] = rejected | "AllRejections" >> beam.Flatten()
    _ = tables | "WriteTables" >> WriteTables(output, run_id, cfg.output, manifest)


def local_runner(options: PipelineOptions):
    """The DirectRunner's portable engine (FnApiRunner) when no other runner is asked for.

    Beam 2.77's DirectRunner first tries the Prism runner, which downloads a Go binary from
    GitHub at run time; here that fails (no network) and it falls back to the FnApiRunner
    anyway. Going there directly skips the download attempt; `--direct_running_mode` and
    `--direct_num_workers` keep working. Any other --runner is passed through untouched.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner not in (None, "DirectRunner", "direct"):
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def run(inputs: list[str], output: str, cfg: CurateConfig | None = None,
        beam_args: list[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the job to completion; returns the run manifest."""
    cfg = cfg or CurateConfig()
    unknown = set(cfg.stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; known: {list(STAGES)}")
    if "vad" not in cfg.stages:
        raise ValueError("the 'vad' stage is required: every later stage reads speech regions")
    output = output.rstrip("/") if "://" in output else os.path.abspath(output)
    if "://" not in output:
        os.makedirs(output, exist_ok=True)
    version = code_version()
    run_id = make_run_id(inputs, cfg, version)
    from mmcurate.transforms.ingest import escape_uri

    manifest = ManifestBuilder(run_id, version, cfg.to_json(), [escape_uri(i) for i in inputs], model_infos(cfg))
    log.info("run %s: %d input(s) -> %s (stages: %s)", run_id, len(inputs), output, ",".join(cfg.stages))
    options = PipelineOptions(beam_args or [])
    p = test_pipeline or beam.Pipeline(runner=local_runner(options), options=options)
    build(p, inputs, output, cfg, run_id, manifest)
    result = p.run()
    result.wait_until_finish()
    with open(os.path.join(output, "manifest.json")) if "://" not in output else _open_remote(output) as fh:
        return json.load(fh)


def _open_remote(output: str):
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(output + "/manifest.json")
