"""Typed, range-checked run configuration: every section is a dataclass checked the same way.

Each config dataclass (declared beside its stage) is built from a mapping (TOML, YAML, JSON or
`--set KEY=VALUE`) by `build()`, which checks every value against the field's annotation:

    int        an integer (a float with an integral value, e.g. 1e9 from YAML, is accepted);
               booleans are not integers
    float      a number (int or float, finite), not a boolean
    bool       true / false only
    str        a string
    X | None   X, or null/None
    tuple[str, ...]   a list of strings

and then against the class's declared `RULES` ({field: Rule}): bounds (ge/gt/le/lt), a set of
choices, or a check function returning a problem text. Nothing stops at the first problem:
every problem of the whole config is collected, so one message lists them all
(`ConfigError.problems`), and nothing runs until the config is right.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable


class ConfigError(ValueError):
    """The run config is wrong; `problems` lists every problem found, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Rule:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None when fine
    why: str = ""  # appended to the problem: what the value means or where the bound comes from

    def problems(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        out = []
        hint = f" ({self.why})" if self.why else ""
        if self.choices is not None:
            if isinstance(value, tuple):
                bad = [v for v in value if v not in self.choices]
                if bad:
                    out.append(f"{where}: {bad} not among {list(self.choices)}{hint}")
            elif value not in self.choices:
                out.append(f"{where}: {value!r} is not one of {list(self.choices)}{hint}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bound, ok, text in (
                (self.ge, lambda v, b: v >= b, ">="), (self.gt, lambda v, b: v > b, ">"),
                (self.le, lambda v, b: v <= b, "<="), (self.lt, lambda v, b: v < b, "<"),
            ):
                if bound is not None and not ok(value, bound):
                    out.append(f"{where}: {value!r} must be {text} {bound:g}{hint}")
        if self.check is not None and not out:
            problem = self.check(value)
            if problem:
                out.append(f"{where}: {problem}")
        return out


def unit_interval(why: str = "") -> Rule:
    return Rule(ge=0.0, le=1.0, why=why)


def positive(why: str = "") -> Rule:
    return Rule(gt=0, why=why)


def non_negative(why: str = "") -> Rule:
    return Rule(ge=0, why=why)


def _hints(cls: type) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, globalns=vars(module) if module else None)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number",
                "bool": "true or false"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """`value` as type `tp`, or the value unchanged with a problem appended."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for a in options:
            trial: list[str] = []
            out = _coerce(value, a, where, trial)
            if not trial:
                return out
        names = " or ".join(_type_name(a) for a in options)
        if type(None) in args:
            names += " or null"
        problems.append(f"{where}: expected {names}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return tuple(_coerce(v, item, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value  # an annotation this checker does not know: leave it to the class
    problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """An instance of config dataclass `cls` from `data`, checking keys, types and RULES.

    Problems are appended to `problems`; the returned instance holds the defaults where a
    value was wrong, so checks further down still run on sensible values."""
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a table/mapping, got {data!r}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            continue
        f = fields[name]
        tp = hints.get(name, Any)
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, key, problems)
            continue
        before = len(problems)
        coerced = _coerce(value, tp, key, problems)
        if len(problems) == before:
            kwargs[name] = coerced
    obj = cls(**kwargs)
    check(obj, where, problems, nested=False)
    return obj


def check(obj: Any, where: str, problems: list[str], nested: bool = True) -> list[str]:
    """Append the problems of an already-built config object (its RULES, its `validate()`,
    and with `nested` those of its dataclass fields); returns `problems`."""
    rules: dict[str, Rule] = getattr(type(obj), "RULES", {}) or {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{where}.{f.name}" if where else f.name
        if nested and dataclasses.is_dataclass(value):
            check(value, key, problems)
        if f.name in rules:
            problems.extend(rules[f.name].problems(value, key))
    extra = getattr(obj, "validate", None)
    if callable(extra):
        problems.extend(f"{where}: {p}" if where else p for p in extra())
    return problems
