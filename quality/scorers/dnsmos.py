"""DNSMOS P.835: non-intrusive speech quality (SIG, BAK, OVRL on a 1-5 MOS scale).

Model: Microsoft's DNSMOS P.835 ONNX network (`sig_bak_ovr.onnx`, Reddy et al., "DNSMOS P.835:
A non-intrusive perceptual objective speech quality metric to evaluate noise suppressors",
ICASSP 2022) as shipped inside the `speechmos` wheel (`speechmos/dnsmos_models/`), located
without importing the package (its module imports librosa and requests at import time) and run
with onnxruntime directly. Nothing is downloaded.

Scoring follows the reference implementation (microsoft/DNS-Challenge DNSMOS/dnsmos_local.py,
the same as speechmos.dnsmos): 16 kHz mono float samples; a clip shorter than 9.01 s is repeated
until it is at least that long; the network scores 9.01 s windows every 1 s (skipping, as it does, the windows its float
slicing makes one sample short); the raw SIG, BAK
and OVRL of each window are mapped through the published third-order polynomials (the
non-personalised ones) and averaged over the windows. The windows go to the network
`batch` at a time (default 1: see `Dnsmos`). The P.808 head (`model_v8.onnx`, which needs a librosa mel spectrogram)
is not used: P.835's three scores are what the filters read.

The pipeline scores contiguous speech, not segments (`stretch_windows`): a stretch is cut into
9.01 s windows, each run once (the last one ends at the stretch's end; a stretch shorter than a
window is tiled to one as the reference tiles a clip), so the cost is about one network run per
9 s of speech; a segment gets the duration-weighted scores of the windows it overlaps
(`mmcurate.transforms.segment_quality.segment_dnsmos`). A window's score is the reference
implementation's score of those 9.01 s, so a segment that is exactly one window keeps the
reference's numbers.

One ONNX session is shared by every thread of a process (onnxruntime's `run` is thread-safe);
`quality.dnsmos_threads` sets its threads (0: cores / workers on the local runner).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
INPUT_LENGTH_S = 9.01  # the network's input, seconds
WINDOW = int(INPUT_LENGTH_S * SAMPLE_RATE)  # 144160 samples
HOP = SAMPLE_RATE  # one window per second
MODEL_FILE = "sig_bak_ovr.onnx"

# DNS-Challenge dnsmos_local.py, get_polyfit_val(is_personalized_MOS=False)
_P_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
_P_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_P_OVR = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


@dataclass(frozen=True)
class DnsmosScore:
    sig: float  # speech signal quality
    bak: float  # background noise (high: little noise)
    ovrl: float  # overall quality


def default_model_path() -> str:
    spec = importlib.util.find_spec("speechmos")  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the speechmos package (DNSMOS ONNX models) is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "dnsmos_models", MODEL_FILE)


def model_info(model_path: str | None = None) -> dict:
    """What the run manifest records about the DNSMOS model (hashed, not loaded)."""
    from importlib.metadata import PackageNotFoundError, version

    path = os.path.abspath(model_path or default_model_path())
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    try:
        pkg = f"speechmos {version('speechmos')}"
    except PackageNotFoundError:
        pkg = "speechmos (package not installed)"
    return {"role": "speech-quality", "name": f"DNSMOS P.835 ({os.path.basename(path)})",
            "version": f"{pkg}; onnxruntime", "path": path, "sha256": h.hexdigest()}


def _window_starts(length: int) -> tuple[int, list[int], list[int]]:
    """A clip of `length` samples as the reference scores it: its length once tiled (doubled
    until >= 9.01 s), the start of each window, and each window's key. Windows with the same
    key hold the same samples: a tiled clip is periodic, so windows whose starts agree modulo
    its length are the same (a 1 s clip: 7 windows in the reference, 1 distinct); an untiled
    one has no repeats."""
    if length <= 0:
        raise ValueError("DNSMOS needs at least one sample")
    tiled = length
    while tiled < WINDOW:  # np.append(audio, audio), as the reference does
        tiled *= 2
    n = int(np.floor(tiled / SAMPLE_RATE) - INPUT_LENGTH_S) + 1
    # the reference's own slicing: int((i + 9.01) * 16000) rounds some ends down to 144159
    # samples, and it skips those windows; doing the same keeps the scores identical to it
    starts = [int(i * HOP) for i in range(n) if int((i + INPUT_LENGTH_S) * HOP) - int(i * HOP) >= WINDOW]
    return tiled, starts, ([s % length for s in starts] if tiled > length else list(starts))


def network_runs(length: int) -> int:
    """Windows the network runs on to score a clip of `length` samples (`Dnsmos.score`): the
    cost of a clip, known from its length alone. Not its duration: a 4 s clip is tiled to 16 s
    and takes 4 distinct windows, a 12 s one 3, a 29 s one 7 (the reference skips 13 of its 20);
    about 0.15 s each on one thread here."""
    return len(set(_window_starts(length)[2])) if length > 0 else 0


def _tiled(audio: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """The reference's input: the clip doubled until >= 9.01 s, the start of each window it
    scores, and each window's key (`_window_starts`)."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    tiled, starts, keys = _window_starts(x.shape[0])
    while x.shape[0] < tiled:
        x = np.concatenate([x, x])
    return x, starts, keys


