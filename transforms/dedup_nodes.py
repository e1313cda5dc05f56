"""What dedup's joins carry: a source's rank fields, the node of an item (its rank: the
representative rule), the view of a signature, candidate pairs and verified edges.

They cross Beam's shuffles as plain tuples on purpose: Beam's FastPrimitivesCoder encodes a
tuple of str, bytes, int and float itself, while a dataclass or a `typing.NamedTuple` falls
back to pickling (a NamedTuple node: 108 bytes and ~5x the encode + decode time of the plain
tuple's 78 bytes; moving the joins after LSH to tuples took bench_dedup's 100k documents from
43.4 s to 36.3 s, bench/README.md "bench_dedup.py"). So the layouts are written down here once,
and code reads a field through its index constant or accessor, never through a bare position.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmcurate.schemas.records import DedupSignature
from mmcurate.transforms.dedup_config import MIX_KINDS


@dataclass(frozen=True)
class SourceInfo:
    """What every item needs from its source: where it is, and the source's rank fields.
    Crosses the item joins as `wire()`, a plain tuple in field order: `SourceInfo(*wire)`."""

    source_id: str
    uri: str
    media_uri: str
    media_kind: str
    sha256: str
    duration_s: float
    fidelity: float  # sample_rate x channels (0 unknown)
    bytes: int

    def wire(self) -> tuple:
        return (self.source_id, self.uri, self.media_uri, self.media_kind, self.sha256,
                self.duration_s, self.fidelity, self.bytes)


def source_info(s) -> SourceInfo:
    fid = float((s.sample_rate or 0) * (s.channels or 0))
    return SourceInfo(s.source_id, s.uri, s.media_uri, s.media_kind, s.sha256,
                      float(s.duration_s or 0.0), fid, int(s.bytes or 0))


def keyed_source_info(s):
    """SourceRecord -> (source_id, SourceInfo.wire()): the key and value of the item joins."""
    return s.source_id, source_info(s).wire()


# ------------------------------------------------------------------------------------- nodes

# A node is the rank tuple of an item: comparing two nodes IS the representative rule, so the
# minimum node of a component is its representative (labels in ConnectedComponents are nodes).
# Its fields, in comparison order:
NODE_AGE = 0  # 0 an index entry / 1 this run's, +2 a synthetic text-mix row (after every natural one)
NODE_PARTITION = 1  # the index partition ("" for this run's)
NODE_DURATION = 2  # -duration of the source
NODE_FIDELITY = 3  # -fidelity of the source
NODE_BYTES = 4  # -bytes of the source
NODE_LENGTH = 5  # -length of the item (text characters, image pixels)
NODE_KIND = 6
NODE_ITEM = 7  # item_id
Node = tuple


def node_of(sig: DedupSignature, new: bool) -> Node:
    age = (1 if new else 0) + (2 if sig.kind == "synthetic" else 0)
    return (age, "" if new else sig.partition, -float(sig.duration_s or 0.0),
            -float(sig.fidelity or 0.0), -int(sig.bytes or 0), -float(sig.length or 0.0),
            sig.kind, sig.item_id)


def node_kind(n: Node) -> str:
    return n[NODE_KIND]


def node_item(n: Node) -> str:
    return n[NODE_ITEM]


def node_partition(n: Node) -> str:
    return n[NODE_PARTITION]


def node_is_new(n: Node) -> bool:
    return n[NODE_AGE] % 2 == 1


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


# ------------------------------------------------------------------- views, pairs and edges

# A view: what the joins after LSH need of one (node, DedupSignature)
VIEW_NODE = 0
VIEW_METHOD = 1
VIEW_SIGNATURE = 2
VIEW_SOURCE_ID = 3
VIEW_URI = 4


def view_of(node_sig) -> tuple:
    """(node, DedupSignature) -> (node, method, signature, source_id, uri)."""
    node, s = node_sig
    return node, s.method, s.signature, s.source_id, s.uri


# A candidate pair is (method, a, b) with nodes a < b; a verified edge is ((method, a, b),
# similarity). Both are read by unpacking, through these. Beam derives an output's coder from
# a function's return annotation (else from its bytecode): the ones Beam calls here carry none
# but `-> tuple`, which keeps FastPrimitivesCoder (`-> tuple[str, tuple]` would give a
# TupleCoder of component coders).


def pair_ends(pair):
    _, a, b = pair
    return a, b


def edge_ends(edge):
    (_, a, b), _ = edge
    return a, b
