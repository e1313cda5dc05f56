"""Decode any audio or video container to 16 kHz mono float32 with PyAV (bundled FFmpeg).

Memory: `iter_audio` streams chunks of about `chunk_s` seconds (constant memory, whatever the
length of the input); `decode_audio` fills one preallocated array sized from the container's
duration (grown geometrically only when the container under-reports), so a long input costs
one copy of its samples, not two.

Downmix: channels are averaged (mono = mean of L and R), so a full-scale stereo input stays in
[-1, 1]. FFmpeg's own stereo->mono matrix weights each channel by 1/sqrt(2) and does not
normalise float output, which gives peaks of 1.41 for in-phase channels. Inputs with more than
two channels are first folded to stereo by FFmpeg (its surround matrix keeps the centre/dialogue
channel), then averaged and clipped to [-1, 1].

Failures are `DecodeError(reason, detail)` with the ledger reason codes:
  not_media        the bytes are not an audio/video container (a text file named .mp3)
  decode_error     a media container that is corrupt or truncated beyond decoding
  no_audio_stream  a container without an audio track (a silent screen recording)
  empty_audio      a 0-byte file, or an audio track that decodes to zero samples
  too_long         more than `max_duration_s` of audio (claimed by the container or decoded)

Truncated or damaged inputs: FFmpeg decodes what is there, and that is what we keep (an mp3
cut at 30% of its bytes decodes to its first 30%; its header may still claim the full length,
so durations always come from the decoded sample count). Isolated packets that fail to decode
are skipped, as the ffmpeg CLI does, up to `_MAX_BAD_PACKETS` plus 1% of the packets read;
beyond that, or when the demuxer itself fails, the whole input is a `decode_error` (the caller
never gets a half-decoded source presented as complete: `iter_audio` raises after the chunks it
has yielded, and callers must treat the raise as the outcome for the input).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import IO, ClassVar, Iterable, Iterator

import numpy as np

from mmcurate.schemas.params import Rule, non_negative, positive, unit_interval


@dataclass
class DecodeConfig:
    sample_rate: int = 16000  # what every speech model here expects
    max_duration_s: float = 12 * 3600.0  # longer sources are rejected (too_long)
    # Truncated or damaged media: the decoded audio is shorter than the container declares
    # (by more than the tolerance), or decoding fails part-way. "keep": the decodable part is
    # the source and the ledger gets an annotation row decode/truncated_kept with the seconds
    # lost; "reject": the input is a decode/truncated (or decode_error) ledger row, no source.
    truncated: str = "keep"
    # Declared durations are estimates in some containers (a VBR mp3 without a Xing header);
    # a shortfall counts as truncation beyond max(truncation_tolerance_s, this share).
    truncation_tolerance_s: float = 1.0
    truncation_tolerance_ratio: float = 0.05

    RULES: ClassVar[dict] = {
        "sample_rate": Rule(choices=(16000,), why="the VAD, ASR and diarization models take 16 kHz"),
        "max_duration_s": positive("seconds"),
        "truncated": Rule(choices=("keep", "reject")),
        "truncation_tolerance_s": non_negative("seconds"),
        "truncation_tolerance_ratio": unit_interval("share of the declared duration"),
    }


_MAX_BAD_PACKETS = 5  # corrupt packets tolerated before the input is a decode_error (+1%)
_IMAGE_CODECS = frozenset({"mjpeg", "png", "bmp", "gif", "webp", "tiff", "jpeg2000"})


class DecodeError(Exception):
    """A media file that cannot be decoded; `reason` is the ledger code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across Beam worker processes
        return (DecodeError, (self.reason, self.detail))


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


# Leading bytes of the containers we accept: an input that FFmpeg cannot open but that starts
# like one of these is damaged media (decode_error), anything else is not media at all.
_MAGIC = (
    (0, b"ID3"),  # mp3 with ID3v2 tag
    (0, b"RIFF"),  # wav / avi
    (0, b"fLaC"),
    (0, b"OggS"),  # ogg / opus / vorbis
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (4, b"ftyp"),  # mp4 / m4a / mov
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x30\x26\xb2\x75"),  # asf / wma
    (0, b"ADIF"),
    (0, b"FORM"),  # aiff
    (0, b"caff"),
)


