"""Shot-aware keyframes of a video stream, decoded once with PyAV (no shell-outs, no Beam here).

Decode: one pass over the video stream, and as little of it as the content needs.
  * `skip_frame = NONREF`: the codec does not decode frames no other frame references (the
    B-frames of H.264/HEVC). laion_talk.mp4 (1080p H.264, 3678 frames): 966 frames decoded,
    1.7 s instead of 9.4 s.
  * static GOPs: a GOP's packets are held back, still compressed, while each is smaller than
    `static_packet_ratio` x the packet of the keyframe that opens it: such a GOP shows nothing
    its keyframe does not (a slide held on screen), so its other frames are never decoded. On
    laion_talk.mp4 the P/B packets of a static GOP are 70-900 bytes against a 24-132 KB
    keyframe (ratio <= 0.016) and every GOP with a slide change or motion has one >= 0.21 x;
    on handheld footage every GOP is above 0.15 x, so nothing is skipped there. The first packet
    above the ratio releases the held ones to the decoder, so no frame is lost.
  * analysis: a decoded frame (at most `analysis_fps` per second) is read straight from the
    decoder's planes, subsampled in numpy: no colour conversion, no scaling pass, no copy at
    full resolution.
  * output: only a chosen frame is converted (sws_scale, area filter) to RGB at `max_side`.
  `KeyframeStats` counts packets, frames decoded, analysed and converted, and GOPs skipped.

Detection (content-based, AdaptiveDetector-like): the change between two consecutive analysed
frames is the mean absolute difference of their luma on a 64-pixel grid plus that of their
chroma (0-255 scale); a frame opens a new shot when its change is >= `cut_threshold` and
>= `cut_ratio` x the mean change of its `cut_window` neighbours on each side (PySceneDetect's
AdaptiveDetector: adaptive_threshold 3.0, window_width 2), and the shot before it is at least
`min_shot_s` long. On laion_talk.mp4 the 7 slide changes score 5.0-27.9 and everything else
<= 0.4 (99th percentile 0.3); handheld footage (neardup/) scores 3-31 between analysed frames
without any cut, which the ratio test absorbs.

Selection: one frame per shot, the sharpest (variance of the Laplacian of the subsampled luma);
a shot longer than `max_interval_s` gets a frame per window of at most that length. Each chosen
frame is scored at output size, dropped with a reason by the quality filters (`quality_reason`),
then dropped as a near-duplicate when its 64-bit DCT perceptual hash is within
`near_duplicate_bits` of the last kept frame's (that frame's span grows over it).

Why one module of this length: the single decode pass, shot detection and keyframe choice
share the per-frame state of one loop.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from mmcurate.transforms.image_hash import frame_hashes, hamming, luma, phash
from mmcurate.transforms.video_config import VideoConfig

log = logging.getLogger("mmcurate.keyframes")

GRID = 64  # longest side of the change-detection grid (cells)
SHARPNESS_SIDE = 320  # longest side of the subsampled luma the sharpest frame is chosen on
# Small packets in a row (in seconds of stream) after which a changing GOP counts as still
# again: the frames refining a new picture right after a cut are decoded before holding resumes.
SETTLE_S = 0.5
_MAX_BAD_PACKETS = 5  # corrupt packets tolerated (+1% of those read), as mmcurate.transforms.decode
_PLANAR_YUV = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p",
                         "yuv440p", "yuvj440p", "yuv411p", "yuv410p"})


class KeyframeError(Exception):
    """A video stream that cannot be decoded; `reason` is the ledger code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across Beam worker processes
        return (KeyframeError, (self.reason, self.detail))


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class FrameScores:
    """Quality scores of a chosen frame, measured on its output-size RGB image."""

    luma_mean: float  # BT.601 luma, 0-255
    luma_std: float
    luma_p99: float  # 99th percentile of luma: how bright the brightest 1% is
    dominant_share: float  # share of pixels within +-16 (each channel) of the commonest colour
    sharpness: float  # variance of the 4-neighbour Laplacian of luma

    def text(self) -> str:
        return (f"luma_mean {self.luma_mean:.1f}, luma_std {self.luma_std:.1f}, luma_p99 "
                f"{self.luma_p99:.1f}, dominant_share {self.dominant_share:.3f}, sharpness "
                f"{self.sharpness:.1f}")


