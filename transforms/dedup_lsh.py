"""Candidates and their verification, per method, without Beam: the LSH bucket keys of a
signature (a pair that shares one is a candidate), the pairs of one bucket, and whether a
candidate pair is a duplicate (its similarity)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from mmcurate.transforms.dedup_config import EXACT_METHODS, DedupConfig
from mmcurate.transforms.dedup_minhash import MinHasher, band_keys, estimated_jaccard, exact_jaccard
from mmcurate.transforms.dedup_nodes import Node, node_is_new

# ------------------------------------------------------------------------------------ images


_PHASH_BANDS = ((0, 13), (13, 13), (26, 13), (39, 13), (52, 12))  # 5 bands: <= 4 bits found


def phash_keys(h: int) -> list[bytes]:
    return [bytes([i]) + ((h >> off) & ((1 << w) - 1)).to_bytes(2, "little")
            for i, (off, w) in enumerate(_PHASH_BANDS)]


# An image signature: the keyframe's whole-frame pHash, then (when the keyframe row has them) the
# pHash of its picture inside black bars and of that picture's centre (image_hash.frame_hashes),
# 8 bytes each, little-endian. Signatures of 8 bytes (rows and index entries written before the
# two were kept) compare on the whole-frame hash alone.
def image_signature(whole: int, picture: int | None = None, centre: int | None = None) -> bytes:
    out = whole.to_bytes(8, "little")
    if picture is not None and centre is not None:
        out += picture.to_bytes(8, "little") + centre.to_bytes(8, "little")
    return out


def _image_hashes(sig: bytes) -> list[int]:
    return [int.from_bytes(sig[i:i + 8], "little") for i in range(0, len(sig), 8)]


def image_distance(a: bytes, b: bytes) -> int:
    """Bits between two image signatures: the closer of the whole frames, and of the pictures
    inside their bars (picture with picture, or either's picture with the other's centre, as
    the video fingerprint compares frames): bars, crops and recolourings each leave one of them
    close (bench/README.md, bench_vidsuite.py, "Keyframes")."""
    ha, hb = _image_hashes(a), _image_hashes(b)
    d = bin(ha[0] ^ hb[0]).count("1")
    if len(ha) == 3 and len(hb) == 3:
        (_, pa, ca), (_, pb, cb) = ha, hb
        d = min(d, *(bin(x ^ y).count("1") for x, y in ((pa, pb), (pa, cb), (ca, pb))))
    return d


def image_keys(sig: bytes) -> list[bytes]:
    """The bands of every hash of the signature, in one key space: a picture within 4 bits of
    the other's centre shares a band with it."""
    return sorted({k for h in _image_hashes(sig) for k in phash_keys(h)})


# ------------------------------------------------------------------------ signatures -> keys


def lsh_keys(m: str, signature: bytes, cfg: DedupConfig) -> list[bytes]:
    """The bucket keys of one signature of method `m` (a pair shares a key -> candidate)."""
    from mmcurate.transforms import fingerprint as fp

    if m in EXACT_METHODS:
        return [signature]
    if m == "minhash":
        values, _ = MinHasher.unpack(signature)
        if values.size < cfg.bands * cfg.rows:  # an index entry of another bands x rows
            return []
        return band_keys(values, cfg.bands, cfg.rows)
    if m == "audio_fp":
        return [k.to_bytes(8, "little") for k in fp.audio_keys(np.frombuffer(signature, "<u4"))]
    if m == "video_fp":
        return [k.to_bytes(8, "little") for k in fp.video_keys(fp.VideoPrint.from_bytes(signature))]
    if m == "phash":
        return image_keys(signature)
    return []


def verify_pair(method: str, a: bytes, b: bytes, cfg: DedupConfig) -> float | None:
    """The similarity of a candidate pair when it is a duplicate by `method`, else None."""
    from mmcurate.transforms import fingerprint as fp

    if method in EXACT_METHODS:
        return 1.0 if a == b else None
    if method == "minhash":
        (va, ha), (vb, hb) = MinHasher.unpack(a), MinHasher.unpack(b)
        j = exact_jaccard(ha, hb) if cfg.verify == "exact" else estimated_jaccard(va, vb)
        return round(j, 4) if j >= cfg.jaccard_threshold else None
    if method == "audio_fp":
        al = fp.compare_audio(np.frombuffer(a, "<u4"), np.frombuffer(b, "<u4"),
                              min_overlap_s=cfg.audio_min_overlap_s)
        return al.similarity if al is not None and al.similarity >= cfg.audio_threshold else None
    if method == "video_fp":
        al = fp.compare_video(fp.VideoPrint.from_bytes(a), fp.VideoPrint.from_bytes(b),
                              max_bits=cfg.video_max_bits, min_overlap_s=cfg.video_min_overlap_s,
                              step_s=cfg.video_step_s)
        return al.similarity if al is not None and al.similarity >= cfg.video_threshold else None
    if method == "phash":
        d = image_distance(a, b)
        return round(1.0 - d / 64.0, 4) if d <= cfg.image_max_bits else None
    return None


def bucket_pairs(nodes: Iterable[Node], max_all: int) -> Iterable[tuple[Node, Node]]:
    """Candidate pairs (a < b) of one LSH bucket: all pairs up to `max_all` members, else each
    member with the bucket's best-ranked one. Pairs of two index entries are skipped (decided
    by earlier runs)."""
    ns = sorted(set(nodes))
    if len(ns) < 2:
        return
    if len(ns) <= max_all:
        for i, a in enumerate(ns):
            for b in ns[i + 1:]:
                if node_is_new(a) or node_is_new(b):
                    yield a, b
    else:
        a = ns[0]
        for b in ns[1:]:
            if node_is_new(a) or node_is_new(b):
                yield a, b

