"""The cross-run dedup index (`dedup.index_dir`): written with a run, published by its commit.

Layout:
  <index_dir>/<partition>/part-<bucket>.parquet   published signatures (dedup_signatures' schema)
  <index_dir>/<partition>/_SUCCESS                what publishes them: JSON, see `describe`
  <index_dir>/_staging/<partition>/<output key>/<run id>/   a run's partition before its commit

Protocol (two-phase; the run's manifest commit is the one commit point):
  1. the dedup stage writes its partition under `_staging/...` and, once every part is there,
     `_STAGED` (the `_SUCCESS` to be: settings, files with sizes and sha256, run id, output);
  2. after the run's `manifest.json` is committed, `PublishIndex` (a step on the committed
     manifest, `BuildContext.on_commit`) moves the parts to `<index_dir>/<partition>/` and
     writes `_SUCCESS` last. Replacing a partition removes its old `_SUCCESS` first, so
     between the two a reader sees no partition (a missed duplicate, never a wrong one);
  3. readers consult published partitions only (a `_SUCCESS` in a directory with a partition
     name; `_staging` is none), never the run's own partition. A run that fails before its
     commit leaves only `_staging/`: nothing of it is ever a representative;
  4. recovery: a run that died between its commit and the publish is published by the next run
     that reads the index (`recover`: a staged partition whose output's committed manifest
     names its run id); a re-run of the same command rewrites and publishes it anyway.
  Concurrent runs publishing ONE partition name are not coordinated: default partition names
  are per output (`default_partition`) and one output has one live run (its lock).

Comparability: signatures compare only when made the same way (MinHash seed, shingle size,
bands x rows, the fingerprints' framing, the embedding model). `_SUCCESS` records those per
method (`index_settings`), and a run with other values is refused before any work (one line
naming the setting, the index's value and the run's), as is a partition whose listed parts
are missing or of another size (`check_index`, at start-up) or of another sha256 or schema
(`read_index_file`, when read).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
from typing import Any, Iterable

import apache_beam as beam

from mmcurate.schemas.printable import printable
from mmcurate.transforms.commit import (delete_quietly, match, move_into_place, read_bytes,
                                        remove_tree, write_atomic)
from mmcurate.transforms.commit import join as _join

log = logging.getLogger("mmcurate.dedup")

SUCCESS = "_SUCCESS"
STAGED = "_STAGED"
STAGING = "_staging"
FORMAT = 1  # of `_SUCCESS` and the parts; a partition of another format is refused
# a partition names a directory of the index: no separators, no `..`, no control characters,
# not hidden and not `_staging`
PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


def _bucket(key: str, n: int) -> int:
    """The index bucket (of `index_buckets`) a signature id is written to."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") % n


class DedupIndexError(ValueError):
    """The index cannot be used as it is (one line naming the file or setting)."""


def partition_problem(v: str | None) -> str | None:
    if v is not None and not PARTITION_RE.match(v):
        return (f"{v!r}: letters, digits and . _ = - only, starting with a letter or digit, at "
                "most 128 (it names a directory of the index)")
    return None


def output_key(output: str) -> str:
    return hashlib.sha256(output.rstrip("/").encode()).hexdigest()[:16]


def default_partition(output: str) -> str:
    """The partition of a run without `dedup.partition`: named by its output directory, which
    holds one generation at a time, so a re-run into the same output (other code, config or
    inputs) replaces its partition instead of adding one its items would duplicate."""
    return "out-" + output_key(output)


def index_settings(cfg) -> dict[str, dict[str, Any]]:
    """Per method of `cfg.methods`: what must be equal for two signatures to compare."""
    from mmcurate.transforms import fingerprint as fp
    from mmcurate.transforms import image_hash as ih

    out: dict[str, dict[str, Any]] = {}
    for m in sorted(cfg.methods):
        s: dict[str, Any] = {}
        if m == "minhash":
            s = {"dedup.seed": cfg.seed, "dedup.shingle_size": cfg.shingle_size,
                 "dedup.bands": cfg.bands, "dedup.rows": cfg.rows}
        elif m == "audio_fp":
            s = {"audio fingerprint": f"{fp.SAMPLE_RATE} Hz, frame {fp.AUDIO_FRAME}, hop "
                                      f"{fp.AUDIO_HOP}, {fp.AUDIO_BANDS} bands "
                                      f"{fp.AUDIO_FMIN:g}-{fp.AUDIO_FMAX:g} Hz"}
        elif m == "video_fp":
            s = {"dedup.video_step_s": cfg.video_step_s,
                 "video fingerprint": f"pHash of the picture inside black bars (luma > "
                                      f"{ih.BAR_LUMA}) and of its centre {ih.CENTRE:g}"}
        elif m == "embedding":
            from mmcurate.transforms import embed

            s = {"embedding model": f"{embed.MODEL_NAME} sha256:{embed.SHA256['model.safetensors']}"}
        out[m] = s
    return out