def windows(audio: np.ndarray) -> np.ndarray:
    """The reference implementation's input windows of one clip, shape (n, 144160) float32."""
    x, starts, _ = _tiled(audio)
    return np.stack([x[s : s + WINDOW] for s in starts])


def stretch_windows(length: int) -> list[tuple[int, int, int]]:
    """The windows a stretch of `length` contiguous samples is scored in, as (first sample the
    network reads, first and end sample the score stands for), relative to the stretch. Every
    sample stands under exactly one window: windows of 9.01 s from the start; the last one ends
    at the stretch's end, reads the samples before its own part too and stands for the rest (so
    it overlaps the one before); a stretch shorter than a window is one window, tiled
    (`stretch_window`)."""
    if length <= 0:
        return []
    if length <= WINDOW:
        return [(0, 0, length)]
    n = -(-length // WINDOW)
    out = [(k * WINDOW, k * WINDOW, (k + 1) * WINDOW) for k in range(n - 1)]
    return out + [(length - WINDOW, (n - 1) * WINDOW, length)]


def stretch_window(stretch: np.ndarray, first: int) -> np.ndarray:
    """The WINDOW samples the network reads for the window of `stretch` starting at `first`
    (`stretch_windows`); a stretch shorter than a window is doubled until it is one, as the
    reference does (its first window)."""
    x = np.asarray(stretch, dtype=np.float32).reshape(-1)
    if x.shape[0] == 0:
        raise ValueError("DNSMOS needs at least one sample")
    while x.shape[0] < WINDOW:
        x = np.concatenate([x, x])
    return x[first : first + WINDOW]


class Dnsmos:
    """The DNSMOS P.835 network in one onnxruntime session."""

    def __init__(self, model_path: str | None = None, intra_op_threads: int = 1, batch: int = 1):
        import onnxruntime as ort

        # windows per ONNX Runtime call. One 9.01 s window's activations fit the caches; a whole
        # clip's (7 windows of a 20 s clip) do not, and the network then waits on memory: 7 at
        # once took 4.0-10.0 s alone and 9.0-10.2 s with a second process doing the same on the
        # other core; 1 at a time 2.3-2.4 s alone and in pairs (bench/README.md, "Models that
        # wait on memory, a DNSMOS imbalance, and transformers"). The
        # scores are identical (max |difference| 0.0). A GPU provider wants large batches.
        self.batch = max(1, int(batch))
        self.model_path = os.path.abspath(model_path or default_model_path())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(0, int(intra_op_threads))
        opts.inter_op_num_threads = 1
        # no spin-waiting between runs: with several worker threads on few cores, spinning
        # threads take the cores the other workers' models need (as in the diarizer)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(self.model_path, sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def score_windows(self, windows: np.ndarray) -> list[DnsmosScore]:
        """SIG/BAK/OVRL of each 9.01 s window (shape (n, WINDOW)), `batch` per onnxruntime call:
        each is the reference's score of a clip that is exactly that window."""
        x = np.asarray(windows, dtype=np.float32).reshape(-1, WINDOW)
        if x.shape[0] == 0:
            return []
        raw = np.concatenate([self._session.run(None, {self._input: x[i : i + self.batch]})[0]
                              for i in range(0, x.shape[0], self.batch)]).astype(np.float64)
        return [DnsmosScore(float(_P_SIG(r[0])), float(_P_BAK(r[1])), float(_P_OVR(r[2]))) for r in raw]

    def score(self, audio: np.ndarray) -> DnsmosScore:
        """SIG/BAK/OVRL of one clip of 16 kHz mono samples in [-1, 1]."""
        x, starts, keys = _tiled(audio)
        # each distinct window runs once (`network_runs`); the mean is the reference's
        distinct = sorted(set(keys))
        first = {k: starts[keys.index(k)] for k in distinct}
        out = np.concatenate([  # (distinct, 3)
            self._session.run(None, {self._input: np.stack(
                [x[first[k] : first[k] + WINDOW] for k in distinct[i : i + self.batch]])})[0]
            for i in range(0, len(distinct), self.batch)])
        raw = out[[distinct.index(k) for k in keys]]
        sig = _P_SIG(raw[:, 0].astype(np.float64))
        bak = _P_BAK(raw[:, 1].astype(np.float64))
        ovr = _P_OVR(raw[:, 2].astype(np.float64))
        return DnsmosScore(float(np.mean(sig)), float(np.mean(bak)), float(np.mean(ovr)))
