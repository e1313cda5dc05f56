"""The video edit suite: edited copies of real clips for measuring near-duplicate detection.

From an excerpt of a clip (`seconds` from `start`, optionally shrunk to `max_side` pixels) it
writes the excerpt itself (`orig`, the reference every edit is compared with) and one copy per
edit kind, each an H.264 MP4 made with PyAV (the project's decoder; no ffmpeg binary needed):

  greyscale   BT.601 luma in all three channels
  sepia       the classic sepia matrix (luma moves, as in photo apps)
  letterbox   black bars above and below: the picture in a 4:3-taller canvas (bars = 25%)
  pillarbox   black bars left and right: the picture in a 4:3-wider canvas (bars = 25%)
  logo        an opaque badge with text in the top-right corner, 15% of the width (the size of
              AugLy's overlay_emoji default)
  crop10      the centre 90% x 90% (5% cut from each side), kept at that size
  scale360    resized to 360 pixels high (aspect kept)
  lowbitrate  the same frames at 120 kbit/s (about 0.1 bit per pixel at 1080p: heavy blocking)
  trim_start  the first 25% cut
  trim_end    the last 25% cut
  speed_up    played 5% faster (frames dropped; same frame rate)
  speed_down  played 5% slower (frames repeated; same frame rate)

Deterministic: the same clip and arguments give the same frames and, with the same PyAV/x264
build, the same bytes (x264 is deterministic across threads; the badge is drawn, not loaded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

EDITS = ("greyscale", "sepia", "letterbox", "pillarbox", "logo", "crop10", "scale360",
         "lowbitrate", "trim_start", "trim_end", "speed_up", "speed_down")
TRIM_SHARE = 0.25
SPEED = {"speed_up": 1.05, "speed_down": 0.95}
LOW_BITRATE = 120_000
LOGO_WIDTH = 0.15
_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]],
                  np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Clip:
    """One output file of the suite: `kind` is "orig" or an edit kind of `source`."""
    source: str  # the source clip's file name
    kind: str
    path: Path


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def iter_frames(path: str | Path, seconds: float | None = None, start: float = 0.0,
                max_side: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames of [start, start + seconds) of the first video stream, one at a time. With
    `max_side`, frames are area-resized so that the longer side is at most that."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        w, h = stream.codec_context.width, stream.codec_context.height
        scale = min(1.0, max_side / max(w, h)) if max_side else 1.0
        ow, oh = _even(w * scale), _even(h * scale)
        for frame in c.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * frame.time_base) - t0
            if t < start - 1e-6:
                continue
            if seconds is not None and t >= start + seconds - 1e-6:
                break
            yield frame.to_ndarray(format="rgb24", width=ow, height=oh, interpolation="AREA")


def frame_rate(path: str | Path) -> Fraction:
    import av

    with av.open(str(path)) as c:
        return Fraction(c.streams.video[0].average_rate or 25)


def _badge(w: int, h: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A logo: a dark rounded box with light text and a coloured disc, drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont

    bw = max(8, int(w * LOGO_WIDTH))
    bh = max(4, bw // 3)
    img = Image.new("RGB", (bw, bh), (16, 16, 16))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((1, 1, bw - 2, bh - 2), radius=max(1, bh // 5), fill=(30, 30, 40),
                        outline=(235, 235, 235), width=max(1, bh // 16))
    d.ellipse((bh // 6, bh // 6, bh - bh // 6, bh - bh // 6), fill=(220, 40, 40))
    try:
        font = ImageFont.load_default(size=max(6, bh // 2))
    except TypeError:  # an old Pillow without sized default fonts
        font = ImageFont.load_default()
    d.text((bh + bh // 8, bh // 4), "NEWS", fill=(245, 245, 245), font=font)
    margin = max(2, w // 40)
    return np.asarray(img), (margin, w - bw - margin)


def _pad(frame: np.ndarray, ph: int, pw: int) -> np.ndarray:
    h, w = frame.shape[:2]
    out = np.zeros((_even(ph), _even(pw), 3), np.uint8)
    y0, x0 = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    out[y0:y0 + h, x0:x0 + w] = frame
    return out


def frame_edit(kind: str, w: int, h: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """The per-frame part of an edit (None for the edits that only retime or re-encode)."""
    if kind == "greyscale":
        return lambda f: np.repeat(np.clip(f.astype(np.float32) @ _LUMA + 0.5, 0, 255)
                                   .astype(np.uint8)[:, :, None], 3, axis=2)
    if kind == "sepia":
        return lambda f: np.clip(f.astype(np.float32) @ _SEPIA.T + 0.5, 0, 255).astype(np.uint8)
    if kind == "letterbox":
        return lambda f: _pad(f, h * 4 / 3, w)
    if kind == "pillarbox":
        return lambda f: _pad(f, h, w * 4 / 3)
    if kind == "logo":
        badge, (y0, x0) = _badge(w, h)

        def put(f: np.ndarray) -> np.ndarray:
            f = f.copy()
            f[y0:y0 + badge.shape[0], x0:x0 + badge.shape[1]] = badge
            return f
        return put
    if kind == "crop10":
        cw, ch = _even(w * 0.9), _even(h * 0.9)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        return lambda f: np.ascontiguousarray(f[y0:y0 + ch, x0:x0 + cw])
    if kind == "scale360":
        from PIL import Image

        size = (_even(w * 360 / h), 360)
        return lambda f: np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR))
    return None


def retime(kind: str, n: int) -> list[int]:
    """Which input frame each output frame shows (non-decreasing), for the trims and speed
    changes; every input frame once for the other edits."""
    if kind == "trim_start":
        return list(range(int(round(n * TRIM_SHARE)), n))
    if kind == "trim_end":
        return list(range(0, n - int(round(n * TRIM_SHARE))))
    if kind in SPEED:
        r = SPEED[kind]
        idx = (int(math.floor(k * r + 0.5)) for k in range(int(n / r) + 1))
        return [i for i in idx if i < n]
    return list(range(n))


def _replay(frames: Iterator[np.ndarray], idx: list[int]) -> Iterator[np.ndarray]:
    """`frames[i] for i in idx` over a stream, for a non-decreasing `idx`."""
    it = iter(idx)
    want = next(it, None)
    for i, f in enumerate(frames):
        while want == i:
            yield f
            want = next(it, None)
        if want is None:
            return


def write_video(path: Path, frames: Iterator[np.ndarray], rate: Fraction,
                bit_rate: int | None = None) -> int:
    """Encodes RGB frames as H.264 in MP4 (written beside, then renamed); the frame count."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w", format="mp4") as c:
        s = None
        for i, f in enumerate(frames):
            if s is None:
                s = c.add_stream("libx264", rate=rate)
                s.height, s.width = f.shape[0], f.shape[1]
                s.pix_fmt = "yuv420p"
                s.codec_context.gop_size = 2 * int(round(float(rate)))
                if bit_rate:
                    s.bit_rate = bit_rate
                    s.options = {"preset": "ultrafast"}
                else:
                    s.options = {"preset": "ultrafast", "crf": "20"}
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        if s is not None:
            for p in s.encode(None):
                c.mux(p)
    tmp.replace(path)
    return 0 if s is None else i + 1


