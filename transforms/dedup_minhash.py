"""Text near-duplicates without Beam: normalisation, exact text hashes, word n-gram shingles,
MinHash signatures (with the shingle hashes for exact verification), LSH band keys and the two
Jaccard measures."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata

import numpy as np

log = logging.getLogger("mmcurate.dedup")


_SPEAKER_TAG = re.compile(r"\[spk\d+\]")
_NON_WORD = re.compile(r"[^\w\s]+")
_SPACES = re.compile(r"\s+")


# ASCII fast path: the characters _NON_WORD matches become spaces in one str.translate (NFKC
# leaves ASCII as it is, and str.split's whitespace is re's \s); tests/test_dedup.py checks
# both paths agree on every ASCII character
_ASCII_NON_WORD = str.maketrans({chr(c): " " for c in range(128) if _NON_WORD.match(chr(c))})


def normalize_text(text: str) -> str:
    """NFKC, lower case, speaker tags and punctuation removed, whitespace collapsed."""
    text = text or ""
    if text.isascii():
        t = text.lower()
        if "[spk" in t:
            t = _SPEAKER_TAG.sub(" ", t)
        return " ".join(t.translate(_ASCII_NON_WORD).split())
    return _normalize_unicode(text)


def _normalize_unicode(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower()
    t = _SPEAKER_TAG.sub(" ", t)
    t = _NON_WORD.sub(" ", t)
    return _SPACES.sub(" ", t).strip()


def text_hash(norm: str) -> bytes:
    return hashlib.sha1(norm.encode("utf-8")).digest()


def shingles(norm: str, n: int) -> list[bytes]:
    """Word n-grams of normalised text (the whole text when it has fewer than n words)."""
    words = norm.split()
    if not words:
        return []
    if len(words) <= n:
        return [" ".join(words).encode("utf-8")]
    return [" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)]


def _jit_kernel():
    """The compiled signature kernel (transforms/_minhash_jit.py), or None without numba."""
    try:
        from mmcurate.transforms._minhash_jit import signature_kernel

        # compile now (or load numba's cache), so that a failure falls back here, not per text
        signature_kernel(np.ones(6, np.uint64), 5, np.ones(2, np.uint32), np.ones(2, np.uint32))
    except Exception as e:  # noqa: BLE001 - numba missing or broken: the numpy path is exact too
        log.warning("numba unavailable (%s: %s); MinHash signatures in numpy (~2x slower)",
                    type(e).__name__, e)
        return None
    return signature_kernel


class MinHasher:
    """datasketch MinHash signatures (affine32 scheme) of a text's word n-grams, with the
    permutations drawn once for the configured seed and reused for every text.

    Each distinct word is hashed once per worker (blake2b, 64 bits, cached), a shingle's hash
    is a polynomial of its n word hashes (uint64 arithmetic) finished with MurmurHash3's fmix64
    and cut to 32 bits; the MinHash of those 32-bit values is datasketch's (affine32
    permutations drawn by datasketch, hashfunc = identity), and the values are kept too:
    `pack()` stores the MinHash values (for the LSH bands) followed by the sorted distinct
    shingle hashes (for exact verification). The work after the word hashes runs in a compiled
    kernel (transforms/_minhash_jit.py, numba) or, without numba or with `jit=False`, in numpy
    (`signature_numpy`): the same values bit for bit. Per-shingle sha1 (datasketch's default
    hashfunc) cost 0.6 ms per 150-word document in Python calls; numpy ~25x less, the kernel
    ~3x less again (bench/README.md, "Dedup")."""

    _CACHE_MAX = 2_000_000

    def __init__(self, num_perm: int, seed: int = 1, shingle_size: int = 5, jit: bool = True):
        from datasketch import MinHash

        self.num_perm, self.seed, self.n = num_perm, seed, shingle_size
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self._perm = (np.ascontiguousarray(a, np.uint32), np.ascontiguousarray(b, np.uint32))
        self._words: dict[str, int] = {}
        self._kernel = _jit_kernel() if jit else None

    def _word(self, w: str) -> int:
        h = self._words.get(w)
        if h is None:
            if len(self._words) >= self._CACHE_MAX:
                self._words.clear()
            h = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
            self._words[w] = h
        return h

    def word_hashes(self, norm: str) -> np.ndarray:
        """uint64 hash of every word (blake2b, cached per distinct word)."""
        words = norm.split()
        got = list(map(self._words.get, words))  # the cache lookups run in C
        if None in got:
            got = [h if h is not None else self._word(w) for h, w in zip(got, words)]
        return np.asarray(got, dtype=np.uint64)

    def shingle_hashes(self, norm: str) -> np.ndarray:
        """uint32 hash of every word n-gram (the whole text when shorter than n words)."""
        wh = self.word_hashes(norm)
        if not wh.size:
            return np.zeros(0, "<u4")
        n = min(self.n, wh.size)
        m = wh.size - n + 1
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                h = h * np.uint64(0x100000001B3) + wh[k:k + m]
            h ^= h >> np.uint64(33)
            h *= np.uint64(0xFF51AFD7ED558CCD)
            h ^= h >> np.uint64(33)
            h *= np.uint64(0xC4CEB9FE1A85EC53)
            h ^= h >> np.uint64(33)
        return (h & np.uint64(0xFFFFFFFF)).astype("<u4")

    def signature(self, norm: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(MinHash values uint32[num_perm], sorted distinct shingle hashes uint32) or None."""
        if self._kernel is not None:
            wh = self.word_hashes(norm)
            return self._kernel(wh, self.n, *self._perm) if wh.size else None
        return self.signature_numpy(norm)

    def signature_numpy(self, norm: str) -> tuple[np.ndarray, np.ndarray] | None:
        """`signature` in numpy (the reference; used when numba is missing)."""
        hashes = self.shingle_hashes(norm)
        if hashes.size == 0:
            return None
        return self.minhash(hashes), np.unique(hashes)

    def minhash(self, hashes: np.ndarray) -> np.ndarray:
        """datasketch's affine32 MinHash of uint32 values with hashfunc = identity, vectorised
        (the same values as `MinHash.update_batch`, tests/test_dedup.py checks it, without a
        Python call per shingle): MurmurHash3's 32-bit finaliser, then min over a*h + b mod 2^32."""
        hv = hashes.astype(np.uint32, copy=True)
        with np.errstate(over="ignore"):
            hv ^= hv >> np.uint32(16)
            hv *= np.uint32(0x85EBCA6B)
            hv ^= hv >> np.uint32(13)
            hv *= np.uint32(0xC2B2AE35)
            hv ^= hv >> np.uint32(16)
            a, b = self._perm
            phv = hv.reshape(-1, 1) * a + b
        return phv.min(axis=0).astype("<u4")

    @staticmethod
    def pack(values: np.ndarray, hashes: np.ndarray) -> bytes:
        return (np.asarray([values.size], "<u4").tobytes() + values.astype("<u4").tobytes()
                + hashes.astype("<u4").tobytes())

    @staticmethod
    def unpack(data: bytes) -> tuple[np.ndarray, np.ndarray]:
        a = np.frombuffer(data, "<u4")
        n = int(a[0])
        return a[1:1 + n], a[1 + n:]


def band_keys(sig: np.ndarray, bands: int, rows: int) -> list[bytes]:
    b = np.ascontiguousarray(sig[: bands * rows], dtype="<u4")
    return [bytes([i & 0xFF, i >> 8]) + b[i * rows:(i + 1) * rows].tobytes() for i in range(bands)]


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float((a[:n] == b[:n]).mean()) if n else 0.0


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted distinct hash arrays (of the shingle sets)."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / float(a.size + b.size - inter)

