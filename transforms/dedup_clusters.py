"""Dedup's output rows: a `DedupCluster` row for each of this run's items in a component of two
or more (its representative, the strongest edge that put it there), a ledger row for each one
that is not its component's representative, documents following their source, and what the
cross-run index keeps of each node."""

from __future__ import annotations

import dataclasses

import apache_beam as beam

from mmcurate.schemas.records import DedupCluster, Rejection, stable_id
from mmcurate.transforms.dedup_config import EXACT_METHODS
from mmcurate.transforms.dedup_nodes import Node, node_is_new, node_item, node_kind, node_partition


def _strength(best):
    """The order of (similarity, method) descriptions: similarity, then exact methods first."""
    similarity, method = best
    return similarity, method in EXACT_METHODS, method


def _best_edge(a, b):
    """The stronger of two (similarity, method) descriptions."""
    return a if _strength(a) >= _strength(b) else b


class BestEdge(beam.CombineFn):
    """(similarity, method) of a node's edges -> the strongest."""

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
    return "dc-" + stable_id(node_kind(rep), node_item(rep), node_partition(rep))


class ClusterRows(beam.DoFn):
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
            representative_partition=None if node_is_new(rep) else node_partition(rep),
            is_representative=is_rep, method=method, similarity=float(sim), run_id=self.run_id)
        if is_rep:
            return
        self.dups.inc()
        where = "" if node_is_new(rep) else f", curated in partition {node_partition(rep)}"
        yield beam.pvalue.TaggedOutput("rejected", Rejection.make(
            stage="dedup", reason=reason_of(method),
            detail=f"{kind} {item} duplicates {node_kind(rep)} {node_item(rep)}{where} "
                   f"({method} similarity {sim:.4f}; cluster {cluster_id(rep)})",
            uri=uri, run_id=self.run_id, source_id=source_id, item_id=f"{kind}:{item}"))


def document_rows(kv, run_id: str):
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


def index_rows(kv):
    """What the index keeps of one node: every signature of a kept item (representative or
    singleton); of a duplicate only its exact hashes (32 bytes: a later copy of the same bytes
    or text is then reported as exact)."""
    node, g = kv
    kept = not g["label"] or g["label"][0] == node
    return [s for s in g["sig"] if kept or s.method in EXACT_METHODS]
