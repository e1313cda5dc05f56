"""Audit of the dedup stage: duplicate rate per kind and method, the largest clusters, and the
query that lists one cluster's members (on the views `mmcurate.quality.db.connect` makes).

The summary prints that query for its largest cluster as a command to paste
(`cluster_members_command`); for another cluster, CLUSTER_MEMBERS_SQL below with the cluster
id, or any member's item id, in place of {id}.
"""

from __future__ import annotations

import shlex
from typing import Any

import duckdb

CLUSTER_MEMBERS_SQL = """
SELECT d.cluster_id, d.kind, d.item_id, d.is_representative, d.representative_id,
       d.representative_partition, d.method, d.similarity, s.uri
FROM dedup_clusters d LEFT JOIN sources s USING (source_id)
WHERE d.cluster_id = (SELECT cluster_id FROM dedup_clusters
                      WHERE cluster_id = '{id}' OR item_id = '{id}' LIMIT 1)
ORDER BY d.is_representative DESC, d.similarity DESC, d.item_id
"""


def cluster_members_sql(cluster_or_item_id: str) -> str:
    """The query listing every member of a cluster (given its id or any member's item id)."""
    return CLUSTER_MEMBERS_SQL.format(id=cluster_or_item_id.replace("'", "''")).strip()


def cluster_members_command(out_dir: str, cluster_or_item_id: str) -> str:
    """`mmcurate audit OUT --sql '...'` for one cluster's members, on one line and quoted for a
    POSIX shell, so it runs as printed."""
    sql = " ".join(CLUSTER_MEMBERS_SQL.split()).format(id=cluster_or_item_id.replace("'", "''"))
    return f"mmcurate audit {shlex.quote(out_dir)} --sql {shlex.quote(sql)}"


def dedup_summary(con: duckdb.DuckDBPyConnection, largest: int = 5) -> dict[str, Any] | None:
    """Items compared and duplicates per (kind, method): the rate is duplicates / items that had
    a signature of that method; clusters; the largest clusters with their representative."""
    compared = con.execute("""
        SELECT kind, method, count(DISTINCT item_id) FROM dedup_signatures GROUP BY ALL""").fetchall()
    if not compared:
        return None
    dups = {(k, m): n for k, m, n in con.execute("""
        SELECT kind, method, count(*) FROM dedup_clusters WHERE NOT is_representative
        GROUP BY ALL""").fetchall()}
    per_method = []
    for kind, method, n in sorted(compared):
        d = dups.get((kind, method), 0)
        per_method.append({"kind": kind, "method": method, "items": int(n), "duplicates": int(d),
                           "rate": round(d / n, 4) if n else 0.0})
    for (kind, method), d in sorted(dups.items()):  # documents follow their sources
        if not any(r["kind"] == kind and r["method"] == method for r in per_method):
            per_method.append({"kind": kind, "method": method, "items": None, "duplicates": int(d),
                               "rate": None})
    by_kind = {k: {"items": int(n), "duplicates": int(d)} for k, n, d in con.execute("""
        SELECT s.kind, count(DISTINCT s.item_id),
               (SELECT count(*) FROM dedup_clusters c WHERE c.kind = s.kind AND NOT c.is_representative)
        FROM dedup_signatures s GROUP BY ALL ORDER BY 1""").fetchall()}
    biggest = [{"cluster_id": c, "kind": k, "members": int(n), "representative_id": r,
                "representative_partition": rp}
               for c, k, n, r, rp in con.execute(f"""
        SELECT cluster_id, any_value(kind), count(*), any_value(representative_id),
               any_value(representative_partition)
        FROM dedup_clusters GROUP BY cluster_id ORDER BY 3 DESC, 1 LIMIT {int(largest)}""").fetchall()]
    clusters, against_index = con.execute("""
        SELECT count(DISTINCT cluster_id),
               count(*) FILTER (WHERE representative_partition IS NOT NULL)
        FROM dedup_clusters""").fetchone()
    return {"per_method": per_method, "by_kind": by_kind, "clusters": int(clusters),
            "duplicates_of_earlier_partitions": int(against_index), "largest_clusters": biggest}


def format_dedup(d: dict[str, Any] | None, out_dir: str = "DIR") -> list[str]:
    """Report lines for `dedup_summary` (nothing when the dedup stage did not run); `out_dir`
    goes into the printed query command."""
    if not d:
        return []
    L = ["", "Dedup (duplicates / items compared, per method)"]
    for r in d["per_method"]:
        rate = "-" if r["rate"] is None else f"{100 * r['rate']:.1f}%"
        items = "-" if r["items"] is None else str(r["items"])
        L.append(f"  {r['kind'] + '/' + r['method']:28s} {r['duplicates']:>6} / {items:<6} {rate:>7}")
    L.append(f"  clusters {d['clusters']}, duplicates of earlier partitions (index) "
             f"{d['duplicates_of_earlier_partitions']}")
    if d["largest_clusters"]:
        L.append("  largest clusters (members, kind, representative):")
        for c in d["largest_clusters"]:
            where = f" @ {c['representative_partition']}" if c["representative_partition"] else ""
            L.append(f"    {c['cluster_id']}  {c['members']:>4}  {c['kind']:10s} {c['representative_id']}{where}")
        L.append("  members of the largest:")
        L.append("    " + cluster_members_command(out_dir, d["largest_clusters"][0]["cluster_id"]))
    return L
