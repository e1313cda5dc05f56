"""pyannote.audio 4.0's ``SpeakerDiarization.apply`` for a powerset segmentation model and
agglomerative clustering, in numpy and scipy, without importing pyannote.audio.

Why: importing pyannote.audio (lightning, torchmetrics, transformers behind them) took 6.0-6.3 s
of the 9.4-9.8 s a chunk's model worker spent starting (py-spy, bench/README.md, "Models that
wait on memory, a DNSMOS imbalance, and transformers"), and every chunk pipeline of a run
starts its workers anew. The embedded diarizer only needs the
steps below, each a transcription of pyannote's code with its array dtypes and float
operations kept, so that the turns are the same: `tests/test_diarize.py::
test_core_is_pyannote_apply` compares both on every shared recording, with and without speaker
count hints.

1. segmentation: the 10 s window slides by `step`; the last, partial window is zero-padded
   (``Inference.slide``); powerset log-probabilities -> hard multi-label activity
   (``Powerset.to_multilabel``).
2. instantaneous speaker count: per-frame sum of active speakers averaged over the windows
   that cover the frame, rounded (``SpeakerDiarizationMixin.speaker_count``,
   ``Inference.aggregate``).
3. one embedding per (window, local speaker), from the frames where that speaker alone
   speaks when there are enough of them (``SpeakerDiarization.get_embeddings``,
   ``embedding_exclude_overlap``).
4. agglomerative clustering (``AgglomerativeClustering``: centroid linkage on unit-normalized
   embeddings, distance threshold, small clusters merged into the closest large one, speaker
   count bounds), then every embedding assigned to its closest centroid (``assign_embeddings``).
5. reconstruction: each frame keeps its `count` most active clusters
   (``reconstruct``, ``to_diarization``); frames -> turns (``Binarize``, onset = offset = 0.5).
   The exclusive diarization is the same with the count capped at 1.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger("mmcurate.diarize")

SAMPLE_RATE = 16000
# segmentation-3.0 (pyannote/segmentation-3.0, PyanNet): a 10 s window gives 589 frames whose
# receptive field is 991 samples long and 270 samples apart (Model.receptive_field;
# tests/test_diarize.py checks these against pyannote's model object)
WINDOW_S = 10.0
FRAMES_PER_WINDOW = 589
FRAME_DURATION_S = 991 / SAMPLE_RATE
FRAME_STEP_S = 270 / SAMPLE_RATE
# powerset classes of 3 speakers, at most 2 at once (Powerset(3, 2).mapping)
POWERSET = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]],
                    dtype=np.float32)


@dataclass(frozen=True)
class Params:
    """The pipeline's hyper-parameters (pyannote names)."""

    threshold: float  # clustering.threshold
    min_cluster_size: int  # clustering.min_cluster_size
    min_duration_off: float = 0.0  # segmentation.min_duration_off
    exclude_overlap: bool = True  # embedding_exclude_overlap
    # a cluster under min_cluster_size (of at least 2 embeddings) whose mean direction has a
    # cosine similarity below this with every large cluster's is kept as a speaker of its own
    # (someone who says little), not merged into the closest large cluster. None: pyannote's rule
    distinct_below: float | None = None


class Frames:
    """pyannote.core's SlidingWindow arithmetic for windows starting at 0 (all this needs)."""

    def __init__(self, duration: float, step: float):
        self.duration, self.step = duration, step

    def closest_frame(self, t: float) -> int:
        return int(np.rint((t - 0.5 * self.duration) / self.step))

    def middles(self, n: int) -> np.ndarray:
        starts = np.arange(n) * self.step
        return 0.5 * (starts + (starts + self.duration))


# ----------------------------------------------------------------------------- 1. segmentation