def describe(cfg, partition: str, run_id: str, output: str, files: list[dict]) -> dict:
    """The content of `_STAGED` and then `_SUCCESS`."""
    return {"format": FORMAT, "partition": partition, "run_id": run_id, "output": output,
            "methods": sorted(cfg.methods), "settings": index_settings(cfg),
            "files": sorted(files, key=lambda f: f["name"])}


def staging_dir(index_dir: str, partition: str, output: str, run_id: str) -> str:
    return _join(index_dir, STAGING, partition, output_key(output), run_id)


# ------------------------------------------------------------------------------- writing


class _WriteStagedBucket(beam.DoFn):
    def __init__(self, staging: str):
        self.staging = staging

    def process(self, kv):
        import pyarrow.parquet as pq

        from mmcurate.schemas.records import to_table

        bucket, sigs = kv
        rows = sorted((s for s in sigs if s is not None), key=lambda s: s.signature_id)
        name = f"part-{bucket:04d}.parquet"
        buf = io.BytesIO()
        pq.write_table(to_table("dedup_signatures", rows), buf, compression="zstd")
        data = buf.getvalue()
        write_atomic(_join(self.staging, name), data, tmp_suffix=".tmp")
        yield {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _mark_staged(_unused, written, staging: str, record: dict):
    rec = dict(record, files=sorted(written, key=lambda f: f["name"]))
    write_atomic(_join(staging, STAGED), json.dumps(rec, indent=1, sort_keys=True).encode())
    yield staging


class StageIndex(beam.PTransform):
    """DedupSignature rows -> the run's partition, staged (never read until published); the
    output is the staging directory (one element, once `_STAGED` is written)."""

    def __init__(self, cfg, index_dir: str, partition: str, run_id: str, output: str):
        super().__init__()
        self.cfg, self.index_dir, self.partition = cfg, index_dir, partition
        self.run_id, self.output = run_id, output

    def expand(self, rows):
        n = self.cfg.index_buckets
        staging = staging_dir(self.index_dir, self.partition, self.output, self.run_id)
        record = describe(self.cfg, self.partition, self.run_id, self.output, [])
        p = rows.pipeline
        buckets = p | "IndexBuckets" >> beam.Create([(b, None) for b in range(n)])
        written = (((rows | "KeyIndex" >> beam.Map(lambda s: (_bucket(s.signature_id, n), s))), buckets)
                   | "AllIndexRows" >> beam.Flatten()
                   | "GroupIndex" >> beam.GroupByKey()
                   | "WriteIndex" >> beam.ParDo(_WriteStagedBucket(staging)))
        return (p | "IndexTrigger" >> beam.Create([None])
                | "IndexStaged" >> beam.FlatMap(_mark_staged, beam.pvalue.AsList(written), staging, record))


# ----------------------------------------------------------------------------- publishing


def _committed(output: str, run_id: str) -> bool:
    """Whether `output`'s committed manifest is the one of run (or corpus job) `run_id`."""
    m = _read_json(_join(output, "manifest.json")) if output else None
    if m is None:  # never committed (or unreadable): not committed
        return False
    return m.get("run_id") == run_id or any(
        j.get("run_id") == run_id for j in (m.get("corpus_jobs") or {}).values())


def _read_json(path: str) -> dict | None:
    try:
        rec = json.loads(read_bytes(path))
    except Exception:  # noqa: BLE001 - missing or not JSON
        return None
    return rec if isinstance(rec, dict) else None


def _base(path: str) -> str:
    return posixpath.basename(path.replace(os.sep, "/"))


def publish(index_dir: str, staging: str) -> str | None:
    """Make a staged partition the published one (its run's manifest is committed); returns
    the partition, or None when there is nothing staged there (published already)."""
    rec = _read_json(_join(staging, STAGED))
    if rec is None:
        return None
    part = rec["partition"]
    target = _join(index_dir, part)
    names = [f["name"] for f in rec["files"]]
    delete_quietly(_join(target, SUCCESS))  # unpublished until the new _SUCCESS below
    if "://" not in target:
        os.makedirs(target, exist_ok=True)
    existing = {m.path for m in match(_join(target, "part-*.parquet"))}
    # a publish that died half-way moved some parts already: move the rest
    todo = {_base(m.path) for m in match(_join(staging, "part-*.parquet"))} & set(names)
    move_into_place([_join(staging, n) for n in sorted(todo)], [_join(target, n) for n in sorted(todo)],
                    existing)
    for p in sorted(p for p in existing if _base(p) not in names):
        delete_quietly(p)
    sizes = {_base(m.path): m.size_in_bytes for m in match(_join(target, "part-*.parquet"))}
    lost = [f["name"] for f in rec["files"] if sizes.get(f["name"]) != f["bytes"]]
    if lost:
        raise DedupIndexError(f"dedup index {staging}: part(s) {lost} are neither staged nor "
                              f"published in {target}; re-run the command that wrote partition {part}")
    write_atomic(_join(target, SUCCESS), json.dumps(rec, indent=1, sort_keys=True).encode())
    # this output's staged attempts of the partition: this one and dead ones (the output's
    # lock means no other run into it is live)
    remove_tree(_join(index_dir, STAGING, part, output_key(rec.get("output") or "")))
    if "://" not in index_dir:  # object stores have no empty directories
        for d in (_join(index_dir, STAGING, part), _join(index_dir, STAGING)):
            try:
                os.rmdir(d)
            except OSError:  # not empty: other outputs' attempts
                break
    log.info("dedup index %s: partition %s published (run %s)", printable(index_dir), part, rec.get("run_id"))
    return part


def _publish_committed(manifest: dict, staged: list[str], index_dir: str):
    for staging in staged:
        rec = _read_json(_join(staging, STAGED))
        if rec is None:
            continue
        ids = {manifest.get("run_id")} | {j.get("run_id") for j in (manifest.get("corpus_jobs") or {}).values()}
        if rec.get("run_id") not in ids:
            raise DedupIndexError(f"dedup index {staging}: staged by run {rec.get('run_id')}, "
                                  f"but the committed manifest is run {manifest.get('run_id')}'s")
        yield publish(index_dir, staging)


class PublishIndex(beam.PTransform):
    """On the committed manifest (a PCollection of one dict): publish the staged partition(s)."""

    def __init__(self, index_dir: str, staged):
        super().__init__()
        self.index_dir, self.staged = index_dir, staged

    def expand(self, committed):
        return committed | "Publish" >> beam.FlatMap(
            _publish_committed, beam.pvalue.AsList(self.staged), self.index_dir)


def recover(index_dir: str) -> list[str]:
    """Publish every staged partition whose run committed its output but died before
    publishing (returns them). One whose partition was since published from another output
    is left staged (which is current cannot be told), with a warning."""
    done = []
    for m in match(_join(index_dir, STAGING, "*", "*", "*", STAGED)):
        staging = posixpath.dirname(m.path.replace(os.sep, "/"))
        rec = _read_json(m.path)
        if rec is None or not _committed(rec.get("output", ""), rec.get("run_id", "")):
            continue  # a failed (or live) run's attempt: never consulted
        part = rec.get("partition", "")
        if partition_problem(part) or not part:
            continue
        current = _read_json(_join(index_dir, part, SUCCESS))
        if current is not None and current.get("output") != rec.get("output"):
            log.warning("dedup index %s: %s is staged by committed run %s of %s, but partition %s "
                        "is published from %s; left staged", printable(index_dir), printable(staging),
                        rec.get("run_id"), printable(rec.get("output")), part,
                        printable(current.get("output")))
            continue
        log.warning("dedup index %s: run %s committed %s but did not publish partition %s; "
                    "publishing it now", printable(index_dir), rec.get("run_id"),
                    printable(rec.get("output")), part)
        if publish(index_dir, staging):
            done.append(part)
    return done


# -------------------------------------------------------------------------------- reading


def published(index_dir: str) -> list[str]:
    """The names of the published partitions."""
    found = set()
    for m in match(_join(index_dir, "*", SUCCESS)):
        name = posixpath.basename(posixpath.dirname(m.path.replace(os.sep, "/")))
        if PARTITION_RE.match(name):
            found.add(name)
    return sorted(found)


def consulted(names: list[str], partition: str | None, explicit: bool) -> list[str]:
    """The partitions a run compares against: never its own; with an explicit `dedup.partition`
    only those that sort before it (a retried older partition is never dropped against a later
    one)."""
    return sorted(p for p in names if p != partition and (not explicit or p < partition))


def _setting_problems(index_dir: str, part: str, rec: dict, cfg) -> list[str]:
    if rec.get("format") != FORMAT:
        return [f"dedup index {index_dir}: partition {part} has format {rec.get('format')!r}, "
                f"this run reads {FORMAT} (rebuild the index or use another dedup.index_dir)"]
    mine, theirs = index_settings(cfg), rec.get("settings") or {}
    out = []
    for method in sorted(set(mine) & set(theirs)):
        for key in sorted(set(mine[method]) | set(theirs[method])):
            a, b = theirs[method].get(key), mine[method].get(key)
            if a != b:
                out.append(f"{key}: the dedup index {index_dir} (partition {part}) was written with "
                           f"{a!r}, this run has {b!r} ({method} signatures of the two never match: "
                           "run with the index's value or another dedup.index_dir)")
    return out


def _file_problems(index_dir: str, part: str, rec: dict) -> tuple[list[tuple[str, int, str]], list[str]]:
    pdir = _join(index_dir, part)
    sizes = {_base(m.path): m.size_in_bytes for m in match(_join(pdir, "*"))}
    files, problems = [], []
    for f in rec.get("files") or []:
        path = _join(pdir, f["name"])
        if f["name"] not in sizes:
            problems.append(f"dedup index part {path}: listed in its {SUCCESS} but missing "
                            "(restore it or remove the partition)")
        elif sizes[f["name"]] != f["bytes"]:
            problems.append(f"dedup index part {path}: {sizes[f['name']]} bytes, its {SUCCESS} "
                            f"lists {f['bytes']} (restore it or remove the partition)")
        else:
            files.append((path, int(f["bytes"]), f["sha256"]))
    return files, problems


def check_index(cfg, partition: str | None, explicit: bool
                ) -> tuple[list[str], list[tuple[str, int, str]], list[str]]:
    """(consulted partitions, their parts as (path, bytes, sha256), problems) of the index in
    `cfg.index_dir` for a run of `cfg`; `partition` None: every published partition."""
    index_dir = cfg.index_dir
    parts = consulted(published(index_dir), partition, explicit)
    files, problems, missing_methods = [], [], set()
    for part in parts:
        succ = _join(index_dir, part, SUCCESS)
        rec = _read_json(succ)
        if rec is None or "files" not in rec:
            problems.append(f"dedup index {succ}: not a described partition (no settings, files "
                            "or sha256: written by an older mmcurate or damaged); remove the "
                            "partition or use another dedup.index_dir")
            continue
        p = _setting_problems(index_dir, part, rec, cfg)
        f, q = _file_problems(index_dir, part, rec)
        problems += p + q
        files += f
        missing_methods |= set(cfg.methods) - set(rec.get("methods") or [])
    if missing_methods and parts:
        log.warning("dedup index %s: some partitions were written without method(s) %s: this run's "
                    "items are not compared with theirs by them", printable(index_dir),
                    sorted(missing_methods))
    return parts, sorted(files), list(dict.fromkeys(problems))


def index_problems(cfg) -> list[str]:
    """Start-up check: every published partition this run could consult (the run's own
    partition is only known with `dedup.partition`)."""
    if not cfg.index_dir:
        return []  # no index yet: `match` finds nothing
    return check_index(cfg, cfg.partition, explicit=cfg.partition is not None)[2]


def read_index_file(part: tuple[str, int, str]) -> Iterable:
    """The DedupSignature rows of one published part, checked against its `_SUCCESS` entry."""
    import pyarrow.parquet as pq

    from mmcurate.schemas.records import DedupSignature
    from mmcurate.schemas.tables import TABLES

    path, size, sha = part
    data = read_bytes(path)
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        raise DedupIndexError(f"dedup index part {path}: its content is not what its {SUCCESS} "
                              f"lists ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}..., "
                              f"listed {size} bytes, {sha[:16]}...)")
    try:
        t = pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - not Parquet
        raise DedupIndexError(f"dedup index part {path}: not Parquet ({type(e).__name__}: {e})") from None
    want = TABLES["dedup_signatures"]
    if [(f.name, f.type) for f in t.schema] != [(f.name, f.type) for f in want]:
        raise DedupIndexError(f"dedup index part {path}: columns {t.schema.names} are not "
                              f"dedup_signatures' {want.names}")
    for row in t.to_pylist():
        yield DedupSignature.from_row(row)


def read_index(p: beam.Pipeline, cfg, partition: str):
    """The index entries this run compares against (None without an index or entries), after
    publishing what committed runs left staged (`recover`). Raises DedupIndexError for a
    partition written with other settings, or a listed part missing or of another size."""
    if not cfg.index_dir:
        return None
    recover(cfg.index_dir)
    parts, files, problems = check_index(cfg, partition, explicit=cfg.partition is not None)
    if problems:
        raise DedupIndexError(problems[0])
    log.info("dedup index %s: %d earlier partition(s), %d file(s)", printable(cfg.index_dir), len(parts), len(files))
    if not files:
        return None
    return (p | "IndexFiles" >> beam.Create(files)
            | "SpreadIndexFiles" >> beam.Reshuffle()
            | "ReadIndex" >> beam.FlatMap(read_index_file))
