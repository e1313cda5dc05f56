"""Deduplication (the `dedup` corpus stage): exact, MinHash-LSH, media fingerprints and FAISS,
within a run and against everything curated before, on Beam's shuffle.

What is compared (kind: methods):
  source      sha256 (same bytes as an earlier run's source), audio_fp (band-energy-sign
              fingerprint of the 16 kHz mono audio: other encodings, sample rates, channel
              counts, trims), video_fp (pHashes of a frame every 0.25 s, inside its black bars
              and of its centre, matched at the best time shift: re-encoded, resized,
              recoloured, trimmed, letterboxed, cropped copies); see transforms/fingerprint.py
  transcript  text_hash (normalised text), minhash (word 5-gram MinHash-LSH, verified by the
              exact Jaccard of the shingle sets; `verify = "estimate"`: the signatures'), embedding (all-MiniLM-L6-v2 cosine, FAISS)
  text_item   text_hash, minhash (the text items of interleaved video documents)
  image       phash (the keyframes' 64-bit DCT hash, Hamming distance; 5 exact-match bands
              find every pair within 4 bits by the pigeonhole principle)
  passage,    text_hash, minhash: the rows of the rephrase stage's text_mix, natural passages
  synthetic   and synthetic rephrasings, compared with each other only (own LSH buckets). A
              synthetic row ranks after every natural one, so a rephrasing that repeats a
              natural passage (of its parent or of any other source, in this run or an earlier
              one) is dropped, never the passage; a natural passage of a duplicate recording
              is dropped against the representative recording's passage
  document    follows its source: the document of a duplicate source duplicates the document
              of the source's representative

How (every step is a Beam transform; nothing holds a global index in one worker):
  1. every item becomes a `DedupSignature` per method (persisted in `dedup_signatures`), and
     a node: its representative rank (see `node_of`);
  2. LSH keys per signature (text hash; MinHash bands; bottom-k of fingerprint tokens; pHash
     bands) are grouped with GroupByKey, batched per shard of the key space (`lsh_shards`: one
     shuffle element per batch and shard, the buckets of a shard grouped in memory where it
     lands, so no worker holds the whole index); each bucket yields candidate pairs (every pair up to
     `bucket_pairs_max` members, else a star from the bucket's best-ranked member);
  3. candidates are verified on both signatures (one CoGroupByKey gives each pair end its
     signature, a GroupByKey per pair brings the two together; a Bloom filter of the pairs'
     ends, broadcast, lets only those nodes into the join: a semi-join);
     embeddings are searched per partition: one flat FAISS index below `semantic_flat_max`
     items, else k-means centroids trained on a sample (IVF / SemDeDup style) index every
     vector in its nearest partition and search it in its `semantic_assign` nearest ones, the
     partitions in parallel;
  4. connected components over the verified edges (`ConnectedComponents`: min-label
     propagation with pointer jumping for `cc_rounds` rounds, then a union-find over whatever
     label pairs are still inconsistent, normally none);
  5. the label of a component is its best-ranked node: the representative. Rank (the
     representative rule): entries of the cross-run index (already curated) first, earliest
     partition first; then the item whose SOURCE is longest (duration), then of highest
     fidelity (sample rate x channels), then largest (bytes); then the longest item (text
     characters, image pixels); then the smallest item id. The same inputs always give the
     same clusters and representatives; the source rule means the kept transcript, text items
     and document belong to the kept recording.

Cross-run (`index_dir`): the signatures of every item a run KEEPS (representatives and
singletons), and the exact hashes of the ones it drops, form the run's partition of the index,
staged while the run goes and published by its commit (`mmcurate.transforms.dedup_index`:
layout, the two-phase protocol, recovery, the settings check). A run compares its items against
the published partitions only: with `partition` set (e.g. the date of a scheduled batch), those
that sort BEFORE it (a retried older partition is never dropped against a later one); without
it, every one but its own (named by the output directory). Old media are never read again:
media fingerprints are in the index.

Where media fingerprints come from: in-graph (`mmcurate run ... --stages ...,dedup`) the stage
decodes each of the run's sources once more for them (audio ~2000x realtime; video: reference
frames only, ~40x realtime at 1080p) and persists them in `dedup_signatures`; the corpus job
(`mmcurate corpus OUT --stages dedup`) reuses the fingerprints in OUT's `dedup_signatures` and
never opens the media, unless `decode_missing = true` asks it to fingerprint sources that have
none (an output written without the dedup stage).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import math
import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import ClassVar, Iterable

import apache_beam as beam
import numpy as np

from mmcurate.schemas.params import Rule, non_negative, positive, unit_interval
from mmcurate.schemas.printable import printable
from mmcurate.schemas.records import DedupCluster, DedupSignature, Rejection, stable_id
from mmcurate.transforms.dedup_index import partition_problem, read_index

log = logging.getLogger("mmcurate.dedup")

METHODS = ("sha256", "audio_fp", "video_fp", "text_hash", "minhash", "embedding", "phash")
EXACT_METHODS = ("sha256", "text_hash")
KINDS = ("source", "transcript", "text_item", "image", "document", "passage", "synthetic")
# The text mix (rephrase's text_mix table): natural passages and synthetic rephrasings are
# compared with each other only (a passage is a piece of a transcript, not its duplicate), and
# a synthetic row is never the representative of a natural one
MIX_KINDS = ("passage", "synthetic")


@dataclass
class DedupConfig:
    methods: tuple[str, ...] = METHODS  # which comparisons run
    # MinHash-LSH. Word 5-grams as datatrove's MinhashConfig. bands x rows from the measured
    # precision/recall curve in bench/README.md ("Dedup"): 16 x 8 = 128 permutations keeps
    # recall >= 0.99 for pairs at Jaccard >= 0.8 (the S-curve's 50% point is (1/16)^(1/8) = 0.71)
    shingle_size: int = 5
    bands: int = 16
    rows: int = 8
    seed: int = 1
    # candidates are verified by the exact Jaccard of their shingle sets (the 32-bit shingle
    # hashes are stored beside the MinHash), or with "estimate" by the signatures' agreement
    # (128 permutations: standard error 0.035 at J = 0.8, so pairs near the threshold flip)
    verify: str = "exact"
    jaccard_threshold: float = 0.8
    bucket_pairs_max: int = 32  # a bigger LSH bucket links its members to its best one only
    # LSH keys are shuffled in this many shards (each a unit of work: its buckets are grouped
    # in memory, ~ keys / lsh_shards of them); raise it with the corpus (1B documents x 16
    # bands / 65536 shards = 250k keys per shard)
    lsh_shards: int = 256
    # a Bloom filter of every candidate pair's ends (broadcast, 2^semijoin_log2_bits bits) lets
    # only those nodes' signatures and source fields into the verification and cluster joins:
    # 100k documents send ~8k signatures there instead of 100k. Its false positives only let
    # more in (~2% at 1M candidate nodes with the default 8 Mbit = 1 MiB); raise it past that
    semijoin_log2_bits: int = 23
    # label propagation + pointer jumping rounds before the residual union-find (which finishes
    # any component still inconsistent, so fewer rounds are never wrong, only slower on long
    # chains); 4 converge chains of ~16 links, and near-duplicate clusters are mostly stars
    cc_rounds: int = 4
    # audio fingerprint: 1 - bit error rate. Haitsma & Kalker: BER < 0.35 is the same recording;
    # measured here: jfk wav/mp3/flac 0.97-1.00, unrelated audio never aligns (< 0.6)
    audio_threshold: float = 0.75
    audio_min_overlap_s: float = 3.0
    audio_max_s: float = 1800.0  # fingerprint the first 30 min (450 KB/h of fingerprint)
    # video fingerprint: share of frames matching at the best shift. Measured: the chair pair
    # (TMK score 0.95) 0.87, doorknob vs chair: no shift with a single matching frame; the edit
    # suite (bench/README.md, bench_vidsuite.py): recall 0.95 over 60 edited copies, 0 false pairs
    video_step_s: float = 0.25
    video_max_bits: int = 10
    video_threshold: float = 0.6
    video_min_overlap_s: float = 2.0
    video_max_s: float = 1800.0
    image_max_bits: int = 4  # keyframes' own near-duplicate rule (video.near_duplicate_bits)
    # semantic (FAISS over all-MiniLM-L6-v2 transcript embeddings). Measured on jfk: the same
    # words with other case/punctuation 0.965; a paraphrase 0.73
    semantic_threshold: float = 0.95
    semantic_flat_max: int = 20000  # one flat index up to this many vectors, else IVF partitions
    semantic_partition_size: int = 10000
    semantic_assign: int = 2  # partitions each vector is searched in (boundary pairs); indexed in 1
    semantic_train_size: int = 50000
    semantic_device: str = "cpu"
    # torch threads of the embedding model in each worker process (0: cores / workers on the
    # local runner, else torch's default, every core): two worker processes each on torch's
    # default 2 threads of a 2-core box took 0.4-0.9 s per embedding call, 20-40x one alone
    semantic_threads: int = 0
    # cross-run index
    index_dir: str | None = None
    partition: str | None = None
    index_buckets: int = 8
    decode_missing: bool = False  # corpus job: fingerprint sources that have no stored ones

    RULES: ClassVar[dict] = {
        "methods": Rule(choices=METHODS),
        "shingle_size": Rule(ge=1, le=64),
        "bands": Rule(ge=1, le=512),
        "rows": Rule(ge=1, le=64),
        "verify": Rule(choices=("exact", "estimate")),
        "jaccard_threshold": unit_interval("Jaccard of the word n-gram sets"),
        "bucket_pairs_max": Rule(ge=2),
        "lsh_shards": Rule(ge=1, le=1 << 24),
        "semijoin_log2_bits": Rule(ge=10, le=34),
        "cc_rounds": Rule(ge=0, le=64),
        "audio_threshold": unit_interval("1 - bit error rate"),
        "audio_min_overlap_s": positive("seconds"),
        "audio_max_s": positive("seconds"),
        "video_step_s": positive("seconds"),
        "video_max_bits": Rule(ge=0, le=64),
        "video_threshold": unit_interval("share of frames"),
        "video_min_overlap_s": positive("seconds"),
        "video_max_s": positive("seconds"),
        "image_max_bits": Rule(ge=0, le=64),
        "semantic_threshold": Rule(ge=-1.0, le=1.0, why="cosine"),
        "semantic_flat_max": Rule(ge=1),
        "semantic_partition_size": Rule(ge=1),
        "semantic_assign": Rule(ge=1, le=16),
        "semantic_train_size": Rule(ge=1),
        "semantic_device": Rule(choices=("cpu", "cuda")),
        "semantic_threads": non_negative("0: cores / workers on the local runner, else torch's default"),
        "partition": Rule(check=partition_problem),
        "index_buckets": Rule(ge=1, le=4096),
    }

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


# ------------------------------------------------------------------------------ items and ranks


@dataclass(frozen=True)
class SourceInfo:
    """What every item needs from its source: where it is, and the source's rank fields."""

    source_id: str
    uri: str
    media_uri: str
    media_kind: str
    sha256: str
    duration_s: float
    fidelity: float  # sample_rate x channels (0 unknown)
    bytes: int


