"""Audit gates: declarative expectations on a run's output (`mmcurate audit DIR --check FILE`).

A gate file is YAML (or JSON):

    checks:
      - name: every input is accounted for        # required, shown in the report
        metric: invariant_ok                      # a value of the audit summary (`--json`),
        op: "=="                                  #   dots for nesting: quality.reject_rate
        value: true
      - name: less than 20% of segments dropped
        sql: SELECT count(*) FILTER (WHERE NOT keep) / count(*) FROM segment_quality
        op: "<"
        value: 0.2
      - name: no quality drops for language reasons
        metric: rejected_by_stage.quality.language_not_allowed
        default: 0                                # the value when the summary has no such key
        op: "=="
        value: 0

Each check has a `name`, exactly one of `metric` (a dotted path into `mmcurate.quality.audit.
summarize()`'s result) or `sql` (one read-only SELECT over the table views that returns one
row with one column), an `op` (< <= > >= == !=) and a `value` (number, boolean, string or a
list); `default` (metric only) is used when the path is absent, and `why` is free text shown on
failure. A measured NULL fails its check (nothing to compare).

`evaluate()` raises GateFileError (one line, naming the check) for a file that cannot be
evaluated: bad YAML, unknown keys or operators, a metric path that does not exist without a
default, SQL that is not a single read-only query or fails; `mmcurate audit --check` exits 2 on
it, 1 when a check fails and 0 when all pass.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from typing import Any

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
       "==": operator.eq, "!=": operator.ne}
KEYS = {"name", "metric", "sql", "op", "value", "default", "why"}
_MISSING = object()


class GateFileError(ValueError):
    """The gate file is malformed or a check cannot be evaluated; the message is one line."""


@dataclass(frozen=True)
class Check:
    name: str
    op: str
    value: Any
    metric: str | None = None
    sql: str | None = None
    default: Any = _MISSING
    why: str = ""


@dataclass(frozen=True)
class Outcome:
    check: Check
    measured: Any
    passed: bool

    def line(self) -> str:
        c = self.check
        what = c.metric if c.metric else "sql"
        status = "PASS" if self.passed else "FAIL"
        text = f"{status}  {c.name}: {what} = {_show(self.measured)} (want {c.op} {_show(c.value)})"
        if not self.passed and c.why:
            text += f" -- {c.why}"
        return text


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if v is None:
        return "NULL"
    return json.dumps(v) if isinstance(v, (list, dict, str)) else str(v)


def parse(text: str, where: str = "gate file") -> list[Check]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise GateFileError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("checks"), list) or not data["checks"]:
        raise GateFileError(f"{where}: expected a mapping with a non-empty list `checks`")
    unknown_top = sorted(set(data) - {"checks"})
    if unknown_top:
        raise GateFileError(f"{where}: unknown top-level key(s) {unknown_top}; only `checks`")
    checks: list[Check] = []
    for i, item in enumerate(data["checks"], 1):
        label = f"{where}: check {i}"
        if not isinstance(item, dict):
            raise GateFileError(f"{label}: expected a mapping, got {item!r}")
        if isinstance(item.get("name"), str) and item["name"].strip():
            label = f"{where}: check {i} ({item['name']!r})"
        else:
            raise GateFileError(f"{label}: needs a `name` (text)")
        unknown = sorted(set(item) - KEYS)
        if unknown:
            raise GateFileError(f"{label}: unknown key(s) {unknown}; known: {sorted(KEYS)}")
        if ("metric" in item) == ("sql" in item):
            raise GateFileError(f"{label}: give exactly one of `metric` or `sql`")
        if item.get("op") not in OPS:
            raise GateFileError(f"{label}: `op` must be one of {list(OPS)}, got {item.get('op')!r}")
        if "value" not in item:
            raise GateFileError(f"{label}: needs a `value`")
        if "sql" in item and "default" in item:
            raise GateFileError(f"{label}: `default` is for metrics only")
        src = item.get("metric", item.get("sql"))
        if not isinstance(src, str) or not src.strip():
            raise GateFileError(f"{label}: `metric`/`sql` must be non-empty text")
        checks.append(Check(name=item["name"], op=item["op"], value=item["value"],
                            metric=item.get("metric"), sql=item.get("sql"),
                            default=item.get("default", _MISSING), why=str(item.get("why") or "")))
    return checks


def load(path: str) -> list[Check]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise GateFileError(f"{path}: cannot read it ({e.strerror or e})") from None
    return parse(text, path)


def _lookup(summary: dict, path: str, default: Any, label: str) -> Any:
    node: Any = summary
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            if default is not _MISSING:
                return default
            known = ", ".join(sorted(k for k in summary if not k.startswith("_")))
            raise GateFileError(f"{label}: the audit summary has no {path!r} (top-level metrics: "
                                f"{known}); add `default:` if it may be absent")
    return node


def _compare(measured: Any, op: str, value: Any) -> bool:
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return False
    try:
        return bool(OPS[op](measured, value))
    except TypeError:
        return False


def evaluate(out_dir: str, checks: list[Check], where: str = "gate file") -> list[Outcome]:
    """Measure every check on `out_dir` (read-only) and compare."""
    import duckdb

    from mmcurate.quality import audit

    summary = audit.summarize(out_dir) if any(c.metric for c in checks) else {}
    con = audit.connect(out_dir, read_only=True) if any(c.sql for c in checks) else None
    out = []
    try:
        for i, c in enumerate(checks, 1):
            label = f"{where}: check {i} ({c.name!r})"
            if c.metric is not None:
                measured = _lookup(summary, c.metric, c.default, label)
            else:
                try:
                    statements = con.extract_statements(c.sql)
                except duckdb.Error as e:
                    raise GateFileError(f"{label}: SQL does not parse: {' '.join(str(e).split())}") from None
                kinds = [str(st.type).rsplit(".", 1)[-1] for st in statements]
                if kinds != ["SELECT"]:
                    raise GateFileError(f"{label}: `sql` must be one SELECT statement, got {kinds}")
                try:
                    rows = con.execute(c.sql).fetchall()
                except duckdb.Error as e:
                    raise GateFileError(f"{label}: SQL failed: {' '.join(str(e).split())}") from None
                if len(rows) != 1 or len(rows[0]) != 1:
                    raise GateFileError(f"{label}: `sql` must return one row with one column, got "
                                        f"{len(rows)} row(s)")
                measured = rows[0][0]
                if hasattr(measured, "__float__") and not isinstance(measured, (bool, int, float)):
                    measured = float(measured)  # DECIMAL
            out.append(Outcome(c, measured, _compare(measured, c.op, c.value)))
    finally:
        if con is not None:
            con.close()
    return out


def format_outcomes(outcomes: list[Outcome], path: str) -> str:
    failed = [o for o in outcomes if not o.passed]
    lines = [o.line() for o in outcomes]
    lines.append(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed ({path})")
    return "\n".join(lines) + "\n"
