"""Small synthetic media for tests, made with PyAV: tones, and videos with or without audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sine(freq: float, seconds: float, rate: int, amp: float = 0.99) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def audio_frame(x: np.ndarray, fmt: str, layout: str, rate: int, pts: int):
    """An av.AudioFrame of float samples x (n, channels) in the encoder's sample format."""
    import av

    dtype, scale = {"s16": (np.int16, 32767), "s32": (np.int32, 2**31 - 1)}.get(
        fmt.rstrip("p"), (np.float32, 1.0))
    y = (x * scale).astype(dtype)
    arr = y.T if fmt.endswith("p") else y.reshape(1, -1)
    fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
    fr.sample_rate, fr.pts = rate, pts
    return fr


def mux_audio(out, stream, x: np.ndarray, layout: str, rate: int) -> None:
    """Encode float samples x (n, channels) on `stream` of container `out`, then flush it."""
    fmt = stream.codec_context.format.name
    size = stream.codec_context.frame_size or 1024
    for i in range(0, x.shape[0] - size + 1, size):
        for p in stream.encode(audio_frame(x[i : i + size], fmt, layout, rate, i)):
            out.mux(p)
    for p in stream.encode(None):
        out.mux(p)


def write_video(path: Path, vcodec: str, acodec: str | None, seconds: float = 2.0,
                audio_rate: int = 48000, fmt: str | None = None) -> None:
    """A tiny video (grey frames, 10 fps) with an in-phase stereo 440 Hz track unless acodec is None."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream(vcodec, rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream(acodec, rate=audio_rate, layout="stereo") if acodec else None
        for i in range(int(seconds * 10)):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")
            f.pts = i
            for p in v.encode(f.reformat(format="yuv420p")):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        if a is not None:
            x = sine(440, seconds, audio_rate).astype(np.float32)
            mux_audio(out, a, np.stack([x, x], 1), "stereo", audio_rate)