@dataclass(frozen=True)
class Keyframe:
    """A kept keyframe: the image and the span of video it stands for."""

    keyframe_id: str  # f"{source_id}-kf-{n:05d}", n = candidate number (dropped ones too)
    start: float  # the span it stands for (shot or window start), seconds
    end: float
    frame_time: float  # when the chosen frame is shown
    cut: str  # why a new keyframe starts here: start | shot | interval
    cut_score: float | None  # the detector's change at a shot cut
    width: int
    height: int
    image: bytes
    image_format: str  # jpeg | webp
    phash: str  # 64-bit DCT perceptual hash, 16 hex digits
    # the same hash of the picture inside black bars and of that picture's centre 90%
    # (image_hash.frame_hashes): what image dedup also compares, so that bars and crops match
    picture_phash: str
    centre_phash: str
    scores: FrameScores


@dataclass(frozen=True)
class DroppedFrame:
    keyframe_id: str
    start: float
    end: float
    frame_time: float
    reason: str  # black | blank | single_color | blurry | near_duplicate
    detail: str
    scores: FrameScores | None  # None for near-duplicates (dropped before conversion)


@dataclass
class KeyframeStats:
    video_s: float = 0.0  # end of the last packet of the video stream
    declared_s: float | None = None  # what the container says
    codec: str | None = None
    width: int = 0
    height: int = 0
    packets: int = 0
    frames_total: int | None = None  # frames in the stream, when the container says
    frames_decoded: int = 0
    frames_analysed: int = 0
    frames_converted: int = 0  # converted to RGB at output size (chosen, not near-duplicates)
    gops: int = 0
    gops_static: int = 0  # GOPs of which only the keyframe was decoded
    packets_skipped: int = 0  # held back in still stretches and never decoded
    bad_packets: int = 0
    candidates: int = 0
    elapsed_s: float = 0.0

    @property
    def speed(self) -> float:
        """Video seconds per wall second."""
        return self.video_s / self.elapsed_s if self.elapsed_s > 0 else float("inf")


@dataclass(frozen=True)
class KeyframeResult:
    keyframes: list[Keyframe]
    dropped: list[DroppedFrame]
    stats: KeyframeStats
    truncated: str | None = None  # what is missing, when the stream ends before it says
    cuts: list[tuple[float, float]] = field(default_factory=list)  # every shot cut: (s, change)

    def dropped_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.dropped:
            out[d.reason] = out.get(d.reason, 0) + 1
        return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# Image measures (numpy only)


def laplacian_var(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: the classic focus measure (Pech-Pacheco 2000)."""
    g = np.asarray(gray, dtype=np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def dominant_share(rgb: np.ndarray, tol: int = 16) -> float:
    """Share of pixels within +-tol (every channel) of the image's commonest colour (the mean
    colour of its most populated 4-bit-per-channel bin): robust to compression noise that
    splits a flat colour across bin edges."""
    px = rgb[::2, ::2].reshape(-1, 3)  # every 4th pixel: the share moves by < 0.005
    if px.shape[0] == 0:
        return 1.0
    q = (px >> 4).astype(np.int32)
    bins = (q[:, 0] << 8) | (q[:, 1] << 4) | q[:, 2]
    top = np.bincount(bins, minlength=4096).argmax()
    centre = px[bins == top].mean(axis=0)
    near = np.all(np.abs(px.astype(np.float32) - centre) <= tol, axis=1)
    return float(near.mean())


def frame_scores(rgb: np.ndarray) -> FrameScores:
    y = luma(rgb)
    return FrameScores(
        luma_mean=round(float(y.mean()), 3),
        luma_std=round(float(y.std()), 3),
        luma_p99=round(float(np.percentile(y, 99)), 3),
        dominant_share=round(dominant_share(rgb), 4),
        sharpness=round(laplacian_var(y), 3),
    )


def quality_reason(s: FrameScores, cfg: VideoConfig) -> tuple[str, str] | None:
    """The first quality filter a frame fails, as (reason, rule), or None (HunyuanImage-style
    staged filtering: cheapest and most certain first)."""
    if s.luma_p99 <= cfg.black_max_luma:
        return "black", f"luma_p99 {s.luma_p99:.1f} <= black_max_luma {cfg.black_max_luma:g}"
    if s.luma_std <= cfg.blank_max_std:
        return "blank", f"luma_std {s.luma_std:.2f} <= blank_max_std {cfg.blank_max_std:g}"
    if s.dominant_share >= cfg.single_color_share:
        return "single_color", (f"dominant_share {s.dominant_share:.3f} >= single_color_share "
                                f"{cfg.single_color_share:g}")
    if s.sharpness < cfg.min_sharpness:
        return "blurry", f"sharpness {s.sharpness:.1f} < min_sharpness {cfg.min_sharpness:g}"
    return None


def encode_image(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(rgb, "RGB")
    if fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=4)
    else:
        im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longest side at most max_side, aspect kept, even numbers (>= 2)."""
    scale = min(1.0, max_side / max(width, height, 1))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


