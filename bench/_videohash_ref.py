"""Published video hashes for bench/bench_vidsuite.py, run in their own venv
(bench/requirements-videohash.txt): ThreatExchange's vPDQ (`vpdq`, its own decoder, one frame
per second) and TMK+PDQF (`tmkpy`, decoding through the ffmpeg binary of `imageio-ffmpeg`)
where they built, and the PDQ frame hash (`pdqhash`) of a frame every `--step` seconds decoded
with PyAV, plus PDQ of still images.

    python _videohash_ref.py --step 0.25 [--tmk-dir DIR] FILE... > hashes.json

Output: {"versions": {...}, "files": {FILE: {"pdq": [[t, hex, quality], ...],
"vpdq": [[t, hex, quality], ...] or null, "tmk": {"level1": cosine to every other file,
"level2": TMK score to every other file} or null}}}. An image file (.png/.jpg) gets "pdq" of
itself. Frame-hash matching is done by the caller, so those methods are scored by one code.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata

import numpy as np


def _hex(bits: np.ndarray) -> str:
    return np.packbits(np.asarray(bits, np.uint8)).tobytes().hex()


def pdq_frames(path: str, step: float) -> list:
    import av
    import pdqhash

    out = []
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        t0 = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        nxt = 0.0
        for f in c.decode(s):
            if f.pts is None:
                continue
            t = float(f.pts * f.time_base) - t0
            if t + 1e-6 < nxt:
                continue
            bits, q = pdqhash.compute(f.to_ndarray(format="rgb24"))
            out.append([round(t, 3), _hex(bits), int(q)])
            nxt = (int(t / step) + 1) * step
    return out


def vpdq_frames(path: str) -> list | None:
    try:
        import vpdq
    except ImportError:
        return None
    return [[round(float(f.timestamp), 3), f.hex, int(f.quality)]
            for f in vpdq.computeHash(path, seconds_per_hash=1)]


def tmk_scores(files: list[str], tmk_dir: str) -> dict | None:
    """TMK's level-1 (cosine of the 256-d average feature) and level-2 (temporal match kernel)
    scores of every pair of `files`."""
    try:
        import imageio_ffmpeg
        import tmkpy
    except ImportError:
        return None
    import os

    os.makedirs(tmk_dir, exist_ok=True)
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    vids, feats, paths = {}, {}, {}
    for p in files:
        paths[p] = os.path.join(tmk_dir, os.path.basename(p) + ".tmk")
        vids[p] = tmkpy.hashVideo(p, exe)
        vids[p].writeToOutputFile(paths[p], "bench_vidsuite")
        f = np.asarray(vids[p].getPureAverageFeature(), np.float64)
        feats[p] = f / max(np.linalg.norm(f), 1e-12)
    out = {}
    for p in files:
        level2 = tmkpy.query(vids[p], [paths[q] for q in files], 1)
        out[p] = {"level1": {q: round(float(feats[p] @ feats[q]), 4) for q in files},
                  "level2": {q: round(float(s), 4) for q, s in zip(files, level2)}}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", type=float, default=0.25)
    ap.add_argument("--tmk-dir")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    versions = {}
    for name in ("pdqhash", "vpdq", "tmkpy", "imageio-ffmpeg", "av"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    files = {}
    for p in a.files:
        if p.endswith((".png", ".jpg", ".jpeg")):
            import pdqhash
            from PIL import Image

            bits, q = pdqhash.compute(np.asarray(Image.open(p).convert("RGB")))
            files[p] = {"pdq": [[0.0, _hex(bits), int(q)]], "vpdq": None}
        else:
            files[p] = {"pdq": pdq_frames(p, a.step), "vpdq": vpdq_frames(p), "tmk": None}
        print(p, file=sys.stderr, flush=True)
    videos = [p for p in a.files if not p.endswith((".png", ".jpg", ".jpeg"))]
    if a.tmk_dir and videos:
        tmk = tmk_scores(videos, a.tmk_dir)
        for p in videos:
            files[p]["tmk"] = None if tmk is None else tmk[p]
    json.dump({"versions": versions, "files": files}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
