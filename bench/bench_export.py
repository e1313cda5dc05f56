"""Export throughput at scale: curated hours of speech per minute of `mmcurate export`, per format.

    .venv/bin/python bench/bench_export.py [--hours 1.0] [--source-s 120] [--formats lhotse,shar,...]

1. Sources: `--hours` of 16 kHz WAV files, `--source-s` seconds each, each a seeded
   concatenation of slices of the shared media's single-speaker speech (`speakers/`, `speech/`)
   at its own gain, so every file has its own bytes (no ingest duplicates).
2. One output: the real pipeline (decode, VAD, segments, quality, sink, manifest) with the test
   suite's fake transcriber (`tests/quality_fakes.py`: words over each VAD region, no Whisper
   time), diarization off, the fake DNSMOS, and `segments.include_audio=true`, so the segments
   carry their FLAC audio as a user's output with audio in the shards does.
3. Each format exported from it by the `mmcurate` command in a child process, the wall time of
   the whole command (start-up included) and the time the command reports for its own work.

Figures: curated hours (the audit's `curated_segments`), per format the command's wall seconds,
curated hours per minute, and the bytes written. Writes `bench/results/export.json`. The run in
step 2 is not timed for the table. duplex and qa need two or more speakers per source, which a
run with diarization off does not have: they are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
MEDIA = ROOT.parent / "shared" / "media"
RESULTS = ROOT / "bench" / "results"
SR = 16000
FORMATS = ("lhotse", "shar", "webdataset", "nemo", "hf")


def speech_pool() -> list[np.ndarray]:
    from mmcurate.transforms.decode import decode_audio

    files = sorted((MEDIA / "speakers").glob("*")) + sorted((MEDIA / "speech").glob("*.wav"))
    return [decode_audio(str(f)) for f in files if f.suffix in (".wav", ".mp3", ".flac")]


def make_sources(out: Path, hours: float, source_s: float, seed: int = 0) -> list[str]:
    import soundfile as sf

    out.mkdir(parents=True, exist_ok=True)
    pool = speech_pool()
    rng = random.Random(seed)
    n = max(1, round(hours * 3600 / source_s))
    paths = []
    for i in range(n):
        path = out / f"episode-{i:04d}.wav"
        paths.append(str(path))
        if path.exists():
            continue
        parts, have = [], 0
        while have < source_s * SR:
            clip = pool[rng.randrange(len(pool))]
            parts += [clip, np.zeros(int(rng.uniform(0.3, 1.2) * SR), np.float32)]
            have += len(clip) + len(parts[-1])
        audio = np.concatenate(parts)[: int(source_s * SR)] * rng.uniform(0.5, 1.0)
        sf.write(path, audio.astype(np.float32), SR, subtype="PCM_16")
    return paths


def curated_hours(out: str) -> float:
    from mmcurate.quality.audit import connect
    from mmcurate.quality.curated import curated_summary

    return curated_summary(connect(out, read_only=True))["hours_segments"]


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=1.0, help="hours of generated source audio")
    ap.add_argument("--source-s", type=float, default=120.0, help="seconds per source file")
    ap.add_argument("--formats", default=",".join(FORMATS), help="formats to export, comma-separated")
    ap.add_argument("--work", default="/tmp/mmcurate-bench-export", help="where sources and outputs go")
    args = ap.parse_args()
    work = Path(args.work)
    sources = make_sources(work / "sources", args.hours, args.source_s)
    out = work / "out"
    if not (out / "manifest.json").exists():
        from quality_fakes import fake_run

        t = time.perf_counter()
        fake_run(sources, str(out), stages=("vad", "speech", "quality"), segments={"include_audio": True})
        print(f"bench_export: the output of {len(sources)} sources took {time.perf_counter() - t:.0f} s (not timed below)")
    hours = curated_hours(str(out))
    rows = []
    env = dict(os.environ, PYANNOTE_METRICS_ENABLED="false", HF_HUB_OFFLINE="1")
    mmcurate = str(Path(sys.executable).with_name("mmcurate"))
    for fmt in [f for f in args.formats.split(",") if f]:
        to = work / f"export-{fmt}"
        subprocess.run(["rm", "-rf", str(to)], check=True)
        t = time.perf_counter()
        proc = subprocess.run([mmcurate, "export", str(out), "--format", fmt, "--to", str(to)],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if proc.returncode:
            sys.exit(f"bench_export: export {fmt} failed:\n{proc.stderr[-2000:]}")
        rows.append({"format": fmt, "wall_s": wall, "hours_per_min": hours / (wall / 60),
                     "bytes": tree_bytes(to)})
    load = os.getloadavg()
    print(f"\n{len(sources)} sources, {args.hours:g} h generated; curated {hours:.3f} h of segments; "
          f"load {load[0]:.1f} {load[1]:.1f}; {os.cpu_count()} CPUs")
    print("| format | command wall s | curated hours per minute | written MB |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['wall_s']:.1f} | {r['hours_per_min']:.2f} | {r['bytes'] / 1e6:.1f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(
        {"sources": len(sources), "hours_generated": args.hours, "curated_hours": hours, "load": load,
         "formats": rows}, indent=1))


if __name__ == "__main__":
    main()
