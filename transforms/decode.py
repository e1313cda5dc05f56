"""Decode any audio or video container to 16 kHz mono float32 with PyAV (bundled FFmpeg).

Memory: `iter_audio` streams fixed-size chunks (constant memory); `decode_audio` fills one
preallocated array sized from the container's duration (grown geometrically only when the
container under-reports), so a long input costs one copy of its samples, not two.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import IO, Iterator

import numpy as np


class DecodeError(Exception):
    """A media file that cannot be decoded; `reason` is the ledger code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MediaInfo:
    container: str | None
    media_kind: str  # audio | video
    audio_codec: str | None
    video_codec: str | None
    duration_s: float | None  # container's claim; None when unknown
    sample_rate: int | None
    channels: int | None


@contextlib.contextmanager
def open_media(media_uri: str) -> Iterator[IO[bytes] | str]:
    """A local path as is; anything else (gs://, s3://) as a Beam FileSystems stream."""
    if "://" not in media_uri or media_uri.startswith("file://"):
        yield media_uri.removeprefix("file://")
        return
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(media_uri, compression_type="uncompressed") as fh:
        yield fh


def _open_container(src):
    import av

    try:
        return av.open(src, mode="r", metadata_errors="ignore")
    except av.error.InvalidDataError as e:
        raise DecodeError("not_media", f"not an audio/video container ({e})") from e
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise DecodeError("decode_error", f"cannot open: {e}") from e


def _info(container) -> MediaInfo:
    audio = container.streams.audio[0] if container.streams.audio else None
    video = next((s for s in container.streams.video if not _is_cover_art(s)), None)
    duration = None
    if audio is not None and audio.duration is not None and audio.time_base is not None:
        duration = float(audio.duration * audio.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # av.time_base
    return MediaInfo(
        container=container.format.name if container.format else None,
        media_kind="video" if video is not None else "audio",
        audio_codec=audio.codec_context.name if audio is not None else None,
        video_codec=video.codec_context.name if video is not None else None,
        duration_s=duration,
        sample_rate=audio.codec_context.sample_rate if audio is not None else None,
        channels=audio.codec_context.channels if audio is not None else None,
    )


def _is_cover_art(stream) -> bool:
    # mp3/m4a album art shows up as a one-frame video stream
    return bool(stream.disposition & 0x400) if hasattr(stream, "disposition") else False


def probe(media_uri: str) -> MediaInfo:
    with open_media(media_uri) as src, _open_container(src) as c:
        return _info(c)


def iter_audio(
    media_uri: str, sample_rate: int = 16000, chunk_s: float = 30.0
) -> Iterator[np.ndarray]:
    """Yield mono float32 chunks of about `chunk_s` seconds at `sample_rate` (constant memory)."""
    with open_media(media_uri) as src, _open_container(src) as c:
        yield from _iter_container(c, sample_rate, chunk_s)


def _iter_container(c, sample_rate: int, chunk_s: float) -> Iterator[np.ndarray]:
    import av

    if not c.streams.audio:
        raise DecodeError("no_audio_stream", "the file has no audio track")
    stream = c.streams.audio[0]
    stream.thread_type = "AUTO"
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    target = max(1, int(chunk_s * sample_rate))
    pending: list[np.ndarray] = []
    have = 0
    try:
        for frame in c.decode(stream):
            frame.pts = None  # let the resampler keep its own clock (no gaps from bad pts)
            for out in resampler.resample(frame):
                pending.append(out.to_ndarray().reshape(-1))
                have += pending[-1].shape[0]
            if have >= target:
                yield np.concatenate(pending) if len(pending) > 1 else pending[0]
                pending, have = [], 0
        for out in resampler.resample(None):
            pending.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:
        raise DecodeError("decode_error", f"corrupt or truncated stream: {e}") from e
    if pending:
        yield np.concatenate(pending)


def decode_audio(media_uri: str, sample_rate: int = 16000) -> np.ndarray:
    """The whole audio track as one mono float32 array at `sample_rate`."""
    with open_media(media_uri) as src, _open_container(src) as c:
        info = _info(c)
        guess = int((info.duration_s or 60.0) * sample_rate * 1.01) + sample_rate
        buf = np.empty(guess, dtype=np.float32)
        n = 0
        for chunk in _iter_container(c, sample_rate, chunk_s=5.0):
            if n + chunk.shape[0] > buf.shape[0]:
                grown = np.empty(max(buf.shape[0] * 3 // 2, n + chunk.shape[0]), dtype=np.float32)
                grown[:n] = buf[:n]
                buf = grown
            buf[n : n + chunk.shape[0]] = chunk
            n += chunk.shape[0]
    if n == 0:
        raise DecodeError("empty_audio", "the audio track decodes to zero samples")
    # resize in place (no second copy) when we own the buffer
    try:
        buf.resize(n, refcheck=False)
    except ValueError:
        buf = buf[:n].copy()
    return buf


def local_path(media_uri: str) -> str | None:
    p = media_uri.removeprefix("file://")
    return p if "://" not in p and os.path.exists(p) else None
