"""Video and image near-duplicates under common edits: recall and false pairs per edit kind.

    .venv/bin/python bench/bench_vidsuite.py [--media ../shared/media] [--seconds 8] [--max-side 720]
        [--workdir bench/results/vidsuite] [--ref-python .venv-videohash/bin/python]
        [--json bench/results/vidsuite.json]

The suite (bench/video_edits.py): a `--seconds` excerpt of every clip under MEDIA/video and
MEDIA/neardup, and one edited copy per edit kind made from it. Related pairs: an edited copy
and its excerpt (plus the two chair clips, a real re-encoded trimmed pair). Unrelated pairs:
every file of one clip against every file of another clip (chair-19 and chair-orig-22 are one
clip for this), originals and edited copies alike.

Methods, all scored here by the same pair loop:
  mmcurate   the dedup stage's `video_fp`: `fingerprint.video_fingerprint`, candidates by
             `video_keys` (a pair must share an LSH key) and `verify_pair` at the configured
             dedup.* thresholds: what `mmcurate run` would cluster
  pdq        PDQ (`pdqhash`) of a frame per second, decoded by PyAV, matched by vPDQ's rule:
             frames of quality >= 50, a frame matches within 31 of 256 bits, a pair when >= 80%
             of one side's distinct frame hashes match (ThreatExchange's query threshold)
  vpdq       the same rule on ThreatExchange's vPDQ hashes (`vpdq`, its own decoder), when
             that package built in the reference venv
  tmk        ThreatExchange's TMK+PDQF (`tmkpy`): a pair when the level-1 cosine and the level-2
             score are both >= 0.7 (TMK's documented threshold), when that package built
Images (`--stills`, on by default): frames at fixed times of each excerpt and of its frame
edits (no retiming), as keyframes: the keyframe pHash (`image_hash.phash` of the luma plane, as
the video stage stores it) within `dedup.image_max_bits`, against PDQ within 31 bits.

PDQ and vPDQ run in a second venv (bench/requirements-videohash.txt; vPDQ also needs FFmpeg's
development libraries to build), through bench/_videohash_ref.py; without `--ref-python` (or if
it is missing) only mmcurate's rows are printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import video_edits as ve  # noqa: E402

# one clip for the unrelated pairs: the chair pair is the same scene
GROUPS = {"chair-19-sd-bar.mp4": "chair", "chair-orig-22-sd-bar.mp4": "chair"}
REAL_PAIR = ("chair-orig-22-sd-bar.mp4", "chair-19-sd-bar.mp4")
FRAME_EDITS = ("greyscale", "sepia", "letterbox", "pillarbox", "logo", "crop10", "scale360",
               "lowbitrate")
STILL_TIMES = (0.5, 2.5, 4.5, 6.5)
PDQ_BITS, PDQ_QUALITY, VPDQ_PERCENT = 31, 50, 80.0


def group(clip: ve.Clip) -> str:
    return GROUPS.get(clip.source, clip.source)


# ------------------------------------------------------------------------------ mmcurate


def mmcurate_prints(clips: list[ve.Clip]):
    from mmcurate.transforms import fingerprint as fp
    from mmcurate.transforms.dedup_config import DedupConfig

    cfg = DedupConfig()
    out, t0 = {}, time.perf_counter()
    for c in clips:
        out[c.path] = fp.video_fingerprint(str(c.path), step_s=cfg.video_step_s).to_bytes()
    return out, time.perf_counter() - t0


def mmcurate_match(prints: dict):
    from mmcurate.transforms.dedup_config import DedupConfig
    from mmcurate.transforms.dedup_lsh import lsh_keys, verify_pair

    cfg = DedupConfig()
    keys = {p: set(lsh_keys("video_fp", b, cfg)) for p, b in prints.items()}

    def match(a: Path, b: Path) -> tuple[bool, float]:
        sim = verify_pair("video_fp", prints[a], prints[b], cfg)
        return bool(keys[a] & keys[b]) and sim is not None, sim or 0.0
    return match


# ----------------------------------------------------------------------- PDQ and vPDQ rule


def _bits(hexes: list[str]) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8)).reshape(-1, 256)


def vpdq_match(frames: dict, step: float | None):
    """vPDQ's brute-force match over PDQ frame lists [[t, hex, quality], ...]; `step` keeps
    one frame per that many seconds (vPDQ hashes one a second)."""
    kept = {}
    for p, fr in frames.items():
        if fr is None:
            continue
        if step:
            fr = [f for f in fr if abs(f[0] / step - round(f[0] / step)) < 1e-3]
        hexes = sorted({h for _, h, q in fr if q >= PDQ_QUALITY})  # vPDQ: dedupe + quality
        kept[p] = _bits(hexes) if hexes else np.zeros((0, 256), np.uint8)

    def share(a: np.ndarray, b: np.ndarray) -> float:
        if a.shape[0] == 0 or b.shape[0] == 0:
            return 0.0
        d = (a[:, None, :] != b[None, :, :]).sum(axis=2)
        return float((d <= PDQ_BITS).any(axis=1).mean()) * 100.0

    def match(a: Path, b: Path) -> tuple[bool, float]:
        if a not in kept or b not in kept:
            return False, 0.0
        best = max(share(kept[a], kept[b]), share(kept[b], kept[a]))
        return best >= VPDQ_PERCENT, best / 100.0
    return match


TMK_THRESHOLD = 0.7


def tmk_match(scores: dict):
    def match(a: Path, b: Path) -> tuple[bool, float]:
        s = scores.get(str(a))
        if s is None:
            return False, 0.0
        l1, l2 = s["level1"].get(str(b), 0.0), s["level2"].get(str(b), 0.0)
        return l1 >= TMK_THRESHOLD and l2 >= TMK_THRESHOLD, l2
    return match


def ref_hashes(ref_python: str, files: list[Path], cache: Path, tmk_dir: Path | None = None) -> dict | None:
    if not ref_python or not Path(ref_python).exists():
        return None
    if cache.exists():
        data = json.loads(cache.read_text())
        if set(map(str, files)) <= set(data["files"]):
            return data
    t0 = time.perf_counter()
    extra = ["--tmk-dir", str(tmk_dir)] if tmk_dir else []
    res = subprocess.run([ref_python, str(ROOT / "bench" / "_videohash_ref.py"), "--step", "0.25",
                          *extra, *map(str, files)], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"reference hashes failed: {res.stderr.strip().splitlines()[-1:]}")
        return None
    data = json.loads(res.stdout)
    data["elapsed_s"] = time.perf_counter() - t0
    cache.write_text(json.dumps(data))
    return data


# ---------------------------------------------------------------------------- the scoring


def score(clips: list[ve.Clip], match) -> dict:
    """Recall per edit kind (edited copy vs its excerpt), false pairs per kind (a file of that
    kind vs every file of another clip), and the real chair pair."""
    origs = {c.source: c for c in clips if c.kind == "orig"}
    rows: dict[str, dict] = defaultdict(lambda: {"found": 0, "pairs": 0, "false": 0, "unrelated": 0,
                                                 "sims": []})
    for c in clips:
        if c.kind == "orig":
            continue
        ok, sim = match(origs[c.source].path, c.path)
        r = rows[c.kind]
        r["pairs"] += 1
        r["found"] += ok
        r["sims"].append(round(sim, 3))
        if not ok:
            r.setdefault("missed", []).append(c.source)
    for a, b in itertools.combinations(clips, 2):
        if group(a) == group(b):
            continue
        ok, _ = match(a.path, b.path)
        for kind in {a.kind, b.kind}:
            rows[kind]["unrelated"] += 1
            rows[kind]["false"] += ok
            if ok:
                rows[kind].setdefault("false_pairs", []).append(f"{a.path.name} ~ {b.path.name}")
    if all(s in origs for s in REAL_PAIR):
        ok, sim = match(origs[REAL_PAIR[0]].path, origs[REAL_PAIR[1]].path)
        rows["real chair pair"].update(found=int(ok), pairs=1, sims=[round(sim, 3)])
    return dict(rows)


# ------------------------------------------------------------------------------ images


def stills(clips: list[ve.Clip], out_dir: Path):
    """Frames at STILL_TIMES of each excerpt and frame edit: their keyframe pHash (as the video
    stage computes it), the (picture inside the bars, its centre) hash pair of the video
    fingerprint (`fingerprint.frame_hashes`), and a PNG of the RGB frame for PDQ."""
    import av

    from mmcurate.transforms.image_hash import frame_hashes, phash
    from mmcurate.transforms.keyframes import _luma_plane

    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for c in clips:
        if c.kind != "orig" and c.kind not in FRAME_EDITS:
            continue
        with av.open(str(c.path)) as f:
            s = f.streams.video[0]
            want = list(STILL_TIMES)
            for fr in f.decode(s):
                if not want:
                    break
                t = float(fr.pts * fr.time_base)
                if t + 1e-6 < want[0]:
                    continue
                png = out_dir / f"{c.path.stem}.{want[0]:05.1f}.png"
                if not png.exists():
                    from PIL import Image

                    Image.fromarray(fr.to_ndarray(format="rgb24")).save(png)
                y = _luma_plane(fr)
                items.append((c, want.pop(0), (phash(y), *frame_hashes(y)), png))
    return items


def score_stills(items, dist_ok) -> dict:
    """Per frame edit: recall (edited still vs the excerpt's still at the same time) and false
    pairs (edited still vs the excerpt stills of other clips)."""
    origs = {(c.source, t): (h, png) for c, t, h, png in items if c.kind == "orig"}
    rows: dict[str, dict] = defaultdict(lambda: {"found": 0, "pairs": 0, "false": 0, "unrelated": 0})
    for c, t, h, png in items:
        if c.kind == "orig":
            continue
        r = rows[c.kind]
        if (c.source, t) in origs:
            r["pairs"] += 1
            r["found"] += dist_ok((h, png), origs[(c.source, t)])
        for (src, _), o in origs.items():
            if GROUPS.get(src, src) != group(c):
                r["unrelated"] += 1
                r["false"] += dist_ok((h, png), o)
    orig_items = [(c, t, h, p) for c, t, h, p in items if c.kind == "orig"]
    r = rows["orig"]
    for (a, _, ha, pa), (b, _, hb, pb) in itertools.combinations(orig_items, 2):
        if group(a) != group(b):
            r["unrelated"] += 1
            r["false"] += dist_ok((ha, pa), (hb, pb))
    return dict(rows)


# ------------------------------------------------------------------------------- output


def table(title: str, results: dict[str, dict], kinds: list[str]) -> str:
    methods = list(results)
    head = "| edit | " + " | ".join(f"{m} recall | {m} false pairs" for m in methods) + " |"
    lines = [f"**{title}**", "", head, "|" + "---|" * (1 + 2 * len(methods))]
    for k in kinds:
        cells = []
        for m in methods:
            r = results[m].get(k)
            if r is None:
                cells += ["-", "-"]
                continue
            rec = f"{r['found']}/{r['pairs']}" if r["pairs"] else "-"
            cells += [rec, f"{r['false']}/{r['unrelated']}" if r["unrelated"] else "-"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    for m in methods:
        rs = [r for k, r in results[m].items() if k not in ("orig", "real chair pair")]
        found, pairs = sum(r["found"] for r in rs), sum(r["pairs"] for r in rs)
        false = len({p for r in results[m].values() for p in r.get("false_pairs", ())})
        lines.append(f"\n{m}: recall over all edited pairs {found}/{pairs} = "
                     f"{found / max(pairs, 1):.3f}; false pairs {false}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--max-side", type=int, default=720,
                    help="excerpts are shrunk to this many pixels on their longer side first")
    ap.add_argument("--workdir", default=str(ROOT / "bench" / "results" / "vidsuite"))
    ap.add_argument("--ref-python", default=str(ROOT / ".venv-videohash" / "bin" / "python"))
    ap.add_argument("--no-stills", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "vidsuite.json"))
    a = ap.parse_args(argv)
    media, work = Path(a.media), Path(a.workdir)
    sources = sorted((media / "neardup").glob("*.mp4")) + sorted((media / "video").glob("*.mp4"))
    t0 = time.perf_counter()
    clips = [c for s in sources for c in ve.generate(s, work / "clips", seconds=a.seconds,
                                                  max_side=a.max_side)]
    print(f"suite: {len(clips)} files from {len(sources)} clips ({time.perf_counter() - t0:.0f} s)")

    from mmcurate.transforms.dedup_config import DedupConfig

    cfg = DedupConfig()
    prints, fp_s = mmcurate_prints(clips)
    results = {"mmcurate": score(clips, mmcurate_match(prints))}
    timing = {"mmcurate fingerprint s": round(fp_s, 1)}
    ref = ref_hashes(a.ref_python, [c.path for c in clips], work / "ref_hashes.json", work / "tmk")
    if ref is not None:
        files = {Path(p): v for p, v in ref["files"].items()}
        results["pdq"] = score(clips, vpdq_match({p: v["pdq"] for p, v in files.items()}, 1.0))
        if any(v["vpdq"] is not None for v in files.values()):
            results["vpdq"] = score(clips, vpdq_match({p: v["vpdq"] for p, v in files.items()}, None))
        if any(v.get("tmk") for v in files.values()):
            tmk = {str(p): v["tmk"] for p, v in files.items() if v.get("tmk")}
            results["tmk"] = score(clips, tmk_match(tmk))
        timing["reference hashes s"] = round(ref.get("elapsed_s", float("nan")), 1)
    kinds = ["orig", *ve.EDITS, "real chair pair"]
    text = [table(f"Video ({a.seconds:g} s excerpts, dedup.video_threshold "
                  f"{cfg.video_threshold:g}, video_max_bits {cfg.video_max_bits})", results, kinds)]

    img_results = {}
    if not a.no_stills:
        items = stills(clips, work / "stills")

        def bits(a: int, b: int) -> int:
            return bin(a ^ b).count("1")

        def phash_ok(x, y):
            return bits(x[0][0], y[0][0]) <= cfg.image_max_bits

        def framed_ok(x, y):  # picture-picture, picture-centre or centre-picture, as compare_video
            (_, xp, xc), (_, yp, yc) = x[0], y[0]
            return min(bits(xp, yp), bits(xp, yc), bits(xc, yp)) <= cfg.image_max_bits
        def either_ok(x, y):  # what image dedup compares (transforms/dedup_lsh.verify_pair)
            return phash_ok(x, y) or framed_ok(x, y)
        img_results["keyframe pHash"] = score_stills(items, phash_ok)
        img_results["picture/centre pHash"] = score_stills(items, framed_ok)
        img_results["either (dedup)"] = score_stills(items, either_ok)
        if a.ref_python and Path(a.ref_python).exists():
            sref = ref_hashes(a.ref_python, sorted({p for *_, p in items}), work / "ref_stills.json")
            if sref is not None:
                pdq = {Path(p): _bits([v["pdq"][0][1]])[0] for p, v in sref["files"].items()}

                def pdq_ok(x, y):
                    return int((pdq[x[1]] != pdq[y[1]]).sum()) <= PDQ_BITS
                img_results["PDQ"] = score_stills(items, pdq_ok)
        text.append(table(f"Keyframes (stills at {', '.join(f'{t:g}' for t in STILL_TIMES)} s; "
                          f"pHash within {cfg.image_max_bits} bits, PDQ within {PDQ_BITS})",
                          img_results, ["orig", *FRAME_EDITS]))
    print("\n\n".join(text))
    print("\ntimes:", timing)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"video": results, "images": img_results, "timing": timing,
                                        "versions": (ref or {}).get("versions")}, indent=1,
                                       default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