def _looks_like_media(head: bytes) -> bool:
    if any(head[off : off + len(m)] == m for off, m in _MAGIC):
        return True
    # mpeg audio / adts aac frame sync: 11 set bits
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def _head(src) -> bytes:
    try:
        if isinstance(src, str):
            with open(src, "rb") as fh:
                return fh.read(16)
        pos = src.tell()
        src.seek(0)
        head = src.read(16)
        src.seek(pos)
        return head
    except (OSError, AttributeError, ValueError):
        return b""


def _open_container(src):
    import av

    if isinstance(src, str) and os.path.isfile(src) and os.path.getsize(src) == 0:
        raise DecodeError("empty_audio", "the file is empty (0 bytes)")
    try:
        return av.open(src, mode="r", metadata_errors="ignore")
    except av.error.InvalidDataError as e:
        head = _head(src)
        if not head:
            raise DecodeError("empty_audio", "the file is empty (0 bytes)") from e
        if _looks_like_media(head):
            raise DecodeError("decode_error", f"damaged or truncated media: {e}") from e
        raise DecodeError("not_media", f"not an audio/video container ({e})") from e
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise DecodeError("decode_error", f"cannot open: {e}") from e


def _info(container) -> MediaInfo:
    audio = container.streams.audio[0] if container.streams.audio else None
    if audio is not None and audio.codec_context is None:
        # FFmpeg found an audio stream but no decoder for it: a damaged header
        raise DecodeError("decode_error", "the audio stream's codec is unknown (damaged header?)")
    video = next((s for s in container.streams.video
                  if s.codec_context is not None and not _is_cover_art(s)), None)
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
        sample_rate=(audio.codec_context.sample_rate or None) if audio is not None else None,
        channels=(audio.codec_context.channels or None) if audio is not None else None,
    )


def _is_cover_art(stream) -> bool:
    """mp3/m4a/flac album art shows up as a one-picture video stream, flagged attached_pic."""
    import av

    if stream.disposition & av.stream.Disposition.attached_pic:
        return True
    # muxers that drop the flag: a still-image codec with at most one frame
    name = stream.codec_context.name if stream.codec_context else None
    return name in _IMAGE_CODECS and (stream.frames or 0) <= 1


def probe(media_uri: str) -> MediaInfo:
    with open_media(media_uri) as src, _open_container(src) as c:
        return _info(c)