def segment(audio: np.ndarray, forward: Callable[[np.ndarray], np.ndarray], step_s: float,
            batch_size: int = 1, hook: Callable | None = None) -> np.ndarray:
    """(num_chunks, 589, 3) float32 0/1 activity of up to 3 local speakers per 10 s window.

    `forward`: (batch, 1, 160000) float32 -> (batch, 589, 7) powerset log-probabilities."""
    window = round(WINDOW_S * SAMPLE_RATE)
    step = round(step_s * SAMPLE_RATE)
    n = audio.shape[0]
    num_chunks = (n - window) // step + 1 if n >= window else 0
    has_last = n < window or (n - window) % step > 0
    total = num_chunks + has_last
    outputs = []
    for c in range(0, num_chunks, batch_size):
        idx = np.arange(c, min(c + batch_size, num_chunks))
        batch = np.stack([audio[i * step:i * step + window] for i in idx])[:, None]
        outputs.append(forward(np.ascontiguousarray(batch, dtype=np.float32)))
        if hook is not None:
            hook(completed=c + batch_size, total=total)
    if has_last:
        last = np.zeros((1, 1, window), np.float32)
        tail = audio[num_chunks * step:]
        last[0, 0, :tail.shape[0]] = tail
        outputs.append(forward(last))
        if hook is not None:
            hook(completed=total, total=total)
    logp = np.vstack(outputs)
    return POWERSET[np.argmax(logp, axis=-1)]  # one_hot(argmax) @ mapping


# ------------------------------------------------------------------ 2. aggregation, counting


def aggregate(scores: np.ndarray, chunk_step: float, frames: Frames, *, missing: float = np.nan,
              skip_average: bool = False, epsilon: float = 1e-12) -> np.ndarray:
    """``Inference.aggregate`` without hamming window or warm-up (as the pipeline calls it):
    (num_chunks, frames_per_chunk, classes) per-window scores -> (num_frames, classes)."""
    num_chunks, per_chunk, num_classes = scores.shape
    num_frames = frames.closest_frame(WINDOW_S + (num_chunks - 1) * chunk_step + 0.5 * frames.duration) + 1
    out = np.zeros((num_frames, num_classes), dtype=np.float32)
    overlapping = np.zeros((num_frames, num_classes), dtype=np.float32)
    seen = np.zeros((num_frames, num_classes), dtype=np.float32)
    # pyannote weighs each window by hamming x warm-up windows, here float64 ones: the products
    # are float64, added into the float32 sums as there
    ones = np.ones((per_chunk, 1))
    for c in range(num_chunks):
        score = scores[c]
        mask = 1 - np.isnan(score)
        np.nan_to_num(score, copy=False, nan=0.0)
        start = frames.closest_frame(c * chunk_step + 0.5 * frames.duration)
        out[start:start + per_chunk] += score * mask * ones
        overlapping[start:start + per_chunk] += mask * ones
        seen[start:start + per_chunk] = np.maximum(seen[start:start + per_chunk], mask)
    average = out if skip_average else out / np.maximum(overlapping, epsilon)
    average[seen == 0.0] = missing
    return average


def speaker_count(binarized: np.ndarray, chunk_step: float, frames: Frames) -> np.ndarray:
    """(num_frames, 1) uint8 instantaneous number of speakers."""
    count = aggregate(np.sum(binarized, axis=-1, keepdims=True), chunk_step, frames, missing=0.0)
    return np.rint(count).astype(np.uint8)


# ------------------------------------------------------------------------------ 3. embeddings


