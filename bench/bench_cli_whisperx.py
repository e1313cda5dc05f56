"""The speech pipeline from the CLI against a WhisperX ASR-only script, marginal cost per file set.

    .venv/bin/python bench/bench_cli_whisperx.py [--repeat 2] [--isa native|avx2]

Both run as a user would run them, each in a fresh process, on the same files, in one command:

- mmcurate: `mmcurate run DIR --output OUT --stages vad,speech --no-audit` (VAD, diarization,
  ASR with word timestamps, speaker attribution, Parquet shards; the CLI's own worker and
  thread choices);
- WhisperX: a script that imports whisperx 3.8, loads the same embedded Whisper base CT2 int8
  weights (beam 5, batch 8, pyannote VAD, all cores as CTranslate2 threads), and transcribes
  each file (decoded by mmcurate's decoder: there is no ffmpeg binary here for
  `whisperx.load_audio`). ASR only: no alignment, no diarization.

Each is run on a tiny file (speech/LDC93S1.wav, 2.9 s) and on the set (the real speech of the
shared media: jfk, LDC93S1, sample, the three AMI excerpts, laion_talk, autoeditor_example).
The marginal wall time (set minus tiny) takes out start-up, imports and model loads, which a
long batch job pays once. Ratio = WhisperX marginal / mmcurate marginal (> 1: mmcurate is
faster per audio second, with diarization that WhisperX does not do). The runs alternate,
`--repeat` times; the median of each is reported. `--isa avx2` sets
CT2_FORCE_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 for every child.
Prints the load (`uptime`) before and after; writes bench/results/cli_whisperx[_avx2].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
SET = ["speech/jfk.wav", "speech/LDC93S1.wav", "diarization/sample.wav", "diarization/ami/dev00.wav",
       "diarization/ami/dev01.wav", "diarization/ami/trn07.wav", "video/laion_talk.mp4",
       "video/autoeditor_example.mp4"]
TINY = ["speech/LDC93S1.wav"]
AVX2 = {"CT2_FORCE_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def whisperx_child(files: list[str]) -> int:
    """What a WhisperX ASR-only script does, from import to the last file's text."""
    from bench_speech import load_whisperx
    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.transforms.decode import decode_audio

    cfg = CurateConfig().asr
    model = load_whisperx(cfg, os.cpu_count() or 1)
    words = 0
    for f in files:
        out = model.transcribe(decode_audio(f, 16000), batch_size=cfg.batch_size)
        words += sum(len(s["text"].split()) for s in out["segments"])
    print(json.dumps({"words": words}))
    return 0


def audio_seconds(files: list[str]) -> float:
    from mmcurate.transforms.decode import decode_audio

    return sum(len(decode_audio(f, 16000)) / 16000 for f in files)


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native")
    ap.add_argument("--whisperx-child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.whisperx_child:
        return whisperx_child(a.whisperx_child)

    env = dict(os.environ, PYANNOTE_METRICS_ENABLED="false", HF_HUB_OFFLINE="1")
    if a.isa == "avx2":
        env.update(AVX2)
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    before = uptime()
    print(before)
    sets = {"tiny": [str(MEDIA / f) for f in TINY], "set": [str(MEDIA / f) for f in SET]}
    seconds = {k: audio_seconds(v) for k, v in sets.items()}
    walls: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cli-wx-") as tmp:
        dirs = {}
        for name, files in sets.items():  # one input folder per set: the CLI takes the folder
            d = Path(tmp) / name
            d.mkdir()
            for f in files:
                (d / f"{Path(f).parent.name}-{Path(f).name}").symlink_to(f)
            dirs[name] = str(d)
        for r in range(a.repeat):
            for name in ("tiny", "set"):
                out = Path(tmp) / f"out-{name}-{r}"
                w = timed([sys.executable, "-m", "mmcurate.pipelines.cli", "run", dirs[name],
                           "--output", str(out), "--stages", "vad,speech", "--no-audit"], env)
                walls.setdefault(f"mmcurate {name}", []).append(w)
                print(f"mmcurate {name}: {w:.1f} s", flush=True)
                w = timed([sys.executable, __file__, "--whisperx-child", *sets[name]], env)
                walls.setdefault(f"whisperx {name}", []).append(w)
                print(f"whisperx {name}: {w:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    extra_audio = seconds["set"] - seconds["tiny"]
    marg = {who: med[f"{who} set"] - med[f"{who} tiny"] for who in ("mmcurate", "whisperx")}
    report = {
        "isa": a.isa, "audio_s": {k: round(v, 1) for k, v in seconds.items()},
        "walls_s": {k: [round(x, 1) for x in v] for k, v in walls.items()},
        "marginal_s": {k: round(v, 1) for k, v in marg.items()},
        "marginal_x_realtime": {k: round(extra_audio / v, 2) for k, v in marg.items()},
        "ratio_whisperx_over_mmcurate": round(marg["whisperx"] / marg["mmcurate"], 3),
        "load_before": before, "load_after": uptime(),
    }
    print(f"marginal over {extra_audio:.1f} s of audio: mmcurate --stages vad,speech {marg['mmcurate']:.1f} s "
          f"({report['marginal_x_realtime']['mmcurate']}x real time), WhisperX ASR-only {marg['whisperx']:.1f} s "
          f"({report['marginal_x_realtime']['whisperx']}x); ratio {report['ratio_whisperx_over_mmcurate']} "
          f"(goal >= 1.5)")
    print(report["load_after"])
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"cli_whisperx{'' if a.isa == 'native' else '_avx2'}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
