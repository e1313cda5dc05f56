"""Two outputs of `mmcurate run`, table by table and row by row: how "behaviour unchanged" is
checked after a refactor (a `make demo` before and after).

    .venv/bin/python bench/compare_outputs.py BEFORE AFTER [COLUMN ...]

Every column both sides have is compared except `run_id` and the COLUMNs named (e.g.
`partition`, which holds the run id when dedup writes no index). Rows are compared as
multisets (EXCEPT ALL both ways), so shard layout and row order do not matter. Prints one line
per table; exits 1 when a table both sides have differs.
"""

from __future__ import annotations

import glob
import os
import sys

import duckdb


def compare(before: str, after: str, skip: set[str]) -> int:
    tables = sorted({os.path.basename(os.path.dirname(p)) for d in (before, after)
                     for p in glob.glob(f"{d}/*/*.parquet")})
    bad = 0
    con = duckdb.connect()
    for t in tables:
        fa, fb = glob.glob(f"{before}/{t}/*.parquet"), glob.glob(f"{after}/{t}/*.parquet")
        if not fa or not fb:
            print(f"{t}: only in {'after' if fb else 'before'} ({len(fa or fb)} files)")
            continue
        ca = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({fa!r})").fetchall()]
        cb = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({fb!r})").fetchall()]
        keep = [c for c in ca if c not in skip and c in cb]
        sel = ", ".join(f'"{c}"' for c in keep)
        na = con.execute(f"SELECT count(*) FROM read_parquet({fa!r})").fetchone()[0]
        nb = con.execute(f"SELECT count(*) FROM read_parquet({fb!r})").fetchone()[0]
        d1, d2 = (con.execute(f"SELECT count(*) FROM (SELECT {sel} FROM read_parquet({x!r}) EXCEPT ALL "
                              f"SELECT {sel} FROM read_parquet({y!r}))").fetchone()[0]
                  for x, y in ((fa, fb), (fb, fa)))
        extra = sorted(set(ca) ^ set(cb))
        ok = d1 == 0 and d2 == 0 and na == nb
        bad += not ok
        print(f"{t}: {na} vs {nb} rows, {len(keep)} columns compared, differing rows {d1}/{d2}"
              + (f", columns in one only: {extra}" if extra else "") + ("" if ok else "  <-- DIFFERENT"))
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(compare(sys.argv[1], sys.argv[2], {"run_id"} | set(sys.argv[3:])))
