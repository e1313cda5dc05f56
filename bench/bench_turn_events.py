"""Turn-taking events (transforms/turn_events.py) against events planted in generated
conversations (tests/conversations.py, EVENTS style): gaps, interruptions (the holder stops
within 0.3-0.7 s of the newcomer's onset), overlaps (both talk on for 1.4-2.2 s) and
back-channels (0.3-0.8 s inside a turn), with their exact times.

Two readings per conversation: the events of the reference turns (what the rules give on
perfect turns) and the events of the embedded diarizer's turns (what a run writes). Splits:
fit and test are the speaker-count splits' voices (the rules were corrected on missed events of
both splits' reference turns); clean, the held-out close-microphone test voices, was first run
after the rules were final.

    .venv/bin/python bench/bench_turn_events.py [--splits fit,test] [--per-split 6] [--minutes 2]

A planted event of >= 0.2 s (|offset| for floor transfers, length for back-channels) is found
when an event of the same kind lies within --tolerance seconds of it (the newcomer's onset; a
back-channel's start); a detected event of >= 0.2 s is right when a planted event of the same
kind (any size) lies that close. Floor-transfer-offset error: |detected - planted| offset of the
matched gaps, overlaps and interruptions. The diarizer's turns are kept under
bench/results/turn_events/ (delete to re-run the model).
"""

from __future__ import annotations

import argparse
import json
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

CACHE = HERE / "results" / "turn_events"
KINDS = ("gap", "interruption", "overlap", "backchannel")
MIN_SIZE = 0.2


def conversations(split: str, n: int, minutes: float):
    """fit, test: the speaker-count splits' voices; clean: the held-out voices recorded alone
    and close to the microphone (conversations.CLEAN_TEST_VOICES), no far-field meeting audio."""
    pool = {"fit": [v.name for v in conv.FIT_VOICES], "test": [v.name for v in conv.TEST_VOICES],
            "clean": list(conv.CLEAN_TEST_VOICES)}[split]
    rng = np.random.default_rng([7, ("fit", "test", "clean").index(split)])
    for i in range(n):
        k = min(2 + i % 3, len(pool))
        voices = tuple(str(v) for v in rng.choice(pool, size=k, replace=False))
        seed = int(rng.integers(1 << 31))
        yield f"events-{split}-{k}spk-{i}", voices, seed


def onset(e) -> float:
    """Where an event is matched: the newcomer's onset (a gap's end, an overlap's start)."""
    kind, start, end = e[0], e[1], e[2]
    return end if kind == "gap" else start


def size(e) -> float:
    return e[2] - e[1] if e[0] == "backchannel" else abs(e[5])


def match(planted, found, tol: float):
    """(per kind: planted >= MIN_SIZE, found of them, detected >= MIN_SIZE, right of them), the
    offset errors of matched transfers, and the planted kind -> detected kind confusion."""
    counts = {k: [0, 0, 0, 0] for k in KINDS}
    errors = []
    confusion: dict[tuple[str, str], int] = {}
    for p in planted:
        if p[0] not in KINDS or size(p) < MIN_SIZE:
            continue
        counts[p[0]][0] += 1
        same = [f for f in found if f[0] == p[0] and abs(onset(f) - onset(p)) <= tol]
        if same:
            counts[p[0]][1] += 1
            if p[0] != "backchannel":
                best = min(same, key=lambda f: abs(onset(f) - onset(p)))
                errors.append(abs(best[5] - p[5]))
        else:
            other = [f for f in found if f[0] in KINDS and abs(onset(f) - onset(p)) <= tol]
            got = min(other, key=lambda f: abs(onset(f) - onset(p)))[0] if other else "none"
            confusion[(p[0], got)] = confusion.get((p[0], got), 0) + 1
    for f in found:
        if f[0] not in KINDS or size(f) < MIN_SIZE:
            continue
        counts[f[0]][2] += 1
        if any(p[0] == f[0] and abs(onset(f) - onset(p)) <= tol for p in planted):
            counts[f[0]][3] += 1
    return counts, errors, confusion


def diarized_turns(name: str, audio) -> list[tuple[str, float, float]]:
    path = CACHE / f"{name}.json"
    if path.exists():
        return [tuple(t) for t in json.loads(path.read_text())]
    from mmcurate.pipelines.config import DiarizationConfig
    from mmcurate.transforms.diarize import load_diarizer

    global _DIARIZER
    if _DIARIZER is None:
        _DIARIZER = load_diarizer(DiarizationConfig())
    t0 = time.perf_counter()
    res = _DIARIZER.diarize_full(audio)
    turns = [(f"spk{t.speaker}", float(t.start), float(t.end)) for t in res.turns]
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(turns))
    print(f"  {name}: diarized {audio.size / conv.SR:.0f} s in {time.perf_counter() - t0:.1f} s", flush=True)
    return turns


_DIARIZER = None


def events_of(turns, cfg):
    from mmcurate.transforms.turn_events import detect

    return [(e.kind, e.start, e.end, e.speaker, e.other_speaker, e.offset_s) for e in detect(turns, cfg)]


def table(title: str, counts, errors, confusion) -> str:
    lines = [f"{title}", f"  {'kind':<13} {'planted':>7} {'recall':>7} {'detected':>8} {'precision':>9}"]
    for k in KINDS:
        p, r, d, right = counts[k]
        lines.append(f"  {k:<13} {p:>7} {r / p if p else float('nan'):>7.3f} {d:>8} "
                     f"{right / d if d else float('nan'):>9.3f}")
    if errors:
        lines.append(f"  floor-transfer-offset error: median {np.median(errors):.3f} s, p90 "
                     f"{np.percentile(errors, 90):.3f} s over {len(errors)} matched transfers")
    if confusion:
        lines.append("  missed: " + ", ".join(f"{a} -> {b}: {n}" for (a, b), n in sorted(confusion.items())))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", default="fit,test")
    ap.add_argument("--per-split", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--tolerance", type=float, default=0.5, help="seconds between a planted and a found event")
    args = ap.parse_args(argv)
    from mmcurate.transforms.turn_events import TurnEventsConfig

    cfg = TurnEventsConfig()
    for split in args.splits.split(","):
        tot = {src: ({k: [0, 0, 0, 0] for k in KINDS}, [], {}) for src in ("reference", "diarizer")}
        for name, voices, seed in conversations(split, args.per_split, args.minutes):
            c = conv.conversation(voices, args.minutes, seed, conv.EVENTS, name=name)
            ref_turns = [(v, s, e) for s, e, v in c.reference]
            for src, turns in (("reference", ref_turns), ("diarizer", diarized_turns(name, c.audio))):
                counts, errors, confusion = match(c.events, events_of(turns, cfg), args.tolerance)
                agg = tot[src]
                for k in KINDS:
                    agg[0][k] = [a + b for a, b in zip(agg[0][k], counts[k])]
                agg[1].extend(errors)
                for key, n in confusion.items():
                    agg[2][key] = agg[2].get(key, 0) + n
        n = args.per_split
        for src in ("reference", "diarizer"):
            print(table(f"{split} split, {n} conversations of {args.minutes:g} min, {src} turns "
                        f"(tolerance {args.tolerance} s)", *tot[src]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