def source_info(s) -> SourceInfo:
    fid = float((s.sample_rate or 0) * (s.channels or 0))
    return SourceInfo(s.source_id, s.uri, s.media_uri, s.media_kind, s.sha256,
                      float(s.duration_s or 0.0), fid, int(s.bytes or 0))


# A node is the rank tuple of an item: comparing two nodes IS the representative rule, so the
# minimum node of a component is its representative (labels in ConnectedComponents are nodes).
#   (age: 0 index / 1 this run, +2 for a synthetic text-mix row (after every natural one),
#    partition (index only), -duration, -fidelity, -bytes, -length, kind, item_id)
Node = tuple


def node_of(sig: DedupSignature, new: bool) -> Node:
    age = (1 if new else 0) + (2 if sig.kind == "synthetic" else 0)
    return (age, "" if new else sig.partition, -float(sig.duration_s or 0.0),
            -float(sig.fidelity or 0.0), -int(sig.bytes or 0), -float(sig.length or 0.0),
            sig.kind, sig.item_id)


def node_kind(n: Node) -> str:
    return n[6]


def node_item(n: Node) -> str:
    return n[7]


def node_is_new(n: Node) -> bool:
    return n[0] % 2 == 1


def key_space(kind: str) -> str:
    """LSH buckets are per method and space: text-mix rows meet only text-mix rows."""
    return "mix" if kind in MIX_KINDS else ""


