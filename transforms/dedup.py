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
  image       phash (the keyframes' 64-bit DCT hashes, Hamming distance: of the whole frame, or
              of the picture inside its black bars against the other's picture or centre, so
              letterboxed, pillarboxed and cropped copies match; 5 exact-match bands per hash
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
  1. every item becomes a `DedupSignature` per method (persisted in `dedup_signatures`;
     dedup_signatures.py), and a node: its representative rank (dedup_nodes.node_of);
  2. LSH keys per signature (text hash; MinHash bands; bottom-k of fingerprint tokens; pHash
     bands) are grouped with GroupByKey, batched per shard of the key space (`lsh_shards`: one
     shuffle element per batch and shard, the buckets of a shard grouped in memory where it
     lands, so no worker holds the whole index); each bucket yields candidate pairs (every pair up to
     `bucket_pairs_max` members, else a star from the bucket's best-ranked member): the keys
     and the verification of each method are in dedup_lsh.py, MinHash in dedup_minhash.py;
  3. candidates are verified on both signatures (one CoGroupByKey gives each pair end its
     signature, a GroupByKey per pair brings the two together; a Bloom filter of the pairs'
     ends, broadcast, lets only those nodes into the join: a semi-join, dedup_semijoin.py);
     embeddings are searched per partition (dedup_semantic.py): one flat FAISS index below
     `semantic_flat_max` items, else k-means centroids trained on a sample (IVF / SemDeDup
     style) index every vector in its nearest partition and search it in its `semantic_assign`
     nearest ones, the partitions in parallel;
  4. connected components over the verified edges (components.ConnectedComponents: min-label
     propagation with pointer jumping for `cc_rounds` rounds, then a union-find over whatever
     label pairs are still inconsistent, normally none);
  5. the label of a component is its best-ranked node: the representative. Rank (the
     representative rule): entries of the cross-run index (already curated) first, earliest
     partition first; then the item whose SOURCE is longest (duration), then of highest
     fidelity (sample rate x channels), then largest (bytes); then the longest item (text
     characters, image pixels); then the smallest item id. The same inputs always give the
     same clusters and representatives; the source rule means the kept transcript, text items
     and document belong to the kept recording. The rows: dedup_clusters.py.

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
import pickle
import zlib

import apache_beam as beam
import numpy as np

from mmcurate.transforms.components import ConnectedComponents
from mmcurate.transforms.dedup_clusters import BestEdge, ClusterRows, document_rows, index_rows
from mmcurate.transforms.dedup_config import DedupConfig
from mmcurate.transforms.dedup_lsh import bucket_pairs, lsh_keys, verify_pair
from mmcurate.transforms.dedup_nodes import (VIEW_METHOD, VIEW_NODE, VIEW_SIGNATURE, VIEW_SOURCE_ID, VIEW_URI,
                                             edge_ends, key_space, keyed_source_info, node_is_new, node_kind,
                                             node_of, pair_ends, view_of)
from mmcurate.transforms.dedup_semantic import SemanticPairs
from mmcurate.transforms.dedup_semijoin import NodeBloomFn, in_bloom
from mmcurate.transforms.dedup_signatures import (EmbedTranscripts, ImageSignatures, SourceSignatures,
                                                  TextSignatures, fingerprint_cost)


# ------------------------------------------------------------------------ LSH and verification


def _key64(key: bytes) -> int:
    """A 64-bit hash of an LSH key. Two keys that collide only add a candidate pair, which
    verification on both signatures rejects (~16M keys per 1M documents: ~1e-5 collisions)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _shard_keys(batch, cfg: DedupConfig):
    """A batch of views (`view_of`) -> ((method, key space, shard), (keys, nodes)), one element
    per shard the batch's LSH keys fall in (shard = crc32(key) % lsh_shards): `keys` a uint64
    array (`_key64` of each key), `nodes` the pickled list of their nodes, one per key.

    Compact on purpose: this shuffle holds every band key of every document. As a list of
    (key bytes, node tuple) it took ~420 bytes per key in memory (16 band keys: ~7 GB per
    million documents, which a runner that shuffles in memory holds whole); as an array and
    one pickle per element it takes ~100, and a runner that spills to disk measures arrays and
    bytes exactly (bench/README.md, bench_dedup.py at corpus scale)."""
    out: dict[tuple, tuple[list, list]] = {}
    n = cfg.lsh_shards
    for node, method, signature, *_ in batch:
        space = key_space(node_kind(node))
        for k in lsh_keys(method, signature, cfg):
            keys, nodes = out.setdefault((method, space, zlib.crc32(k) % n), ([], []))
            keys.append(_key64(k))
            nodes.append(node)
    for shard, (keys, nodes) in out.items():
        yield shard, (np.array(keys, dtype=np.uint64), pickle.dumps(nodes, pickle.HIGHEST_PROTOCOL))


def _pairs_from_shard(kv, max_all: int):
    """((method, space, shard), [(keys, nodes), ...]) -> (method, a, b) candidates of every
    bucket in the shard. Only the nodes of keys that occur more than once are unpickled, one
    part at a time."""
    (method, *_), parts = kv
    parts = list(parts)
    if not parts:
        return
    keys = np.concatenate([k for k, _ in parts])
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    shared = np.zeros(len(keys), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    wanted = np.sort(order[shared])  # flat positions of keys in a bucket of >= 2
    if not wanted.size:
        return
    starts = np.cumsum([0] + [len(k) for k, _ in parts])
    part_of = np.searchsorted(starts, wanted, side="right") - 1  # sorted, as `wanted` is
    used, first = np.unique(part_of, return_index=True)
    buckets: dict[int, list] = {}
    for p, lo, hi in zip(used, first, [*first[1:], len(wanted)]):
        nodes = pickle.loads(parts[p][1])
        for flat in wanted[lo:hi]:
            buckets.setdefault(int(keys[flat]), []).append(nodes[flat - starts[p]])
    for nodes in buckets.values():
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


def _sig_keys_of_pair(pair):
    """(method, a, b) -> ((a, method), (a, b)) and ((b, method), (a, b)): the pair keyed by each
    end's signature."""
    method, a, b = pair
    return [((a, method), (a, b)), ((b, method), (a, b))]


def _edge_per_end(edge):
    """((method, a, b), similarity) -> (a, (similarity, method)) and (b, (similarity, method))."""
    (method, a, b), sim = edge
    return [(a, (sim, method)), (b, (sim, method))]


def _transcript_to_embed(kv):
    """(source_id, {"sig": [text_hash signature], "text": [transcript text]}) -> at most one
    (signature, text) to embed. A generator: Beam infers its output type (a 2-tuple) from it."""
    _, g = kv
    if g["sig"] and g["text"]:
        yield g["sig"][0], g["text"][0]


# ------------------------------------------------------------------------------------ the stage


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
        info = inputs["sources"] | "SourceInfo" >> beam.Map(keyed_source_info)
        sigs = []
        if methods & {"sha256", "audio_fp", "video_fp"}:
            prior = inputs.get("prior_signatures")
            prior_kv = (prior | "KeyPrior" >> beam.Map(lambda s: (s.source_id, s)) if prior is not None
                        else p | "NoPrior" >> beam.Create([]))
            joined = {"info": info, "prior": prior_kv} | "JoinSourcePrior" >> beam.CoGroupByKey()
            if self.decode_media and methods & {"audio_fp", "video_fp"} and self.spread is not None:
                # every source is decoded again here: dealt round-robin by key, one worker of two
                # got the 2-minute talk and more (bench/README.md, bench_orchestration.py)
                spread = self.spread(cost=functools.partial(fingerprint_cost, frozenset(methods)),
                                     key=lambda kv: kv[0], what="s of audio to fingerprint")
                if spread is not None:
                    joined = joined | "SpreadFingerprints" >> spread
            sigs.append(joined
                        | "SourceSignatures" >> beam.ParDo(SourceSignatures(
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
                      | "KeyImages" >> beam.Map(lambda r: (r.source_id, (
                          r.item_id, r.phash, r.picture_phash, r.centre_phash,
                          float((r.width or 0) * (r.height or 0))))))
            if "phash" in methods:
                sigs.append({"info": info, "items": images}
                            | "JoinImages" >> beam.CoGroupByKey()
                            | "ImageSignatures" >> beam.ParDo(ImageSignatures(self.partition, self.run_id)))
        if "text_mix" in inputs:
            text_items.append(inputs["text_mix"] | "MixItems" >> beam.Map(
                lambda r: (r.source_id, ("synthetic" if r.is_synthetic else "passage", r.text_id, r.text))))
        if text_items and methods & {"text_hash", "minhash", "embedding"}:
            items = text_items | "AllTextItems" >> beam.Flatten()
            text_sigs = ({"info": info, "items": items}
                         | "JoinText" >> beam.CoGroupByKey()
                         | "TextSignatures" >> beam.ParDo(TextSignatures(
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
                         | "ToEmbed" >> beam.FlatMap(_transcript_to_embed))
                sigs.append(texts
                            | "BatchTexts" >> beam.BatchElements(min_batch_size=1, max_batch_size=32)
                            | "Embed" >> beam.ParDo(EmbedTranscripts(c, embedder=self.embedder)))
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
        view = nodes | "View" >> beam.Map(view_of)
        lsh_nodes = view | "NotEmbedding" >> beam.Filter(lambda v: v[VIEW_METHOD] != "embedding")
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
            vecs = (view | "Embeddings" >> beam.Filter(lambda v: v[VIEW_METHOD] == "embedding")
                    | "Vectors" >> beam.Map(lambda v: (v[VIEW_NODE], v[VIEW_SIGNATURE])))
            semantic.append(vecs | "Semantic" >> SemanticPairs(c)
                            | "BestSemantic" >> beam.CombinePerKey(max))
        # semi-join: a Bloom filter of every node that is in a candidate pair or a semantic
        # edge; the joins below take only the nodes that pass it (most nodes are in no pair)
        ends_only = [pairs | "CandidateEnds" >> beam.FlatMap(pair_ends)]
        ends_only += [e | "SemanticEnds" >> beam.FlatMap(edge_ends) for e in semantic]
        bloom = beam.pvalue.AsSingleton(
            ends_only | "AllEnds" >> beam.Flatten()
            | "EndsBloom" >> beam.CombineGlobally(NodeBloomFn(c.semijoin_log2_bits)))
        # verification: one join brings every candidate end its signature, a group per pair
        # brings the two together (one pass over the signatures, not one per end)
        candidates = view | "CandidateNodes" >> beam.Filter(in_bloom, bloom)
        sig_kv = (candidates | "CandidateSigs" >> beam.Filter(lambda v: v[VIEW_METHOD] != "embedding")
                  | "SigByNode" >> beam.Map(lambda v: ((v[VIEW_NODE], v[VIEW_METHOD]), v[VIEW_SIGNATURE])))
        ends = pairs | "PairEnds" >> beam.FlatMap(_sig_keys_of_pair)
        edges = [({"sig": sig_kv, "pair": ends}
                  | "JoinPairSigs" >> beam.CoGroupByKey()
                  | "SigPerPair" >> beam.FlatMap(_sig_per_pair)
                  | "PairSigs" >> beam.GroupByKey()
                  | "Verify" >> beam.FlatMap(_verify_pair_sigs, c))] + semantic
        verified = edges | "AllEdges" >> beam.Flatten()

        # components over every verified edge; the label is the representative
        labels = (verified | "EdgeNodes" >> beam.Map(edge_ends)
                  | "DistinctEdges" >> beam.Distinct()
                  | "Components" >> ConnectedComponents(c.cc_rounds))
        best = (verified
                | "EdgeEnds" >> beam.FlatMap(_edge_per_end)
                | "BestEdge" >> beam.CombinePerKey(BestEdge()))
        node_info = (candidates | "NewCandidates" >> beam.Filter(lambda v: node_is_new(v[VIEW_NODE]))
                     | "NodeInfo" >> beam.Map(lambda v: (v[VIEW_NODE], (v[VIEW_SOURCE_ID], v[VIEW_URI]))))
        out = ({"label": labels, "best": best, "info": node_info}
               | "JoinClusters" >> beam.CoGroupByKey()
               | "ClusterRows" >> beam.ParDo(ClusterRows(self.run_id)).with_outputs("rejected", main="clusters"))
        clusters = [out.clusters]
        rejected = [out.rejected]
        if "documents" in inputs:
            src_rows = (out.clusters | "SourceRows" >> beam.Filter(lambda r: r.kind == "source")
                        | "KeySourceRows" >> beam.Map(lambda r: (r.item_id, r)))
            docs = inputs["documents"] | "KeyDocs" >> beam.Map(lambda d: (d.source_id, (d.document_id, d.uri)))
            d = ({"doc": docs, "src": src_rows} | "JoinDocs" >> beam.CoGroupByKey()
                 | "DocumentRows" >> beam.FlatMap(document_rows, self.run_id).with_outputs("rejected", main="rows"))
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
                    | "Kept" >> beam.FlatMap(index_rows))
            out["index_staged"] = kept | "StageIndex" >> StageIndex(
                c, self.index_out, self.partition, self.run_id, self.output)
        return out


__all__ = ["Deduplicate"]
