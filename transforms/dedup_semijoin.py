"""Dedup's semi-join: a Bloom filter of every node that ends a candidate pair or a semantic
edge, broadcast, lets only those nodes' views into the verification and cluster joins (most
nodes are in no pair)."""

from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np

from mmcurate.transforms.dedup_nodes import (NODE_AGE, NODE_ITEM, NODE_KIND, NODE_PARTITION, VIEW_NODE,
                                             Node)


class NodeBloom:
    """A Bloom filter of nodes (4 hash functions over 2^log2_bits bits): `in` is True for every
    node added, and for a few others (false positives: only more work, never a wrong result).
    Hashes are blake2b of the node's identity, the same in every worker and process."""

    K = 4

    def __init__(self, log2_bits: int):
        self.log2_bits = log2_bits
        self.bits = np.zeros(1 << max(0, log2_bits - 3), dtype=np.uint8)

    def _positions(self, node: Node) -> list[int]:
        identity = (f"{node[NODE_AGE]}\x1f{node[NODE_PARTITION]}\x1f{node[NODE_KIND]}"
                    f"\x1f{node[NODE_ITEM]}")
        d = hashlib.blake2b(identity.encode("utf-8"), digest_size=4 * self.K).digest()
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


class NodeBloomFn(beam.CombineFn):
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


def in_bloom(view, bloom) -> bool:
    """Whether a view's node may be in the filter (false positives only add work)."""
    return bloom is not None and view[VIEW_NODE] in bloom

