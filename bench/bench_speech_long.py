"""Long recordings through the speech stage: memory flat in length, time linear in length.

    .venv/bin/python bench/bench_speech_long.py [--media ../shared/media] [--hours 2] \
        [--short-min 10] [--workdir DIR] [--json bench/results/speech_long.json]

Generates (or reuses from --workdir) the two podcast-like files of bench_foundation.py (the real
recordings under --media in random order and gain, pauses, background noise; 10 minutes and
2 hours, mp3), then runs `mmcurate run --stages vad,speech` (DirectRunner, default config: VAD,
embedded diarization, batched Whisper base) on each in a fresh child process and reads that
child's peak RSS (VmHWM) and wall time. The children log at INFO, so the progress lines of the
diarizer and the ASR (one per 5 minutes of audio) show on stderr.

Must hold: peak RSS(long) / peak RSS(short) <= 1.5, and x real time of the long file
within 20 % of the short file's (ratio 0.8 .. 1.25). Exit status 1 on FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RSS_RATIO_MAX = 1.5
XRT_RATIO_BAND = (0.8, 1.25)


def child(path: str) -> dict:
    """One file through vad + speech; this process's peak RSS and wall time."""
    import dataclasses
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("apache_beam", "urllib3", "faster_whisper", "speechbrain", "pyannote"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from bench_foundation import _peak_rss_mb

    from mmcurate.pipelines import curate
    from mmcurate.pipelines.config import CurateConfig

    cfg = dataclasses.replace(CurateConfig(), stages=("vad", "speech"))
    rss_start = _peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        (src / Path(path).name).symlink_to(path)
        t0 = time.perf_counter()
        manifest = curate.run([str(src)], str(Path(tmp) / "out"), cfg, [])
        wall = time.perf_counter() - t0
    return {"file": Path(path).name, "wall_s": round(wall, 2), "rss_start_mb": round(rss_start, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1), "load_end": [round(x, 2) for x in os.getloadavg()],
            "tables": manifest.get("tables")}


def _duration_s(path: Path) -> float:
    from mmcurate.transforms.decode import iter_audio

    return sum(c.shape[0] for c in iter_audio(str(path), 16000)) / 16000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--short-min", type=float, default=10.0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep generated files here (reused)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "speech_long.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    from bench_foundation import load_clips, make_podcast, media_files

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmcurate-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    short = workdir / f"podcast_{args.short_min:g}min.mp3"
    long = workdir / f"podcast_{args.hours:g}h.mp3"
    clips = None
    for path, seconds, seed in ((short, args.short_min * 60, 1), (long, args.hours * 3600, 2)):
        if not path.exists():
            clips = clips if clips is not None else load_clips(media_files(args.media.resolve()))
            print(f"generating {path.name} ({seconds / 60:.0f} min) ...", flush=True)
            make_podcast(path, seconds, clips, seed, None)
    del clips
    rows = []
    for path in (short, long):
        print(f"running vad + speech on {path.name} (load {os.getloadavg()[0]:.1f}) ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", str(path)], text=True,
                              stdout=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(f"child failed on {path}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["audio_s"] = round(_duration_s(path), 1)
        r["x_realtime"] = round(r["audio_s"] / r["wall_s"], 2)
        rows.append(r)
        print(f"  {r['audio_s']:.0f} s audio in {r['wall_s']:.1f} s: {r['x_realtime']:.2f}x real time, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (load at end {r['load_end'][0]:.1f})", flush=True)
    rss_ratio = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    xrt_ratio = rows[1]["x_realtime"] / rows[0]["x_realtime"]
    ok = rss_ratio <= RSS_RATIO_MAX and XRT_RATIO_BAND[0] <= xrt_ratio <= XRT_RATIO_BAND[1]
    print(f"peak RSS long / short: {rss_ratio:.3f} (<= {RSS_RATIO_MAX}); x real time long / short: "
          f"{xrt_ratio:.3f} (within {XRT_RATIO_BAND}): {'PASS' if ok else 'FAIL'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "rss_ratio": round(rss_ratio, 3),
                                     "xrt_ratio": round(xrt_ratio, 3), "pass": ok}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