def embeddings(audio: np.ndarray, binarized: np.ndarray, chunk_step: float,
               embed: Callable[[np.ndarray, np.ndarray], np.ndarray], min_num_samples: int,
               dimension: int, exclude_overlap: bool = True, hook: Callable | None = None) -> np.ndarray:
    """(num_chunks, 3, dimension) embeddings; `embed(waveform (1, samples), masks (3, frames))`
    -> (3, dimension), NaN rows where a mask keeps too few frames."""
    num_chunks, num_frames, num_speakers = binarized.shape
    if exclude_overlap:
        min_num_frames = math.ceil(num_frames * min_num_samples / (WINDOW_S * SAMPLE_RATE))
        clean = binarized * (1.0 * (np.sum(binarized, axis=2, keepdims=True) < 2))
    else:
        min_num_frames = -1
        clean = binarized
    n = audio.shape[0]
    out = np.empty((num_chunks, num_speakers, dimension), dtype=np.float32)
    if hook is not None:
        hook(completed=0, total=num_chunks)
    for c in range(num_chunks):
        start = c * chunk_step  # Audio.crop(file, chunk, mode="pad")
        s0, s1 = round(start * SAMPLE_RATE), round((start + WINDOW_S) * SAMPLE_RATE)
        pad_end = max(s1, n) - n
        waveform = audio[s0:min(s1, n)]
        if pad_end:
            waveform = np.concatenate([waveform, np.zeros(pad_end, np.float32)])
        masks = np.nan_to_num(binarized[c], nan=0.0).astype(np.float32)
        clean_masks = np.nan_to_num(clean[c], nan=0.0).astype(np.float32)
        used = np.stack([cm if np.sum(cm) > min_num_frames else m for m, cm in zip(masks.T, clean_masks.T)])
        out[c] = embed(waveform[None], used)
        if hook is not None:
            hook(completed=c + 1, total=num_chunks)
    return out


# ------------------------------------------------------------------------------ 4. clustering


def _bounds(exact, low, high, cap, what: str):
    """(exact, low, high) count hints resolved as pyannote resolves them: an exact count sets
    both bounds, the bounds are clipped to [1, cap], equal bounds fix the count; ValueError
    naming `what` when low > high."""
    low = max(1, min(cap, exact or low or 1))
    high = max(1, min(cap, exact or high or cap))
    if low > high:
        raise ValueError(f"min_{what} must be smaller than (or equal to) max_{what} "
                         f"(here: min_{what}={low:g} and max_{what}={high:g}).")
    return (low if low == high else exact), low, high


def _num_clusters(num_embeddings, num_clusters, min_clusters, max_clusters):
    return _bounds(num_clusters, min_clusters, max_clusters, num_embeddings, "clusters")


def _distinct(emb, clusters, large, small, small_sizes, below: float, room: int) -> np.ndarray:
    """Which small clusters are far enough from every large one to be speakers of their own
    (at most `room` of them, the farthest first)."""
    def direction(k):
        d = np.sum(emb[clusters == k], axis=0)
        return d / np.linalg.norm(d)

    keep = np.zeros(len(small), dtype=bool)
    if room <= 0:
        return keep
    large_dirs = np.vstack([direction(k) for k in large])
    nearest = np.array([np.max(large_dirs @ direction(k)) for k in small])
    order = [i for i in np.argsort(nearest) if nearest[i] < below and small_sizes[i] >= 2]
    keep[order[:room]] = True
    return keep


def _num_large(clusters: np.ndarray, min_cluster_size: int) -> int:
    return int(np.sum(np.unique(clusters, return_counts=True)[1] >= min_cluster_size))


# the speaker count is called sure (confidence 1.0) when no linkage threshold within this
# relative distance of the one in use gives another number of large clusters
CONFIDENCE_SPAN = 0.15


def count_margin(count_at: Callable[[float], int], threshold: float, steps: int = 100) -> float:
    """0..1: the smallest relative change of `threshold`, up or down, that changes
    `count_at(threshold)` (the number of clusters), over CONFIDENCE_SPAN, in `steps` steps: 0.0
    when the first step already does, 1.0 when no change within the span does."""
    found = count_at(threshold)
    for i in range(1, steps + 1):
        change = threshold * CONFIDENCE_SPAN * i / steps
        if count_at(threshold - change) != found or count_at(threshold + change) != found:
            return (i - 1) / steps
    return 1.0


