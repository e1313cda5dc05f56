"""The fixed cost of a pipeline: building, translating and running the default graph on an input
that is rejected at once, with and without the memos of Beam's DoFn introspection and option
views (pipelines/startup.py).

    .venv/bin/python bench/bench_graph.py [--repeat 4] [--rounds 2]

Each side runs in a fresh child process (`--repeat` runs of `curate.run` on one undecodable file,
so no model loads), the sides alternating `--rounds` times, so a load change on the shared box
hits both. The figure is the process CPU time (`time.process_time`) per run after the first (the
first pays imports), and the ratio memo / plain. Also counts the calls of Beam's own
`get_dofn_specs` per run on each side. Prints one table; writes `bench/results/graph.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

CHILD = r"""
import json, shutil, sys, time
from pathlib import Path
from apache_beam.transforms import userstate
from mmcurate.pipelines import curate, startup
from mmcurate.pipelines.config import CurateConfig

side, repeat, tmp = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
beams = userstate.get_dofn_specs
calls = [0]
def counting(fn):
    calls[0] += 1
    return beams(fn)
userstate.get_dofn_specs = counting
if side == "plain":
    startup.memoize_dofn_specs = lambda: False  # build_stages installs them: not on this side
    startup.memoize_option_views = lambda: False
bad = tmp / "bad.wav"
bad.write_bytes(b"not audio")
cpu, found = [], []
for i in range(repeat):
    out = tmp / f"out-{side}-{i}"
    shutil.rmtree(out, ignore_errors=True)
    calls[0] = 0
    t = time.process_time()
    curate.run([str(bad)], str(out), CurateConfig())
    cpu.append(time.process_time() - t)
    found.append(calls[0])
print(json.dumps({"cpu_s": cpu, "calls": found}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=4, help="runs per child process (first one not counted)")
    ap.add_argument("--rounds", type=int, default=2, help="child processes per side, alternating")
    args = ap.parse_args()
    got: dict[str, dict[str, list]] = {"plain": {"cpu_s": [], "calls": []}, "memo": {"cpu_s": [], "calls": []}}
    with tempfile.TemporaryDirectory(prefix="bench-graph-") as tmp:
        for _ in range(args.rounds):
            for side in ("plain", "memo"):
                proc = subprocess.run([sys.executable, "-c", CHILD, side, str(args.repeat), tmp],
                                      capture_output=True, text=True, cwd=ROOT)
                if proc.returncode:
                    sys.exit(f"bench_graph: the {side} child failed:\n{proc.stderr[-2000:]}")
                one = json.loads(proc.stdout.strip().splitlines()[-1])
                got[side]["cpu_s"] += one["cpu_s"][1:]
                got[side]["calls"] += one["calls"][1:]
    rows = {side: {"cpu_s_median": statistics.median(v["cpu_s"]), "runs": len(v["cpu_s"]),
                   "beam_get_dofn_specs_calls": statistics.median(v["calls"])} for side, v in got.items()}
    ratio = rows["memo"]["cpu_s_median"] / rows["plain"]["cpu_s_median"]
    print("side   runs  CPU s per run (median)  Beam get_dofn_specs calls per run")
    for side, r in rows.items():
        print(f"{side:6} {r['runs']:4}  {r['cpu_s_median']:22.2f}  {r['beam_get_dofn_specs_calls']:.0f}")
    print(f"memo / plain CPU: {ratio:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "graph.json").write_text(json.dumps({"sides": rows, "ratio": ratio, "raw": got}, indent=1))


if __name__ == "__main__":
    main()
