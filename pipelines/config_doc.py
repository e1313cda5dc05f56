"""`mmcurate config`: every config key with its type, default, allowed values and meaning,
generated from the config dataclasses themselves (no list to keep in step by hand).

Type and default come from the dataclass fields, the allowed values or range from the
section's `RULES` (`mmcurate.schemas.params.Rule`), and the meaning from the source comment of
the field: its trailing `# ...` comment, else the block of comment lines just above it; the
first sentence of it, cut to one line. A field without either shows "-".
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any

from mmcurate.schemas.params import Rule, _hints

MEANING_WIDTH = 110  # the meaning column's longest text: one terminal line with the key
# words ending in "." that do not end a sentence
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "incl.")


@dataclass(frozen=True)
class KeyDoc:
    key: str  # "section.key", as --set and config files spell it
    section: str  # "" for top-level keys (`stages`)
    type: str
    default: Any  # JSON-ready (tuples as lists)
    allowed: str  # from RULES: choices, range, why; "" when the type says it all
    meaning: str  # first sentence of the field's comment, or "-"
    defined_in: str  # module:Class


def keys(root: type | None = None) -> list[KeyDoc]:
    """Every key of the run config (`CurateConfig`), sections in declaration order."""
    if root is None:
        from mmcurate.pipelines.config import CurateConfig

        root = CurateConfig
    return list(_walk(root, ""))


def _walk(cls: type, prefix: str):
    hints = _hints(cls)
    rules: dict[str, Rule] = getattr(cls, "RULES", {}) or {}
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, Any)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            yield from _walk(tp, key)
            continue
        yield KeyDoc(
            key=key, section=prefix, type=type_text(tp), default=_json_ready(_default(f)),
            allowed=allowed_text(rules.get(f.name)),
            meaning=first_sentence(comments.get(f.name, "")) or "-",
            defined_in=f"{cls.__module__}:{cls.__qualname__}",
        )


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment text} from the class source: the trailing comment of the
    field's line(s), else the comment lines directly above it (no blank line between)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    comments: dict[int, str] = {}  # line number -> comment text without "#"
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    node = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef))
    out = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        own_line = lambda n: lines[n - 1].lstrip().startswith("#")  # noqa: E731
        trailing = [comments[n] for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
                    if n in comments and not own_line(n)]
        above, n = [], stmt.lineno - 1
        while n >= 1 and own_line(n):
            above.insert(0, comments.get(n, ""))
            n -= 1
        text = " ".join(trailing) if trailing else " ".join(above)
        if text.strip():
            out[stmt.target.id] = " ".join(text.split())
    return out


def first_sentence(text: str, width: int = MEANING_WIDTH) -> str:
    """The first sentence of `text` (a "." outside brackets, followed by a space or the end,
    after a word, not closing an abbreviation), cut to `width` characters. A first sentence of
    one or two words is a group's heading ("language. Allow-list of ..."): the next one joins
    it ("language: Allow-list of ...")."""
    s, rest = _split_sentence(text)
    if len(s.split()) < 3 and rest:
        s = f"{s.rstrip('.')}: {_split_sentence(rest)[0]}"
    if len(s) > width:
        s = s[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return s


def _split_sentence(text: str) -> tuple[str, str]:
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "." and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            head = text[: i + 1]
            if any(c.isalnum() for c in head) and head.rsplit(" ", 1)[-1].lower() not in _ABBREVIATIONS:
                return head.strip(), text[i + 1:].strip()
    return text.strip(), ""


def type_text(tp: Any) -> str:
    """The annotation as a reader of TOML/JSON thinks of it: `float | null`, `list[str]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list[{type_text(args[0]) if args else 'any'}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def allowed_text(rule: Rule | None) -> str:
    """A Rule as one short text: `a | b`, `[0, 1]`, `>= 1`, then its `why` in brackets."""
    if rule is None:
        return ""
    parts = []
    if rule.choices is not None:
        parts.append(" | ".join(str(c) for c in rule.choices))
    low = (f"[{_num(rule.ge)}" if rule.ge is not None else f"({_num(rule.gt)}" if rule.gt is not None else None)
    high = (f"{_num(rule.le)}]" if rule.le is not None else f"{_num(rule.lt)})" if rule.lt is not None else None)
    if low and high:
        parts.append(f"{low}, {high}")
    elif low:
        parts.append((">= " if rule.ge is not None else "> ") + low[1:])
    elif high:
        parts.append(("<= " if rule.le is not None else "< ") + high[:-1])
    if rule.check is not None and not parts:
        parts.append("checked")
    text = ", ".join(parts)
    if rule.why:
        text = f"{text} ({rule.why})" if text else rule.why
    return text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def sections(docs: list[KeyDoc]) -> list[str]:
    """The names `mmcurate config SECTION` accepts: sections, and top-level keys."""
    return list(dict.fromkeys(d.section or d.key for d in docs))


def select(docs: list[KeyDoc], name: str | None) -> list[KeyDoc]:
    """The keys of one section (or one key, `asr.beam_size`); all keys for None."""
    if not name:
        return docs
    return [d for d in docs if d.section == name or d.key == name
            or d.section.startswith(name + ".")]


def format_keys(docs: list[KeyDoc], cell: int = 28) -> str:
    """One aligned line per key, under a header per section; long defaults / allowed values are
    cut to `cell` characters (`--json` has them whole)."""
    def cut(s: str) -> str:
        return s if len(s) <= cell else s[: cell - 3] + "..."

    rows = [(d.key, d.type, cut(json.dumps(d.default)), cut(d.allowed or "-"), d.meaning, d)
            for d in docs]
    widths = [max([len(h)] + [len(r[i]) for r in rows])
              for i, h in enumerate(("KEY", "TYPE", "DEFAULT", "ALLOWED"))]
    out, section = [], None
    head = "  ".join(h.ljust(w) for h, w in zip(("KEY", "TYPE", "DEFAULT", "ALLOWED"), widths))
    out.append(head + "  MEANING")
    for *cells, meaning, d in rows:
        if d.section != section:
            section = d.section
            where = d.defined_in.replace("mmcurate.", "").replace(":", " ")
            out.append("")
            out.append(f"[{section}]  ({where})" if section else f"(top level)  ({where})")
        out.append(("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + meaning).rstrip())
    return "\n".join(out)


def keys_json(docs: list[KeyDoc]) -> str:
    return json.dumps([dataclasses.asdict(d) for d in docs], indent=2)


def effective_config(cfg: Any) -> str:
    """A built config as the JSON `mmcurate run ... --show-config` prints: every key, defaults
    included, as a --config file would write them."""
    return json.dumps(dataclasses.asdict(cfg), indent=2)