def make_signature(kind: str, item_id: str, method: str, info: SourceInfo, signature: bytes,
                   length: float, partition: str, run_id: str) -> DedupSignature:
    return DedupSignature(
        signature_id=f"{kind}:{item_id}:{method}", item_id=item_id, kind=kind, method=method,
        source_id=info.source_id, uri=info.uri, signature=signature, duration_s=info.duration_s,
        fidelity=info.fidelity, bytes=info.bytes, length=float(length), partition=partition,
        run_id=run_id)


# ------------------------------------------------------------------------------------ text


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


# ------------------------------------------------------------------------------------ images


_PHASH_BANDS = ((0, 13), (13, 13), (26, 13), (39, 13), (52, 12))  # 5 bands: <= 4 bits found


def phash_keys(h: int) -> list[bytes]:
    return [bytes([i]) + ((h >> off) & ((1 << w) - 1)).to_bytes(2, "little")
            for i, (off, w) in enumerate(_PHASH_BANDS)]


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
        return phash_keys(int.from_bytes(signature, "little"))
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
        d = bin(int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).count("1")
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


# --------------------------------------------------------------------- connected components


def _min_label(kv):
    node, nbrs = kv
    return node, min([node, *nbrs])


class ConnectedComponents(beam.PTransform):
    """PCollection[(u, v)] undirected edges -> PCollection[(node, label)], label = the minimum
    node of the component, for every node on an edge.

    Min-label propagation (each node takes the minimum label of itself and its neighbours)
    alternated with pointer jumping (label <- label of the label), unrolled for `rounds`
    rounds: a path of length L converges in about log2(L) rounds instead of L. Whatever is
    still inconsistent after that (an edge whose ends have different labels, normally none)
    is finished by a union-find over those label pairs alone."""

    def __init__(self, rounds: int = 8):
        super().__init__()
        self.rounds = rounds

    def expand(self, edges):
        adj = edges | "BothWays" >> beam.FlatMap(lambda e: [(e[0], e[1]), (e[1], e[0])])
        labels = (adj | "Neighbours" >> beam.GroupByKey() | "InitLabel" >> beam.Map(_min_label))
        for i in range(self.rounds):
            labels = (
                {"adj": adj, "lab": labels}
                | f"Join{i}" >> beam.CoGroupByKey()
                | f"Send{i}" >> beam.FlatMap(_send_label)
                | f"Min{i}" >> beam.CombinePerKey(min)
            )
            labels = (
                {"child": labels | f"ByLabel{i}" >> beam.Map(lambda nl: (nl[1], nl[0])),
                 "lab": labels}
                | f"JoinLabel{i}" >> beam.CoGroupByKey()
                | f"Jump{i}" >> beam.FlatMap(_jump)
            )
        # residual: edges whose ends disagree -> union-find over those labels only
        lab_u = ({"e": edges | "KeyU" >> beam.Map(lambda e: (e[0], e[1])), "lab": labels}
                 | "JoinU" >> beam.CoGroupByKey()
                 | "LabelU" >> beam.FlatMap(lambda kv: [(v, kv[1]["lab"][0]) for v in kv[1]["e"]]))
        disagree = ({"lu": lab_u, "lab": labels}
                    | "JoinV" >> beam.CoGroupByKey()
                    | "Disagree" >> beam.FlatMap(
                        lambda kv: [(lu, kv[1]["lab"][0]) for lu in kv[1]["lu"] if lu != kv[1]["lab"][0]]))
        fix = disagree | "Residual" >> beam.CombineGlobally(_UnionFind())
        return labels | "ApplyResidual" >> beam.Map(
            lambda nl, m: (nl[0], m.get(nl[1], nl[1])), beam.pvalue.AsSingleton(fix))


def _send_label(kv):
    node, g = kv
    if not g["lab"]:
        return
    lab = g["lab"][0]
    yield node, lab
    for n in g["adj"]:
        yield n, lab


def _jump(kv):
    label, g = kv
    own = g["lab"][0] if g["lab"] else label
    best = min(label, own)
    for child in g["child"]:
        yield child, best