def generate(source: str | Path, out_dir: str | Path, kinds=EDITS, seconds: float = 20.0,
             start: float = 0.0, max_side: int | None = None) -> list[Clip]:
    """Writes `<stem>.orig.mp4` (the excerpt) and `<stem>.<kind>.mp4` per edit kind under
    `out_dir`, each edit made from the orig file as published, and returns them, orig first.
    Files already there are kept (the suite is deterministic: delete the folder after changing
    the arguments)."""
    source, out_dir = Path(source), Path(out_dir)
    orig = out_dir / f"{source.stem}.orig.mp4"
    if not orig.exists():
        n = write_video(orig, iter_frames(source, seconds, start, max_side), frame_rate(source))
        if n == 0:
            raise ValueError(f"{source}: no video frames in [{start}, {start + seconds}) s")
    rate = frame_rate(orig)
    n = sum(1 for _ in _packets(orig))
    out = [Clip(source.name, "orig", orig)]
    for kind in kinds:
        path = out_dir / f"{source.stem}.{kind}.mp4"
        out.append(Clip(source.name, kind, path))
        if path.exists():
            continue
        first = next(iter_frames(orig))
        h, w = first.shape[:2]
        fn = frame_edit(kind, w, h) or (lambda f: f)
        frames = (fn(f) for f in _replay(iter_frames(orig), retime(kind, n)))
        write_video(path, frames, rate, LOW_BITRATE if kind == "lowbitrate" else None)
    return out


def _packets(path: Path):
    import av

    with av.open(str(path)) as c:
        for p in c.demux(c.streams.video[0]):
            if p.size:
                yield p


__all__ = ["Clip", "EDITS", "frame_edit", "frame_rate", "generate", "iter_frames", "retime",
           "write_video"]
