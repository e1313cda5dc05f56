"""`mmcurate`: run the curation job and audit its output.

    mmcurate run INPUT... --output DIR [--config FILE] [--set KEY=VALUE] [Beam pipeline options]
    mmcurate corpus DIR [--stages rephrase,dedup] [--set KEY=VALUE] [Beam pipeline options]
    mmcurate audit DIR [--json] [--sql "SELECT ..."]
    mmcurate config [SECTION] [--json]
    mmcurate --version

Every command exits 0 (done), 1 (a verdict on the data), 2 (arguments, config or environment:
nothing was run) or 3 (an unexpected error: one line, the traceback in a log file it names).
Orchestrators key their retries on it: only 3 may be worth another try (`EXIT_EPILOG`).

Why one module of this length: the argparse tree of every subcommand with the commands' thin
bodies; the work is in curate, corpus, export and mmcurate.quality.audit.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time

from mmcurate.pipelines.exit_codes import (  # noqa: F401  (cli.EXIT_*: the tests, the CLI)
    EXIT_CRASH,
    EXIT_EPILOG,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VERDICT,
)

RUN_EPILOG = """\
INPUT is any mix of:
  a media file          audio (wav flac mp3 m4a aac ogg opus) or video (mp4 mkv webm mov)
  a directory or glob   searched recursively for media files
  a manifest            .jsonl / .csv / .parquet with a `uri` column and optional metadata
                        (title, series, episode, license, language, num_speakers, ...)
  a podcast feed        an http(s) URL or a local .rss/.xml file; enclosures are downloaded
Local paths, gs:// and s3:// (with Beam's gcp/aws extras) are read through Beam FileSystems.

