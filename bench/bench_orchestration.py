"""Orchestration benchmarks: whole `mmcurate run`s as child processes.

    .venv/bin/python bench/bench_orchestration.py workers [--media ../shared/media] [--stages ...] [--repeat 1] [--copies K]
    .venv/bin/python bench/bench_orchestration.py scaling [--sizes 10,50,200,500] [--scaling-stages vad|default]
    .venv/bin/python bench/bench_orchestration.py dask [--dask-inputs PATH ...]
    .venv/bin/python bench/bench_orchestration.py long [--hours 2]

- `workers`: the same run with the multi-processing DirectRunner at 1 and at 2 workers
  (`--direct_running_mode=multi_processing --direct_num_workers=N`; `--running-mode
  multi_threading`: worker threads of one process, as `mmcurate run` takes by default), model threads set to
  cores / workers (asr.cpu_threads, diarization.torch_threads, quality.dnsmos_threads,
  dedup.semantic_threads) so both use
  the same cores;
  1 and 2 workers alternate (`--repeat` pairs) so a load change on the shared box hits both.
  `--threads-per-worker 1` keeps each worker's size fixed instead (scale-out, as on a
  distributed runner). Each run's CPU seconds / wall seconds = cores kept busy.
  Figure: speed-up = wall(1 worker) / wall(2 workers) (goal >= 1.7 on 2 cores).
  `--copies K` (K > 1) also runs the shared media K times over (K - 1 stream copies of every
  media file: same packets, another container comment, so other bytes and other source ids)
  at 1 and 2 workers, and reports the throughput speed-up of the extra K - 1 passes:
  (wall1(K) - wall1(1)) / (wall2(K) - wall2(1)). The start-up a run pays once (imports, model
  loads, the tail) cancels out there.
- `scaling`: N distinct short files (`--clip-seconds` slices of the shared speech, default 1 to
  11 s, at a random gain; every 4th with a second slice mixed under it, every 3rd re-encoded as
  FLAC),
  `--stages` (default vad; `--scaling-stages default` for every default stage), one pipeline
  each: wall seconds per audio hour and per source, and the driver's peak RSS, for each N.
  Flat = linear scaling; the fixed costs (process start, imports, model loads) show up as a
  higher cost at small N. `--runner-args "--runner dask --dask_scheduler_file F"` runs the
  same on another runner.
- `dask`: the same input on a Dask cluster started here (a scheduler and 1, then 2
  `dask worker --nthreads 1` processes on loopback), `--dask-inputs` (default: the shared
  media; `--clips N`: generated clips): speed-up = wall(1 worker) / wall(2 workers) (goal >=
  1.6). `--runner-args "--set asr.cpu_threads=1 ..."` holds each worker's models to one thread.
- `long`: one generated 2-hour file (the shared recordings tiled with pauses and noise), `--stages
  vad` (ingest, decode, VAD, checkpoint, shards), its wall time and the peak RSS of the run's
  process tree, against an 11-second file in the same command (ratio).

Every mode prints the machine load (`uptime`) before and after and writes
`bench/results/orchestration-<mode>.json`. Timings on a shared box are noisy: compare the
ratios measured in one command, never absolute seconds across commands.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MMCURATE = [str(Path(sys.executable).parent / "mmcurate")]
RESULTS = ROOT / "bench" / "results"
SR = 16000


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run(argv: list[str], log: Path) -> dict:
    """One `mmcurate run` child: wall seconds, exit code, peak RSS of its process tree (the
    largest ru_maxrss of any descendant reaped meanwhile)."""
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as fh:
        rc = subprocess.run(MMCURATE + ["run", *argv, "--no-audit"], stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"run failed (rc {rc}); see {log}:\n" + log.read_text()[-3000:])
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru.ru_utime + ru.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 1), "cores_busy": round(cpu / wall, 2),
            "peak_rss_mb_children": round(ru.ru_maxrss / 1024, 1)}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def audio_s(out: Path) -> float:
    import pyarrow.parquet as pq

    m = manifest(out)
    return float(sum(sum(pq.read_table(out / rel, columns=["duration_s"]).column(0).to_pylist())
                     for rel in m["shards"] if rel.startswith("sources/")))


def _accounted(out: Path) -> set[str]:
    """The input uris with a `sources` row or a `rejected` row (nothing lost: every input)."""
    import pyarrow.parquet as pq

    m = manifest(out)
    return {u for rel in m["shards"] if rel.split("/", 1)[0] in ("sources", "rejected")
            for u in pq.read_table(out / rel, columns=["uri"]).column(0).to_pylist()}


def _speech() -> np.ndarray:
    parts = []
    for name in ("speech/jfk.wav", "speech/LDC93S1.wav", "diarization/sample.wav", "diarization/ami/dev00.wav",
                 "diarization/ami/dev01.wav", "diarization/ami/trn07.wav"):
        import soundfile as sf

        x, sr = sf.read(str(ARGS.media / name), dtype="float32", always_2d=True)
        assert sr == SR, name
        parts.append(x.mean(axis=1))
    return np.concatenate(parts)


def _write_wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


# --------------------------------------------------------------------------- modes


MEDIA_SUFFIXES = (".wav", ".flac", ".mp3", ".mp4")


def _stream_copy(src: Path, dst: Path, tag: str) -> None:
    """`src`'s audio/video packets remuxed unchanged into `dst` with another container
    comment: the same decoded samples and frames, other bytes (ingest keeps it as a source)."""
    import av

    fmt = "mp4" if src.suffix == ".mp4" else None
    with av.open(str(src)) as i, av.open(str(dst), "w", format=fmt or i.format.name.split(",")[0]) as o:
        o.metadata["comment"] = tag
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams if s.type in ("audio", "video")}
        for pkt in i.demux():
            if pkt.dts is None or pkt.stream.index not in streams:
                continue
            pkt.stream = streams[pkt.stream.index]
            o.mux(pkt)


def media_copies(tmp: Path, k: int) -> list[str]:
    """The inputs of `k` passes over the shared media: the folder itself plus k - 1 folders of
    stream copies of its media files."""
    inputs = [str(ARGS.media)]
    for c in range(1, k):
        d = tmp / f"copy{c}"
        for src in sorted(p for p in ARGS.media.rglob("*") if p.suffix in MEDIA_SUFFIXES):
            dst = d / src.relative_to(ARGS.media)
            dst.parent.mkdir(parents=True, exist_ok=True)
            _stream_copy(src, dst, f"mmcurate bench copy {c}")
        inputs.append(str(d))
    return inputs


def workers(tmp: Path) -> dict:
    cores = os.cpu_count() or 2
    rows = []
    passes = [1] + ([ARGS.copies] if ARGS.copies > 1 else [])
    inputs = ({1: [str(make_clips(tmp / "clips", ARGS.clips))]} if ARGS.clips
              else {k: media_copies(tmp, k) for k in passes})
    for rep in range(ARGS.repeat):
        for k, n in ((k, n) for k in passes for n in (1, 2)):
            # split: one machine's cores shared by the workers; fixed: each worker a fixed-size
            # unit (as on a distributed runner, where a worker brings its own cores)
            threads = ARGS.threads_per_worker or max(1, cores // n)
            out = tmp / f"w{n}-x{k}-{rep}"
            argv = [*inputs[k], "--output", str(out), "--stages", ARGS.stages,
                    "--set", f"asr.cpu_threads={threads}", "--set", f"diarization.torch_threads={threads}",
                    "--set", f"quality.dnsmos_threads={threads}", "--set", f"dedup.semantic_threads={threads}",
                    f"--direct_running_mode={ARGS.running_mode}", f"--direct_num_workers={n}"]
            before = uptime()
            r = run(argv, tmp / f"w{n}-x{k}-{rep}.log")
            r.update(workers=n, threads=threads, passes=k, repeat=rep, load_before=before, load_after=uptime(),
                     sources=manifest(out)["tables"].get("sources"), audio_s=round(audio_s(out), 1))
            print(f"  {k} pass(es), {r['sources']} sources, {n} worker(s), {threads} thread(s) each: "
                  f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.0f} s CPU ({r['cores_busy']:.2f} cores busy)  "
                  f"({before.split('load')[-1]})", flush=True)
            rows.append(r)

    def wall(n, k):
        return sum(r["wall_s"] for r in rows if r["workers"] == n and r["passes"] == k)

    result = {"mode": "workers", "running_mode": ARGS.running_mode, "stages": ARGS.stages,
              "cores": cores, "runs": rows,
              "threads_per_worker": ARGS.threads_per_worker or "cores / workers",
              "speedup_2_vs_1": round(wall(1, 1) / wall(2, 1), 3)}
    print(f"speed-up 2 workers vs 1, one pass: {result['speedup_2_vs_1']:.2f}x (goal >= 1.7)")
    if len(passes) > 1:
        k = passes[-1]
        result[f"speedup_2_vs_1_{k}_passes"] = round(wall(1, k) / wall(2, k), 3)
        result["throughput_speedup_extra_passes"] = round((wall(1, k) - wall(1, 1)) / (wall(2, k) - wall(2, 1)), 3)
        print(f"speed-up 2 workers vs 1, {k} passes: {result[f'speedup_2_vs_1_{k}_passes']:.2f}x")
        print(f"throughput speed-up of the {k - 1} extra pass(es) (wall({k}) - wall(1), 1 vs 2 workers): "
              f"{result['throughput_speedup_extra_passes']:.2f}x")
    return result


def make_clips(d: Path, n: int, seed: int = 13) -> Path:
    """`n` distinct short files in `d` (module docstring: `scaling`)."""
    speech = _speech()
    rng = random.Random(seed)
    d.mkdir(parents=True)
    lo, hi = (float(v) for v in ARGS.clip_seconds.split(","))
    for i in range(n):  # distinct bytes: a random slice at a random gain
        length = rng.uniform(lo, hi)
        start = rng.uniform(0, len(speech) / SR - length)
        x = speech[int(start * SR):int((start + length) * SR)] * rng.uniform(0.5, 1.0)
        if i % 4 == 3:  # mixed: a second slice under the first, as crosstalk
            s2 = rng.uniform(0, len(speech) / SR - length)
            x = x + 0.3 * speech[int(s2 * SR):int(s2 * SR) + len(x)]
        if i % 3 == 2:  # re-encoded: FLAC instead of WAV
            import soundfile as sf

            sf.write(str(d / f"clip{i:04d}.flac"), np.clip(x, -1, 1), SR, subtype="PCM_16")
        else:
            _write_wav(d / f"clip{i:04d}.wav", x)
    return d


def scaling(tmp: Path) -> dict:
    sizes = [int(s) for s in ARGS.sizes.split(",")]
    rows = []
    for n in sizes:
        d = make_clips(tmp / f"in{n}", n)
        out = tmp / f"out{n}"
        before = uptime()
        stages = [] if ARGS.scaling_stages == "default" else ["--stages", ARGS.scaling_stages]
        r = run([str(d), "--output", str(out), *stages, *ARGS.runner_args.split()], tmp / f"s{n}.log")
        r["wall_s_per_source"] = round(r["wall_s"] / n, 3)
        a = audio_s(out)
        m = manifest(out)
        r.update(inputs=n, sources=m["tables"]["sources"], audio_s=round(a, 1),
                 rejected=sum(m["rejected"].values()), load_before=before, load_after=uptime(),
                 wall_s_per_audio_hour=round(r["wall_s"] / (a / 3600), 1) if a else None)
        assert _accounted(out) == {str(f) for f in d.iterdir()}, "an input has neither a source row nor a ledger row"
        print(f"  {n:4d} inputs: {a / 60:6.1f} audio min in {r['wall_s']:6.1f} s = "
              f"{r['wall_s_per_audio_hour']:7.1f} s per audio hour, {r['wall_s_per_source']:.3f} s per source, "
              f"peak RSS {r['peak_rss_mb_children']:.0f} MB  ({before.split('load')[-1]})")
        rows.append(r)
    for prev, r in zip(rows, rows[1:]):  # the cost of the extra audio alone: flat = linear
        r["marginal_s_per_audio_hour"] = round((r["wall_s"] - prev["wall_s"]) / ((r["audio_s"] - prev["audio_s"]) / 3600), 1)
        print(f"  {prev['inputs']} -> {r['inputs']} inputs: {r['marginal_s_per_audio_hour']:.1f} s per extra audio hour")
    big, small = rows[-1], rows[0]
    result = {"mode": "scaling", "stages": ARGS.scaling_stages, "runner_args": ARGS.runner_args, "runs": rows,
              "cost_ratio_largest_vs_smallest": round(big["wall_s_per_audio_hour"] / small["wall_s_per_audio_hour"], 3)}
    print(f"cost per audio hour, {big['inputs']} vs {small['inputs']} inputs: "
          f"{result['cost_ratio_largest_vs_smallest']:.2f}x (1.0 = linear; < 1: fixed costs amortized)")
    return result


def dask(tmp: Path) -> dict:
    """1 then 2 Dask workers (one thread each) on the same input, each on a fresh cluster."""
    bin_dir = Path(sys.executable).parent
    inputs = ([str(make_clips(tmp / "clips", ARGS.clips))] if ARGS.clips
              else [str(p) for p in (ARGS.dask_inputs or [ARGS.media])])
    rows = []
    for n in (1, 2):
        sched = tmp / f"sched{n}.json"
        procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(sched)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        while not sched.exists():
            time.sleep(0.1)
        procs += [subprocess.Popen([str(bin_dir / "dask"), "worker", "--scheduler-file", str(sched), "--nthreads", "1",
                                    "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
        from distributed import Client

        with Client(scheduler_file=str(sched)) as c:
            c.wait_for_workers(n, timeout=120)
        try:
            out = tmp / f"dask{n}"
            before = uptime()
            r = run([*inputs, "--output", str(out), "--runner", "dask", f"--dask_scheduler_file={sched}",
                     *ARGS.runner_args.split()], tmp / f"dask{n}.log")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
        r.update(workers=n, sources=manifest(out)["tables"].get("sources"), load_before=before, load_after=uptime())
        print(f"  {n} Dask worker(s): {r['sources']} sources in {r['wall_s']:.1f} s  ({before.split('load')[-1]})",
              flush=True)
        rows.append(r)
    result = {"mode": "dask", "inputs": inputs, "runs": rows,
              "speedup_2_vs_1": round(rows[0]["wall_s"] / rows[1]["wall_s"], 3)}
    print(f"speed-up 2 Dask workers vs 1: {result['speedup_2_vs_1']:.2f}x (goal >= 1.6)")
    return result


def long(tmp: Path) -> dict:
    speech = _speech()
    rng = np.random.default_rng(13)
    path = tmp / "two-hours.wav"
    total = int(ARGS.hours * 3600 * SR)
    with wave.open(str(path), "wb") as w:  # streamed: never the whole file in memory
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        written = 0
        while written < total:
            x = speech * rng.uniform(0.4, 1.0)
            x = np.concatenate([x, np.zeros(int(rng.uniform(0.3, 4.0) * SR), np.float32)])
            x = x + rng.normal(0, 0.003, len(x)).astype(np.float32)
            x = x[: total - written]
            w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
            written += len(x)
    rows = []
    for name, src in (("11 s (jfk.wav)", ARGS.media / "speech" / "jfk.wav"), (f"{ARGS.hours:g} h", path)):
        out = tmp / f"long-{len(rows)}"
        # each in its own child of a fresh python, so RUSAGE_CHILDREN is that run's alone
        code = ("import json,resource,subprocess,sys,time;t=time.perf_counter();"
                "rc=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL).returncode;"
                "print(json.dumps({'rc':rc,'wall_s':time.perf_counter()-t,"
                "'peak_rss_mb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))")
        before = uptime()
        got = json.loads(subprocess.run(
            [sys.executable, "-c", code, *MMCURATE, "run", str(src), "--output", str(out), "--stages", "vad",
             "--no-audit"], capture_output=True, text=True, check=True).stdout)
        assert got["rc"] == 0, got
        m = manifest(out)
        a = audio_s(out)
        r = {"input": name, "audio_s": round(a, 1), "wall_s": round(got["wall_s"], 1),
             "x_realtime": round(a / got["wall_s"], 1), "peak_rss_mb": round(got["peak_rss_mb"], 1),
             "sources": m["tables"]["sources"], "speech_regions": m["tables"]["speech_regions"],
             "load_before": before, "load_after": uptime()}
        print(f"  {name}: {a:.0f} s audio in {r['wall_s']} s ({r['x_realtime']}x realtime), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, {r['speech_regions']} speech regions")
        rows.append(r)
    result = {"mode": "long", "runs": rows,
              "peak_rss_ratio_long_vs_short": round(rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)}
    print(f"peak RSS {rows[1]['input']} / {rows[0]['input']}: {result['peak_rss_ratio_long_vs_short']:.2f}")
    return result


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["workers", "scaling", "dask", "long"])
    ap.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    ap.add_argument("--stages", default="vad,speech,quality,video")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--running-mode", default="multi_processing",
                    choices=["multi_processing", "multi_threading"],
                    help="workers: worker processes (each loads its models) or worker threads of "
                         "one process (one copy of each model; the default of `mmcurate run`)")
    ap.add_argument("--threads-per-worker", type=int, default=0,
                    help="workers: model threads of each worker (default 0: cores / workers, the "
                         "machine's cores split between the workers)")
    ap.add_argument("--copies", type=int, default=1,
                    help="workers: also run the shared media this many times over (stream copies) "
                         "and report the throughput speed-up of the extra passes")
    ap.add_argument("--sizes", default="10,50,200,500")
    ap.add_argument("--clip-seconds", default="1,11", help="scaling: the clips' length range, LO,HI seconds")
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--scaling-stages", default="vad", help="scaling: --stages of the runs, or 'default'")
    ap.add_argument("--runner-args", default="",
                    help="scaling, dask: arguments added to every `mmcurate run` (Beam options, --set ...)")
    ap.add_argument("--clips", type=int, default=0,
                    help="workers, dask: N generated clips (as `scaling` makes them) instead of the media")
    ap.add_argument("--dask-inputs", type=Path, nargs="*", help="dask: the inputs (default: --media)")
    ARGS = ap.parse_args()
    ARGS.media = ARGS.media.resolve()
    print(f"{ARGS.mode}: {uptime()}")
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        result = {"workers": workers, "scaling": scaling, "dask": dask, "long": long}[ARGS.mode](Path(tmp))
    result["load_end"] = uptime()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = (f"orchestration-{ARGS.mode}" + (f"-t{ARGS.threads_per_worker}" if ARGS.threads_per_worker else "")
            + (f"-x{ARGS.copies}" if ARGS.mode == "workers" and ARGS.copies > 1 else ""))
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / f'{name}.json'}")
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