class _UnionFind(beam.CombineFn):
    """Label pairs -> {label: final label} (the minimum of each residual component)."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, pair):
        acc.append(pair)
        return acc

    def merge_accumulators(self, accs):
        return [p for a in accs for p in a]

    def extract_output(self, pairs):
        parent: dict = {}

        def find(x):
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b in pairs:
            ra, rb = find(a), find(b)
            if ra != rb:
                lo, hi = min(ra, rb), max(ra, rb)
                parent[hi] = lo
        return {x: find(x) for x in list(parent)}


# ------------------------------------------------------------------------- Beam DoFns: items


def _key_source(s):
    # a plain tuple crosses the shuffle in Beam's fast coder; a dataclass would be pickled
    i = source_info(s)
    return s.source_id, (i.source_id, i.uri, i.media_uri, i.media_kind, i.sha256, i.duration_s,
                         i.fidelity, i.bytes)


class _SourceSignatures(beam.DoFn):
    """(source_id, {"info": [SourceInfo], "prior": [DedupSignature]}) -> DedupSignature per
    method: sha256 when selected; audio_fp / video_fp reused from `prior` (stored by an earlier dedup
    of this output) or computed from the media when `decode` (in-graph, or decode_missing)."""

    def __init__(self, cfg: DedupConfig, partition: str, run_id: str, decode: bool):
        self.cfg, self.partition, self.run_id, self.decode = cfg, partition, run_id, decode
        self.decoded = beam.metrics.Metrics.counter("mmcurate", "dedup.fingerprints_computed")
        self.reused = beam.metrics.Metrics.counter("mmcurate", "dedup.fingerprints_reused")
        self.missing = beam.metrics.Metrics.counter("mmcurate", "dedup.fingerprints_missing")
        self.failed = beam.metrics.Metrics.counter("mmcurate", "dedup.fingerprint_errors")

    def process(self, kv):
        sid, g = kv
        if not g["info"]:
            return
        info = SourceInfo(*g["info"][0])
        methods = set(self.cfg.methods)
        sig = lambda m, data: make_signature("source", sid, m, info, data, info.duration_s,  # noqa: E731
                                              self.partition, self.run_id)
        if "sha256" in methods:
            yield sig("sha256", bytes.fromhex(info.sha256))
        prior = {p.method: p for p in g["prior"] if p.kind == "source"}
        wanted = [m for m in ("audio_fp", "video_fp") if m in methods
                  and (m == "audio_fp" or info.media_kind == "video")]
        for m in wanted:
            if m in prior:
                self.reused.inc()
                yield sig(m, prior[m].signature)
                continue
            if not self.decode:
                self.missing.inc()
                continue
            try:
                data = self._fingerprint(m, info)
            except Exception as e:  # noqa: BLE001 - a source that fails here is only not compared
                self.failed.inc()
                log.warning("%s: no %s (%s: %s); not compared by it", printable(info.uri), m, type(e).__name__,
                            printable(e))
                continue
            self.decoded.inc()
            if data:
                yield sig(m, data)

    def _fingerprint(self, method: str, info: SourceInfo) -> bytes:
        from mmcurate.transforms import fingerprint as fp

        c = self.cfg
        if method == "audio_fp":
            from mmcurate.transforms.decode import DecodeError, iter_audio

            f = fp.AudioFingerprinter(c.audio_max_s)
            try:
                for chunk in iter_audio(info.media_uri, fp.SAMPLE_RATE, chunk_s=30.0,
                                        max_duration_s=c.audio_max_s + 60.0):
                    f.push(chunk)
            except DecodeError as e:
                if e.reason == "no_audio_stream":
                    return b""
                if e.reason != "too_long":  # too long: the first audio_max_s are fingerprinted
                    raise
            return f.finish().astype("<u4").tobytes()
        vp = fp.video_fingerprint(info.media_uri, step_s=c.video_step_s, max_s=c.video_max_s)
        return vp.to_bytes() if vp.hashes.size else b""


def _fingerprint_cost(methods: frozenset, kv) -> float:
    """What fingerprinting a joined source costs, in seconds of audio: its duration for
    audio_fp, 4x that again for a video's video_fp (one 2-core box: ~3 ms of audio
    fingerprinting and ~12 ms of video per second of media; laion_talk's two take 1.75 s, the
    other twelve sources' 1.9 s together)."""
    rows = kv[1]["info"]
    if not rows:
        return 0.0
    info = SourceInfo(*rows[0])
    d = float(info.duration_s or 0.0)
    video = "video_fp" in methods and info.media_kind == "video"
    return d * (("audio_fp" in methods) + 4.0 * video)


class _TextSignatures(beam.DoFn):
    """(source_id, {"info": [SourceInfo], "items": [(kind, item_id, text)]}) -> text_hash and
    minhash signatures of every non-empty item."""

    def __init__(self, cfg: DedupConfig, partition: str, run_id: str):
        self.cfg, self.partition, self.run_id = cfg, partition, run_id
        self.hasher = None

    def setup(self):
        self.hasher = MinHasher(self.cfg.num_perm, self.cfg.seed, self.cfg.shingle_size)

    def process(self, kv):
        _, g = kv
        if not g["info"]:
            return
        info = SourceInfo(*g["info"][0])
        methods = set(self.cfg.methods)
        for kind, item_id, text in g["items"]:
            norm = normalize_text(text)
            if not norm:
                continue
            mk = lambda m, data: make_signature(kind, item_id, m, info, data, len(norm),  # noqa: E731
                                                self.partition, self.run_id)
            if "text_hash" in methods:
                yield mk("text_hash", text_hash(norm))
            if "minhash" in methods:
                s = self.hasher.signature(norm)
                if s is not None:
                    yield mk("minhash", MinHasher.pack(*s))


class _ImageSignatures(beam.DoFn):
    def __init__(self, partition: str, run_id: str):
        self.partition, self.run_id = partition, run_id

    def process(self, kv):
        _, g = kv
        if not g["info"]:
            return
        info = SourceInfo(*g["info"][0])
        for item_id, phash_hex, pixels in g["items"]:
            yield make_signature("image", item_id, "phash", info,
                                 int(phash_hex, 16).to_bytes(8, "little"), pixels,
                                 self.partition, self.run_id)


class _EmbedTranscripts(beam.DoFn):
    """Signatures of method `text_hash`/`minhash` of transcripts in -> `embedding` signatures
    (float32 bytes); the model is loaded once per worker (DoFn.setup, shared by threads)."""

    def __init__(self, cfg: DedupConfig, embedder=None):
        self.cfg, self._fake = cfg, embedder
        self.model = None

    def setup(self):
        if self._fake is not None:
            self.model = self._fake
            return
        from mmcurate.transforms.embed import shared_embedder

        self.model = shared_embedder(self.cfg.semantic_device, self.cfg.semantic_threads or None)

    def process(self, batch):
        texts = [t for _, t in batch]
        # one text per forward pass: a batch's padding and shape change the last float bits,
        # and how a runner cuts batches is its own (DirectRunner and Dask runs differed by up
        # to 1e-7 in 14 of 28 transcripts' bytes); one transcript a source, so this is cheap
        vecs = self.model.embed(texts, 1)
        for (sig, _), v in zip(batch, vecs):
            yield dataclasses.replace(sig, method="embedding", signature_id=f"{sig.kind}:{sig.item_id}:embedding",
                                      signature=np.asarray(v, "<f4").tobytes())


