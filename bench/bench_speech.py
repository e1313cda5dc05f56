"""Speech benchmark: real-time factor per stage and the Beam pipeline's overhead ratio.

    .venv/bin/python bench/bench_speech.py [--media ../shared/media] [--json bench/results/speech.json]

In ONE process, after an untimed warm-up that imports everything and loads each model once,
on the same audio (every media file under --media that has speech):
1. each model called directly, outside Beam: silero VAD (streaming decode + VAD),
   diarization (embedded default), ASR (embedded default, inside the VAD regions);
   model loading is timed separately and counted once, as in the pipeline (once per worker);
2. the whole speech pipeline (`mmcurate run --stages vad,speech` on the DirectRunner, default
   config and default local parallelism: one worker thread per core, at most 4, printed with
   the figures) on the same media; with --in-process also on one in-process worker.

Real-time factor (RTF) = compute seconds / audio seconds (lower is faster).
Overhead ratio = pipeline wall time / (sum of each model's direct time incl. its one load):
everything Beam, RunInference, ingest, hashing, decoding and writing Parquet add. Target <= 1.10.

3. the baseline: WhisperX (ASR only: its pyannote VAD + batched faster-whisper, batch 8, the same
   embedded Whisper base CT2 int8 weights, beam 5, the same CPU threads as our ASR) on the same
   files, timed after its own untimed load and warm-up; printed as x real time beside the whole
   pipeline's, and their ratio (target >= 1.0: mmcurate with diarization at least as fast as
   WhisperX without it). Each figure comes with the machine's load average (shared machines).

4. model sharing: the pipeline again in two fresh child processes, DirectRunner in
   multi_threading mode with 1 and with 2 worker threads; peak RSS of each (VmHWM).
   RunInference keeps one model per process for all its threads, so 2 threads must stay
   below 1.3x the peak RSS of 1 thread (a copy per thread would add ~1 GB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import numpy as np
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
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


def pipeline(media: Path, out: Path, cfg, beam_args: list[str] | None = None) -> tuple[float, dict]:
    from mmcurate.pipelines import curate

    t0 = time.perf_counter()
    manifest = curate.run([str(media)], str(out), dataclasses.replace(cfg, stages=SPEECH_STAGES), beam_args or [])
    return time.perf_counter() - t0, manifest


# the speech stage and what it needs (decode + VAD): the figure the speed goal is set on; the other
# stages of the default run (quality, video, dedup) have their own benches
SPEECH_STAGES = ("vad", "speech")


def output_rows(out: Path) -> dict:
    """The segments' (id, times, speaker, text) and the turns' (id, speaker, times), sorted:
    what two runs of the same job must agree on whatever their parallelism."""
    import pyarrow.parquet as pq

    from mmcurate.quality.db import committed_shards

    shards, _ = committed_shards(str(out))
    cols = {"segments": ["segment_id", "start", "end", "speaker", "text"],
            "turns": ["turn_id", "speaker", "start", "end"]}
    return {t: sorted(tuple(r[c] for c in cs) for p in shards.get(t, [])
                      for r in pq.read_table(p, columns=cs).to_pylist())
            for t, cs in cols.items()}


def load_whisperx(asr, threads: int):
    """WhisperX 3.8's ASR pipeline on the embedded Whisper weights of `asr` (an AsrConfig):
    the same CT2 model, compute type and beam as ours, pyannote VAD, offline."""
    from mmcurate.transforms import models
    from mmcurate.transforms.asr import _offline_hub

    _offline_hub()
    import whisperx

    info = models.model_info("asr", asr.model)
    return whisperx.load_model(info["path"], "cpu", compute_type=asr.compute_type,
                               asr_options={"beam_size": asr.beam_size}, vad_method="pyannote",
                               local_files_only=True, threads=threads)


def whisperx_baseline(files: list[Path], cfg) -> dict:
    """WhisperX 3.8 ASR only on `files` (all decodable ones): x real time and per-file text."""
    from mmcurate.transforms.decode import DecodeError, decode_audio

    threads = cfg.asr.cpu_threads or os.cpu_count() or 1
    t0 = time.perf_counter()
    model = load_whisperx(cfg.asr, threads)
    load_s = time.perf_counter() - t0
    noise = (np.random.default_rng(0).standard_normal(16000 * 5) * 0.01).astype(np.float32)
    model.transcribe(noise, batch_size=cfg.asr.batch_size)  # untimed warm-up
    audio_s = elapsed = 0.0
    texts = {}
    for f in files:
        try:
            audio = decode_audio(str(f), cfg.decode.sample_rate)
        except DecodeError:
            continue
        audio_s += audio.shape[0] / cfg.decode.sample_rate
        t0 = time.perf_counter()
        out = model.transcribe(audio, batch_size=cfg.asr.batch_size)
        elapsed += time.perf_counter() - t0
        texts[f.name] = " ".join(s["text"].strip() for s in out["segments"])
    return {"audio_s": audio_s, "elapsed_s": elapsed, "load_s": load_s, "threads": threads,
            "x_realtime": audio_s / max(elapsed, 1e-9), "texts": texts}


OVERHEAD_TARGET = 1.10
WHISPERX_RATIO_TARGET = 1.0
XRT_TARGET = 10.0
RSS_RATIO_TARGET = 1.3


def rss_child(media: str, workers: int) -> int:
    """Run the pipeline with `workers` DirectRunner threads; print this process's peak RSS."""
    from mmcurate.pipelines import curate
    from mmcurate.pipelines.config import CurateConfig

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        curate.run([media], str(Path(tmp) / "out"), dataclasses.replace(CurateConfig(), stages=SPEECH_STAGES),
                   ["--direct_running_mode=multi_threading", f"--direct_num_workers={workers}"])
        wall = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: a child started by fork + exec begins with its parent's RSS at the
    # fork as its ru_maxrss, and this bench's process holds the models of its own runs (3.1 GB)
    # when it starts the RSS children: both children reported the parent's 3112 MB
    from bench_foundation import _peak_rss_mb

    peak_mb = _peak_rss_mb()
    print(json.dumps({"workers": workers, "peak_rss_mb": round(peak_mb, 1), "wall_s": round(wall, 2)}))
    return 0


