"""Small synthetic videos for the keyframe and video-stage tests, made with PyAV: "slides"
(text-like bars on a background), flat, black, blurred and noisy scenes, with an optional tone."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

W, H = 192, 108  # small 16:9 frames: a test's media is seconds long and tiny

Frame = Callable[[int, float], np.ndarray]  # (frame index in the scene, seconds) -> (H, W, 3) uint8


def slide(seed: int, w: int = W, h: int = H, background=(250, 250, 250)) -> np.ndarray:
    """A slide: a title bar and rows of dark 'words' at places that depend on `seed`."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = background
    img[h // 12 : h // 12 + h // 10, w // 8 : w // 8 + int(w * rng.uniform(0.3, 0.7))] = (20, 20, 90)
    y = h // 4
    while y < h - h // 8:
        x = w // 10
        while x < w - w // 6:
            ww = int(rng.integers(w // 30, w // 8))
            shade = int(rng.integers(0, 60))
            img[y : y + max(2, h // 30), x : x + ww] = (shade, shade, shade)
            x += ww + max(2, w // 40)
        y += int(h / rng.uniform(8, 14))
    return img


def blur(img: np.ndarray, radius: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


def still(img: np.ndarray) -> Frame:
    return lambda i, t: img


def flat(rgb: Sequence[int], w: int = W, h: int = H) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rgb
    return img


def noisy(seed: int, w: int = W, h: int = H) -> Frame:
    """Handheld-camera-like: a textured picture drifting a pixel per frame."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, ((h + 40) // 6 + 1, (w + 40) // 6 + 1, 3), dtype=np.uint8)
    base = np.repeat(np.repeat(cells, 6, axis=0), 6, axis=1)  # sharp-edged coloured blocks
    return lambda i, t: np.ascontiguousarray(base[i % 40 : i % 40 + h, (2 * i) % 40 : (2 * i) % 40 + w])


def write_video(path: Path, scenes: Sequence[tuple[float, Frame]], *, fps: int = 10,
                audio: np.ndarray | None = None, audio_rate: int = 16000,
                vcodec: str = "libx264", acodec: str = "aac", gop: int = 20,
                fmt: str | None = None, options: dict | None = None) -> Path:
    """Encode scenes (seconds, frame function) back to back; `audio`: mono float samples."""
    import av

    from media_fixtures import mux_audio

    h, w = scenes[0][1](0, 0.0).shape[:2]
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        v = out.add_stream(vcodec, rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.gop_size = gop
        if vcodec == "libx264":
            v.codec_context.options = {"preset": "veryfast", "bf": "2", "sc_threshold": "0"}
        a = out.add_stream(acodec, rate=audio_rate, layout="mono") if audio is not None else None
        n = 0
        for seconds, fn in scenes:
            for i in range(int(round(seconds * fps))):
                f = av.VideoFrame.from_ndarray(np.ascontiguousarray(fn(i, i / fps)), format="rgb24")
                f.pts = n
                n += 1
                for p in v.encode(f.reformat(format="yuv420p")):
                    out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        if a is not None:
            mux_audio(out, a, np.asarray(audio, np.float32)[:, None], "mono", audio_rate)
    return path


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    return 0.3 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def slides_video(path: Path, n: int = 3, seconds: float = 2.0, **kw) -> Path:
    """`n` different slides of `seconds` each: cuts at seconds, 2 x seconds, ..."""
    return write_video(path, [(seconds, still(slide(k))) for k in range(n)], **kw)
