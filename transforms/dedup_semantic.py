"""Semantic near-duplicates: transcript embeddings compared by cosine with FAISS, one flat index
per partition of the vectors (one partition up to `semantic_flat_max`, else k-means partitions,
IVF / SemDeDup style), the partitions searched in parallel."""

from __future__ import annotations

import math

import apache_beam as beam
import numpy as np

from mmcurate.transforms.dedup_config import DedupConfig
from mmcurate.transforms.dedup_nodes import node_is_new


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
    items = sorted(items)  # (node, vector, is_home), as `_assign` yields them
    is_home = [h for _, _, h in items]
    home = [i for i, h in enumerate(is_home) if h]
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
        if i == j or (is_home[i] and i > j):  # itself; a home pair is found from both ends
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

