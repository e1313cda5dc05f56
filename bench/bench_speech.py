"""Speech benchmark: real-time factor per stage and the Beam pipeline's overhead ratio.

    .venv/bin/python bench/bench_speech.py [--media ../shared/media] [--json bench/results/speech.json]

In ONE process, after an untimed warm-up that imports everything and loads each model once,
on the same audio (every media file under --media that has speech):
1. each model called directly, outside Beam: silero VAD (streaming decode + VAD),
   diarization (embedded default), ASR (embedded default, inside the VAD regions);
   model loading is timed separately and counted once, as in the pipeline (once per worker);
2. the whole pipeline (`mmcurate run` on the DirectRunner, default config) on the same media.

Real-time factor (RTF) = compute seconds / audio seconds (lower is faster).
Overhead ratio = pipeline wall time / (sum of each model's direct time incl. its one load):
everything Beam, ingest, hashing, decoding twice and writing Parquet add. Target <= 1.25.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _media_files(media: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in media.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def warm_up(cfg) -> None:
    """Import every library and load every model once, untimed, so that neither the direct
    measurement nor the pipeline (which runs second, in the same process) pays first-import
    and cold-file-cache costs the other does not."""
    import numpy as np

    from mmcurate.transforms.asr import load_transcriber
    from mmcurate.transforms.diarize import load_diarizer
    from mmcurate.transforms.vad import SileroVad

    noise = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.01).astype(np.float32)
    SileroVad().regions([noise])
    load_diarizer(cfg.diarization).diarize(noise)
    load_transcriber(cfg.asr).transcribe(noise, [(0.0, 2.0)])


def direct(files: list[Path], cfg) -> dict:
    """Each model on each file, called directly; returns timings and per-file results."""
    from mmcurate.transforms.asr import load_transcriber
    from mmcurate.transforms.decode import DecodeError, decode_audio, iter_audio
    from mmcurate.transforms.diarize import load_diarizer
    from mmcurate.transforms.vad import SileroVad

    t = {}
    t0 = time.perf_counter()
    vad = SileroVad(
        threshold=cfg.vad.threshold,
        min_speech_ms=cfg.vad.min_speech_ms,
        min_silence_ms=cfg.vad.min_silence_ms,
        speech_pad_ms=cfg.vad.speech_pad_ms,
    )
    t["vad_load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    diarizer = load_diarizer(cfg.diarization)
    t["diarize_load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    asr = load_transcriber(cfg.asr)
    t["asr_load"] = time.perf_counter() - t0
    t.update(vad=0.0, diarize=0.0, asr=0.0, decode=0.0)
    audio_s = speech_audio_s = 0.0
    per_file = []
    for f in files:
        try:
            t0 = time.perf_counter()
            regions = vad.regions(iter_audio(str(f), cfg.decode.sample_rate), cfg.decode.sample_rate)
            t["vad"] += time.perf_counter() - t0
        except DecodeError:
            continue
        t0 = time.perf_counter()
        audio = decode_audio(str(f), cfg.decode.sample_rate)
        t["decode"] += time.perf_counter() - t0
        dur = audio.shape[0] / cfg.decode.sample_rate
        audio_s += dur
        if not regions:
            per_file.append({"file": f.name, "audio_s": dur, "speech": False})
            continue
        speech_audio_s += dur
        t0 = time.perf_counter()
        turns = diarizer.diarize(audio, cfg.decode.sample_rate)
        t_d = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = asr.transcribe(audio, regions)
        t_a = time.perf_counter() - t0
        t["diarize"] += t_d
        t["asr"] += t_a
        per_file.append({
            "file": f.name, "audio_s": round(dur, 2), "speech": True,
            "speakers": len({x.speaker for x in turns}), "segments": len(result.segments),
            "rtf_diarize": round(t_d / dur, 4), "rtf_asr": round(t_a / dur, 4),
        })
    return {"timings_s": t, "audio_s": audio_s, "speech_audio_s": speech_audio_s, "files": per_file}


def pipeline(media: Path, out: Path, cfg) -> tuple[float, dict]:
    from mmcurate.pipelines import curate

    t0 = time.perf_counter()
    manifest = curate.run([str(media)], str(out), cfg, [])
    return time.perf_counter() - t0, manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "speech.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from mmcurate.pipelines.config import CurateConfig

    cfg = CurateConfig()
    media = Path(args.media)
    files = _media_files(media, cfg.ingest.media_extensions)
    print(f"bench_speech: {len(files)} media files under {media}", flush=True)

    warm_up(cfg)
    d = direct(files, cfg)
    t = d["timings_s"]
    models_s = t["vad_load"] + t["vad"] + t["diarize_load"] + t["diarize"] + t["asr_load"] + t["asr"]
    with tempfile.TemporaryDirectory() as tmp:
        wall, manifest = pipeline(media, Path(tmp) / "out", cfg)
    audio_s, speech_audio_s = d["audio_s"], d["speech_audio_s"]
    report = {
        "audio_s": round(audio_s, 2),
        "speech_sources_audio_s": round(speech_audio_s, 2),
        "rtf": {
            "vad (decode+VAD, streaming)": round(t["vad"] / audio_s, 4),
            "diarization": round(t["diarize"] / speech_audio_s, 4),
            "asr": round(t["asr"] / speech_audio_s, 4),
            "whole pipeline": round(wall / audio_s, 4),
        },
        "model_load_s": {k: round(t[k], 2) for k in ("vad_load", "diarize_load", "asr_load")},
        "direct_models_s": round(models_s, 2),
        "pipeline_wall_s": round(wall, 2),
        "overhead_ratio": round(wall / models_s, 3),
        "overhead_target": 1.25,
        "pipeline_tables": manifest["tables"],
        "files": d["files"],
    }
    print(f"\naudio: {audio_s:.1f} s in {len(files)} files ({speech_audio_s:.1f} s in files with speech)")
    print(f"{'stage':<30} {'RTF':>8}")
    for k, v in report["rtf"].items():
        print(f"{k:<30} {v:>8.4f}")
    print(f"model loads (s): {report['model_load_s']}")
    print(f"sum of direct model time (incl. one load each): {models_s:.1f} s")
    print(f"pipeline wall time (DirectRunner):               {wall:.1f} s")
    verdict = "PASS" if wall / models_s <= 1.25 else "FAIL"
    print(f"overhead ratio: {wall / models_s:.3f} (target <= 1.25) {verdict}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
