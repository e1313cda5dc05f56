"""The dedup stage's settings (`[dedup]` of the run config, with their bounds) and the names of
its methods and item kinds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mmcurate.schemas.params import Rule, non_negative, positive, unit_interval
from mmcurate.transforms.dedup_index import partition_problem

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