# ------------------------------------------------------------------ semantic: FAISS partitions


def faiss_module():
    import faiss

    return faiss


def _train_centroids(sample: list, count: int, cfg: DedupConfig):
    """None (one flat partition) up to `semantic_flat_max` vectors, else k-means centroids of a
    sample (k = count / semantic_partition_size), seeded: the same data gives the same ones."""
    if count <= cfg.semantic_flat_max or not sample:
        return None
    faiss = faiss_module()
    x = np.stack([np.frombuffer(v, "<f4") for _, v in sorted(sample)]).astype(np.float32)
    k = max(2, min(len(x) // 4, math.ceil(count / cfg.semantic_partition_size)))
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=1234, spherical=True,
                      gpu=faiss.get_num_gpus() > 0)
    km.train(x)
    return km.centroids.astype(np.float32)


def _assign(item, centroids, n_assign: int):
    """(node, vector) -> (partition, (node, vector, home)): indexed in its nearest partition
    (home), and a query in its `n_assign` nearest ones."""
    node, vec = item
    if centroids is None:
        yield 0, (node, vec, True)
        return
    v = np.frombuffer(vec, "<f4")
    sims = centroids @ v
    for rank, p in enumerate(np.argsort(-sims, kind="stable")[:n_assign]):
        yield int(p), (node, vec, rank == 0)


def _search_partition(kv, threshold: float):
    """Range search inside one partition: its home vectors are the index, its home and visiting
    vectors the queries; every (query, indexed) pair with cosine >= threshold (a GPU index when
    faiss sees a GPU). A pair is found where one's home is among the other's nearest partitions;
    against indexing every vector in all of them this halves the work (2n^2/k, not 4n^2/k)."""
    _, items = kv
    items = sorted(items)
    home = [i for i, it in enumerate(items) if it[2]]
    if len(items) < 2 or not home:
        return
    faiss = faiss_module()
    nodes = [n for n, _, _ in items]
    x = np.stack([np.frombuffer(v, "<f4") for _, v, _ in items]).astype(np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    if faiss.get_num_gpus() > 0:  # pragma: no cover - no GPU on the dev box
        index = faiss.index_cpu_to_all_gpus(index)
        index.add(x[home])
        sims, ids = index.search(x, min(len(home), 64))
        rows = [(i, home[int(j)], float(s)) for i in range(len(items)) for s, j in zip(sims[i], ids[i])
                if j >= 0 and s >= threshold]
    else:
        index.add(x[home])
        lims, dist, ids = index.range_search(x, threshold)
        rows = [(i, home[int(ids[k])], float(dist[k])) for i in range(len(items))
                for k in range(lims[i], lims[i + 1])]
    for i, j, s in rows:
        if i == j or (items[i][2] and i > j):  # itself; a home pair is found from both ends
            continue
        a, b = nodes[i], nodes[j]
        if a != b and (node_is_new(a) or node_is_new(b)):
            yield ("embedding", min(a, b), max(a, b)), round(min(s, 1.0), 4)


class SemanticPairs(beam.PTransform):
    """PCollection[(node, float32 bytes)] -> ((method, a, b), cosine) for cosine >= threshold."""

    def __init__(self, cfg: DedupConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, vecs):
        c = self.cfg
        count = vecs | "Count" >> beam.combiners.Count.Globally()
        sample = vecs | "Sample" >> beam.combiners.Sample.FixedSizeGlobally(c.semantic_train_size)
        centroids = sample | "TrainCentroids" >> beam.Map(
            lambda s, n: _train_centroids(s, n, c), beam.pvalue.AsSingleton(count))
        return (
            vecs
            | "Assign" >> beam.FlatMap(_assign, beam.pvalue.AsSingleton(centroids), c.semantic_assign)
            | "GroupPartition" >> beam.GroupByKey()
            | "Search" >> beam.FlatMap(_search_partition, c.semantic_threshold)
        )


# ------------------------------------------------------------------------------------ the stage


def _best_edge(a, b):
    """The stronger of two (similarity, method) descriptions (ties: exact methods first)."""
    ka = (a[0], a[1] in EXACT_METHODS, a[1])
    kb = (b[0], b[1] in EXACT_METHODS, b[1])
    return a if ka >= kb else b


class _BestEdge(beam.CombineFn):
    def create_accumulator(self):
        return None

    def add_input(self, acc, x):
        return x if acc is None else _best_edge(acc, x)

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is not None:
                out = a if out is None else _best_edge(out, a)
        return out

    def extract_output(self, acc):
        return acc


def reason_of(method: str) -> str:
    if method in EXACT_METHODS:
        return "exact_duplicate"
    if method == "embedding":
        return "semantic_duplicate"
    return "near_duplicate"


def cluster_id(rep: Node) -> str:
    return "dc-" + stable_id(node_kind(rep), node_item(rep), rep[1])


class _ClusterRows(beam.DoFn):
    """(node, {"label": [rep], "best": [(sim, method)], "info": [(source_id, uri)]}) ->
    DedupCluster rows for this run's nodes in a component of 2+, and a ledger row for each
    that is not its component's representative."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.dups = beam.metrics.Metrics.counter("mmcurate", "dedup.duplicates")

    def process(self, kv):
        node, g = kv
        if not node_is_new(node) or not g["label"] or not g["info"]:
            return
        rep = g["label"][0]
        sim, method = g["best"][0] if g["best"] else (1.0, "")
        source_id, uri = g["info"][0]
        kind, item = node_kind(node), node_item(node)
        is_rep = rep == node
        yield DedupCluster(
            member_id=f"{kind}:{item}", item_id=item, kind=kind, source_id=source_id,
            cluster_id=cluster_id(rep), representative_id=node_item(rep),
            representative_partition=None if node_is_new(rep) else rep[1],
            is_representative=is_rep, method=method, similarity=float(sim), run_id=self.run_id)
        if is_rep:
            return
        self.dups.inc()
        where = "" if node_is_new(rep) else f", curated in partition {rep[1]}"
        yield beam.pvalue.TaggedOutput("rejected", Rejection.make(
            stage="dedup", reason=reason_of(method),
            detail=f"{kind} {item} duplicates {node_kind(rep)} {node_item(rep)}{where} "
                   f"({method} similarity {sim:.4f}; cluster {cluster_id(rep)})",
            uri=uri, run_id=self.run_id, source_id=source_id, item_id=f"{kind}:{item}"))


def _document_rows(kv, run_id: str):
    """Documents follow their source: (source_id, {"doc": [(document_id, uri)], "src":
    [DedupCluster of the source]}) -> the document's DedupCluster row (+ ledger row)."""
    sid, g = kv
    if not g["doc"] or not g["src"]:
        return
    src: DedupCluster = g["src"][0]
    for doc_id, uri in g["doc"]:
        rep_doc = f"{src.representative_id}-doc"
        row = dataclasses.replace(
            src, member_id=f"document:{doc_id}", item_id=doc_id, kind="document",
            representative_id=rep_doc, method=f"source/{src.method}")
        yield row
        if not src.is_representative:
            where = (f", curated in partition {src.representative_partition}"
                     if src.representative_partition else "")
            yield beam.pvalue.TaggedOutput("rejected", Rejection.make(
                stage="dedup", reason=reason_of(src.method),
                detail=f"document {doc_id} duplicates document {rep_doc}{where} (its source "
                       f"{sid} duplicates {src.representative_id}: {src.method} similarity "
                       f"{src.similarity:.4f}; cluster {src.cluster_id})",
                uri=uri, run_id=run_id, source_id=sid, item_id=f"document:{doc_id}"))


class NodeBloom:
    """A Bloom filter of nodes (4 hash functions over 2^log2_bits bits): `in` is True for every
    node added, and for a few others (false positives: only more work, never a wrong result).
    Hashes are blake2b of the node's identity, the same in every worker and process."""

    K = 4

    def __init__(self, log2_bits: int):
        self.log2_bits = log2_bits
        self.bits = np.zeros(1 << max(0, log2_bits - 3), dtype=np.uint8)

    def _positions(self, node: Node) -> list[int]:
        d = hashlib.blake2b(f"{node[0]}\x1f{node[1]}\x1f{node[6]}\x1f{node[7]}".encode("utf-8"),
                            digest_size=4 * self.K).digest()
        mask = (1 << self.log2_bits) - 1
        return [int.from_bytes(d[4 * i:4 * i + 4], "little") & mask for i in range(self.K)]

    def add(self, node: Node) -> None:
        for p in self._positions(node):
            self.bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, node: Node) -> bool:
        return all(self.bits[p >> 3] & (1 << (p & 7)) for p in self._positions(node))

    def union(self, other: "NodeBloom") -> "NodeBloom":
        np.bitwise_or(self.bits, other.bits, out=self.bits)
        return self


class _NodeBloomFn(beam.CombineFn):
    """Nodes -> a NodeBloom of all of them (None when there are none)."""

    def __init__(self, log2_bits: int):
        self.log2_bits = log2_bits

    def create_accumulator(self):
        return None

    def add_input(self, acc, node):
        acc = acc or NodeBloom(self.log2_bits)
        acc.add(node)
        return acc

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is not None:
                out = a if out is None else out.union(a)
        return out

    def extract_output(self, acc):
        return acc


def _in_bloom(ns, bloom) -> bool:
    return bloom is not None and ns[0] in bloom


def _view(ns) -> tuple:
    """(node, DedupSignature) -> (node, method, signature, source_id, uri): what the joins after
    LSH need, as a plain tuple (Beam's fast coder; a dataclass value would be pickled)."""
    node, s = ns
    return node, s.method, s.signature, s.source_id, s.uri


def _shard_keys(batch, cfg: DedupConfig):
    """A batch of views (`_view`) -> ((method, key space, shard), [(key, node), ...]): the
    batch's LSH keys, one element per shard they fall in (shard = crc32(key) % lsh_shards)."""
    out: dict[tuple, list] = {}
    n = cfg.lsh_shards
    for node, method, signature, *_ in batch:
        space = key_space(node_kind(node))
        for k in lsh_keys(method, signature, cfg):
            out.setdefault((method, space, zlib.crc32(k) % n), []).append((k, node))
    return out.items()


def _pairs_from_shard(kv, max_all: int):
    """((method, space, shard), [[(key, node), ...], ...]) -> (method, a, b) candidates of
    every bucket in the shard."""
    (method, *_), parts = kv
    buckets: dict[bytes, list] = {}
    for part in parts:
        for k, node in part:
            buckets.setdefault(k, []).append(node)
    for nodes in buckets.values():
        if len(nodes) > 1:
            for a, b in bucket_pairs(nodes, max_all):
                yield method, a, b


def _sig_per_pair(kv):
    """((node, method), {"sig": [bytes], "pair": [(a, b)]}) -> ((method, a, b), (node, sig))"""
    (node, method), g = kv
    if not g["sig"]:
        return
    for a, b in g["pair"]:
        yield (method, a, b), (node, g["sig"][0])


def _verify_pair_sigs(kv, cfg: DedupConfig):
    """((method, a, b), [(a, sig_a), (b, sig_b)]) -> ((method, min, max), similarity) when the
    pair is a duplicate by `method`."""
    (method, a, b), got = kv
    sig = dict(got)
    if a not in sig or b not in sig:
        return
    sim = verify_pair(method, sig[a], sig[b], cfg)
    if sim is not None:
        yield (method, min(a, b), max(a, b)), sim


class Deduplicate(beam.PTransform):
    """{"sources", optional "transcripts", "interleaved", "documents", "prior_signatures",
    "index"} -> {"dedup_clusters", "dedup_signatures", "rejected", "stats"}.

    `decode_media`: fingerprint sources from their media (in-graph); otherwise only stored
    fingerprints (prior_signatures) are used. `index` (a PCollection of DedupSignature from
    earlier partitions) for the cross-run index; with `index_out` (the index directory) the
    run's partition is staged there and the output has "index_staged", which
    `dedup_index.PublishIndex` publishes once the run's manifest (of `output`) is committed.
    `spread(cost=..., key=..., what=...)`: how the pipeline layer deals the sources to be
    fingerprinted to its workers (a PTransform, or None to leave them where they are)."""

    def __init__(self, cfg: DedupConfig, run_id: str, partition: str, *, decode_media: bool,
                 index_out: str | None = None, output: str = "", embedder=None, spread=None):
        super().__init__()
        self.spread, self.output = spread, output
        self.cfg, self.run_id, self.partition = cfg, run_id, partition
        self.decode_media, self.index_out, self.embedder = decode_media, index_out, embedder

    def expand(self, inputs: dict):
        c = self.cfg
        p = inputs["sources"].pipeline
        methods = set(c.methods)
        info = inputs["sources"] | "SourceInfo" >> beam.Map(_key_source)
        sigs = []
        if methods & {"sha256", "audio_fp", "video_fp"}:
            prior = inputs.get("prior_signatures")
            prior_kv = (prior | "KeyPrior" >> beam.Map(lambda s: (s.source_id, s)) if prior is not None
                        else p | "NoPrior" >> beam.Create([]))
            joined = {"info": info, "prior": prior_kv} | "JoinSourcePrior" >> beam.CoGroupByKey()
            if self.decode_media and methods & {"audio_fp", "video_fp"} and self.spread is not None:
                # every source is decoded again here: dealt round-robin by key, one worker of two
                # got the 2-minute talk and more (bench/README.md, bench_orchestration.py)
                spread = self.spread(cost=functools.partial(_fingerprint_cost, frozenset(methods)),
                                     key=lambda kv: kv[0], what="s of audio to fingerprint")
                if spread is not None:
                    joined = joined | "SpreadFingerprints" >> spread
            sigs.append(joined
                        | "SourceSignatures" >> beam.ParDo(_SourceSignatures(
                            c, self.partition, self.run_id, self.decode_media)))
        text_items = []
        if "transcripts" in inputs:
            text_items.append(inputs["transcripts"] | "TranscriptItems" >> beam.Map(
                lambda t: (t.source_id, ("transcript", t.source_id, t.text))))
        if "interleaved" in inputs:
            text_items.append(inputs["interleaved"]
                              | "TextItems" >> beam.Filter(lambda r: r.modality == "text" and r.text)
                              | "KeyTextItems" >> beam.Map(lambda r: (r.source_id, ("text_item", r.item_id, r.text))))
            images = (inputs["interleaved"]
                      | "ImageItems" >> beam.Filter(lambda r: r.modality == "image" and r.phash)
                      | "KeyImages" >> beam.Map(lambda r: (r.source_id, (r.item_id, r.phash,
                                                                          float((r.width or 0) * (r.height or 0))))))
            if "phash" in methods:
                sigs.append({"info": info, "items": images}
                            | "JoinImages" >> beam.CoGroupByKey()
                            | "ImageSignatures" >> beam.ParDo(_ImageSignatures(self.partition, self.run_id)))
        if "text_mix" in inputs:
            text_items.append(inputs["text_mix"] | "MixItems" >> beam.Map(
                lambda r: (r.source_id, ("synthetic" if r.is_synthetic else "passage", r.text_id, r.text))))
        if text_items and methods & {"text_hash", "minhash", "embedding"}:
            items = text_items | "AllTextItems" >> beam.Flatten()
            text_sigs = ({"info": info, "items": items}
                         | "JoinText" >> beam.CoGroupByKey()
                         | "TextSignatures" >> beam.ParDo(_TextSignatures(
                             # the embedding branch finds transcripts by their text_hash rows
                             dataclasses.replace(c, methods=tuple(sorted(
                                 methods | ({"text_hash"} if "embedding" in methods else set())))),
                             self.partition, self.run_id)))
            keep_text = [m for m in ("text_hash", "minhash") if m in methods]
            sigs.append(text_sigs | "KeepTextMethods" >> beam.Filter(lambda s: s.method in keep_text))
            if "embedding" in methods and "transcripts" in inputs:
                texts = ({"sig": text_sigs | "TranscriptHashes" >> beam.Filter(
                              lambda s: s.kind == "transcript" and s.method == "text_hash")
                              | "KeyHashSig" >> beam.Map(lambda s: (s.item_id, s)),
                          "text": inputs["transcripts"] | "KeyTranscriptText" >> beam.Map(lambda t: (t.source_id, t.text))}
                         | "JoinTranscriptText" >> beam.CoGroupByKey()
                         | "ToEmbed" >> beam.FlatMap(
                             lambda kv: [(s, kv[1]["text"][0]) for s in kv[1]["sig"]][:1] if kv[1]["text"] else []))
                sigs.append(texts
                            | "BatchTexts" >> beam.BatchElements(min_batch_size=1, max_batch_size=32)
                            | "Embed" >> beam.ParDo(_EmbedTranscripts(c, embedder=self.embedder)))
        if not sigs:
            sigs.append(p | "NoSignatures" >> beam.Create([]))
        new_sigs = sigs | "AllSignatures" >> beam.Flatten()
        index = inputs.get("index")
        nodes_new = new_sigs | "NodeNew" >> beam.Map(lambda s: (node_of(s, True), s))
        if index is not None:
            nodes_old = (index | "IndexMethods" >> beam.Filter(lambda s: s.method in methods)
                         | "NodeOld" >> beam.Map(lambda s: (node_of(s, False), s)))
            nodes = (nodes_new, nodes_old) | "AllNodes" >> beam.Flatten()
        else:
            nodes = nodes_new

        # candidates: LSH buckets (all methods but embedding), verified on both signatures
        view = nodes | "View" >> beam.Map(_view)
        lsh_nodes = view | "NotEmbedding" >> beam.Filter(lambda v: v[1] != "embedding")
        # a shuffle element per (method, key space, shard) and batch of signatures, not per
        # bucket key: a bucket (every node with one key) is whole inside its shard, grouped in
        # memory there; shards are spread over workers (1.6M band keys of 100k documents are
        # ~ lsh_shards x batches elements instead of 1.6M)
        pairs = (
            lsh_nodes
            | "BatchLshNodes" >> beam.BatchElements(min_batch_size=64, max_batch_size=2048)
            | "LshKeyShards" >> beam.FlatMap(_shard_keys, c)
            | "Shards" >> beam.GroupByKey()
            | "CandidatePairs" >> beam.FlatMap(_pairs_from_shard, c.bucket_pairs_max)
            | "DistinctPairs" >> beam.Distinct()
        )
        semantic = []
        if "embedding" in methods:
            vecs = (view | "Embeddings" >> beam.Filter(lambda v: v[1] == "embedding")
                    | "Vectors" >> beam.Map(lambda v: (v[0], v[2])))
            semantic.append(vecs | "Semantic" >> SemanticPairs(c)
                            | "BestSemantic" >> beam.CombinePerKey(max))
        # semi-join: a Bloom filter of every node that is in a candidate pair or a semantic
        # edge; the joins below take only the nodes that pass it (most nodes are in no pair)
        ends_only = [pairs | "CandidateEnds" >> beam.FlatMap(lambda t: (t[1], t[2]))]
        ends_only += [e | "SemanticEnds" >> beam.FlatMap(lambda e: (e[0][1], e[0][2])) for e in semantic]
        bloom = beam.pvalue.AsSingleton(
            ends_only | "AllEnds" >> beam.Flatten()
            | "EndsBloom" >> beam.CombineGlobally(_NodeBloomFn(c.semijoin_log2_bits)))
        # verification: one join brings every candidate end its signature, a group per pair
        # brings the two together (one pass over the signatures, not one per end)
        candidates = view | "CandidateNodes" >> beam.Filter(_in_bloom, bloom)
        sig_kv = (candidates | "CandidateSigs" >> beam.Filter(lambda v: v[1] != "embedding")
                  | "SigByNode" >> beam.Map(lambda v: ((v[0], v[1]), v[2])))
        ends = pairs | "PairEnds" >> beam.FlatMap(
            lambda t: [((t[1], t[0]), (t[1], t[2])), ((t[2], t[0]), (t[1], t[2]))])
        edges = [({"sig": sig_kv, "pair": ends}
                  | "JoinPairSigs" >> beam.CoGroupByKey()
                  | "SigPerPair" >> beam.FlatMap(_sig_per_pair)
                  | "PairSigs" >> beam.GroupByKey()
                  | "Verify" >> beam.FlatMap(_verify_pair_sigs, c))] + semantic
        verified = edges | "AllEdges" >> beam.Flatten()

        # components over every verified edge; the label is the representative
        labels = (verified | "EdgeNodes" >> beam.Map(lambda e: (e[0][1], e[0][2]))
                  | "DistinctEdges" >> beam.Distinct()
                  | "Components" >> ConnectedComponents(c.cc_rounds))
        best = (verified
                | "EdgeEnds" >> beam.FlatMap(lambda e: [(e[0][1], (e[1], e[0][0])), (e[0][2], (e[1], e[0][0]))])
                | "BestEdge" >> beam.CombinePerKey(_BestEdge()))
        node_info = (candidates | "NewCandidates" >> beam.Filter(lambda v: node_is_new(v[0]))
                     | "NodeInfo" >> beam.Map(lambda v: (v[0], (v[3], v[4]))))
        out = ({"label": labels, "best": best, "info": node_info}
               | "JoinClusters" >> beam.CoGroupByKey()
               | "ClusterRows" >> beam.ParDo(_ClusterRows(self.run_id)).with_outputs("rejected", main="clusters"))
        clusters = [out.clusters]
        rejected = [out.rejected]
        if "documents" in inputs:
            src_rows = (out.clusters | "SourceRows" >> beam.Filter(lambda r: r.kind == "source")
                        | "KeySourceRows" >> beam.Map(lambda r: (r.item_id, r)))
            docs = inputs["documents"] | "KeyDocs" >> beam.Map(lambda d: (d.source_id, (d.document_id, d.uri)))
            d = ({"doc": docs, "src": src_rows} | "JoinDocs" >> beam.CoGroupByKey()
                 | "DocumentRows" >> beam.FlatMap(_document_rows, self.run_id).with_outputs("rejected", main="rows"))
            clusters.append(d.rows)
            rejected.append(d.rejected)
        clusters = clusters | "AllClusterRows" >> beam.Flatten()
        rejected = rejected | "AllDedupRejections" >> beam.Flatten()
        signatures = nodes_new | "NewSignatures" >> beam.Values()

        stats = (clusters | "StatKeys" >> beam.FlatMap(
            lambda r: [] if r.is_representative else [(f"dedup.duplicates.{r.kind}.{r.method}", 1)]))

        out = {"dedup_clusters": clusters, "dedup_signatures": signatures, "rejected": rejected,
               "stats": stats}
        if self.index_out:
            from mmcurate.transforms.dedup_index import StageIndex

            kept = ({"label": labels, "sig": nodes_new}
                    | "JoinKept" >> beam.CoGroupByKey()
                    | "Kept" >> beam.FlatMap(_index_rows))
            out["index_staged"] = kept | "StageIndex" >> StageIndex(
                c, self.index_out, self.partition, self.run_id, self.output)
        return out


def _index_rows(kv):
    """What the index keeps of one node: every signature of a kept item (representative or
    singleton); of a duplicate only its exact hashes (32 bytes: a later copy of the same bytes
    or text is then reported as exact)."""
    node, g = kv
    kept = not g["label"] or g["label"][0] == node
    return [s for s in g["sig"] if kept or s.method in EXACT_METHODS]


__all__ = ["ConnectedComponents", "DedupConfig", "Deduplicate", "MinHasher", "SemanticPairs",
           "band_keys", "bucket_pairs", "estimated_jaccard", "lsh_keys", "node_of",
           "normalize_text", "read_index", "shingles", "verify_pair"]

