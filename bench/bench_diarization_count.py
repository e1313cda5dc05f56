"""Speaker counting of the embedded diarizer on generated conversations of 1-6 people
(tests/conversations.py: fit and test voice splits, 1-7 minutes, gaps, overlaps, back-channels,
exact RTTMs), the 30-minute 4-speaker conversation and the shared meetings (sample.wav, AMI).

The models' part (segmentation-3.0 + CAM++ embeddings, `EmbeddedDiarizer.chunks`) runs once per
recording into CACHE/<name>.npz with its reference; clustering choices are then measured on the
cached arrays in seconds (`diarize_core.turns`, the code the diarizer runs).

    .venv/bin/python bench/bench_diarization_count.py embed [--sets fit,test,long,shared]
    .venv/bin/python bench/bench_diarization_count.py table [--sets ...] [--set clustering_threshold=0.6 ...]
    .venv/bin/python bench/bench_diarization_count.py table --sets fit --oracle

Speaker confusion and DER come from pyannote.metrics (no collar, overlap scored; each label's
tracks merged with `.support()`). `table` prints, per speaker count, conversations, exact
counts, within one, and confusion / DER as a share of reference speech.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import conversations as conv  # noqa: E402

CACHE = HERE / "results" / "diar_count"
SHARED = {"sample": "diarization/sample", "dev00": "diarization/ami/dev00", "dev01": "diarization/ami/dev01",
          "trn07": "diarization/ami/trn07"}


def recordings(sets):
    """(name, builder) of each recording in `sets`; builder() -> (audio, reference)."""
    out = []
    for s in sets:
        if s in ("fit", "test"):
            for name, voices, minutes, seed in conv.dev_set(s):
                out.append((name, lambda v=voices, m=minutes, sd=seed, n=name: _conv(conv.conversation(v, m, sd, name=n))))
        elif s == "clean":
            for seed in range(6):
                out.append((f"clean-4spk-19turns-s{seed}", lambda sd=seed: _conv(conv.few_turns(sd))))
        elif s == "long":
            out.append(("test-4spk-30min", lambda: _conv(conv.long_conversation())))
        elif s == "shared":
            for name, rel in SHARED.items():
                out.append((name, lambda rel=rel: _shared(rel)))
        else:
            raise SystemExit(f"unknown set {s!r} (fit, test, clean, long, shared)")
    return out


def _conv(c):
    return c.audio, c.reference


def _shared(rel):
    from der_reference import read_rttm
    from mmcurate.transforms.decode import decode_audio

    return decode_audio(str(conv.MEDIA / f"{rel}.wav")), read_rttm(conv.MEDIA / f"{rel}.rttm")


def embed(sets, cache: Path) -> None:
    from mmcurate.pipelines.config import DiarizationConfig
    from mmcurate.transforms.diarize import load_diarizer

    cache.mkdir(parents=True, exist_ok=True)
    diarizer = None
    for name, build in recordings(sets):
        path = cache / f"{name}.npz"
        if path.exists():
            continue
        if diarizer is None:
            diarizer = load_diarizer(DiarizationConfig(torch_threads=1))
        audio, ref = build()
        t0 = time.perf_counter()
        c = diarizer.chunks(audio)
        elapsed = time.perf_counter() - t0
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, binarized=c.binarized.astype(np.uint8), count=c.count, embeddings=c.embeddings,
                            step=c.step, duration=audio.size / conv.SR,
                            ref_start=np.array([r[0] for r in ref]), ref_end=np.array([r[1] for r in ref]),
                            ref_label=np.array([str(r[2]) for r in ref]))
        os.replace(tmp, path)
        print(f"{name}: {audio.size / conv.SR:.0f} s in {elapsed:.1f} s", flush=True)


def load(name: str, cache: Path):
    from mmcurate.transforms import diarize_core as core

    z = np.load(cache / f"{name}.npz")
    c = core.Chunks(z["binarized"].astype(np.float32), z["count"], z["embeddings"], float(z["step"]))
    ref = list(zip(z["ref_start"].tolist(), z["ref_end"].tolist(), z["ref_label"].tolist()))
    return c, ref


def score(ref, hyp) -> dict:
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    def ann(turns):
        a = Annotation(uri="x")
        for i, (s, e, lab) in enumerate(turns):
            a[Segment(s, e), i] = lab
        return a.support()

    d = DiarizationErrorRate(collar=0.0, skip_overlap=False)(ann(ref), ann(hyp), detailed=True)
    return {"der": d["diarization error rate"], "confusion": d["confusion"], "total": d["total"],
            "missed": d["missed detection"], "false_alarm": d["false alarm"]}


def oracle_turns(c, ref):
    """Each (window, local speaker) given the reference speaker it covers most, then the same
    reconstruction: the turns of a perfect clustering of these segmentations, i.e. the least
    confusion any clustering choice can reach with this front end."""
    from mmcurate.transforms import diarize_core as core

    labels = sorted({lab for _, _, lab in ref})
    num_chunks, num_frames, num_local = c.binarized.shape
    hard = np.full((num_chunks, num_local), -2)
    offsets = np.arange(num_frames) * core.FRAME_STEP_S + core.FRAME_DURATION_S / 2
    for i in range(num_chunks):
        t = i * c.step + offsets
        for j in range(num_local):
            at = t[c.binarized[i, :, j] > 0]
            if at.size:
                hits = np.zeros(len(labels))
                for s, e, lab in ref:
                    hits[labels.index(lab)] += np.sum((at >= s) & (at < e))
                hard[i, j] = int(np.argmax(hits))
    frames = core.Frames(core.FRAME_DURATION_S, core.FRAME_STEP_S)
    return core.to_turns(core.reconstruct(c.binarized, hard, c.count.astype(np.int8), c.step, frames), frames)


def run(names, cache: Path, params, oracle: bool = False, **hints):
    """name -> (true count, found count, score) with `params` (diarize_core.Params)."""
    from mmcurate.transforms import diarize_core as core

    out = {}
    for name in names:
        c, ref = load(name, cache)
        regular, _, confidence = (oracle_turns(c, ref), None, None) if oracle else core.turns(c, params, **hints)
        found = len({k for _, _, k in regular})
        out[name] = (len({lab for _, _, lab in ref}), found, {**score(ref, regular), "confidence": confidence})
    return out


def labels_over_time(name: str, cache: Path, params, slice_s: float = 300.0) -> list[str]:
    """Per reference speaker: the hypothesis label holding most of their speech in each
    `slice_s` slice, e.g. for the 30-minute file: one label per person across the file, and
    every person a label of their own."""
    from mmcurate.transforms import diarize_core as core

    c, ref = load(name, cache)
    hyp, _, _ = core.turns(c, params)
    step = 0.01
    n = int(max(e for _, e, _ in ref) / step) + 1
    frames = np.arange(n) * step

    def active(turns, label):
        a = np.zeros(n, bool)
        for s, e, lab in turns:
            if lab == label:
                a[(frames >= s) & (frames < e)] = True
        return a

    hyp_active = {k: active(hyp, k) for k in sorted({k for _, _, k in hyp})}
    lines = []
    for person in sorted({lab for _, _, lab in ref}):
        mine = active(ref, person)
        held = []
        for t0 in np.arange(0.0, n * step, slice_s):
            part = mine & (frames >= t0) & (frames < t0 + slice_s)
            overlap = {k: int(np.sum(part & a)) for k, a in hyp_active.items()}
            held.append(str(max(overlap, key=overlap.get)) if part.any() else "-")
        lines.append(f"{person}: {' '.join(held)}")
    return lines


def table(results) -> str:
    rows = ["| speakers | conversations | count exact | within one | confusion | DER |", "|---|---|---|---|---|---|"]
    by_k: dict[int, list] = {}
    for true, found, s in results.values():
        by_k.setdefault(true, []).append((true, found, s))
    every = []
    for k in sorted(by_k):
        rs = by_k[k]
        every += rs
        rows.append(_row(str(k), rs))
    rows.append(_row("all", every))
    return "\n".join(rows)


def _row(label, rs) -> str:
    exact = sum(f == t for t, f, _ in rs)
    within = sum(abs(f - t) <= 1 for t, f, _ in rs)
    total = sum(s["total"] for _, _, s in rs)
    conf = sum(s["confusion"] for _, _, s in rs) / total
    der = sum(s["total"] * s["der"] for _, _, s in rs) / total
    return f"| {label} | {len(rs)} | {exact}/{len(rs)} | {within}/{len(rs)} | {100 * conf:.1f} % | {100 * der:.1f} % |"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("embed", "table"))
    ap.add_argument("--sets", default="fit,test,long,shared")
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--set", action="append", default=[], help="clustering setting, e.g. clustering_threshold=0.6")
    ap.add_argument("--detail", action="store_true", help="one line per recording")
    ap.add_argument("--oracle", action="store_true", help="a perfect clustering instead (see oracle_turns)")
    args = ap.parse_args(argv)
    sets = args.sets.split(",")
    cache = Path(args.cache)
    if args.command == "embed":
        embed(sets, cache)
        return
    from mmcurate.pipelines.config import DiarizationConfig
    from mmcurate.transforms import diarize_core as core

    cfg = DiarizationConfig()
    for kv in args.set:
        key, value = kv.split("=", 1)
        setattr(cfg, key, None if value in ("null", "none") else
                int(value) if key == "min_cluster_size" else float(value))
    params = core.Params(cfg.clustering_threshold, cfg.min_cluster_size, distinct_below=cfg.distinct_below)
    for s in sets:
        names = [n for n, _ in recordings([s])]
        names = [n for n in names if (cache / f"{n}.npz").exists()]
        results = run(names, cache, params, oracle=args.oracle)
        what = "oracle clustering" if args.oracle else (", ".join(args.set) or "defaults")
        print(f"\n{s} ({what}):\n{table(results)}")
        if args.detail and not args.oracle and s == "long":
            print("  label holding most of each person's speech, per 5 minutes:")
            for line in labels_over_time(names[0], cache, params):
                print(f"    {line}")
        if args.detail:
            for n, (t, f, sc) in results.items():
                conf = sc["confidence"]
                print(f"  {n}: {t} -> {f}, confusion {100 * sc['confusion'] / sc['total']:.1f} %, "
                      f"DER {100 * sc['der']:.1f} %, confidence {'-' if conf is None else f'{conf:.2f}'}")


if __name__ == "__main__":
    main()