# ---------------------------------------------------------------------------------------------
# Analysis of one decoded frame


def _plane(plane, dtype=np.uint8) -> np.ndarray:
    """A zero-copy view of one plane of a frame (line padding cut off)."""
    itemsize = np.dtype(dtype).itemsize
    a = np.frombuffer(plane, dtype)
    return a.reshape(plane.height, plane.line_size // itemsize)[:, : plane.width]


def _grid(a: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """Block-average a 2-D array to (gh, gw) cells, fewer when it is smaller (crops the rest)."""
    gh, gw = max(1, min(gh, a.shape[0])), max(1, min(gw, a.shape[1]))
    bh, bw = a.shape[0] // gh, a.shape[1] // gw
    a = np.ascontiguousarray(a[: gh * bh, : gw * bw], dtype=np.float32)
    rows = a.reshape(gh, bh, gw * bw).sum(axis=1)  # two 1-axis sums: 4x faster than axis=(1, 3)
    return rows.reshape(gh, gw, bw).sum(axis=2) / (bh * bw)


@dataclass
class _Analysed:
    t: float
    cells: tuple[np.ndarray, np.ndarray, np.ndarray]  # Y, U, V averaged on the detection grid
    sharp: float  # variance of the Laplacian of the subsampled luma
    frame: object | None  # the decoded av.VideoFrame, released once it cannot be chosen
    change: float = 0.0  # to the previous analysed frame


def _analyse(frame, t: float) -> _Analysed:
    w, h = frame.width, frame.height
    scale = GRID / max(w, h)
    gw, gh = max(1, round(w * scale)), max(1, round(h * scale))
    step = max(1, max(w, h) // SHARPNESS_SIDE)
    if frame.format.name in _PLANAR_YUV:  # the decoder's own buffers, no conversion
        y, u, v = (_plane(p) for p in frame.planes[:3])
    else:  # packed, high bit depth or RGB formats: one small conversion instead
        small = frame.reformat(width=max(gw, w // step), height=max(gh, h // step),
                               format="yuv444p", interpolation="AREA")
        y, u, v = (_plane(p) for p in small.planes)
        step = 1
    ys = y[::step, ::step].astype(np.float32)  # one pass over the plane, ~SHARPNESS_SIDE wide
    # the cells average the subsampled luma of their area and about 2x2 chroma samples
    ch, cw = max(1, u.shape[0] // (2 * gh)), max(1, u.shape[1] // (2 * gw))
    cells = (_grid(ys, gh, gw), _grid(u[::ch, ::cw], gh, gw), _grid(v[::ch, ::cw], gh, gw))
    return _Analysed(t, cells, laplacian_var(ys), frame)


def change(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> float:
    """Mean absolute difference of the luma cells plus that of the chroma cells (0-255)."""
    dy, du, dv = (float(np.abs(x - y).mean()) for x, y in zip(a, b))
    return dy + (du + dv) / 2


# ---------------------------------------------------------------------------------------------
# Decoding


def _video_stream(container):
    from mmcurate.transforms.decode import _is_cover_art

    for s in container.streams.video:
        if not _is_cover_art(s):
            return s
    return None


def _origin_s(container, video) -> float:
    """Time zero of the source: where its audio starts (audio times are sample counts from the
    first decoded sample), else where the video starts."""
    for s in list(container.streams.audio[:1]) + [video]:
        if s is not None and s.start_time is not None and s.time_base is not None:
            return float(s.start_time * s.time_base)
    return 0.0


def _decoded_frames(container, stream, cfg: VideoConfig, stats: KeyframeStats) -> Iterator:
    """Decoded frames of `stream` in display order, skipping non-reference frames and the
    frames of static stretches of a GOP (see the module docstring).

    Per GOP: packets are held back (compressed) from its keyframe on while each is at most
    `static_packet_ratio` x the keyframe's packet; a bigger packet releases the held ones to the
    decoder (they are its references) and the GOP is decoded from there, until SETTLE_S of
    small packets in a row say the picture is still again: later small packets are held again.
    Held packets still held at the next keyframe are dropped undecoded."""
    import av

    ctx = stream.codec_context
    stream.thread_type = "AUTO"
    ctx.skip_frame = "NONREF" if cfg.skip_nonref else "DEFAULT"
    tb = float(stream.time_base) if stream.time_base is not None else None
    rate = float(stream.average_rate or stream.guessed_rate or 30)
    settle = max(1, int(round(SETTLE_S * rate)))
    held: list = []
    holding = False  # True: small packets are held back instead of decoded
    changed = False  # the current GOP released held packets (something moved)
    quiet = 0  # small packets decoded in a row
    key_size = 0
    skip = None  # [a, b): frames shown where held packets were dropped (leading pictures)
    bad = 0

    def send(pkt):
        nonlocal bad
        try:
            frames = ctx.decode(pkt)
        except av.error.InvalidDataError as e:  # one corrupt packet: skip it, as ffmpeg does
            bad += 1
            stats.bad_packets = bad
            if bad > _MAX_BAD_PACKETS + stats.packets // 100:
                raise KeyframeError("decode_error", f"{bad} corrupt video packets in "
                                    f"{stats.packets} ({e})") from e
            return
        for f in frames:
            if skip is not None and f.pts is not None and skip[0] <= f.pts < skip[1]:
                continue  # a leading picture whose references were never decoded
            stats.frames_decoded += 1
            yield f

    def end_gop(next_pts) -> None:
        nonlocal held, skip
        if held:  # still when the GOP ended: the held frames are never decoded
            stats.packets_skipped += len(held)
            pts = [h.pts for h in held if h.pts is not None]
            skip = (min(pts), next_pts) if pts and next_pts is not None else None
            held = []
        if stats.gops and cfg.skip_static_gops and not changed:
            stats.gops_static += 1

    end = 0.0
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.dts is None and pkt.pts is None:
                continue  # the demuxer's flush marker
            stats.packets += 1
            if pkt.pts is not None and tb is not None:
                end = max(end, (pkt.pts + (pkt.duration or 0)) * tb)
            small = pkt.size <= cfg.static_packet_ratio * key_size
            if pkt.is_keyframe:
                end_gop(pkt.pts)
                stats.gops += 1
                holding, changed, quiet, key_size = cfg.skip_static_gops, False, 0, pkt.size
                yield from send(pkt)
            elif holding and small:
                held.append(pkt)
            elif holding:  # the picture changes: decode what was held (references), then on
                holding, changed, quiet = False, True, 0
                for h in held:
                    yield from send(h)
                held = []
                yield from send(pkt)
            else:
                quiet = quiet + 1 if small else 0
                yield from send(pkt)
                if cfg.skip_static_gops and key_size and quiet >= settle:
                    holding = True  # still again: hold the rest unless it changes
        end_gop(None)
        try:
            for f in ctx.decode(None):
                stats.frames_decoded += 1
                yield f
        except av.error.FFmpegError:
            pass
    except KeyframeError:
        raise
    except av.error.FFmpegError as e:
        raise KeyframeError("decode_error", f"corrupt or truncated video stream: {e}") from e
    except ValueError as e:  # PyAV refusing a frame it cannot convert
        raise KeyframeError("decode_error", f"undecodable video frames: {e}") from e
    stats.video_s = end


# ---------------------------------------------------------------------------------------------
# Cuts and windows


class _Window:
    """The span one keyframe will stand for, and its sharpest candidate so far."""

    def __init__(self, start: float, cut: str, score: float | None):
        self.start, self.cut, self.score = start, cut, score
        self.best: _Analysed | None = None

    def offer(self, a: _Analysed) -> None:
        if self.best is None or a.sharp > self.best.sharp:
            self.best = a


def _is_cut(frames: list[_Analysed], i: int, cfg: VideoConfig) -> bool:
    d = frames[i].change
    if i == 0 or d < cfg.cut_threshold:
        return False
    w = cfg.cut_window
    neigh = [frames[j].change for j in range(max(1, i - w), min(len(frames), i + w + 1)) if j != i]
    # the floor keeps static content (neighbours ~0) from needing an infinite ratio: there the
    # absolute threshold decides
    base = max(float(np.mean(neigh)) if neigh else 0.0, cfg.cut_threshold / cfg.cut_ratio)
    return d >= cfg.cut_ratio * base


def extract_keyframes(media_uri: str, cfg: VideoConfig, source_id: str,
                      duration_s: float | None = None) -> KeyframeResult:
    """Keyframes of the video stream of `media_uri` (see the module docstring).

    `duration_s`: the source's duration (its audio); the last keyframe's span ends there when
    the video stream is shorter. Raises KeyframeError (decode_error, no_video_stream)."""
    import av

    from mmcurate.transforms.decode import DecodeError, _open_container, open_media

    t0 = time.perf_counter()
    stats = KeyframeStats()
    kept: list[Keyframe] = []
    dropped: list[DroppedFrame] = []
    cuts: list[tuple[float, float]] = []
    min_gap = 1.0 / cfg.analysis_fps
    try:
        with open_media(media_uri) as src, _open_container(src) as container:
            stream = _video_stream(container)
            if stream is None:
                raise KeyframeError("no_video_stream", "the file has no video stream")
            cc = stream.codec_context
            stats.codec, stats.width, stats.height = cc.name, cc.width, cc.height
            stats.frames_total = int(stream.frames) or None
            if stream.duration is not None and stream.time_base is not None:
                stats.declared_s = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                stats.declared_s = container.duration / 1_000_000
            origin = _origin_s(container, stream)

            pending: list[_Analysed] = []  # analysed, not yet decided (the look-ahead)
            decided = 0  # frames of `pending` decided so far
            window: _Window | None = None
            last_t = -math.inf

            def close(w: _Window, end: float) -> None:
                if w.best is not None:
                    _choose(w, end, source_id, cfg, stats, kept, dropped)

            shot_start = 0.0

            def decide(i: int) -> None:
                # min_shot_s counts from the shot's start: a cut just after an interval window
                # opened still cuts (that short window's frame is the old shot's, and is
                # dropped as a near-duplicate of it in all likelihood)
                nonlocal window, shot_start
                a = pending[i]
                if window is None:
                    window = _Window(0.0 if a.t < 1.0 else a.t, "start", None)
                    shot_start = window.start
                elif _is_cut(pending, i, cfg) and a.t - shot_start >= cfg.min_shot_s - 1e-6:
                    close(window, a.t)
                    window = _Window(a.t, "shot", round(a.change, 3))
                    shot_start = a.t
                    cuts.append((a.t, round(a.change, 3)))
                elif a.t - window.start >= cfg.max_interval_s - 1e-6:
                    close(window, a.t)
                    window = _Window(a.t, "interval", None)
                window.offer(a)

            tb = float(stream.time_base) if stream.time_base is not None else None
            for frame in _decoded_frames(container, stream, cfg, stats):
                if frame.pts is None or tb is None:
                    continue  # (frame.time is NaN for frames flushed at the end: pts x time_base)
                t = round(frame.pts * tb - origin, 4)
                if t - last_t < min_gap * 0.9:
                    continue
                last_t = t
                a = _analyse(frame, t)
                stats.frames_analysed += 1
                if pending:
                    a.change = change(a.cells, pending[-1].cells)
                pending.append(a)
                while decided < len(pending) - cfg.cut_window:
                    decide(decided)
                    decided += 1
                # keep the look-back window; release decoded frames nobody can choose
                if decided > 2 * cfg.cut_window + 1:
                    drop = decided - cfg.cut_window - 1
                    for old in pending[:drop]:
                        if window is None or old is not window.best:
                            old.frame = None
                    del pending[:drop]
                    decided -= drop
            while decided < len(pending):
                decide(decided)
                decided += 1
            stats.video_s = max(stats.video_s - origin, last_t if last_t > -math.inf else 0.0)
            if window is not None:
                close(window, max(stats.video_s, duration_s or 0.0))
    except KeyframeError:
        raise
    except DecodeError as e:
        raise KeyframeError(e.reason, e.detail) from e
    except av.error.FFmpegError as e:
        raise KeyframeError("decode_error", f"corrupt or truncated video: {e}") from e
    stats.elapsed_s = time.perf_counter() - t0
    if not stats.frames_decoded:
        raise KeyframeError("decode_error", f"no video frame decodes ({stats.packets} packets)")
    truncated = None
    if stats.declared_s:
        lost = stats.declared_s - stats.video_s
        if lost > max(cfg.truncation_tolerance_s, 0.02 * stats.declared_s):
            truncated = (f"the video stream declares {stats.declared_s:.2f} s, packets end at "
                         f"{stats.video_s:.2f} s ({lost:.2f} s missing)")
    return KeyframeResult(kept, dropped, stats, truncated, cuts)


def _choose(w: _Window, end: float, source_id: str, cfg: VideoConfig, stats: KeyframeStats,
            kept: list[Keyframe], dropped: list[DroppedFrame]) -> None:
    """Keep the window's sharpest frame, or record why not. A near-duplicate of the last kept
    keyframe (pHash of the frame's luma, read from the decoder's plane) is dropped before any
    conversion; any other is converted once to RGB at output size, scored and filtered."""
    best = w.best
    frame, best.frame = best.frame, None
    n = stats.candidates
    stats.candidates += 1
    kid = f"{source_id}-kf-{n:05d}"
    start, t = round(w.start, 3), round(best.t, 3)
    end = round(max(end, best.t), 3)
    y = _luma_plane(frame)
    h = phash(y)
    if kept and cfg.near_duplicate_bits >= 0:
        prev = kept[-1]
        dist = hamming(h, int(prev.phash, 16))
        if dist <= cfg.near_duplicate_bits:
            dropped.append(DroppedFrame(
                kid, start, end, t, "near_duplicate",
                f"phash distance {dist} <= near_duplicate_bits {cfg.near_duplicate_bits} to "
                f"{prev.keyframe_id}, whose span now ends at {end:.2f} s", None))
            kept[-1] = _replace_end(prev, end)
            return
    picture, centre = frame_hashes(y)
    ow, oh = output_size(frame.width, frame.height, cfg.max_side)
    rgb = frame.reformat(width=ow, height=oh, format="rgb24", interpolation="AREA").to_ndarray()
    stats.frames_converted += 1
    scores = frame_scores(rgb)
    bad = quality_reason(scores, cfg)
    if bad is not None:
        reason, rule = bad
        dropped.append(DroppedFrame(kid, start, end, t, reason, f"{rule} ({scores.text()})", scores))
        return
    kept.append(Keyframe(
        keyframe_id=kid, start=start, end=end, frame_time=t, cut=w.cut, cut_score=w.score,
        width=ow, height=oh, image=encode_image(rgb, cfg.image_format, cfg.image_quality),
        image_format=cfg.image_format, phash=f"{h:016x}", picture_phash=f"{picture:016x}",
        centre_phash=f"{centre:016x}", scores=scores))


def _luma_plane(frame) -> np.ndarray:
    """The frame's luma at about SHARPNESS_SIDE pixels, from its plane when it has one."""
    step = max(1, max(frame.width, frame.height) // SHARPNESS_SIDE)
    if frame.format.name in _PLANAR_YUV:
        return _plane(frame.planes[0])[::step, ::step]
    small = frame.reformat(width=max(8, frame.width // step), height=max(8, frame.height // step),
                           format="gray", interpolation="AREA")
    return _plane(small.planes[0])


def _replace_end(k: Keyframe, end: float) -> Keyframe:
    import dataclasses

    return dataclasses.replace(k, end=end)
