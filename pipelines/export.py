"""`mmcurate export DIR --format X --to OUT`: the curated view of a finished output in a format a
trainer reads (formats: `mmcurate.transforms.export.EXPORTERS`).

The driver plans the shards from the curated rows' metadata; the shards are written by one Beam
pipeline (`Create(shards) | Reshuffle | WriteShard`), so they spread over the runner's workers
as a run's sources do; then the driver writes what spans shards. A shard whose files are all in
place is skipped: re-running a killed export finishes it. `run_export` returns a summary.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time

from mmcurate.schemas.printable import printable
from mmcurate.transforms.export import (DEFAULT_FRAME_RATE, DEFAULT_SHARD_SIZE, DUPLEX_SHARD_SIZE, EXPORTERS,
                                        QA_SHARD_SIZE, ExportShard, Exporter)
from mmcurate.transforms.qa import DEFAULT_CLIP_S, DEFAULT_DISTRACTORS, DEFAULT_MIN_CONFIDENCE, DISTRACTORS_RANGE

log = logging.getLogger("mmcurate.export")


class InconsistentOutput(ValueError):
    """The output's audit finds problems: nothing is exported from it."""


def _write_shard_fn(exporter: Exporter, out_dir: str, to: str, totals: dict[str, int]):
    """The DoFn that writes shards (Beam is imported only by commands that run a pipeline)."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    class WriteShardFn(beam.DoFn):
        def __init__(self):
            self._written = Metrics.counter("mmcurate", "export.shards_written")
            self._items = Metrics.counter("mmcurate", "export.items")

        def process(self, shard: ExportShard):
            t0 = time.perf_counter()
            exporter.write_shard(out_dir, to, shard)
            self._written.inc()
            self._items.inc(len(shard.ids))
            log.info("export %s: %s shard %d of %d written (%d item(s), %.1f s)", exporter.name, shard.kind,
                     shard.index + 1, totals[shard.kind], len(shard.ids), time.perf_counter() - t0)
            yield shard.index

    return WriteShardFn()


def _qa_options(fmt: str, clip_s, distractors, min_confidence) -> dict:
    """The qa format's options, checked (ValueError: another format, or out of range)."""
    given = {k: v for k, v in (("clip_s", clip_s), ("distractors", distractors),
                               ("min_confidence", min_confidence)) if v is not None}
    if not given:
        return {}
    if fmt != "qa":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags} apply to the qa format, not {fmt}")
    if "clip_s" in given and not (math.isfinite(clip_s) and clip_s >= 1.0):
        raise ValueError(f"--clip-s: {clip_s} must be at least 1 second")
    if "distractors" in given and not DISTRACTORS_RANGE[0] <= distractors <= DISTRACTORS_RANGE[1]:
        raise ValueError(f"--distractors: {distractors} must be {DISTRACTORS_RANGE[0]} to {DISTRACTORS_RANGE[1]}")
    if "min_confidence" in given and not (math.isfinite(min_confidence) and 0.0 <= min_confidence <= 1.0):
        raise ValueError(f"--min-confidence: {min_confidence} must be 0 to 1")
    return {k: (float(v) if k != "distractors" else int(v)) for k, v in given.items()}


def run_export(out_dir: str, fmt: str, to: str, shard_size: int | None = None,
               beam_args: list[str] | None = None, test_pipeline=None, frame_rate: float | None = None,
               clip_s: float | None = None, distractors: int | None = None,
               min_confidence: float | None = None) -> dict:
    """Export the curated view of `out_dir` as `fmt` into `to`. FileNotFoundError when `out_dir`
    has no committed manifest, ValueError for an unknown format or an option the format does not
    take (`frame_rate`: duplex only; `clip_s`, `distractors`, `min_confidence`: qa only) or a bad
    value, InconsistentOutput for an output whose audit finds problems."""
    from mmcurate.pipelines.curate import local_runner
    from mmcurate.quality.audit import output_problems
    from mmcurate.quality.db import connect
    from mmcurate.transforms.read import read_manifest

    if fmt not in EXPORTERS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(EXPORTERS)}")
    options: dict = {} if shard_size is None else {"shard_size": shard_size}
    if frame_rate is not None:
        if "frame_rate" not in {f.name for f in dataclasses.fields(EXPORTERS[fmt])}:
            raise ValueError(f"--frame-rate applies to the duplex format, not {fmt}")
        if not (math.isfinite(frame_rate) and frame_rate > 0):
            raise ValueError(f"--frame-rate: {frame_rate} must be a positive number of Hz")
        options["frame_rate"] = float(frame_rate)
    options.update(_qa_options(fmt, clip_s, distractors, min_confidence))
    read_manifest(out_dir)  # FileNotFoundError: not a finished output
    exporter = EXPORTERS[fmt](**options)
    t0 = time.perf_counter()
    con = connect(out_dir, read_only=True)
    try:
        problems = output_problems(out_dir, con)
        if problems:
            raise InconsistentOutput(f"{out_dir} is not consistent ({problems[0]}; `mmcurate audit` lists all): "
                             "nothing exported")
        shards = exporter.plan(con)
    finally:
        con.close()
    to = os.path.abspath(to)
    os.makedirs(to, exist_ok=True)
    todo = [s for s in shards if not (exporter.shard_files(to, s)
                                      and all(os.path.exists(f) for f in exporter.shard_files(to, s)))]
    done = len(shards) - len(todo)
    log.info("export %s: %s, in %d shard(s) -> %s%s", fmt, exporter.describe(), len(shards), printable(to),
             f" ({done} already written, skipped)" if done else "")
    totals = {k: sum(1 for s in shards if s.kind == k) for k in exporter.KINDS}
    if todo and exporter.shard_files(to, todo[0]):
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions

        options = PipelineOptions(beam_args or [])
        p = test_pipeline or beam.Pipeline(runner=local_runner(options), options=options)
        _ = (p
             | "Shards" >> beam.Create(todo)
             | "SpreadShards" >> beam.Reshuffle()
             | "WriteShard" >> beam.ParDo(_write_shard_fn(exporter, out_dir, to, totals)))
        p.run().wait_until_finish()
    con = connect(out_dir, read_only=True)
    try:
        files = exporter.finish(con, to, shards)
    finally:
        con.close()
    files += [f for s in shards for f in exporter.shard_files(to, s) if "/_parts/" not in f]
    elapsed = time.perf_counter() - t0
    report = exporter.report()
    for line in report:
        log.info("export %s: %s", fmt, line.strip())
    return {"format": fmt, "to": to, "shards": len(shards), "shards_skipped": done,
            "files": sorted(files), "elapsed_s": elapsed, "description": exporter.describe(),
            "report": report, **exporter.stats}