def _agglomerative(emb: np.ndarray, params: Params, min_clusters: int, max_clusters: int,
                   num_clusters: int | None) -> tuple[np.ndarray, float | None]:
    """``AgglomerativeClustering.cluster`` (method "centroid", metric "cosine"), keeping
    `params.distinct_below` small clusters apart when set: (clusters, confidence of their number
    (`count_margin`), None when the hints decided it)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import cdist

    num_embeddings = emb.shape[0]
    min_cluster_size = min(params.min_cluster_size, max(1, round(0.1 * num_embeddings)))
    if num_embeddings == 1:
        return np.zeros((1,), dtype=np.uint8), None
    with np.errstate(divide="ignore", invalid="ignore"):
        emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    dendrogram = linkage(emb, method="centroid", metric="euclidean")

    clusters = fcluster(dendrogram, params.threshold, criterion="distance") - 1
    cluster_unique, cluster_counts = np.unique(clusters, return_counts=True)
    large_clusters = cluster_unique[cluster_counts >= min_cluster_size]
    num_large_clusters = len(large_clusters)
    confidence = None
    if num_clusters is None and min_clusters <= num_large_clusters <= max_clusters:
        confidence = count_margin(
            lambda t: _num_large(fcluster(dendrogram, t, criterion="distance"), min_cluster_size), params.threshold)
    if num_large_clusters < min_clusters:
        num_clusters = min_clusters
    elif num_large_clusters > max_clusters:
        num_clusters = max_clusters
    if num_clusters is not None and num_large_clusters != num_clusters:
        # the bounds decide: pyannote's search of the dendrogram for that many large clusters
        _dendrogram = np.copy(dendrogram)
        _dendrogram[:, 2] = np.arange(num_embeddings - 1)
        best_iteration, best_num_large_clusters = num_embeddings - 1, 1
        for iteration in np.argsort(np.abs(dendrogram[:, 2] - params.threshold)):
            if _dendrogram[iteration, 3] < min_cluster_size:
                continue
            clusters = fcluster(_dendrogram, iteration, criterion="distance") - 1
            cluster_unique, cluster_counts = np.unique(clusters, return_counts=True)
            large_clusters = cluster_unique[cluster_counts >= min_cluster_size]
            num_large_clusters = len(large_clusters)
            if abs(num_large_clusters - num_clusters) < abs(best_num_large_clusters - num_clusters):
                best_iteration, best_num_large_clusters = iteration, num_large_clusters
            if num_large_clusters == num_clusters:
                break
        if best_num_large_clusters != num_clusters:
            clusters = fcluster(_dendrogram, best_iteration, criterion="distance") - 1
            cluster_unique, cluster_counts = np.unique(clusters, return_counts=True)
            large_clusters = cluster_unique[cluster_counts >= min_cluster_size]
            num_large_clusters = len(large_clusters)
            log.info("diarize: found only %d clusters; a min_cluster_size below %d might help",
                     num_large_clusters, min_cluster_size)
    if num_large_clusters == 0:
        clusters[:] = 0
        return clusters, confidence
    small_clusters = cluster_unique[cluster_counts < min_cluster_size]
    if params.distinct_below is not None and len(small_clusters) and num_clusters is None:
        keep = _distinct(emb, clusters, large_clusters, small_clusters, cluster_counts[cluster_counts < min_cluster_size],
                         params.distinct_below, max_clusters - len(large_clusters))
        large_clusters = np.concatenate([large_clusters, small_clusters[keep]])
        small_clusters = small_clusters[~keep]
    if len(small_clusters) == 0:
        _, clusters = np.unique(clusters, return_inverse=True)
        return clusters, confidence
    large_centroids = np.vstack([np.mean(emb[clusters == k], axis=0) for k in large_clusters])
    small_centroids = np.vstack([np.mean(emb[clusters == k], axis=0) for k in small_clusters])
    for small_k, large_k in enumerate(np.argmin(cdist(large_centroids, small_centroids, metric="cosine"), axis=0)):
        clusters[clusters == small_clusters[small_k]] = large_clusters[large_k]
    _, clusters = np.unique(clusters, return_inverse=True)
    return clusters, confidence


def cluster(embeddings: np.ndarray, binarized: np.ndarray, params: Params, num_clusters=None,
            min_clusters=None, max_clusters=None) -> tuple[np.ndarray, float | None]:
    """``BaseClustering.__call__``: (num_chunks, 3) hard cluster of each (window, speaker), and
    the confidence of their number (`count_margin`; None: given or bounded by the hints, or
    fewer than two embeddings to cluster)."""
    from scipy.spatial.distance import cdist

    num_chunks, num_frames, num_speakers = binarized.shape
    single = np.sum(binarized, axis=2, keepdims=True) == 1
    active = np.sum(binarized * single, axis=1) >= 0.2 * num_frames
    valid = ~np.any(np.isnan(embeddings), axis=2)
    chunk_idx, speaker_idx = np.where(active * valid)
    train = embeddings[chunk_idx, speaker_idx]
    num_clusters, min_clusters, max_clusters = _num_clusters(train.shape[0], num_clusters, min_clusters,
                                                             max_clusters)
    if max_clusters < 2:
        return np.zeros((num_chunks, num_speakers), dtype=np.int8), None
    train_clusters, confidence = _agglomerative(train, params, min_clusters, max_clusters, num_clusters)
    k = np.max(train_clusters) + 1
    train = embeddings[chunk_idx, speaker_idx]  # not normalized (assign_embeddings)
    centroids = np.vstack([np.mean(train[train_clusters == i], axis=0) for i in range(k)])
    distance = cdist(embeddings.reshape(num_chunks * num_speakers, -1), centroids, metric="cosine")
    return np.argmax((2 - distance).reshape(num_chunks, num_speakers, k), axis=2), confidence


# -------------------------------------------------------------------------- 5. reconstruction


def to_diarization(segmentations: np.ndarray, count: np.ndarray, chunk_step: float,
                   frames: Frames) -> np.ndarray:
    """(num_frames, K) 0/1: each frame's `count` most active clusters."""
    activations = aggregate(segmentations, chunk_step, frames, missing=0.0, skip_average=True)
    num_speakers = activations.shape[1]
    max_per_frame = int(np.max(count))
    if num_speakers < max_per_frame:
        activations = np.pad(activations, ((0, 0), (0, max_per_frame - num_speakers)))
    n = min(activations.shape[0], count.shape[0])  # `activations.extent & count.extent`
    activations, count = activations[:n], count[:n]
    order = np.argsort(-activations, axis=-1)
    binary = np.zeros_like(activations)
    keep = (np.arange(activations.shape[1])[None, :] < count[:, :1].astype(np.int64)).astype(binary.dtype)
    np.put_along_axis(binary, order, keep, axis=1)
    return binary


