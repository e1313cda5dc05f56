"""Perceptual hashes of a picture: the pieces keyframes, video fingerprints and image dedup share.

`phash` is the 64-bit DCT hash of Zauner 2010 (`imagehash.phash`). `frame_hashes` hashes the
picture inside its black bars (`content_box`: letterbox, pillarbox and windowbox bars cut) and
that picture's centre 90%, so that bars and small crops hash like the original; the video
fingerprint compares its frames this way (transforms/fingerprint.py), and image dedup its
keyframes (bench/README.md, bench_vidsuite.py: the measured recall per edit).
"""

from __future__ import annotations

import numpy as np

# Black bars: a line (row or column), from an edge inward, is a bar while fewer than BAR_SHARE of
# its pixels are brighter than BAR_LUMA (black is 16 in limited-range video, x264's ringing at a
# bar's edge stays below ~30; a logo or subtitle laid over a bar covers under 10% of its line).
# A frame whose picture would keep less than BAR_MIN_KEEP of a side (a fade, a night scene)
# keeps its whole frame.
BAR_LUMA = 40
BAR_SHARE = 0.1
BAR_MIN_KEEP = 1 / 3
CENTRE = 0.9  # the second hash: the picture's centre 90% x 90% (a 10% crop hashes like it)
HASH_SIDE = 256  # the luma plane is point-subsampled to about this many pixels first



def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (h, w, 3) uint8 image, float32."""
    x = rgb.astype(np.float32)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def area_resize(gray: np.ndarray, h: int, w: int) -> np.ndarray:
    """Area-average resize of a 2-D array to (h, w) (any size in, exact size out)."""
    g = np.asarray(gray, dtype=np.float32)
    ys = np.linspace(0, g.shape[0], h + 1).astype(int)
    xs = np.linspace(0, g.shape[1], w + 1).astype(int)
    c = np.cumsum(np.cumsum(np.pad(g, ((1, 0), (1, 0))), axis=0), axis=1)
    tot = c[ys[1:], :][:, xs[1:]] - c[ys[:-1], :][:, xs[1:]] - c[ys[1:], :][:, xs[:-1]] + c[ys[:-1], :][:, xs[:-1]]
    area = np.outer(np.diff(ys), np.diff(xs)).astype(np.float32)
    return tot / np.maximum(area, 1.0)


def phash(rgb_or_gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash (the pHash of Zauner 2010 / `imagehash.phash`): luma
    area-resized to 32x32, 2-D DCT-II, the 8x8 lowest frequencies compared with their median."""
    from scipy.fft import dctn

    g = rgb_or_gray if rgb_or_gray.ndim == 2 else luma(rgb_or_gray)
    small = area_resize(g, 32, 32)
    low = dctn(small, type=2, norm="ortho")[:8, :8].reshape(-1)
    bits = low > np.median(low)
    return int(sum(1 << i for i, b in enumerate(bits[::-1]) if b))


def hamming(a: int, b: int) -> int:
    return int(bin(a ^ b).count("1"))


def content_box(y: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns of a luma plane inside its black bars (the whole plane when the
    bars would leave less than BAR_MIN_KEEP of a side)."""
    bright = y > BAR_LUMA
    rows = np.flatnonzero(bright.mean(axis=1) >= BAR_SHARE)
    cols = np.flatnonzero(bright.mean(axis=0) >= BAR_SHARE)
    h, w = y.shape
    whole = (slice(0, h), slice(0, w))
    if rows.size == 0 or cols.size == 0:
        return whole
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if r1 - r0 < h * BAR_MIN_KEEP or c1 - c0 < w * BAR_MIN_KEEP:
        return whole
    return slice(r0, r1), slice(c0, c1)


def frame_hashes(y: np.ndarray) -> tuple[int, int]:
    """(pHash of the picture inside the bars, pHash of its centre) of a luma plane."""
    step = max(1, max(y.shape) // HASH_SIDE)
    small = y[::step, ::step]
    rs, cs = content_box(small)
    pic = small[rs, cs].astype(np.float32)
    ph, pw = pic.shape
    dh, dw = int(round(ph * (1 - CENTRE) / 2)), int(round(pw * (1 - CENTRE) / 2))
    return phash(pic), phash(pic[dh:ph - dh or None, dw:pw - dw or None])