EXPORT_EPILOG = """\
Formats (each reads the curated views only: quality kept, dedup representatives):
{formats}
Examples:
  mmcurate export out/demo --format lhotse --to out/demo-lhotse
  mmcurate export out/demo --format shar --to out/demo-shar --shard-size 500
  mmcurate export out/demo --format nemo --to out/demo-nemo
  mmcurate export out/demo --format webdataset --to out/demo-wds --shard-size 500
  mmcurate export out/demo --format hf --to out/demo-hf
  mmcurate export out/demo --format duplex --to out/demo-duplex --frame-rate 12.5
  mmcurate export out/demo --format qa --to out/demo-qa --clip-s 30 --distractors 3
Running the same command again skips the shards already written (a killed export resumes).
"""


def add_export_parser(sub, formatter) -> None:
    """The `export` subcommand's arguments (Beam options pass through, as for run)."""
    width = max(len(name) for name in EXPORTERS)
    formats = "\n".join(f"  {name:<{width}}  {cls.help}" for name, cls in EXPORTERS.items())
    e = sub.add_parser(
        "export",
        help=f"write the curated view in a training format ({', '.join(EXPORTERS)})",
        description="Write the curated rows of DIR (the audit's curated_* views) in a format a "
        "trainer reads, as one Beam job over shards.",
        epilog=EXPORT_EPILOG.format(formats=formats), formatter_class=formatter)
    e.add_argument("output", metavar="DIR", help="a finished output directory")
    e.add_argument("--format", required=True, choices=list(EXPORTERS), help="the format to write")
    e.add_argument("--to", required=True, metavar="OUTDIR", help="where to write it (local)")
    e.add_argument("--shard-size", type=int, metavar="N",
                   help=f"segments (documents; duplex, qa: sources) per shard (default {DEFAULT_SHARD_SIZE}; "
                   f"duplex {DUPLEX_SHARD_SIZE}, qa {QA_SHARD_SIZE})")
    e.add_argument("--frame-rate", type=float, metavar="HZ",
                   help=f"duplex: frames per second of the text streams, one token each (default "
                   f"{DEFAULT_FRAME_RATE:g}, Moshi's)")
    e.add_argument("--clip-s", type=float, metavar="S",
                   help=f"qa: clip length in seconds, clips cut on the source timeline (default {DEFAULT_CLIP_S:g})")
    e.add_argument("--distractors", type=int, metavar="N",
                   help=f"qa: wrong options per multiple-choice item, {DISTRACTORS_RANGE[0]} to "
                   f"{DISTRACTORS_RANGE[1]} (default {DEFAULT_DISTRACTORS})")
    e.add_argument("--min-confidence", type=float, metavar="C",
                   help="qa: drop (and count) the items of sources whose diarization_confidence is below "
                   f"this (default {DEFAULT_MIN_CONFIDENCE:g})")


def cmd_export(args, beam_args: list[str]) -> int:
    """`mmcurate export`: 0 done, 1 the output is not consistent, 2 a bad DIR or option."""
    from mmcurate.pipelines.exit_codes import EXIT_OK, EXIT_USAGE, EXIT_VERDICT

    if args.shard_size is not None and args.shard_size < 1:
        print(f"mmcurate: --shard-size: {args.shard_size} must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = run_export(args.output, args.format, args.to, args.shard_size, beam_args,
                             frame_rate=args.frame_rate, clip_s=args.clip_s, distractors=args.distractors,
                             min_confidence=args.min_confidence)
    except InconsistentOutput as e:
        print(f"mmcurate: {e}", file=sys.stderr)
        return EXIT_VERDICT
    except (FileNotFoundError, ValueError) as e:
        print(f"mmcurate: {e}", file=sys.stderr)
        return EXIT_USAGE
    hours = summary["hours"]
    rate = hours * 60.0 / (summary["elapsed_s"] / 60.0) if summary["elapsed_s"] else 0.0
    print(f"exported {summary['description']}, as {args.format} in "
          f"{summary['elapsed_s']:.1f} s ({rate:.1f} curated min per min) -> {summary['to']}")
    for line in summary["report"]:
        print(line)
    for f in summary["files"][:10]:
        print(f"  {f}")
    if len(summary["files"]) > 10:
        print(f"  ... {len(summary['files']) - 10} more")
    return EXIT_OK