class _Downmix:
    """Resample frames to `rate` and average channels to mono float32 (see module docstring).

    A new FFmpeg resampler is built whenever the input format changes mid-stream (mp3 streams
    that switch sample rate, AAC with SBR switching), which PyAV's resampler refuses.
    """

    def __init__(self, rate: int):
        self.rate = rate
        self._key = None
        self._resampler = None
        self._channels = 1

    def _setup(self, frame) -> None:
        import av

        n = frame.layout.nb_channels
        if n <= 1:
            layout, self._channels = "mono", 1
        elif n == 2:
            layout, self._channels = frame.layout.name, 2
        else:
            layout, self._channels = "stereo", 2
        self._resampler = av.AudioResampler(format="flt", layout=layout, rate=self.rate)

    def _mono(self, out) -> np.ndarray:
        a = out.to_ndarray().reshape(-1)  # packed flt: one plane, channels interleaved
        if self._channels == 1:
            return a
        a = a.reshape(-1, self._channels).mean(axis=1, dtype=np.float32)
        return np.clip(a, -1.0, 1.0, out=a)

    def push(self, frame) -> list[np.ndarray]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        outs: list[np.ndarray] = []
        if key != self._key:
            outs = self.flush()
            self._key = key
            self._setup(frame)
        frame.pts = None  # let the resampler keep its own clock (no gaps from bad pts)
        outs.extend(self._mono(o) for o in self._resampler.resample(frame))
        return outs

    def flush(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        outs = [self._mono(o) for o in self._resampler.resample(None)]
        self._resampler = None
        return outs


def iter_audio(
    media_uri: str,
    sample_rate: int = 16000,
    chunk_s: float = 30.0,
    max_duration_s: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield mono float32 chunks of about `chunk_s` seconds at `sample_rate` (constant memory).

    Raises DecodeError (possibly after some chunks were yielded: then the input as a whole is
    the error) and `too_long` as soon as more than `max_duration_s` seconds were decoded.
    """
    with open_media(media_uri) as src, _open_container(src) as c:
        yield from _iter_container(c, sample_rate, chunk_s, max_duration_s)


@contextlib.contextmanager
def stream_audio(
    media_uri: str,
    sample_rate: int = 16000,
    chunk_s: float = 30.0,
    max_duration_s: float | None = None,
) -> Iterator[tuple[MediaInfo, Iterator[np.ndarray]]]:
    """Open once: the container's `MediaInfo` and a chunk iterator as in `iter_audio`.

    `with stream_audio(uri) as (info, chunks): ...`; raises DecodeError like `iter_audio`.
    """
    with open_media(media_uri) as src, _open_container(src) as c:
        yield _info(c), _iter_container(c, sample_rate, chunk_s, max_duration_s)


def _iter_container(
    c, sample_rate: int, chunk_s: float, max_duration_s: float | None = None
) -> Iterator[np.ndarray]:
    import av

    if not c.streams.audio:
        raise DecodeError("no_audio_stream", "the file has no audio track")
    stream = c.streams.audio[0]
    stream.thread_type = "AUTO"
    mix = _Downmix(sample_rate)
    target = max(1, int(chunk_s * sample_rate))
    limit = int(max_duration_s * sample_rate) if max_duration_s else None
    pending: list[np.ndarray] = []
    have = total = packets = bad = 0
    last_error = ""

    def emit() -> np.ndarray:
        nonlocal pending, have, total
        out = np.concatenate(pending) if len(pending) > 1 else pending[0]
        pending, have = [], 0
        total += out.shape[0]
        if limit is not None and total > limit:
            raise DecodeError("too_long", f"more than {max_duration_s:.0f} s of audio")
        return out

    try:
        for packet in c.demux(stream):
            packets += 1
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as e:  # one corrupt packet: skip it, as ffmpeg does
                bad += 1
                last_error = str(e)
                if bad > _MAX_BAD_PACKETS + packets // 100:
                    raise DecodeError(
                        "decode_error", f"{bad} corrupt packets in {packets} ({last_error})"
                    ) from e
                continue
            for frame in frames:
                for a in mix.push(frame):
                    pending.append(a)
                    have += a.shape[0]
            if have >= target:
                yield emit()
        for a in mix.flush():
            pending.append(a)
            have += a.shape[0]
    except av.error.FFmpegError as e:
        raise DecodeError("decode_error", f"corrupt or truncated stream: {e}") from e
    except ValueError as e:  # PyAV refusing a frame it cannot convert
        raise DecodeError("decode_error", f"undecodable audio frames: {e}") from e
    if have:
        yield emit()


class SampleBuffer:
    """Decoded samples collected into one array: preallocated from the container's claimed
    duration, grown by half when the claim was short, trimmed in place at the end. A long
    source costs one copy of its samples, not two (no list of chunks, no concatenate)."""

    def __init__(self, claim_s: float | None, sample_rate: int, max_duration_s: float | None = None):
        claim = claim_s if claim_s and claim_s > 0 else 60.0
        claim = min(claim, max_duration_s or 4 * 3600.0, 4 * 3600.0)  # a bogus header is no plan
        self._buf = np.empty(int(claim * sample_rate * 1.01) + sample_rate, dtype=np.float32)
        self.n = 0

    def append(self, chunk: np.ndarray) -> None:
        n, buf = self.n, self._buf
        if n + chunk.shape[0] > buf.shape[0]:
            grown = np.empty(max(buf.shape[0] * 3 // 2, n + chunk.shape[0]), dtype=np.float32)
            grown[:n] = buf[:n]
            self._buf = buf = grown
        buf[n : n + chunk.shape[0]] = chunk
        self.n = n + chunk.shape[0]

    def finish(self) -> np.ndarray:
        buf, self._buf = self._buf, np.empty(0, dtype=np.float32)
        try:  # resize in place (no second copy) when we own the buffer
            buf.resize(self.n, refcheck=False)
        except ValueError:
            buf = buf[: self.n].copy()
        return buf


def decode_audio(
    media_uri: str, sample_rate: int = 16000, max_duration_s: float | None = None
) -> np.ndarray:
    """The whole audio track as one mono float32 array at `sample_rate`."""
    with open_media(media_uri) as src, _open_container(src) as c:
        buf = SampleBuffer(_info(c).duration_s, sample_rate, max_duration_s)
        for chunk in _iter_container(c, sample_rate, 5.0, max_duration_s):
            buf.append(chunk)
    if buf.n == 0:
        raise DecodeError("empty_audio", "the audio track decodes to zero samples")
    return buf.finish()


# ---------------------------------------------------------------------------------------------
# Encoding (streaming): synthetic test media, benchmark inputs, audio excerpts.

_SAMPLE_DTYPES = {"s16": (np.int16, 32767), "s32": (np.int32, 2**31 - 1), "flt": (np.float32, 0),
                  "dbl": (np.float64, 0), "u8": (np.uint8, 0)}  # fmt: skip


def write_audio(
    path: str,
    chunks: Iterable[np.ndarray],
    sample_rate: int,
    codec: str | None = None,
    channels: int = 1,
    container_format: str | None = None,
    bit_rate: int | None = None,
) -> int:
    """Encode float chunks (shape (n,) mono or (n, channels)) to `path`, streaming.

    `codec` defaults from the extension (wav: pcm_s16le, flac, mp3: libmp3lame, m4a/aac: aac,
    ogg: vorbis... use "libopus" at 48 kHz for .opus). Returns the number of frames written.
    """
    import av

    ext = os.path.splitext(path)[1].lower()
    codec = codec or {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".m4a": "aac",
                      ".aac": "aac", ".ogg": "libvorbis", ".oga": "flac", ".opus": "libopus",
                      ".mka": "flac", ".webm": "libopus", ".mkv": "aac",
                      ".mp4": "aac", ".mov": "aac"}[ext]  # fmt: skip
    if codec == "libvorbis" and "libvorbis" not in av.codecs_available:
        codec = "vorbis"
    if ext == ".m4a" and container_format is None:
        container_format = "mp4"
    layout = "mono" if channels == 1 else "stereo" if channels == 2 else f"{channels}c"
    written = 0
    with av.open(path, "w", format=container_format) as out:
        s = out.add_stream(codec, rate=sample_rate, layout=layout)
        if codec == "vorbis":
            s.codec_context.options = {"strict": "experimental"}
        if bit_rate:
            s.bit_rate = bit_rate
        fmt = s.codec_context.format.name
        dtype, scale = _SAMPLE_DTYPES[fmt.rstrip("p")]
        size = s.codec_context.frame_size or 1024
        carry = np.zeros((0, channels), dtype=np.float64)
        out.start_encoding()  # write the header even when no samples follow

        def frames(block: np.ndarray, pts: int):
            y = np.clip(block, -1.0, 1.0)
            y = (y * scale).astype(dtype) if scale else y.astype(dtype)
            arr = np.ascontiguousarray(y.T if fmt.endswith("p") else y.reshape(1, -1))
            f = av.AudioFrame.from_ndarray(arr, format=fmt, layout=layout)
            f.sample_rate = sample_rate
            f.pts = pts
            return s.encode(f)

        for chunk in chunks:
            x = np.asarray(chunk, dtype=np.float64).reshape(-1, channels)
            x = np.concatenate([carry, x]) if carry.shape[0] else x
            full = x.shape[0] - x.shape[0] % size
            for i in range(0, full, size):
                for p in frames(x[i : i + size], written):
                    out.mux(p)
                written += size
            carry = x[full:]
        if carry.shape[0]:
            # the last frame may be short only for codecs that allow it; pad the rest
            caps = int(s.codec_context.codec.capabilities)
            if s.codec_context.frame_size and not caps & (0x40 | 0x10000):  # SMALL_LAST | VARIABLE
                carry = np.concatenate([carry, np.zeros((size - carry.shape[0], channels))])
            for p in frames(carry, written):
                out.mux(p)
            written += carry.shape[0]
        for p in s.encode(None):
            out.mux(p)
    return written
