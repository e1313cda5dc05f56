"""Foundation benchmark: decode and decode+VAD throughput, and memory that does not grow with length.

    .venv/bin/python bench/bench_foundation.py [--media ../shared/media] [--hours 2] [--codec mp3]

1. Builds two podcast-like files in a work dir (default: a temp dir; --workdir to keep and reuse
   them): the real speech recordings under --media (decoded once, ~3.5 min in all) laid end to
   end in random order with random gains, separated by 0.3-4 s pauses, over low background
   noise; one of --short-min minutes (10) and one of --hours hours (2). Generation streams into
   the encoder (write_audio), so no long array ever exists.
2. For each input set (the shared media files, the short file, the long file) and each mode
   (decode only: iter_audio; decode+VAD: SileroVad over iter_audio), runs a FRESH child process
   that reports wall time and its own peak RSS (VmHWM from /proc/self/status), so each figure
   is one measurement's peak, not the parent's. For the record also: vad_stepwise (silero's
   one-window-per-call model) on the short file, and decode_whole (decode_audio's single array)
   on both files, a contrast whose memory does grow with length.
3. Prints a table, the ratio peak_RSS(long) / peak_RSS(short) for decode+VAD (streaming: must
   be < 3; PASS/FAIL), and writes JSON to bench/results/foundation.json.

Speed is audio seconds per wall second ("x realtime"). The machine is shared, so figures vary
between runs; the memory ratio is the figure that must hold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SR = 16000
SPEECH_GLOBS = ("speech/*.wav", "speech/*.mp3", "speech/*.flac", "diarization/*.wav", "video/*.mp4")


def media_files(media: Path) -> list[Path]:
    return sorted({p for g in SPEECH_GLOBS for p in media.glob(g)})


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ child: one measurement

def child(mode: str, files: list[str]) -> dict:
    import numpy as np  # noqa: F401 - imported before timing, like a warm worker

    from mmcurate.transforms.decode import DecodeError, decode_audio, iter_audio

    vad = None
    load_s = 0.0
    if mode.startswith("vad"):
        from mmcurate.transforms.vad import SileroVad, _silero_data_dir

        t0 = time.perf_counter()
        path = os.path.join(_silero_data_dir(), "silero_vad.onnx") if mode == "vad_stepwise" else None
        vad = SileroVad(model_path=path)
        load_s = time.perf_counter() - t0
    rss_before = _peak_rss_mb()
    audio_s = speech_s = 0.0
    regions = errors = 0
    t0 = time.perf_counter()
    for f in files:
        try:
            if mode == "decode_whole":  # one array for the whole file: grows with length
                audio_s += decode_audio(f).shape[0] / SR
            elif vad is None:
                audio_s += sum(c.shape[0] for c in iter_audio(f)) / SR
            else:
                r = vad.detect(iter_audio(f))
                audio_s += r.duration_s
                speech_s += r.speech_s
                regions += len(r.regions)
        except DecodeError:
            errors += 1
    wall = time.perf_counter() - t0
    return {"mode": mode, "files": len(files), "audio_s": audio_s, "wall_s": wall,
            "x_realtime": audio_s / wall if wall > 0 else None, "model_load_s": load_s,
            "speech_s": speech_s, "regions": regions, "errors": errors,
            "rss_before_mb": rss_before, "peak_rss_mb": _peak_rss_mb()}


def measure(mode: str, files: list[Path]) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, *map(str, files)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ synthetic podcasts

def make_podcast(path: Path, seconds: float, clips: list, seed: int, codec: str | None) -> dict:
    """Clips in random order, random gain, 0.3-4 s pauses, over noise at about -50 dBFS."""
    import numpy as np

    from mmcurate.transforms.decode import write_audio

    rng = np.random.default_rng(seed)
    total = int(seconds * SR)
    stats = {"clips_s": 0.0, "pauses_s": 0.0}  # clips hold their own pauses too

    def pieces():
        n = 0
        while n < total:
            clip = clips[rng.integers(len(clips))]
            gain = rng.uniform(0.5, 1.0)
            pause = int(rng.uniform(0.3, 4.0) * SR)
            for part, is_speech in ((clip * gain, True), (np.zeros(pause, np.float32), False)):
                for i in range(0, part.shape[0], 10 * SR):  # <= 10 s per piece
                    block = part[i : i + 10 * SR][: total - n]
                    if block.shape[0] == 0:
                        return
                    noise = rng.standard_normal(block.shape[0]).astype(np.float32) * 0.003
                    stats["clips_s" if is_speech else "pauses_s"] += block.shape[0] / SR
                    n += block.shape[0]
                    yield block + noise

    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".part" + path.suffix)
    write_audio(str(tmp), pieces(), SR, codec=codec, bit_rate=64000 if path.suffix == ".mp3" else None)
    tmp.rename(path)
    stats.update(seconds=seconds, encode_wall_s=time.perf_counter() - t0, bytes=path.stat().st_size)
    return stats


def load_clips(files: list[Path]) -> list:
    from mmcurate.transforms.decode import DecodeError, decode_audio

    clips = []
    for f in files:
        try:
            clips.append(decode_audio(str(f)))
        except DecodeError:
            pass
    return clips


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    ap.add_argument("--hours", type=float, default=2.0, help="length of the long file")
    ap.add_argument("--short-min", type=float, default=10.0, help="length of the short file")
    ap.add_argument("--codec", choices=("mp3", "flac"), default="mp3")
    ap.add_argument("--workdir", type=Path, default=None, help="keep generated files here (reused)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "foundation.json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1:])))
        return 0

    media = media_files(args.media.resolve())
    if not media:
        print(f"no speech media under {args.media}", file=sys.stderr)
        return 2
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmcurate-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    suffix = f".{args.codec}"
    short = workdir / f"podcast_{args.short_min:g}min{suffix}"
    long = workdir / f"podcast_{args.hours:g}h{suffix}"
    generated = {}
    clips = None
    for path, seconds, seed in ((short, args.short_min * 60, 1), (long, args.hours * 3600, 2)):
        if not path.exists():
            clips = clips if clips is not None else load_clips(media)
            print(f"generating {path.name} ({seconds / 60:.0f} min) ...", flush=True)
            generated[path.name] = make_podcast(path, seconds, clips, seed, None)
    del clips

    sets = {"shared media": media, f"{args.short_min:g} min {args.codec}": [short],
            f"{args.hours:g} h {args.codec}": [long]}
    rows = []
    for name, files in sets.items():
        for mode in ("decode", "vad"):
            print(f"measuring {mode:6s} on {name} ...", flush=True)
            r = measure(mode, files)
            r["set"] = name
            rows.append(r)
    # for the record: the streaming (one window per call) silero model on the short file, and
    # decode_audio's one whole array, whose peak RSS does grow with length (the contrast)
    extra = [("vad_stepwise", list(sets)[1], [short]), ("decode_whole", list(sets)[1], [short]),
             ("decode_whole", list(sets)[2], [long])]
    for mode, name, files in extra:
        print(f"measuring {mode} on {name} ...", flush=True)
        r = measure(mode, files)
        r["set"] = name
        rows.append(r)

    print()
    print(f"{'input':16s} {'mode':12s} {'audio':>9s} {'wall':>8s} {'x realtime':>10s} "
          f"{'start RSS':>9s} {'peak RSS':>9s} {'speech':>7s}")
    for r in rows:
        speech = f"{100 * r['speech_s'] / r['audio_s']:.0f}%" if r["mode"].startswith("vad") else ""
        print(f"{r['set']:16s} {r['mode']:12s} {r['audio_s']:8.0f}s {r['wall_s']:7.1f}s "
              f"{r['x_realtime']:10.0f} {r['rss_before_mb']:7.0f}MB {r['peak_rss_mb']:7.0f}MB "
              f"{speech:>7s}")

    def find(set_name, mode):
        return next(r for r in rows if r["set"] == set_name and r["mode"] == mode)

    s_name, l_name = list(sets)[1], list(sets)[2]
    ratios = {mode: find(l_name, mode)["peak_rss_mb"] / find(s_name, mode)["peak_rss_mb"]
              for mode in ("decode", "vad")}
    ok = ratios["vad"] < 3 and ratios["decode"] < 3
    print()
    for mode, ratio in ratios.items():
        print(f"peak RSS {l_name} / {s_name} ({mode}): {ratio:.2f}  (must be < 3)")
    whole = find(l_name, "decode_whole")["peak_rss_mb"] / find(s_name, "decode_whole")["peak_rss_mb"]
    print(f"(for contrast, decode_audio's whole array: {whole:.2f})")
    print("PASS" if ok else "FAIL")

    result = {
        "bench": "foundation",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "args": {"hours": args.hours, "short_min": args.short_min, "codec": args.codec,
                 "media": str(args.media)},
        "generated": generated,
        "rows": rows,
        "peak_rss_ratio_long_over_short": ratios,
        "peak_rss_ratio_long_over_short_decode_whole": whole,
        "pass": ok,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
