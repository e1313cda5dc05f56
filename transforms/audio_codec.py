"""Mono float32 samples in [-1, 1] as audio file bytes (FLAC, Ogg Opus), with PyAV's FFmpeg.

One encoder for the segments' stored audio (`transforms/speech.py`), the exports and the audit
report's players. It imports neither Beam nor a model, so the audit can use it without paying
for `transforms.speech`'s import (Beam's model runtime, ~10 s).
"""

from __future__ import annotations

import io


def encode_flac(samples, sample_rate: int) -> bytes:
    """16-bit FLAC."""
    return _encode(samples, sample_rate, "flac", "flac")


def encode_opus(samples, sample_rate: int, bit_rate: int, compression_level: int | None = None) -> bytes:
    """Ogg Opus at `bit_rate` bit/s (libopus keeps 8/12/16/24/48 kHz as is; decoders give back the
    input's length). `compression_level` 0-10 (libopus' default 10): 5 takes a third of the time,
    for clips nobody trains on (the report's players)."""
    options = {} if compression_level is None else {"compression_level": str(compression_level)}
    return _encode(samples, sample_rate, "ogg", "libopus", bit_rate, options)


def _encode(samples, sample_rate: int, container: str, codec: str, bit_rate: int | None = None,
            options: dict[str, str] | None = None) -> bytes:
    import av
    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout="mono", options=options or {})
        if bit_rate:
            stream.bit_rate = bit_rate
        step = 1 << 14
        for i in range(0, max(pcm.shape[0], 1), step):
            chunk = pcm[i : i + step]
            if chunk.shape[0] == 0:
                break
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
