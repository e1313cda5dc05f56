"""Keyframe extraction speed and boundaries, against decoding every frame and PySceneDetect.

    .venv/bin/python bench/bench_video.py [--video ../shared/media/video/laion_talk.mp4]
        [--boundaries ../shared/media/video/laion_talk.slide_boundaries.txt] [--repeats 3]
        [--json bench/results/video.json]

In one process, on one file, each method `--repeats` times in rotation (A B C ... A B C, so a
burst of load on the shared machine hits every method alike); the median wall time counts:

  decode_all        every frame decoded with PyAV (thread_type AUTO), nothing else: the floor
                    of any method that looks at every frame
  decode_all_rgb    every frame decoded and converted to an RGB array (what naive code does)
  mmcurate          mmcurate.transforms.keyframes.extract_keyframes, default config: detection,
                    selection, filters, pHash, JPEG encoding of the kept frames
  mmcurate_no_gop_skip   the same, every reference frame decoded (skip_static_gops off)
  mmcurate_all_frames    the same, every frame decoded (skip_nonref off as well)
  pyscenedetect     scenedetect.detect(video, AdaptiveDetector()) with its defaults (OpenCV
                    backend, automatic downscale), boundaries only (no frames saved)
  pyscenedetect_pyav     the same on its PyAV backend

Speed is video seconds per wall second; "x decode_all" is decode_all's wall time over the
method's, and the same for CPU seconds (all threads of the process: steadier than wall time on a
shared machine, and fair to decode_all's frame threads). Boundaries are scored against the reference: a hit is a boundary found within
[-0.2 s, +0.5 s] of a reference change (the reference carries +-0.2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"


def decode_all(path: str, rgb: bool = False) -> dict:
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        n = 0
        for f in c.decode(s):
            if rgb:
                f.to_ndarray(format="rgb24")
            n += 1
    return {"frames_decoded": n, "boundaries": None}


def mmcurate(path: str, **kw) -> dict:
    import dataclasses

    from mmcurate.transforms.keyframes import extract_keyframes
    from mmcurate.transforms.video_config import VideoConfig

    r = extract_keyframes(path, dataclasses.replace(VideoConfig(), **kw), "bench")
    st = r.stats
    return {"frames_decoded": st.frames_decoded, "frames_analysed": st.frames_analysed,
            "frames_converted": st.frames_converted, "images": len(r.keyframes),
            "boundaries": [t for t, _ in r.cuts]}


def pyscenedetect(path: str, backend: str = "opencv") -> dict:
    from scenedetect import AdaptiveDetector, detect

    scenes = detect(path, AdaptiveDetector(), backend=backend)
    return {"frames_decoded": None, "boundaries": [start.seconds for start, _ in scenes][1:]}


METHODS = {
    "decode_all": lambda p: decode_all(p),
    "decode_all_rgb": lambda p: decode_all(p, rgb=True),
    "mmcurate": lambda p: mmcurate(p),
    "mmcurate_no_gop_skip": lambda p: mmcurate(p, skip_static_gops=False),
    "mmcurate_all_frames": lambda p: mmcurate(p, skip_static_gops=False, skip_nonref=False),
    "pyscenedetect": lambda p: pyscenedetect(p),
    "pyscenedetect_pyav": lambda p: pyscenedetect(p, "pyav"),
}


def score(found: list[float] | None, reference: list[float]) -> dict | None:
    if found is None:
        return None
    offsets = []
    for b in reference:
        hits = [round(f - b, 3) for f in found if -0.2 <= f - b <= 0.5]
        offsets.append(hits[0] if hits else None)
    hit = sum(o is not None for o in offsets)
    matched = {round(b + o, 3) for b, o in zip(reference, offsets) if o is not None}
    return {"found": len(found), "recall": hit / len(reference), "hits": hit,
            "false": len([f for f in found if round(f, 3) not in matched]), "offsets": offsets}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=str(MEDIA / "video" / "laion_talk.mp4"))
    ap.add_argument("--boundaries", default=str(MEDIA / "video" / "laion_talk.slide_boundaries.txt"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "video.json"))
    args = ap.parse_args(argv)
    import av

    with av.open(args.video) as c:
        s = c.streams.video[0]
        video_s = float(s.duration * s.time_base)
        frames = s.frames
        desc = f"{Path(args.video).name}: {s.codec_context.name} {s.width}x{s.height}, {video_s:.1f} s, {frames} frames"
    reference = [float(x) for x in Path(args.boundaries).read_text().split("\n")
                 if x.strip() and not x.startswith("#")]
    names = [m for m in args.methods.split(",") if m]
    try:
        import scenedetect  # noqa: F401
    except ImportError:
        print("scenedetect is not installed (the `bench` extra): PySceneDetect skipped", file=sys.stderr)
        names = [m for m in names if not m.startswith("pyscenedetect")]
    for m in names:  # warm-up: imports, codec init, first-touch of the file
        METHODS[m](args.video) if m.startswith("mmcurate") else None
    walls: dict[str, list[float]] = {m: [] for m in names}
    cpus: dict[str, list[float]] = {m: [] for m in names}
    results: dict[str, dict] = {}
    for rep in range(args.repeats):
        for m in names:
            t0, c0 = time.perf_counter(), time.process_time()
            out = METHODS[m](args.video)
            walls[m].append(time.perf_counter() - t0)
            cpus[m].append(time.process_time() - c0)  # every thread of this process
            results[m] = out
            print(f"  run {rep + 1} {m:<22} {walls[m][-1]:7.2f} s", file=sys.stderr)
    base = statistics.median(walls["decode_all"]) if "decode_all" in walls else None
    base_cpu = statistics.median(cpus["decode_all"]) if "decode_all" in cpus else None
    rows = []
    for m in names:
        wall = statistics.median(walls[m])
        cpu = statistics.median(cpus[m])
        sc = score(results[m].get("boundaries"), reference)
        rows.append({"method": m, "wall_s": round(wall, 3), "walls": [round(w, 3) for w in walls[m]],
                     "video_s_per_wall_s": round(video_s / wall, 1),
                     "x_decode_all": round(base / wall, 2) if base else None,
                     "cpu_s": round(cpu, 3), "x_decode_all_cpu": round(base_cpu / cpu, 2) if base_cpu else None,
                     **{k: v for k, v in results[m].items() if k != "boundaries"},
                     "boundaries": results[m].get("boundaries"), "score": sc})
    print(f"\n{desc}; {os.cpu_count()} CPUs; median of {args.repeats}; load {os.getloadavg()[0]:.1f}")
    print(f"reference: {len(reference)} changes {reference}\n")
    print("| method | wall s | video s / wall s | x decode_all (wall) | CPU s | x decode_all (CPU) "
          "| frames decoded | boundaries found | recall (-0.2..+0.5 s) | false |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sc = r["score"]
        found = str(sc["found"]) if sc else "-"
        recall = f"{sc['hits']}/{len(reference)}" if sc else "-"
        false = str(sc["false"]) if sc else "-"
        print(f"| {r['method']} | {r['wall_s']:.2f} | {r['video_s_per_wall_s']:.1f} | "
              f"{r['x_decode_all'] or '-'} | {r['cpu_s']:.2f} | {r['x_decode_all_cpu'] or '-'} | "
              f"{r.get('frames_decoded') or '-'} | {found} | {recall} | {false} |")
    print()
    for r in rows:
        if r["boundaries"] is not None:
            print(f"{r['method']}: {[round(b, 2) for b in r['boundaries']]} offsets {r['score']['offsets']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"video": desc, "reference": reference, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