def reconstruct(segmentations: np.ndarray, hard_clusters: np.ndarray, count: np.ndarray,
                chunk_step: float, frames: Frames) -> np.ndarray:
    num_chunks, num_frames, _ = segmentations.shape
    num_clusters = np.max(hard_clusters) + 1
    clustered = np.nan * np.zeros((num_chunks, num_frames, num_clusters))
    for c, (clusters, seg) in enumerate(zip(hard_clusters, segmentations)):
        for k in np.unique(clusters):
            if k == -2:
                continue
            clustered[c, :, k] = np.max(seg[:, clusters == k], axis=1)
    return to_diarization(clustered, count, chunk_step, frames)


def _track_name(k: int) -> str:
    """pyannote.core's string_generator: A..Z, AA, AB, ..."""
    name = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        name = chr(65 + r) + name
    return name


def to_turns(binary: np.ndarray, frames: Frames, min_duration_off: float = 0.0) -> list[tuple[float, float, int]]:
    """``Binarize(onset=0.5, offset=0.5)``: (start, end, cluster) in pyannote's Annotation order."""
    if min_duration_off > 0.0:
        raise NotImplementedError("segmentation.min_duration_off > 0 (pyannote 3.1 uses 0.0)")
    n = binary.shape[0]
    if n < 2:
        return []
    t = frames.middles(n)
    turns = []
    for k in range(binary.shape[1]):
        on = binary[:, k] > 0.5
        edges = np.flatnonzero(on[1:] != on[:-1]) + 1  # frames where the state flips
        starts = ([0] if on[0] else []) + [int(i) for i in edges if on[i]]
        ends = [int(i) for i in edges if not on[i]] + ([n - 1] if on[-1] else [])
        for a, b in zip(starts, ends):
            start, end = float(t[a]), float(t[b])
            if end - start > 1e-6:  # pyannote.core drops empty segments
                turns.append((start, end, k))
    turns.sort(key=lambda s: (s[0], s[1], _track_name(s[2])))
    return turns