{stages}
Output: DIR/<table>/*.parquet per table above plus `rejected` (the rejection ledger: every
input not in `sources` is there with stage and reason), and DIR/manifest.json (run id, config,
code version, models with checksums, counts), written last.
Re-running the same inputs into the same DIR gives the same ids and replaces the shards.

Any option not listed above is passed to Apache Beam untouched, e.g.
  --runner DirectRunner --direct_running_mode multi_processing --direct_num_workers 2
  --runner DataflowRunner --project P --region R --temp_location gs://...
Without --direct_running_mode / --direct_num_workers the local runner takes one worker thread
per core (at most 4, at most one per source), one CTranslate2 replica and cores/workers model
threads each; --direct_running_mode in_memory runs everything on one thread.
  --runner dask --dask_client_address HOST:PORT runs the same pipeline on a dask.distributed
cluster (its workers must have mmcurate and the same code version installed).

Examples:
  mmcurate run ../shared/media --output out/demo
  mmcurate run episodes.jsonl --output gs://bucket/curated --config prod.toml --runner DataflowRunner ...
  mmcurate run https://example.com/feed.rss --output out/feed --set asr.model=whisper-tiny.en

""" + EXIT_EPILOG.replace("{", "{{").replace("}", "}}")

AUDIT_EPILOG = """\
Views, one per table: sources, speech_regions, segments, transcripts, turns, turn_events,
interleaved, documents, segment_quality, rejected; kept_segments (segments the quality stage kept) and
curated_<table> (kept by quality, not dropped by dedup: what `mmcurate export` reads).
Examples:
  mmcurate audit out/demo
  mmcurate audit out/demo --json | jq .rejected
  mmcurate audit out/demo --sql "SELECT stage, reason, count(*) FROM rejected GROUP BY ALL"
  mmcurate audit out/demo --rttm out/demo-rttm                     # <source_id>.rttm per source
  mmcurate audit out/demo --rttm out/demo-rttm --rttm-name basename  # sample.rttm for .../sample.wav
  mmcurate audit out/demo --der ../shared/media/diarization/sample.rttm
  mmcurate audit out/demo --der refs/ --collar 0.25  # refs/<basename>.rttm, +-0.25 s collar
  mmcurate audit out/demo --show laion_talk.mp4       # ./<document_id>.html: one video document
  mmcurate audit out/demo --show <source_id> --html /tmp/doc.html
  mmcurate audit out/demo --html report.html                 # the audit as a page with plots
  mmcurate audit out/demo --check quality/gates/default.yaml  # PASS/FAIL per expectation

""" + EXIT_EPILOG


CORPUS_EPILOG = """\
Corpus stages read the tables of DIR, never its media: they can run long after the media is
gone, on another machine, and against state of earlier runs (e.g. a dedup index).
Examples:
  mmcurate corpus out/2026-11-23                          # every corpus stage
  mmcurate corpus out/2026-11-23 --stages dedup --set dedup.index_dir=/data/dedup-index
  mmcurate corpus gs://bucket/curated/2026-11-23 --runner DataflowRunner --project P ...

""" + EXIT_EPILOG


class _Fmt(argparse.RawDescriptionHelpFormatter):
    pass


def _selectable() -> list[str]:
    from mmcurate.schemas.stages import selectable

    return selectable()


def _corpus_stages() -> list[str]:
    from mmcurate.schemas.stages import STAGES

    return [s.name for s in STAGES if s.corpus]


def _default_stages() -> str:
    from mmcurate.schemas.stages import DEFAULT_STAGES

    return ",".join(DEFAULT_STAGES)


class _VersionAction(argparse.Action):
    """`--version`: computed only when asked (git and the model registries are not read for
    every command)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version, git commit and pinned models, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from mmcurate.pipelines.version import version_text

        print(version_text())
        parser.exit()


def _stages_help() -> str:
    """The stage list for --help, from the stage registry."""
    from mmcurate.schemas.stages import STAGES

    lines = ["Stages (in order; --stages picks among the optional ones, default "
             f"{_default_stages()}):"]
    for s in STAGES:
        tables = ", ".join(s.produces) or "-"
        tag = " (always)" if not s.selectable else "" if s.default else " (opt-in)"
        lines.append(f"  {s.name + tag:<18} {s.summary}")
        lines.append(f"  {'':<18} writes: {tables}; config: [{'], ['.join(s.config)}]")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mmcurate",
        description="Turn raw podcasts and videos into curated multimodal pretraining data "
        "(Apache Beam; DirectRunner by default).",
        epilog=EXIT_EPILOG,
        formatter_class=_Fmt,
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument("--version", action=_VersionAction)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser(
        "run",
        help="run the curation job",
        description="Ingest, decode, detect speech, diarize and transcribe; write Parquet shards.",
        epilog=RUN_EPILOG.format(stages=_stages_help()),
        formatter_class=_Fmt,
    )
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs, manifests or feeds")
    r.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory (local, gs://, s3://)")
    r.add_argument("-c", "--config", metavar="FILE", help="run config (.toml, .yaml or .json); see README")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set asr.model=whisper-tiny.en (repeatable; VALUE is JSON or a "
        "string; `mmcurate config` lists every key)",
    )
    r.add_argument(
        "--stages",
        metavar="LIST",
        help=f"comma-separated stages to run, from: {','.join(_selectable())} (default: "
        f"{_default_stages()}; a stage's prerequisites must be listed too)",
    )
    r.add_argument("--no-audit", action="store_true", help="do not print the audit summary at the end")
    r.add_argument("--allow-empty", action="store_true",
                   help="exit 0 even when every input was rejected (default: exit 1 and say why)")
    r.add_argument("--show-config", action="store_true",
                   help="print the effective config (defaults + --config + --set + --stages) as JSON and "
                        "exit without running")
    c = sub.add_parser(
        "corpus",
        help="run corpus-level stages (dedup, rephrasing) over a finished output",
        description="Run corpus-level stages over the committed tables of DIR (written by "
        "`mmcurate run`) and add their tables and ledger rows to DIR. Each stage is one Beam job, "
        "committed atomically; re-running a stage replaces its earlier output.",
        epilog=CORPUS_EPILOG,
        formatter_class=_Fmt,
    )
    c.add_argument("output", metavar="DIR", help="a finished output directory (local, gs://, s3://)")
    c.add_argument("--stages", metavar="LIST",
                   help=f"comma-separated corpus stages to run, from: {','.join(_corpus_stages())} "
                        "(default: all of them, in order)")
    c.add_argument("-c", "--config", metavar="FILE", help="config (.toml, .yaml or .json); see README")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set dedup.index_dir=/data/index (repeatable)")
    c.add_argument("--no-audit", action="store_true", help="do not print the audit summary at the end")
    a = sub.add_parser(
        "audit",
        help="summarize a run's output with DuckDB",
        description="Open DIR's shards in DuckDB and print inputs, hours, per-stage counts and rejections.",
        epilog=AUDIT_EPILOG,
        formatter_class=_Fmt,
    )
    a.add_argument("output", metavar="DIR")
    a.add_argument("--json", action="store_true", help="print one JSON object (for machines)")
    a.add_argument("--sql", metavar="QUERY", help="run an ad-hoc query over the table views instead")
    a.add_argument("--rttm", metavar="OUTDIR", help="write the turns table as one RTTM file per source into OUTDIR")
    a.add_argument(
        "--rttm-name", choices=("source_id", "basename"), default="source_id",
        help="name RTTM files (and their file-id) by source id (default) or by the media file's basename",
    )
    a.add_argument(
        "--der", metavar="REF",
        help="score the turns against reference RTTM: a file, or a directory of <basename>.rttm / <source_id>.rttm",
    )
    a.add_argument("--collar", type=float, default=0.0, metavar="S",
                   help="with --der: +-S seconds around reference boundaries not scored (md-eval; default 0)")
    a.add_argument("--show", metavar="DOC_ID",
                   help="write one video document as a small HTML page (images and text in reading "
                        "order); DOC_ID is a document id, a source id or a unique part of its uri")
    a.add_argument("--html", metavar="FILE",
                   help="write the audit as one self-contained HTML report with plots (hours funnel, "
                        "languages, DNSMOS, durations, rejections, speakers, ASR scores); with --show: "
                        "where to write the document page (default ./<document_id>.html)")
    a.add_argument("--check", metavar="GATES",
                   help="evaluate the expectations of a gate file (YAML, see README \"Audit gates\"); "
                        "prints PASS/FAIL per check, exit 1 when one fails, 2 when the file is malformed")
    _add_config_parser(sub)
    from mmcurate.pipelines.export import add_export_parser

    add_export_parser(sub, _Fmt)
    return ap


def _add_config_parser(sub) -> None:
    k = sub.add_parser(
        "config",
        help="list every config key: type, default, allowed values, meaning",
        description="Every key `--set section.key=VALUE` and `--config FILE` accept, generated from "
        "the config dataclasses: type, default, allowed values or range, and a one-line meaning "
        "(the field's comment in the source; \"-\" where it has none).",
        epilog="Examples:\n  mmcurate config\n  mmcurate config asr\n  mmcurate config --json | "
        "jq '.[] | select(.key == \"vad.threshold\")'\n"
        "  mmcurate run media/ -o out --set asr.beam_size=1 --show-config   # the effective config",
        formatter_class=_Fmt,
    )
    k.add_argument("section", nargs="?", metavar="SECTION",
                   help="only this section (e.g. asr) or key (e.g. asr.beam_size)")
    k.add_argument("--json", action="store_true", help="one JSON list of keys (for machines)")


def _setup_logging(verbose: bool) -> None:
    """mmcurate's lines on the console, third-party chatter in the run's log file
    (`mmcurate.pipelines.logs`); -v: everything on the console."""
    from mmcurate.pipelines import logs

    logs.setup(verbose)


def _apply_sets(cfg_dict: dict, sets: list[str]) -> dict:
    from mmcurate.pipelines.config import ConfigError

    problems = []
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set vad.threshold=0.4")
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = cfg_dict
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {item!r}: {part!r} is a value, not a section")
                break
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return cfg_dict


def _load_config(args) -> "CurateConfig":  # noqa: F821
    from mmcurate.pipelines.config import CurateConfig, read_config_file

    data = read_config_file(args.config) if args.config else {}
    if args.stages:
        data["stages"] = [s.strip() for s in args.stages.split(",") if s.strip()]
    return CurateConfig.from_dict(_apply_sets(data, args.set))


def output_problems(output: str) -> list[str]:
    """Why the output directory cannot be used, found before any work (local paths): the
    directory is created and a probe file written and removed, exactly what the run needs."""
    if "://" in output:
        return []  # object stores: the runner's credentials decide; checked when writing
    path = os.path.abspath(output)
    if os.path.exists(path) and not os.path.isdir(path):
        return [f"--output {output}: exists and is not a directory"]
    try:
        os.makedirs(path, exist_ok=True)
        import tempfile

        with tempfile.NamedTemporaryFile(dir=path, prefix=".mmcurate-probe-"):
            pass
    except OSError as e:
        if _disk_full(e):
            raise  # a full disk is not a usage error: space may be freed (exit 3, `crashed`)
        return [f"--output {output}: cannot write there ({e.strerror or e}); choose another "
                f"--output or fix its permissions"]
    return []


def missing_inputs(inputs: list[str]) -> list[str]:
    """The inputs when none of them exists (a local path, or a glob matching nothing; a remote
    path Beam's FileSystems does not find), else []. An input that cannot be checked here (an
    http(s) URL or feed, a store this process cannot list) counts as existing: ingest decides."""
    import glob

    for item in inputs:
        if item.startswith(("http://", "https://")):
            return []
        if "://" in item and not item.startswith("file://"):
            try:
                from apache_beam.io.filesystems import FileSystems

                if FileSystems.match([item.rstrip("/") + "*"], limits=[1])[0].metadata_list:
                    return []
            except Exception:  # noqa: BLE001 - credentials, an unknown scheme: ingest will say
                return []
            continue
        path = os.path.expanduser(item.removeprefix("file://"))
        if os.path.lexists(path) or (any(c in path for c in "*?[") and glob.glob(path, recursive=True)):
            return []
    return list(inputs)


def _refused(problems: list[str]) -> bool:
    """Says each start-up problem in one `mmcurate:` line; True when there was one (the
    command then exits 2 and runs nothing)."""
    for problem in problems:
        print(f"mmcurate: {problem}", file=sys.stderr)
    return bool(problems)


def cmd_run(args, beam_args: list[str]) -> int:
    from mmcurate.pipelines.startup import import_runinference_without_model_manager

    import_runinference_without_model_manager()  # this process runs no model: 1.3 s sooner
    from mmcurate.pipelines import curate
    from mmcurate.pipelines.config import ConfigError
    from mmcurate.quality import audit

    try:
        cfg = _load_config(args)
    except ConfigError as e:
        print("mmcurate: bad config (nothing was run):", file=sys.stderr)
        for problem in e.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.show_config:
        return _show_config(cfg)
    problems = unknown_beam_options(beam_args) or curate.startup_problems(cfg)
    if not problems and missing_inputs(args.inputs):
        shown = ", ".join(args.inputs[:5]) + (f" and {len(args.inputs) - 5} more" if len(args.inputs) > 5 else "")
        problems = [f"no input exists (nothing was run): {shown}"]
    # the output is probed (created) only for a run that will go ahead
    problems = problems or runner_problems(beam_args) or output_problems(args.output)
    if _refused(problems):
        return EXIT_USAGE
    from mmcurate.pipelines.lock import OutputLocked

    t0 = time.perf_counter()
    try:
        manifest = curate.run(args.inputs, args.output, cfg, beam_args)
    except OutputLocked as e:
        print(f"mmcurate: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the runner failed (a lost worker, a full disk ...)
        return crashed(e, args, "the run failed", "nothing was committed; the sources it finished "
                       "are checkpointed: run the same command again to go on from there")
    wall = time.perf_counter() - t0
    out = args.output if "://" in args.output else os.path.abspath(args.output)
    print(f"\nrun {manifest['run_id']} finished in {wall:.1f} s")
    print(f"shards:   {out}/<table>/*.parquet")
    from mmcurate.schemas.tables import TABLES

    written = [t for t in TABLES if t in manifest["tables"]]
    width = max(map(len, written), default=0)
    for table in written:
        n = manifest["tables"][table]
        print(f"  {table:<{width}} {n:>8} rows   {out}/{table}/")
    print(f"manifest: {out}/manifest.json")
    if not args.no_audit and "://" not in out:
        print()
        print(audit.format_summary(audit.summarize(out)))
    inputs = manifest.get("stage_counts", {}).get("ingest.inputs", 0)
    if manifest["tables"].get("sources", 0) == 0 and not args.allow_empty:
        rejected = ", ".join(f"{k} {n}" for k, n in sorted(manifest.get("rejected", {}).items()))
        print(f"mmcurate: no input became a source: all {inputs} input(s) were rejected "
              f"({rejected or 'nothing found'}); see {out}/rejected/ "
              "(--allow-empty makes this exit 0)", file=sys.stderr)
        return EXIT_VERDICT
    return EXIT_OK


def _show_config(cfg) -> int:
    """`run --show-config`: the config this command line would run with; nothing runs."""
    from mmcurate.pipelines.config_doc import effective_config

    print(effective_config(cfg))
    return EXIT_OK


def cmd_config(args) -> int:
    """`mmcurate config [SECTION] [--json]`: the generated key listing."""
    from mmcurate.pipelines.startup import import_runinference_without_model_manager

    import_runinference_without_model_manager()
    from mmcurate.pipelines import config_doc

    docs = config_doc.keys()
    chosen = config_doc.select(docs, args.section)
    if not chosen:
        print(f"mmcurate config: no section or key {args.section!r}; sections: "
              f"{', '.join(config_doc.sections(docs))}", file=sys.stderr)
        return EXIT_USAGE
    print(config_doc.keys_json(chosen) if args.json else config_doc.format_keys(chosen))
    return EXIT_OK


def _disk_full(e: BaseException | None) -> bool:
    """Whether `e`, or an error it was raised from, is ENOSPC (a runner re-raises a worker's
    OSError as its own exception whose message carries the original)."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "[Errno 28]" in str(e) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def crash_log(e: BaseException, output: str | None = None) -> str | None:
    """Write `e`'s traceback to OUTPUT/_logs/crash-<utc time>-<pid>.log (a local output), else
    to mmcurate-crash-...log in the temp folder; the path, or None when neither can be written
    (a full disk)."""
    import datetime as dt
    import tempfile
    import traceback

    name = f"crash-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}.log"
    places = [(tempfile.gettempdir(), "mmcurate-" + name)]
    if output and "://" not in output:
        places.insert(0, (os.path.join(os.path.abspath(output), "_logs"), name))
    text = f"$ mmcurate {' '.join(sys.argv[1:])}\n" + "".join(traceback.format_exception(e))
    for folder, filename in places:
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, filename)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
            return path
        except OSError:
            continue
    return None


def crashed(e: BaseException, args, what: str = "crashed", note: str = "") -> int:
    """One line for an unexpected error (`ExcType: message`, the log file with the traceback),
    exit 3; the traceback on stderr too with --verbose. A full disk is said as such."""
    import traceback

    if getattr(args, "verbose", False):
        traceback.print_exception(e)
    output = getattr(args, "output", None) if getattr(args, "command", "") in ("run", "corpus") else None
    log_path = crash_log(e, output)
    first = (str(e).strip().splitlines() or [""])[0][:300]
    cause = f"{type(e).__name__}: {first}"
    where = f"traceback: {log_path}" if log_path else "the traceback could not be written"
    if _disk_full(e):
        where = "free space, then run the same command again; " + where
        what = "no space left on device"
    print(f"mmcurate: {what}: {cause} ({note + '; ' if note else ''}{where})", file=sys.stderr)
    return EXIT_CRASH


def cmd_corpus(args, beam_args: list[str]) -> int:
    from mmcurate.pipelines.startup import import_runinference_without_model_manager

    import_runinference_without_model_manager()
    from mmcurate.pipelines import corpus
    from mmcurate.pipelines.config import ConfigError, CurateConfig, read_config_file
    from mmcurate.quality import audit

    stages = [s.strip() for s in (args.stages or "").split(",") if s.strip()]
    try:
        corpus.resolve_corpus(stages)
        data = read_config_file(args.config) if args.config else {}
        data.pop("stages", None)  # the run's stage list; corpus stages come from --stages
        cfg = CurateConfig.from_dict(_apply_sets(data, args.set))
    except ConfigError as e:
        print("mmcurate: bad config (nothing was run):", file=sys.stderr)
        for problem in e.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        print(f"mmcurate: --stages: {e}", file=sys.stderr)
        return EXIT_USAGE
    problems = unknown_beam_options(beam_args) or runner_problems(beam_args)
    if _refused(problems):
        return EXIT_USAGE
    from mmcurate.pipelines.lock import OutputLocked

    t0 = time.perf_counter()
    try:
        manifest = corpus.run_corpus(args.output, cfg, stages, beam_args)
    except OutputLocked as e:
        print(f"mmcurate: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as e:
        print(f"mmcurate: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        print(f"mmcurate: {e}", file=sys.stderr)
        return EXIT_USAGE
    out = args.output if "://" in args.output else os.path.abspath(args.output)
    print(f"\ncorpus jobs finished in {time.perf_counter() - t0:.1f} s over {out}")
    for stage, job in manifest.get("corpus_jobs", {}).items():
        rows = ", ".join(f"{t} {n}" for t, n in job.get("tables", {}).items())
        print(f"  {stage:<12} {job['run_id']}   {rows}")
    print(f"manifest: {out}/manifest.json")
    if not args.no_audit and "://" not in out:
        print()
        print(audit.format_summary(audit.summarize(out)))
    return EXIT_OK


def cmd_audit(args) -> int:
    from mmcurate.quality import audit

    if "://" not in args.output and not os.path.isdir(args.output):
        print(f"mmcurate: {args.output}: no such output directory", file=sys.stderr)
        return EXIT_USAGE
    if args.sql:
        try:
            tbl = audit.query(args.output, args.sql)
        except audit.AuditQueryError as e:
            print(f"mmcurate: {e}", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            print(json.dumps(tbl.to_pylist(), default=str))
        else:
            print(audit.format_table(tbl))
        return EXIT_OK
    if args.check or (args.html and not args.show):  # gates and/or the HTML report
        return _audit_report_and_gates(args)
    if args.show:  # one interleaved video document as a page a person reads
        try:
            path = audit.write_document_html(args.output, args.show, args.html)
        except LookupError as e:
            print(f"mmcurate: --show: {e.args[0]}", file=sys.stderr)
            return EXIT_USAGE
        print(f"wrote {os.path.abspath(path)}")
        return EXIT_OK
    if args.rttm or args.der:  # the turns table as RTTM files / DER against reference RTTMs
        out: dict = {}
        if args.rttm:
            paths = audit.write_rttm(args.output, args.rttm, name=args.rttm_name)
            missing = audit.sources_without_turns(args.output)
            out["rttm"] = {"dir": os.path.abspath(args.rttm), "files": paths, "sources_without_turns": missing}
            if not args.json:
                print(f"wrote {len(paths)} RTTM file{'s' if len(paths) != 1 else ''} to {os.path.abspath(args.rttm)}"
                      + (f" ({len(missing)} source{'s' if len(missing) != 1 else ''} without turns: no file)" if missing else ""))
        if args.der:
            try:
                rep = audit.der_report(args.output, args.der, collar=args.collar)
            except (FileNotFoundError, ValueError) as e:
                print(f"mmcurate: --der: {e}", file=sys.stderr)
                return EXIT_USAGE
            out["der"] = rep
            if not args.json:
                print(audit.format_der_report(rep, args.der), end="")
            if not rep["sources"]:
                if args.json:
                    print(json.dumps(out, indent=2, default=str))
                return EXIT_VERDICT
        if args.json:
            print(json.dumps(out, indent=2, default=str))
        return EXIT_OK
    summary = audit.summarize(args.output)
    print(json.dumps(summary, indent=2, default=str) if args.json else audit.format_summary(summary))
    if summary.get("problems"):
        if not args.json:
            print(f"mmcurate: {args.output}: {len(summary['problems'])} problem(s), see PROBLEMS above",
                  file=sys.stderr)
        return EXIT_VERDICT
    return EXIT_OK


def _audit_report_and_gates(args) -> int:
    """`--html FILE` writes the report; `--check GATES` evaluates the gate file (exit 1 on a
    failing check, 2 on a malformed file). Both may be given: the report is written first."""
    from mmcurate.quality import gates, report

    if args.html:
        data = report.report_data(args.output)
        path = report.write_report(args.output, args.html, data)
        print(f"wrote {os.path.abspath(path)}")
        problems = data["summary"].get("problems")
        if problems and not args.check:  # as the text and --json summaries do
            print(f"mmcurate: {args.output}: {len(problems)} problem(s), see the report's "
                  f"\"Problems of this output\"", file=sys.stderr)
            return EXIT_VERDICT
    if not args.check:
        return EXIT_OK
    try:
        outcomes = gates.evaluate(args.output, gates.load(args.check), args.check)
    except gates.GateFileError as e:
        print(f"mmcurate: --check {e}", file=sys.stderr)
        return EXIT_USAGE
    text = gates.format_outcomes(outcomes, args.check)
    if args.json:
        print(json.dumps([{"name": o.check.name, "passed": o.passed, "measured": o.measured,
                           "op": o.check.op, "value": o.check.value} for o in outcomes], default=str))
    else:
        print(text, end="")
    return EXIT_OK if all(o.passed for o in outcomes) else EXIT_VERDICT


def _beam_flag_takes_value(flag: str) -> bool:
    """Whether a Beam pipeline option consumes the next token (unknown flags: assume yes)."""
    action = _beam_option_parser()._option_string_actions.get(flag)
    return action is None or action.nargs != 0


@functools.cache
def _beam_option_parser() -> argparse.ArgumentParser:
    """Every option of every registered PipelineOptions class (built once per process)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen, todo = set(), [PipelineOptions]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        try:
            cls._add_argparse_args(parser)
        except Exception:  # noqa: BLE001 - duplicate or odd option definitions
            pass
    return parser


def unknown_beam_options(beam_args: list[str]) -> list[str]:
    """One line per flag handed to Beam that no Beam PipelineOptions defines, with the nearest
    known flag (Beam's or mmcurate's) as a suggestion. Beam itself would only log "Discarding
    unparseable args" and run without it: a typo such as --direct_num_worker would silently
    change how the job runs."""
    import difflib

    flags = list(dict.fromkeys(a.split("=", 1)[0] for a in beam_args if a.startswith("--")))
    if any(f.startswith("--dask") for f in flags):  # DaskOptions registers when its module loads
        try:
            import apache_beam.runners.dask.dask_runner  # noqa: F401
        except ImportError:
            pass
        _beam_option_parser.cache_clear()
    known = _beam_option_parser()._option_string_actions
    unknown = [f for f in flags if f not in known]
    candidates = sorted({f for f in known if f.startswith("--")} | own_flags())
    problems = []
    for flag in unknown:
        close = difflib.get_close_matches(flag, candidates, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"unknown option {flag}: neither mmcurate nor Apache Beam defines it "
                        f"(nothing was run){hint}")
    return problems


def runner_problems(beam_args: list[str]) -> list[str]:
    """Why the runner `--runner` names cannot run here, found before any work (one line): a name
    Beam does not know, a runner whose extra is not installed (DataflowRunner without
    apache-beam[gcp]), a portable runner without a job endpoint, or a job server that cannot be
    had (Prism's binary, Flink's or Spark's job-server jar, which Beam fetches from the network
    when the job starts: resolved here the same way, and cached by Beam for the run)."""
    from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions

    from mmcurate.pipelines.curate import local_runner

    options = PipelineOptions(beam_args)
    name = options.view_as(StandardOptions).runner
    if not name or local_runner(options) is not None:
        return []  # the local FnApiRunner, or mmcurate's DaskRunner
    from apache_beam.runners.portability.job_server import SubprocessJobServer
    from apache_beam.runners.portability.portable_runner import PortableRunner
    from apache_beam.runners.runner import create_runner

    def problem(e: BaseException) -> list[str]:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return [f"--runner {name} cannot run here (nothing was run): {type(e).__name__}: {first}"]

    try:
        runner = create_runner(name)
    except (ValueError, ImportError) as e:
        return problem(e)
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    errors = PipelineOptionsValidator(options, runner).validate()  # what Pipeline() would raise
    if errors:
        return [f"--runner {name}: {' '.join(' '.join(errors).split())} (nothing was run)"]
    if not isinstance(runner, PortableRunner):
        return []
    portable = options.view_as(PortableOptions)
    if portable.job_endpoint:
        return _unreachable(name, portable)
    beam_log = logging.getLogger("apache_beam")
    level = beam_log.level
    beam_log.setLevel(logging.CRITICAL)  # the download's own 15-line warning says the same
    try:
        server = runner.default_job_server(options)
        server = getattr(server, "_job_server", server)  # StopOnExitJobServer wraps the real one
        if isinstance(server, SubprocessJobServer):
            server.subprocess_cmd_and_endpoint()  # resolves (downloads) the binary or jar only
    except Exception as e:  # noqa: BLE001 - every way a job server cannot be had
        return problem(e)
    finally:
        beam_log.setLevel(level)
    return []


def _unreachable(name: str, portable) -> list[str]:
    """A job service or an EXTERNAL SDK worker pool that nothing listens on. Beam would wait for
    them (the job service's gRPC channel, then the workers' start-up: 300 s) and end in a gRPC
    traceback; a TCP connect tells the same in a second."""
    import socket

    targets = []
    if portable.job_endpoint not in ("embed", "embedded"):
        targets.append(("--job_endpoint", portable.job_endpoint, "the job service"))
    if (portable.environment_type or "").upper() == "EXTERNAL" and portable.environment_config:
        targets.append(("--environment_config", portable.environment_config,
                        "the SDK worker pool (python -m apache_beam.runners.worker.worker_pool_main "
                        "--service_port PORT, started by the venv's Python with the venv's bin first on PATH: "
                        "its SDK workers are `python` from PATH)"))
    for flag, address, what in targets:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=3.0):
                pass
        except (OSError, ValueError) as e:
            return [f"--runner {name} cannot run here (nothing was run): nothing answers at {flag} "
                    f"{address} ({type(e).__name__}: {e}); start {what} there first"]
    return []


def own_flags(parser: argparse.ArgumentParser | None = None) -> set[str]:
    """Every option string mmcurate's parser defines, in any subcommand (`--output`, `-o`,
    `--set`, `--stages`, ...): what is never handed to Beam, and what the DAG's Beam options
    may not name."""
    todo, flags = [parser or _parser()], set()
    while todo:
        for action in todo.pop()._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return flags


def repeated_flags(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """One line per single-valued flag of mmcurate's own given more than once in `argv` (its
    own arguments, Beam's split off): argparse would keep the last one without a word, so
    `--output a ... --output b` would write to b."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((t for t in argv if t in sub.choices), None)
    if command is None:
        return []
    actions = sub.choices[command]._option_string_actions
    given: dict[str, list[str]] = {}
    i = argv.index(command) + 1
    while i < len(argv):
        tok = argv[i]
        action = actions.get(tok.split("=", 1)[0]) if tok.startswith("-") else None
        if action is not None:
            if type(action) is argparse._StoreAction:
                given.setdefault(action.option_strings[-1], []).append(tok)
            if action.nargs != 0 and "=" not in tok:
                tok = f"{tok} {argv[i + 1]}" if i + 1 < len(argv) else tok
                if type(action) is argparse._StoreAction:
                    given[action.option_strings[-1]][-1] = tok
                i += 1
        i += 1
    return [f"{flag} given {len(toks)} times ({', '.join(toks)}): give it once (nothing was run)"
            for flag, toks in given.items() if len(toks) > 1]


def split_beam_args(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Separate Beam's flags (passed through untouched) from mmcurate's own arguments.

    `--flag=value` and `--flag value` both work; everything after a lone `--` goes to Beam.
    """
    ours = own_flags(parser)
    mine, beam_args, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            beam_args.extend(argv[i + 1 :])
            break
        name = tok.split("=", 1)[0]
        if tok.startswith("--") and name not in ours:
            beam_args.append(tok)
            if "=" not in tok and i + 1 < len(argv) and not argv[i + 1].startswith("-") and _beam_flag_takes_value(name):
                beam_args.append(argv[i + 1])
                i += 1
        else:
            mine.append(tok)
        i += 1
    return mine, beam_args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    parser = _parser()
    mine, rest = split_beam_args(list(sys.argv[1:] if argv is None else argv), parser)
    args = parser.parse_args(mine)
    _setup_logging(args.verbose)
    from mmcurate.schemas.stages import STAGE_MODULE_PROBLEMS

    # a repeated flag, or a stage module that cannot be added (every command would be off)
    if _refused(repeated_flags(mine, parser) or STAGE_MODULE_PROBLEMS):
        return EXIT_USAGE
    try:
        if args.command == "run":
            return cmd_run(args, rest)
        if args.command == "corpus":
            return cmd_corpus(args, rest)
        if args.command == "export":
            from mmcurate.pipelines.export import cmd_export

            return cmd_export(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "config":
            return cmd_config(args)
        return cmd_audit(args)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # what a shell reports for a process ended by SIGPIPE
    except Exception as e:  # noqa: BLE001 - anything unforeseen: one line, exit 3, a log file
        return crashed(e, args)


def entry() -> None:
    """The `mmcurate` command: `main`, then exit without the interpreter's teardown.

    A run has imported Beam, torch, ONNX Runtime and gRPC; tearing all of that down took
    1-2.5 s after the last line was printed (every module, every native library's pools). By
    then the shards and the manifest are committed (fsync, rename) and the summary printed, so
    the process flushes its logs and streams and ends with main's status (an exception is
    main's status 3; only an interrupt ends it the usual way)."""
    from mmcurate.transforms.worker import exit_without_teardown

    rc = main()
    exit_without_teardown(rc if isinstance(rc, int) else 1)


if __name__ == "__main__":
    entry()
