"""What each stage of a default run costs: CPU-seconds per hour of media, and wall time.

    .venv/bin/python bench/bench_costs.py [--media ../shared/media] [--workers 1,2] [--repeat 1]
                                          [--set asr.batched=false ...]

Runs `mmcurate run` (the CLI's own `main`, so the same config, worker and thread choices) in a
fresh child process per run, on the same input:

- the default stages on one worker (`--direct_running_mode=in_memory`): everything runs on one
  thread, so `time.process_time()` deltas around a stage's own calls (the process's CPU, model
  threads included) are that stage's CPU. The calls timed are the model handlers'
  `run_inference` (VAD, ASR, diarization, DNSMOS) and the `process` of the DoFns that do a
  stage's work (quality text filters and verdicts, keyframes, fingerprints, MinHash,
  embeddings, the shard writer); a timed call inside another is counted once, in the inner
  one. Decoding is timed apart (every source decoded to 16 kHz once, as the VAD step does) and
  taken out of the VAD step's figure; the decodes other stages make for themselves stay in
  theirs. "other" is the run's CPU minus the timed calls (imports, model loads, the runner,
  shuffles, ingest, speaker attribution);
- wall time of the default stages and of `--stages vad,speech` at each `--workers` count
  (1: `in_memory`; N > 1: N worker threads, as `mmcurate run` picks on N cores), alternating,
  so a load change on the shared box hits both: the ratio default / speech-only is the figure.

`--set KEY=VALUE` (repeatable) goes to every run, e.g. a baseline with a setting changed.
Prints the table and the load (`uptime`) before and after; writes `bench/results/costs.json`.
Absolute seconds on a shared box are noisy: compare ratios measured in one command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# (module, class, method, stage): the calls whose CPU is a stage's own
TIMED = [
    ("mmcurate.transforms.vad", "VadModelHandler", "run_inference", "VAD"),
    ("mmcurate.transforms.asr", "AsrModelHandler", "run_inference", "ASR"),
    ("mmcurate.transforms.diarize", "DiarizationModelHandler", "run_inference", "diarization"),
    ("mmcurate.transforms.segment_quality", "DnsmosModelHandler", "run_inference", "DNSMOS"),
    ("mmcurate.transforms.segment_quality", "_ScoreTextFn", "process", "quality text filters"),
    ("mmcurate.transforms.segment_quality", "_JudgeFn", "process", "quality text filters"),
    ("mmcurate.transforms.video", "_KeyframesFn", "process", "keyframes"),
    ("mmcurate.transforms.dedup_signatures", "SourceSignatures", "process", "fingerprints"),
    ("mmcurate.transforms.dedup_signatures", "TextSignatures", "process", "MinHash"),
    ("mmcurate.transforms.dedup_signatures", "EmbedTranscripts", "process", "embeddings"),
    ("mmcurate.transforms.sink", "_WriteBucket", "process", "write"),
    ("mmcurate.transforms.sink", "_Publish", "process", "write"),
]
ORDER = ["decode", "VAD", "ASR", "diarization", "keyframes", "DNSMOS", "quality text filters",
         "fingerprints", "MinHash", "embeddings", "write", "other"]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _instrument(cpu: dict[str, float]) -> None:
    """Wrap each TIMED call: its CPU (process_time, exclusive of timed calls inside it) is
    added to cpu[stage]. Generators are run to the end inside the timer."""
    import types

    stack: list[float] = []  # CPU of timed calls inside the running one

    def wrap(fn, stage):
        def timed(*args, **kwargs):
            stack.append(0.0)
            t0 = time.process_time()
            try:
                out = fn(*args, **kwargs)
                if isinstance(out, types.GeneratorType):
                    out = list(out)
                return out
            finally:
                spent = time.process_time() - t0
                inner = stack.pop()
                cpu[stage] = cpu.get(stage, 0.0) + spent - inner
                if stack:
                    stack[-1] += spent
        return timed

    for module, cls, method, stage in TIMED:
        try:
            owner = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            continue  # a stage this version of the code does not have
        setattr(owner, method, wrap(getattr(owner, method), stage))


def decode_cpu(inputs: list[str]) -> float:
    """CPU seconds to decode every media file under `inputs` to 16 kHz mono, once."""
    from mmcurate.transforms.decode import DecodeError, iter_audio

    files = [p for i in inputs for p in (sorted(Path(i).rglob("*")) if Path(i).is_dir() else [Path(i)])
             if p.suffix.lower() in (".wav", ".flac", ".mp3", ".mp4", ".m4a", ".ogg", ".opus", ".webm", ".mkv")]
    t0 = time.process_time()
    for f in files:
        try:
            for _chunk in iter_audio(str(f), 16000, chunk_s=30.0):
                pass
        except DecodeError:
            pass  # no audio stream: nothing the VAD step decodes either
    return time.process_time() - t0


def child(spec: dict) -> None:
    """One run in this process; prints one JSON line."""
    cpu: dict[str, float] = {}
    if spec["timed"]:
        _instrument(cpu)
    from mmcurate.pipelines.cli import main

    argv = ["run", *spec["inputs"], "--output", spec["output"], "--no-audit", *spec["args"]]
    c0, t0 = time.process_time(), time.perf_counter()
    rc = main(argv)
    wall, total = time.perf_counter() - t0, time.process_time() - c0
    if rc != 0:
        sys.exit(f"mmcurate run failed (rc {rc})")
    out = {"wall_s": wall, "cpu_s": total, "stages": cpu}
    if spec["timed"]:
        out["decode_s"] = decode_cpu(spec["inputs"])
    print("RESULT " + json.dumps(out), flush=True)


def run(inputs: list[str], out: Path, args: list[str], timed: bool, log: Path) -> dict:
    spec = {"inputs": inputs, "output": str(out), "args": args, "timed": timed}
    t0 = time.perf_counter()
    with log.open("w") as fh:
        p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                           stderr=fh, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        sys.exit(f"run failed (rc {p.returncode}); see {log}:\n" + log.read_text()[-3000:])
    r = json.loads(lines[-1][len("RESULT "):])
    r["process_wall_s"] = wall  # with the child's start-up and imports, as a CLI run
    return r


def audio_s(out: Path) -> float:
    import pyarrow.parquet as pq

    m = json.loads((out / "manifest.json").read_text())
    return float(sum(sum(pq.read_table(out / rel, columns=["duration_s"]).column(0).to_pylist())
                     for rel in m["shards"] if rel.startswith("sources/")))


def worker_args(n: int) -> list[str]:
    if n == 1:
        return ["--direct_running_mode=in_memory"]
    return ["--direct_running_mode=multi_threading", f"--direct_num_workers={n}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config value for every run (mmcurate run --set)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    inputs = [str(args.media)]
    sets = [x for kv in args.set for x in ("--set", kv)]
    counts = [int(x) for x in args.workers.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    load = [uptime()]
    print(load[0], flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = tmp / "timed"
        timed = run(inputs, out, worker_args(1) + sets, True, tmp / "timed.log")
        media_s = audio_s(out)
        per_hour = 3600.0 / media_s
        stages = dict(timed["stages"])
        stages["decode"] = timed["decode_s"]
        stages["VAD"] = max(0.0, stages.get("VAD", 0.0) - timed["decode_s"])
        stages["other"] = timed["cpu_s"] - sum(v for k, v in timed["stages"].items())
        total = timed["cpu_s"]
        print(f"\nCPU of a default run on one worker ({media_s:.1f} s of media, {total:.1f} CPU s, "
              f"{timed['wall_s']:.1f} s wall):")
        print(f"| stage | CPU s | CPU s per hour of media | share |\n|---|---|---|---|")
        for k in ORDER:
            v = stages.get(k, 0.0)
            print(f"| {k} | {v:.1f} | {v * per_hour:.0f} | {100 * v / total:.1f} % |")
        print(f"| **total** | {total:.1f} | {total * per_hour:.0f} | 100 % |", flush=True)
        walls = []
        for rep in range(args.repeat):
            for n in counts:
                for name, sel in (("default", []), ("vad,speech", ["--stages", "vad,speech"])):
                    o = tmp / f"{name}-{n}-{rep}"
                    r = run(inputs, o, worker_args(n) + sets + sel, False, tmp / f"{name}-{n}-{rep}.log")
                    r.update(stages=name, workers=n, repeat=rep)
                    walls.append(r)
                    print(f"  {name:<10} {n} worker(s): {r['process_wall_s']:.1f} s wall "
                          f"({media_s / r['process_wall_s']:.1f}x real time), {r['cpu_s']:.0f} s CPU", flush=True)
        ratios = {}
        for n in counts:
            dw = sum(r["process_wall_s"] for r in walls if r["workers"] == n and r["stages"] == "default")
            sw = sum(r["process_wall_s"] for r in walls if r["workers"] == n and r["stages"] == "vad,speech")
            ratios[n] = dw / sw
            print(f"default / vad,speech wall, {n} worker(s): {ratios[n]:.2f}x (goal <= 1.3)")
    load.append(uptime())
    print(load[-1])
    result = {"sets": args.set, "media_s": media_s, "cores": os.cpu_count(), "timed_run": timed,
              "cpu_s": stages, "cpu_s_per_media_hour": {k: v * per_hour for k, v in stages.items()},
              "dnsmos_share": stages.get("DNSMOS", 0.0) / total, "walls": walls,
              "default_over_speech": ratios, "load": load}
    (RESULTS / "costs.json").write_text(json.dumps(result, indent=1))
    print(f"DNSMOS share of the default run's CPU: {100 * result['dnsmos_share']:.1f} % (goal <= 15 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