def rss_by_workers(media: Path) -> dict:
    import subprocess

    out = {}
    for workers in (1, 2):
        proc = subprocess.run([sys.executable, __file__, "--rss-child", str(workers), "--media", str(media)],
                              capture_output=True, text=True, check=True)
        out[workers] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "speech.json"))
    ap.add_argument("--skip-rss", action="store_true", help="skip the 1 vs 2 worker-thread RSS runs")
    ap.add_argument("--skip-whisperx", action="store_true", help="skip the WhisperX baseline")
    ap.add_argument("--in-process", action="store_true",
                    help="also time the pipeline on one in-process worker "
                         "(--direct_running_mode=in_memory, library default model threads), "
                         "the default before worker threads were automatic")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.rss_child:
        return rss_child(args.media, args.rss_child)
    from mmcurate.pipelines.config import CurateConfig

    cfg = CurateConfig()
    media = Path(args.media)
    files = _media_files(media, cfg.ingest.media_extensions)
    print(f"bench_speech: {len(files)} media files under {media}", flush=True)

    load_start = os.getloadavg()
    warm_up(cfg)
    d = direct(files, cfg)
    t = d["timings_s"]
    models_s = t["vad_load"] + t["vad"] + t["diarize_load"] + t["diarize"] + t["asr_load"] + t["asr"]
    from mmcurate.pipelines.curate import local_parallelism

    par = local_parallelism(cfg, [])[2]
    with tempfile.TemporaryDirectory() as tmp:
        wall, manifest = pipeline(media, Path(tmp) / "out", cfg)
        rows = output_rows(Path(tmp) / "out")
    single = None
    if args.in_process:
        with tempfile.TemporaryDirectory() as tmp:
            swall, smanifest = pipeline(media, Path(tmp) / "out", cfg, ["--direct_running_mode=in_memory"])
            same = output_rows(Path(tmp) / "out") == rows
        single = {"wall_s": round(swall, 2), "same_tables": smanifest["tables"] == manifest["tables"],
                  "same_segments_and_turns": same}
    wx = None if args.skip_whisperx else whisperx_baseline(files, cfg)
    load_end = os.getloadavg()
    audio_s, speech_audio_s = d["audio_s"], d["speech_audio_s"]
    report = {
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]},
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
        "pipeline_parallelism": par.describe(),
        "overhead_ratio": round(wall / models_s, 3),
        "overhead_target": OVERHEAD_TARGET,
        "pipeline_tables": manifest["tables"],
        "files": d["files"],
    }
    print(f"\naudio: {audio_s:.1f} s in {len(files)} files ({speech_audio_s:.1f} s in files with speech)")
    print(f"{'stage':<30} {'RTF':>8}")
    for k, v in report["rtf"].items():
        print(f"{k:<30} {v:>8.4f}")
    print(f"model loads (s): {report['model_load_s']}")
    print(f"sum of direct model time (incl. one load each): {models_s:.1f} s")
    print(f"pipeline wall time (DirectRunner, {par.describe()}): {wall:.1f} s")
    verdict = "PASS" if wall / models_s <= OVERHEAD_TARGET else "FAIL"
    print(f"overhead ratio: {wall / models_s:.3f} (target <= {OVERHEAD_TARGET}) {verdict}")
    xrt = audio_s / wall
    report["pipeline_x_realtime"] = round(xrt, 2)
    print(f"whole pipeline: {xrt:.2f}x real time (target >= {XRT_TARGET}) "
          f"{'PASS' if xrt >= XRT_TARGET else 'FAIL'}")
    if wx is not None:
        ratio = xrt / wx["x_realtime"]
        report["whisperx_asr_only"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in wx.items()}
        report["pipeline_over_whisperx"] = round(ratio, 3)
        print(f"WhisperX ASR only (same weights, {wx['threads']} threads, batch {cfg.asr.batch_size}): "
              f"{wx['x_realtime']:.2f}x real time on {wx['audio_s']:.1f} s")
        print(f"mmcurate whole pipeline / WhisperX ASR-only throughput: {ratio:.3f} "
              f"(target >= {WHISPERX_RATIO_TARGET}) {'PASS' if ratio >= WHISPERX_RATIO_TARGET else 'FAIL'}")
    if single is not None:
        sxrt = audio_s / single["wall_s"]
        single["x_realtime"] = round(sxrt, 2)
        single["default_over_in_process"] = round(single["wall_s"] / wall, 3)
        line = (f"whole pipeline, one in-process worker (--direct_running_mode=in_memory): "
                f"{single['wall_s']:.1f} s, {sxrt:.2f}x real time, same table sizes: {single['same_tables']}, "
                f"same segments and turns: {single['same_segments_and_turns']}; "
                f"default / in-process throughput: {single['default_over_in_process']:.3f}")
        if wx is not None:
            single["over_whisperx"] = round(sxrt / wx["x_realtime"], 3)
            line += f"; in-process / WhisperX: {single['over_whisperx']:.3f}"
        print(line)
        report["in_process"] = single
    print(f"load average (1/5/15 min) at start {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f}, "
          f"at end {load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f}: figures under load > ~1 "
          "are inflated; re-measure on a quiet machine")
    if not args.skip_rss:
        rss = rss_by_workers(media)
        ratio = rss[2]["peak_rss_mb"] / rss[1]["peak_rss_mb"]
        report["rss_by_worker_threads"] = {**{str(k): v for k, v in rss.items()}, "ratio": round(ratio, 3),
                                           "target": RSS_RATIO_TARGET}
        for k, v in rss.items():
            print(f"pipeline, {k} worker thread(s): peak RSS {v['peak_rss_mb']:.0f} MB, wall {v['wall_s']:.1f} s")
        verdict = "PASS" if ratio < RSS_RATIO_TARGET else "FAIL"
        print(f"peak RSS 2 threads / 1 thread: {ratio:.3f} (target < {RSS_RATIO_TARGET}) {verdict}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
