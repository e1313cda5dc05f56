"""The README's worked example against a real run: every count it shows (rows per table, inputs,
sources, source-level rejected, ledger rows per stage/reason) must be the run's.

    python tests/readme_example.py out/demo            # after `make demo`: exit 1 on a drift
    python tests/readme_example.py out/demo --write    # set the README's counts to the run's

Only what the README shows is compared (its "..." lines leave rows out), except the tables: a
table the run filled that the README does not list is a drift too. tests/test_readme_example.py
runs the check (on `make demo`'s output when there is one)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

_TABLE = re.compile(r"^  (?P<key>[a-z_]+) +(?P<n>\d+) rows(?P<rest>.*)$")
_INPUTS = re.compile(r"^  (?P<key>inputs|sources|source-level rejected) +(?P<n>\d+)(?P<rest>)$")
_LEDGER = re.compile(r"^  (?P<key>[a-z_]+/[a-z_]+) +(?P<n>\d+)(?P<rest>\s*(#.*)?)$")


def example_block(text: str) -> tuple[int, int]:
    """(start, end) offsets of the worked example's console block."""
    head = text.index("### Worked example")
    start = text.index("```console\n", head) + len("```console\n")
    return start, text.index("```", start)


def claims(text: str) -> dict[str, dict[str, int]]:
    """{"tables": {table: rows}, "inputs": {...}, "rejected": {stage/reason: rows}} as shown."""
    a, b = example_block(text)
    out: dict[str, dict[str, int]] = {"tables": {}, "inputs": {}, "rejected": {}}
    for line in text[a:b].splitlines():
        for kind, rx in (("tables", _TABLE), ("inputs", _INPUTS), ("rejected", _LEDGER)):
            m = rx.match(line)
            if m:
                out[kind][m["key"]] = int(m["n"])
                break
    return out


def measured(out_dir: str) -> dict[str, dict[str, int]]:
    from mmcurate.quality.audit import summarize

    s = summarize(out_dir)
    inv = s["invariant"]
    return {"tables": {t: n for t, n in s["tables"].items()},
            "inputs": {"inputs": s["inputs"], "sources": inv["sources"],
                       "source-level rejected": inv["source_level_rejected"]},
            "rejected": {f"{st}/{r}": n for st, d in s["rejected_by_stage"].items() for r, n in d.items()}}


def drift(shown: dict[str, dict[str, int]], real: dict[str, dict[str, int]]) -> list[str]:
    """One line per count the README shows that the run does not give, and per filled table the
    README does not list."""
    out = [f"{kind} {key}: README {n}, run {real[kind].get(key, 0)}"
           for kind in ("tables", "inputs", "rejected") for key, n in shown[kind].items()
           if real[kind].get(key, 0) != n]
    out += [f"tables {t}: {n} rows in the run, not in the README" for t, n in real["tables"].items()
            if n and t not in shown["tables"]]
    return out


def rewrite(text: str, real: dict[str, dict[str, int]]) -> str:
    """The README with the worked example's counts set to the run's (columns kept) and a row
    line added for each filled table it does not list."""
    a, b = example_block(text)
    lines = text[a:b].split("\n")
    shown = claims(text)
    last_table = None
    for i, line in enumerate(lines):
        for kind, rx in (("tables", _TABLE), ("inputs", _INPUTS), ("rejected", _LEDGER)):
            m = rx.match(line)
            if m:
                gap = line[m.end("key"):m.end("n")]  # the spaces and the number
                n = str(real[kind].get(m["key"], 0))
                lines[i] = line[:m.end("key")] + (n.rjust(len(gap)) if len(n) < len(gap) else " " + n) \
                    + line[m.end("n"):]
                last_table = i if kind == "tables" else last_table
                break
    missing = [t for t, n in real["tables"].items() if n and t not in shown["tables"]]
    if last_table is not None and missing:
        m = _TABLE.match(lines[last_table])
        base = m["rest"].rstrip("/").rsplit("/", 1)[0] if "/" in m["rest"] else ""
        lines[last_table + 1:last_table + 1] = [
            f"  {t} {str(real['tables'][t]).rjust(m.end('n') - 3 - len(t))} rows"
            + (f"{base}/{t}/" if base else "") for t in missing]
    return text[:a] + "\n".join(lines) + text[b:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", help="a run's output directory (make demo's: out/demo)")
    p.add_argument("--write", action="store_true", help="set the README's counts to the run's")
    args = p.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    real = measured(args.output)
    if args.write:
        README.write_text(rewrite(text, real), encoding="utf-8")
        text = README.read_text(encoding="utf-8")
    lines = drift(claims(text), real)
    for line in lines:
        print(f"README worked example: {line}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
