"""Media fingerprints for deduplication: the same recording across encodings, rates, channel
counts, trims and re-encodes, without transcripts.

Audio (`audio_fingerprint`): a Haitsma-Kalker / Chromaprint-style band-energy-sign fingerprint
of 16 kHz mono audio (what `mmcurate.transforms.decode` gives for any container, so a 44.1 kHz
stereo FLAC and a 16 kHz mono WAV of one recording are compared on the same samples): frames
of 2048 samples (128 ms) every 512 samples (32 ms), 33 log-spaced bands between 300 and 3000 Hz,
and one 32-bit sub-fingerprint per frame whose bit k is the sign of the energy difference
E(n, k) - E(n, k+1) - (E(n-1, k) - E(n-1, k+1)). Two fingerprints are compared at their best
time offset (voted by equal sub-fingerprints); the similarity is 1 - bit error rate over the
overlap (Haitsma & Kalker 2002: BER < 0.35 is the same recording; unrelated audio gives ~0.5).

Video (`video_fingerprint`): two 64-bit DCT perceptual hashes (`image_hash.phash`) of the luma
of frames sampled every `step_s` seconds, with their times (a TMK/vPDQ-style frame-hash
sequence): one of the picture inside its black bars (`image_hash.content_box`: letterbox, pillarbox and
windowbox bars are cut, so a copy with other bars hashes the same picture), one of that
picture's centre 90% x 90% (a copy cropped by up to ~10% hashes like the original's centre).
Two sequences are compared at the best time shift (voted by close hash pairs); the similarity is
the share of the shorter clip's sampled frames, over the overlap, whose hash is within
`max_bits` of the other clip's frame at the shifted time (picture with picture, or either's
centre with the other's picture). Resizing, re-encoding and recolouring move a pHash by a few
bits; trimming is the shift; a 5% speed change drifts 0.05 s per second from the best shift,
so only the frames within ~+-5 s of it line up (or look alike): measured on 8 s excerpts only.
On the edit suite (bench/bench_vidsuite.py, bench/README.md) a letterboxed copy's full-frame
hash moved 20-24 bits and a 10% crop's 12-14; with the bar cut and the centre hash, 0-6.

Both sequences are stored as little-endian bytes in `dedup_signatures.signature` (uint32 per
audio frame; VIDEO_MAGIC then (float32 time, uint64 picture hash, uint64 centre hash) per video
sample), so a later run compares against them without the media. Video signatures written
before the centre hash ((float32 time, uint64 hash) records, no magic) still read, and compare
on the picture hash alone.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np

from mmcurate.transforms.image_hash import frame_hashes

SAMPLE_RATE = 16000
AUDIO_FRAME = 2048
AUDIO_HOP = 512
AUDIO_BANDS = 33  # -> 32 bits
AUDIO_FMIN, AUDIO_FMAX = 300.0, 3000.0
AUDIO_HOP_S = AUDIO_HOP / SAMPLE_RATE


# --------------------------------------------------------------------------------------- audio


def _band_matrix() -> np.ndarray:
    freqs = np.fft.rfftfreq(AUDIO_FRAME, 1.0 / SAMPLE_RATE)
    edges = np.geomspace(AUDIO_FMIN, AUDIO_FMAX, AUDIO_BANDS + 1)
    m = np.zeros((freqs.size, AUDIO_BANDS), dtype=np.float32)
    for k in range(AUDIO_BANDS):
        m[(freqs >= edges[k]) & (freqs < edges[k + 1]), k] = 1.0
    return m


_BANDS = _band_matrix()
_WINDOW = np.hanning(AUDIO_FRAME).astype(np.float32)
_BIT_WEIGHTS = (1 << np.arange(31, -1, -1, dtype=np.uint64)).astype(np.uint64)


class AudioFingerprinter:
    """Streaming: `push(chunk)` 16 kHz mono float32 chunks of any size, then `finish()` ->
    uint32 array (one sub-fingerprint per 32 ms). Memory: the fingerprint (4 bytes per 32 ms,
    450 KB per hour) plus one frame; `max_s` caps what is fingerprinted (the first `max_s`)."""

    def __init__(self, max_s: float | None = None):
        self._tail = np.zeros(0, dtype=np.float32)
        self._prev: np.ndarray | None = None
        self._out: list[np.ndarray] = []
        self._limit = int(max_s * SAMPLE_RATE) if max_s else None
        self._seen = 0

    def push(self, chunk: np.ndarray) -> None:
        if self._limit is not None:
            if self._seen >= self._limit:
                return
            chunk = chunk[: self._limit - self._seen]
        self._seen += chunk.shape[0]
        x = np.concatenate([self._tail, np.asarray(chunk, dtype=np.float32)])
        n = 0 if x.shape[0] < AUDIO_FRAME else 1 + (x.shape[0] - AUDIO_FRAME) // AUDIO_HOP
        if n == 0:
            self._tail = x
            return
        idx = np.arange(AUDIO_FRAME)[None, :] + AUDIO_HOP * np.arange(n)[:, None]
        frames = x[idx] * _WINDOW
        energy = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).astype(np.float32) @ _BANDS
        d = energy[:, :-1] - energy[:, 1:]  # (n, 32): frequency difference
        if self._prev is not None:
            d_all = np.vstack([self._prev[None, :], d])
        else:
            d_all = np.vstack([d[:1], d])  # the first frame has no predecessor: no bits from it
        bits = (d_all[1:] - d_all[:-1]) > 0
        if self._prev is None:
            bits = bits[1:]
        self._prev = d[-1]
        if bits.shape[0]:
            self._out.append((bits.astype(np.uint64) @ _BIT_WEIGHTS).astype(np.uint32))
        self._tail = x[n * AUDIO_HOP:]

    def finish(self) -> np.ndarray:
        return np.concatenate(self._out) if self._out else np.zeros(0, dtype=np.uint32)


def audio_fingerprint(samples: np.ndarray, max_s: float | None = None) -> np.ndarray:
    fp = AudioFingerprinter(max_s)
    fp.push(samples)
    return fp.finish()


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount32(x: np.ndarray) -> np.ndarray:
    b = x.astype(np.uint32).view(np.uint8).reshape(-1, 4)
    return _POPCOUNT8[b].sum(axis=1)


@dataclass(frozen=True)
class Alignment:
    similarity: float  # 1 - BER (audio) or share of matching frames (video)
    offset_s: float  # b's time = a's time + offset_s
    overlap_s: float


def compare_audio(a: np.ndarray, b: np.ndarray, min_overlap_s: float = 3.0,
                  top_offsets: int = 5) -> Alignment | None:
    """Best alignment of two audio fingerprints (None without `min_overlap_s` of overlap at
    any offset voted by equal sub-fingerprints)."""
    if a.size == 0 or b.size == 0:
        return None
    pos_b: dict[int, list[int]] = {}
    for j, v in enumerate(b.tolist()):
        lst = pos_b.setdefault(v, [])
        if len(lst) < 8:  # a value repeated everywhere (silence) votes for nothing useful
            lst.append(j)
    votes: Counter = Counter()
    for i, v in enumerate(a.tolist()):
        for j in pos_b.get(v, ()):
            votes[j - i] += 1
    if not votes:
        return None
    # a clip shorter than min_overlap_s must overlap by 80% of itself
    min_overlap = int(min(min_overlap_s / AUDIO_HOP_S, 0.8 * min(a.size, b.size)))
    best = None
    for off, _ in votes.most_common(top_offsets):
        i0, j0 = max(0, -off), max(0, off)
        n = min(a.size - i0, b.size - j0)
        if n < max(1, min_overlap):
            continue
        ber = float(_popcount32(a[i0:i0 + n] ^ b[j0:j0 + n]).mean()) / 32.0
        cand = Alignment(round(1.0 - ber, 4), round(off * AUDIO_HOP_S, 3), round(n * AUDIO_HOP_S, 3))
        if best is None or cand.similarity > best.similarity:
            best = cand
    return best


def audio_keys(fp: np.ndarray, k: int = 24) -> list[int]:
    """LSH keys of an audio fingerprint: the bottom-k of a hash of its distinct sub-fingerprints
    (leaving out the near-constant ones silence gives). Copies of one recording share most of
    their sub-fingerprints, so they share bottom-k values; candidates are then verified."""
    if fp.size == 0:
        return []
    vals = np.unique(fp)
    pc = _popcount32(vals)
    vals = vals[(pc > 4) & (pc < 28)]
    if vals.size == 0:
        return []
    h = (vals.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)
    return sorted(int(x) for x in np.sort(h)[:k])


# --------------------------------------------------------------------------------------- video


# A NaN float32 where an old record's first time would be: no old signature starts with it
VIDEO_MAGIC = b"\x00\x00\xc0\x7fVF2\x00"
_VIDEO_REC = [("t", "<f4"), ("h", "<u8"), ("c", "<u8")]
_VIDEO_REC_V1 = [("t", "<f4"), ("h", "<u8")]
@dataclass(frozen=True)
class VideoPrint:
    times: np.ndarray  # float32 seconds
    hashes: np.ndarray  # uint64 pHash of the picture (bars cut) per sampled frame
    centres: np.ndarray | None = None  # uint64 pHash of its centre; None: an old signature

    def to_bytes(self) -> bytes:
        rec = np.zeros(self.times.size, dtype=_VIDEO_REC)
        rec["t"], rec["h"] = self.times, self.hashes
        rec["c"] = self.hashes if self.centres is None else self.centres
        return VIDEO_MAGIC + rec.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "VideoPrint":
        if data[:len(VIDEO_MAGIC)] == VIDEO_MAGIC:
            rec = np.frombuffer(data[len(VIDEO_MAGIC):], dtype=_VIDEO_REC)
            return cls(rec["t"].astype(np.float32), rec["h"].astype(np.uint64),
                       rec["c"].astype(np.uint64))
        rec = np.frombuffer(data, dtype=_VIDEO_REC_V1)
        return cls(rec["t"].astype(np.float32), rec["h"].astype(np.uint64))


def video_fingerprint(media_uri: str, step_s: float = 0.25, max_s: float | None = None) -> VideoPrint:
    """The hashes (`frame_hashes`) of the frame shown at every `step_s` seconds (the first
    decoded frame at or after each tick). Raises whatever PyAV raises on a broken stream (the
    caller records it)."""
    import av

    from mmcurate.transforms.decode import open_media
    from mmcurate.transforms.keyframes import _plane

    times: list[float] = []
    hashes: list[int] = []
    centres: list[int] = []
    with open_media(media_uri) as src, av.open(src) as c:
        if not c.streams.video:
            return VideoPrint(np.zeros(0, np.float32), np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        # frames no other frame references are not decoded (the next tick takes the next
        # decoded frame, at most a few frames later)
        stream.codec_context.skip_frame = "NONREF"
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        next_t = 0.0
        for frame in c.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * frame.time_base) - start
            if max_s is not None and t > max_s:
                break
            if t + 1e-6 < next_t:
                continue
            if frame.format.name.startswith("yuv") or frame.format.name.startswith("nv"):
                y = _plane(frame.planes[0])
            else:
                y = _plane(frame.reformat(format="gray").planes[0])
            h, ch = frame_hashes(y)
            times.append(t)
            hashes.append(h)
            centres.append(ch)
            next_t = (int(t / step_s) + 1) * step_s
    return VideoPrint(np.asarray(times, np.float32), np.asarray(hashes, np.uint64),
                      np.asarray(centres, np.uint64))


def _popcount64(x: np.ndarray) -> np.ndarray:
    b = x.astype(np.uint64).view(np.uint8).reshape(-1, 8)
    return _POPCOUNT8[b].sum(axis=1)


def _hamming(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = x[:, None] ^ y[None, :]
    return _popcount64(z.reshape(-1)).reshape(z.shape)


def _distances(a: VideoPrint, b: VideoPrint) -> np.ndarray:
    """Bits between every frame of `a` and every frame of `b`: picture with picture, or (where
    both have them) either's centre with the other's picture, whichever is closest."""
    dist = _hamming(a.hashes, b.hashes)
    if a.centres is not None and b.centres is not None:
        dist = np.minimum(dist, np.minimum(_hamming(a.centres, b.hashes), _hamming(a.hashes, b.centres)))
    return dist


def compare_video(a: VideoPrint, b: VideoPrint, max_bits: int = 10, min_overlap_s: float = 2.0,
                  step_s: float = 0.25, top_shifts: int = 5) -> Alignment | None:
    """Best time shift of two frame-hash sequences and the share of frames that match there.
    Shifts are voted by frame pairs within `max_bits`; at a shift, each frame of the shorter
    sequence inside the overlap matches when a frame of the other within +-step_s of its
    shifted time is within `max_bits` (`_distances`)."""
    if a.hashes.size == 0 or b.hashes.size == 0:
        return None
    if b.times.size < a.times.size:
        a, b = b, a
        swapped = True
    else:
        swapped = False
    dist = _distances(a, b)
    ii, jj = np.nonzero(dist <= max_bits)
    if ii.size == 0:
        return None
    shifts = np.round((b.times[jj] - a.times[ii]) / step_s) * step_s
    best = None
    for shift, _ in Counter(shifts.tolist()).most_common(top_shifts):
        ta = a.times + shift
        inside = (ta >= b.times[0] - step_s) & (ta <= b.times[-1] + step_s)
        n = int(inside.sum())
        if n == 0 or n * step_s < min_overlap_s:
            continue
        near = np.abs(ta[inside][:, None] - b.times[None, :]) <= step_s
        ok = ((dist[inside] <= max_bits) & near).any(axis=1)
        sim = float(ok.mean())
        cand = Alignment(round(sim, 4), round(float(-shift if swapped else shift), 3), round(n * step_s, 3))
        if best is None or cand.similarity > best.similarity:
            best = cand
    return best


def video_keys(vp: VideoPrint, k: int = 24) -> list[int]:
    """LSH keys of a frame-hash sequence: the bottom-k of a hash of its (band, 16-bit value)
    tokens over 4 bands of each frame's pHashes (picture and centre); near-identical frames
    share whole bands."""
    if vp.hashes.size == 0:
        return []
    toks = set()
    every = vp.hashes.tolist() + ([] if vp.centres is None else vp.centres.tolist())
    for h in every:
        for band in range(4):
            toks.add((band << 16) | ((h >> (16 * band)) & 0xFFFF))
    arr = np.fromiter(toks, dtype=np.uint64)
    hv = (arr * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)
    return sorted(int(x) for x in np.sort(hv)[:k])


__all__ = ["Alignment", "AudioFingerprinter", "VideoPrint", "audio_fingerprint", "audio_keys",
           "compare_audio", "compare_video", "dataclasses",
           "video_fingerprint", "video_keys"]
