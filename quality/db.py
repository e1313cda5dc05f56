"""The run's tables as DuckDB views: `connect(out_dir)` (the audit, the RTTM and DER queries,
the video pages, the exporters and the report all query these views).

A run writes `<out>/<table>/*.parquet` for every table in `mmcurate.schemas.tables.TABLES` and
`<out>/manifest.json` (schema `mmcurate.schemas.tables.RUN_MANIFEST`). `connect()` exposes each
table as a DuckDB view named after it; a table that is absent on disk (no shard yet, or a run
that stopped early) is an empty view with the declared columns. Views read the shards the
committed manifest lists (`committed_shards`), checked against the declared schema
(`shard_schema_check`).

A module of its own, below `mmcurate.quality.audit` and the audit modules it re-exports, which
all connect: in the audit module the connection made a circle with each of them.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.quality.curated import create_curated_views
from mmcurate.quality.segment_audit import KEPT_SEGMENTS_VIEW
from mmcurate.schemas.tables import TABLES
from mmcurate.transforms.commit import is_remote, join

DECLARED_SCHEMA = "declared"  # DuckDB schema holding one empty table per declared Arrow schema


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _table_shards(out_dir: str) -> dict[str, list[str]]:
    """{table: shard files readers use}: the committed manifest's list (see
    `committed_shards`; the manifest is read once), or, for an output without a readable
    manifest, what is on disk."""
    listed, _ = committed_shards(out_dir)
    if listed is not None:
        return {t: [f for f in listed.get(t, []) if os.path.exists(f)] for t in TABLES}
    return {t: _on_disk(out_dir, t) for t in TABLES}


def _on_disk(out_dir: str, table: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(out_dir), table, "part-*.parquet")))


def committed_shards(out_dir: str) -> tuple[dict[str, list[str]] | None, str | None]:
    """({table: [shard path]} from manifest.json, None) or (None, why there is none).

    The manifest is the commit point of an output generation (mmcurate.transforms.sink):
    readers use exactly the shards it lists, never a glob that could mix generations. The one
    reader of the list, for the audit's views and for the corpus jobs (`ReadTables`, which
    raise FileNotFoundError with the why); local paths and object-store URLs alike. It lives
    here, the lowest of its users, so that the audit reads it without importing Beam."""
    m = load_manifest(out_dir)
    if m is None:
        return None, "manifest.json missing: the run did not finish (or this is not an mmcurate output)"
    if "error" in m and "run_id" not in m:
        return None, m["error"]
    shards = m.get("shards")
    if not isinstance(shards, list):
        return None, "manifest.json has no shard list"
    out: dict[str, list[str]] = {}
    for rel in shards:
        table = str(rel).split("/", 1)[0]
        out.setdefault(table, []).append(join(out_dir, *str(rel).split("/")))
    return out, None


def _usable(table: str, path: str) -> bool:
    """Whether a view may read this shard: readable Parquet whose columns have their declared
    types and include every required one (a shard that breaks the schema is left out of the
    views, as an unreadable one is, and `output_problems` names it)."""
    return _readable(path) is None and not shard_schema_check(table, path)[0]


def _footer_schema(path: str) -> pa.Schema:
    """A shard's Arrow schema from its Parquet footer only (no row group is read), cached
    while the file is unchanged: `connect` and `output_problems` both ask."""
    st = os.stat(path)
    return _footer_schema_of(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4096)
def _footer_schema_of(path: str, mtime_ns: int, size: int) -> pa.Schema:
    return pq.read_schema(path)


def _type_kind(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    return None


def _same_type(got: pa.DataType, declared: pa.DataType) -> bool:
    """Whether a shard's column type reads as the declared one: equal, or equal up to what
    other Parquet writers (DuckDB's COPY, Spark) choose differently without changing values:
    large/view/dictionary variants of strings and binaries, large lists, list item names,
    nullability inside nested types."""
    if got.equals(declared):
        return True
    kinds = _type_kind(got), _type_kind(declared)
    if kinds != (None, None):
        return kinds[0] == kinds[1]
    lists = (pa.types.is_list, pa.types.is_large_list)
    if any(f(got) for f in lists) and any(f(declared) for f in lists):
        return _same_type(got.value_type, declared.value_type)
    if pa.types.is_map(got) and pa.types.is_map(declared):
        return _same_type(got.key_type, declared.key_type) and _same_type(got.item_type, declared.item_type)
    if pa.types.is_struct(got) and pa.types.is_struct(declared):
        a = {f.name: f.type for f in got}
        b = {f.name: f.type for f in declared}
        return a.keys() == b.keys() and all(_same_type(a[k], b[k]) for k in b)
    return False


def shard_schema_check(table: str, path: str, label: str | None = None) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one shard's columns against `mmcurate.schemas.tables.TABLES`,
    read from its Parquet footer. A problem: a required (not null) column is missing, or a
    declared column has another type; such a shard is not read (its rows would be NULLs where
    the schema forbids them, or break every query over the view). A warning: a column the
    schema does not declare (readers see it as an extra view column), or a missing nullable one
    (read as NULL, which the schema allows: a shard of an older code version). ([], []) for a
    file that is not readable Parquet (`_readable` reports that)."""
    declared = TABLES.get(table)
    try:
        got = _footer_schema(path)
    except (OSError, pa.ArrowException):
        return [], []
    if declared is None:
        return [], []
    label = label or path
    problems, warnings = [], []
    for field in declared:
        if field.name not in got.names:
            if field.nullable:
                warnings.append(f"{table}: shard {label} has no column {field.name} (nullable: "
                                f"read as NULL)")
            else:
                problems.append(f"{table}: shard {label} has no column {field.name} (required, "
                                f"{field.type}): the shard is not read")
            continue
        have = got.field(field.name).type
        if not _same_type(have, field.type):
            problems.append(f"{table}: shard {label} column {field.name} is {have}, declared "
                            f"{field.type}: the shard is not read")
    for name in got.names:
        if name not in declared.names:
            warnings.append(f"{table}: shard {label} has column {name}, which is not declared "
                            f"(kept: --sql sees it)")
    return problems, warnings


def schema_warnings(out_dir: str) -> list[str]:
    """The warnings of `shard_schema_check` over every committed shard."""
    out = []
    for table, files in _table_shards(out_dir).items():
        for f in files:
            out += shard_schema_check(table, f, os.path.relpath(f, out_dir))[1]
    return out


def _readable(path: str) -> str | None:
    """None when `path` is a Parquet file DuckDB can read, else the reason (one line)."""
    try:
        # fetchall: a fetchone() result stays open on DuckDB's default connection (DuckDB 2.0),
        # and the caller's next duckdb.sql() there fails with "unfinished result"
        duckdb.execute(f"SELECT count(*) FROM read_parquet({_sql_str(path)})").fetchall()
    except duckdb.Error as e:
        return " ".join(str(e).split())[:300]
    return None


def connect(out_dir: str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with one view per table of `mmcurate.schemas.tables.TABLES`, named after it.

    Views read exactly the shards the committed manifest lists (`committed_shards`; what is on
    disk only when there is no manifest), skipping files that are missing, not readable
    Parquet, or break the declared schema (`output_problems` reports those). The declared
    columns are always there (an empty table of the declared Arrow schema is unioned in by
    name, so shards written by different code versions still line up), and an absent table is
    just that empty table.

    `read_only`: the connection can read those shards and nothing else, and the settings are
    locked: no file outside them (read_csv('/etc/passwd')), no COPY ... TO, no ATTACH, no
    INSTALL/LOAD of extensions (see `query`).
    """
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE SCHEMA {DECLARED_SCHEMA}")
    allowed: list[str] = []
    table_shards = _table_shards(out_dir)
    for name, schema in TABLES.items():
        empty = pa.Table.from_pylist([], schema=schema)
        con.register("_declared_tmp", empty)
        con.execute(f"CREATE TABLE {DECLARED_SCHEMA}.{name} AS SELECT * FROM _declared_tmp")
        con.unregister("_declared_tmp")
        shards = [f for f in table_shards[name] if _usable(name, f)]
        allowed.extend(os.path.abspath(f) for f in shards)
        if shards:
            # the shard list, not the glob: a directory name with [ ] * ? stays literal
            files = "[" + ", ".join(_sql_str(f) for f in shards) + "]"
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM {DECLARED_SCHEMA}.{name} "
                f"UNION ALL BY NAME "
                f"SELECT * FROM read_parquet({files}, union_by_name=true)"
            )
        else:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {DECLARED_SCHEMA}.{name}")
    con.execute(KEPT_SEGMENTS_VIEW)
    create_curated_views(con)
    if read_only:
        paths = "[" + ", ".join(_sql_str(f) for f in allowed) + "]"
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute(f"SET allowed_paths = {paths}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def load_manifest(out_dir: str) -> dict[str, Any] | None:
    """The output's manifest.json as a dict; None when there is none; {"error": ...} when it
    cannot be read or parsed. A remote one (gs://, s3://) is read through Beam's FileSystems; a
    local one directly, as FileSystems would, without importing Beam for it (1.2 s, three times
    the audit's own imports)."""
    remote = is_remote(out_dir)
    path = join(out_dir, "manifest.json")
    try:
        if remote:
            from apache_beam.io.filesystems import FileSystems

            if not FileSystems.exists(path):
                return None
            with FileSystems.open(path, compression_type="uncompressed") as fh:
                data = fh.read()
        else:
            if not os.path.exists(path):
                return None
            with open(path, "rb") as fh:
                data = fh.read()
        m = json.loads(data.decode("utf-8"))
    except (OSError, ValueError) as e:
        return {"error": f"unreadable manifest.json: {e}"}
    return m if isinstance(m, dict) else {"error": "manifest.json is not a JSON object"}
