"""Connected components on Beam: undirected edges in, (node, label) out, the label being the
minimum node of the component. Nodes are any comparable, hashable values (dedup's are rank
tuples, so the label is the representative).

The steps Beam calls are generators or return tuples: Beam infers an output's type (and so its
coder) from the function's bytecode, and a comprehension over an unpacked variable infers
nothing (Any), which changes the coder of what crosses the shuffle."""

from __future__ import annotations

import apache_beam as beam


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
        adj = edges | "BothWays" >> beam.FlatMap(_both_ways)
        labels = (adj | "Neighbours" >> beam.GroupByKey() | "InitLabel" >> beam.Map(_min_label))
        for i in range(self.rounds):
            labels = (
                {"adj": adj, "lab": labels}
                | f"Join{i}" >> beam.CoGroupByKey()
                | f"Send{i}" >> beam.FlatMap(_send_label)
                | f"Min{i}" >> beam.CombinePerKey(min)
            )
            labels = (
                {"child": labels | f"ByLabel{i}" >> beam.Map(_by_label), "lab": labels}
                | f"JoinLabel{i}" >> beam.CoGroupByKey()
                | f"Jump{i}" >> beam.FlatMap(_jump)
            )
        # residual: edges whose ends disagree -> union-find over those labels only
        lab_u = ({"e": edges | "KeyU" >> beam.Map(_keyed_by_u), "lab": labels}
                 | "JoinU" >> beam.CoGroupByKey()
                 | "LabelU" >> beam.FlatMap(_label_of_u_per_v))
        disagree = ({"lu": lab_u, "lab": labels}
                    | "JoinV" >> beam.CoGroupByKey()
                    | "Disagree" >> beam.FlatMap(_disagreeing_labels))
        fix = disagree | "Residual" >> beam.CombineGlobally(_UnionFind())
        return labels | "ApplyResidual" >> beam.Map(_apply_residual, beam.pvalue.AsSingleton(fix))


def _both_ways(edge):
    u, v = edge
    return [(u, v), (v, u)]


def _keyed_by_u(edge):
    u, v = edge
    return u, v


def _by_label(node_label):
    node, label = node_label
    return label, node


def _min_label(kv):
    node, nbrs = kv
    return node, min([node, *nbrs])


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


def _label_of_u_per_v(kv):
    """(u, {"e": [v, ...], "lab": [label of u]}) -> (v, label of u) per edge."""
    _, g = kv
    label_u = g["lab"][0]
    for v in g["e"]:
        yield v, label_u


def _disagreeing_labels(kv):
    """(v, {"lu": [label of u, ...], "lab": [label of v]}) -> (label of u, label of v) for every
    edge whose two ends have different labels."""
    _, g = kv
    label_v = g["lab"][0]
    for lu in g["lu"]:
        if lu != label_v:
            yield lu, label_v


def _apply_residual(node_label, final):
    node, label = node_label
    return node, final.get(label, label)


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