# ------------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class Chunks:
    """What the models say about a recording, before any clustering choice: segmentation
    (num_chunks, 589, 3) 0/1, instantaneous speaker count (num_frames, 1) and one embedding per
    (window, local speaker) (num_chunks, 3, dimension); `step` in seconds."""

    binarized: np.ndarray
    count: np.ndarray
    embeddings: np.ndarray
    step: float


def _speaker_bounds(num_speakers, min_speakers, max_speakers):
    return _bounds(num_speakers, min_speakers, max_speakers, np.inf, "speakers")


def chunks(audio: np.ndarray, forward: Callable, embed: Callable, params: Params, *, step: float,
           min_num_samples: int, dimension: int, batch_size: int = 1, hook: Callable | None = None
           ) -> Chunks | None:
    """Steps 1-3 (the models); None when nobody speaks."""

    def step_hook(name):
        return None if hook is None else (lambda **kw: hook(name, None, **kw))

    frames = Frames(FRAME_DURATION_S, FRAME_STEP_S)
    binarized = segment(audio, forward, step, batch_size, step_hook("segmentation"))
    count = speaker_count(binarized, step, frames)
    if np.nanmax(count) == 0.0:
        return None
    emb = embeddings(audio, binarized, step, embed, min_num_samples, dimension, params.exclude_overlap,
                     step_hook("embeddings"))
    return Chunks(binarized, count, emb, step)


def turns(c: Chunks, params: Params, num_speakers=None, min_speakers=None, max_speakers=None):
    """Steps 4-5 (clustering, reconstruction): (regular, exclusive, confidence), turns as
    (start, end, cluster); confidence as `cluster` gives it."""
    num_speakers, min_speakers, max_speakers = _speaker_bounds(num_speakers, min_speakers, max_speakers)
    frames = Frames(FRAME_DURATION_S, FRAME_STEP_S)
    hard, confidence = cluster(np.copy(c.embeddings), c.binarized, params, num_speakers, min_speakers, max_speakers)
    found = np.max(hard) + 1
    if found < min_speakers or found > max_speakers:
        warnings.warn(f"The detected number of speakers ({found}) is outside the given bounds "
                      f"[{min_speakers}, {max_speakers}].")
    count = np.minimum(c.count, max_speakers).astype(np.int8)
    hard[np.sum(c.binarized, axis=1) == 0] = -2
    regular = to_turns(reconstruct(c.binarized, hard, count, c.step, frames), frames, params.min_duration_off)
    count = np.minimum(count, 1).astype(np.int8)
    exclusive = to_turns(reconstruct(c.binarized, hard, count, c.step, frames), frames, params.min_duration_off)
    return regular, exclusive, confidence


def diarize(audio: np.ndarray, forward: Callable, embed: Callable, params: Params, *, step: float,
            min_num_samples: int, dimension: int, batch_size: int = 1, num_speakers=None, min_speakers=None,
            max_speakers=None, hook: Callable | None = None):
    """(regular, exclusive, confidence): turns as (start, end, cluster) lists (`turns`); `step`
    in seconds."""
    _speaker_bounds(num_speakers, min_speakers, max_speakers)  # bad hints fail before the models run
    c = chunks(audio, forward, embed, params, step=step, min_num_samples=min_num_samples,
               dimension=dimension, batch_size=batch_size, hook=hook)
    if c is None:
        return [], [], None
    return turns(c, params, num_speakers, min_speakers, max_speakers)
