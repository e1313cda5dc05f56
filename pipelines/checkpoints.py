"""Per-source checkpoints inside the one Beam pipeline of a run.

A run is one pipeline on every runner (`mmcurate.pipelines.curate.build`). What makes it
resumable is a checkpoint per source, written inside that pipeline:

    media --"Checkpoints"--+-- finished earlier: its rows, read back ------------------+
                           +-- to do --> per-source stages (vad, speech, ...) --+      |
                                              "CheckpointSources": grouped by  |      |
                                              source, written once, atomically +------+--> merge
                                                                                            stages,
                                                                                            shards

* When a source's per-source stages (`StageSpec.per_source`: decode + VAD, speech, keyframes
  when video runs without quality) have all produced their rows, the rows (every table's, and
  the stages' ledger rows) are written as one file `OUT/_work/<run_id>/sources/<key>.ckpt`
  (`mmcurate.transforms.commit.write_atomic`: all or nothing; a retried bundle writes the same
  rows again).
* `<key>` is a hash of the source's `MediaRef`: its bytes' sha256, its size, its uri and
  metadata. Inputs are listed and hashed afresh by every run (ingest is never checkpointed),
  so a file replaced under the same name, or added to a folder, is a new key and is processed
  as new; it is never paired with the checkpoint of the bytes it replaced.
* The run id is a hash of the inputs as given, the config and the code, so a checkpoint is
  only ever read by the same job; the manifest stays the one commit of the output. After a
  commit the checkpoints of the committed run stay (a partition re-run after new files arrive
  costs only the new files) and those of every other run id are deleted.

Where a runner runs the per-source stages to completion for all sources before any grouped
step (the local FnApiRunner does so per fused stage), the checkpoints appear together once the
per-source stages end; a kill before that re-runs them. A kill during the corpus-level stages
(quality's run-wide statistics, DNSMOS, keyframes, dedup) or during publication re-uses every
source (`tests/test_resume.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import uuid

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from mmcurate.schemas.printable import printable
from mmcurate.transforms import commit

log = logging.getLogger("mmcurate.checkpoints")

WORK_DIR = "_work"
FORMAT = 1
SUFFIX = ".ckpt"
_MEDIA = ""  # the tag of a source's MediaRef in the grouped stream
_TAG = "rows:"  # output tags: a table's name alone is also a tag of the stages' own outputs


def work_dir(output: str, run_id: str) -> str:
    return commit.join(output, WORK_DIR, run_id, "sources")


def source_key(ref) -> str:
    """The checkpoint key of a MediaRef: everything that identifies its bytes and its rows."""
    fields = dataclasses.asdict(ref)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def checkpoint_path(directory: str, ref) -> str:
    return commit.join(directory, source_key(ref) + SUFFIX)


def count_checkpoints(directory: str) -> int:
    """Checkpoint files under `directory` (the driver's log line; 0 when there is none)."""
    if not commit.is_remote(directory):
        try:
            return sum(1 for n in os.listdir(directory) if n.endswith(SUFFIX))
        except OSError:
            return 0
    return len(commit.match(commit.join(directory, "*" + SUFFIX)))


def remove_other_runs(output: str, keep_run_id: str) -> None:
    """After a commit: the checkpoints of every run id but the committed one are garbage (a
    killed run of other inputs or another config), and so are the older layout's `_chunks/`."""
    base = commit.join(output, WORK_DIR)
    if not commit.is_remote(base):
        for name in os.listdir(base) if os.path.isdir(base) else []:
            if name != keep_run_id:
                commit.remove_tree(os.path.join(base, name))
    commit.remove_tree(commit.join(output, "_chunks"))


def _sort_key(item):
    table, record = item
    return table, json.dumps(record.to_row(), sort_keys=True, default=str)


def _encode(ref, rows: list) -> bytes:
    return pickle.dumps({"format": FORMAT, "media": dataclasses.asdict(ref),
                         "rows": sorted(rows, key=_sort_key)}, protocol=4)


class _SplitFn(beam.DoFn):
    """MediaRef -> "todo" (main) when it has no checkpoint; else its checkpointed rows, each on
    the output named after its table. A checkpoint that cannot be read (a crash mid-write of
    an older format, a foreign file) is logged and the source is processed again."""

    def __init__(self, directory: str):
        self.directory = directory
        self.reused = Metrics.counter("mmcurate", "checkpoint.reused")

    def process(self, ref):
        path = checkpoint_path(self.directory, ref)
        if not commit.exists(path):
            yield ref
            return
        try:
            data = pickle.loads(commit.read_bytes(path))
            if data.get("format") != FORMAT or data.get("media") != dataclasses.asdict(ref):
                raise ValueError("written for other media or in another format")
        except Exception as e:  # noqa: BLE001 - a bad checkpoint only costs the work again
            log.warning("%s: checkpoint %s unreadable (%s: %s): processing it again",
                        printable(ref.uri), printable(path), type(e).__name__, printable(e))
            yield ref
            return
        self.reused.inc()
        log.info("%s: per-source stages reused from checkpoint (%d row(s))", printable(ref.uri), len(data["rows"]))
        for table, record in data["rows"]:
            yield pvalue.TaggedOutput(_TAG + table, record)


class _WriteFn(beam.DoFn):
    """(source_id, [(table, record) | ("", MediaRef)]) -> one checkpoint file, then the rows on
    their tables' outputs. Rows that name no source (none today) pass through unwritten."""

    def __init__(self, directory: str):
        self.directory = directory
        self.written = Metrics.counter("mmcurate", "checkpoint.written")

    def process(self, element):
        _sid, items = element
        refs = [x for tag, x in items if tag == _MEDIA]
        rows = [(tag, x) for tag, x in items if tag != _MEDIA]
        if len(refs) == 1:
            # a unique temporary name per writer: two attempts of one bundle may race
            commit.write_atomic(checkpoint_path(self.directory, refs[0]), _encode(refs[0], rows),
                                tmp_suffix=f".tmp-{uuid.uuid4().hex[:12]}")
            self.written.inc()
        for table, record in rows:
            yield pvalue.TaggedOutput(_TAG + table, record)


class SplitFinished(beam.PTransform):
    """PCollection[MediaRef] -> {"todo": sources without a checkpoint, <table>: the rows of the
    sources with one}."""

    def __init__(self, directory: str, tables: list[str]):
        super().__init__()
        self.directory, self.tables = directory, list(tables)

    def expand(self, media):
        out = media | "Split" >> beam.ParDo(_SplitFn(self.directory)).with_outputs(
            *(_TAG + t for t in self.tables), main="todo")
        return {"todo": out.todo, **{t: out[_TAG + t] for t in self.tables}}


class CheckpointSources(beam.PTransform):
    """{"media": the sources processed now, <table>: their per-source rows} -> {<table>: the same
    rows}, after each source's rows were written as its checkpoint."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def expand(self, streams: dict):
        streams = dict(streams)
        media = streams.pop("media")
        tables = list(streams)
        keyed = [media | "KeyMedia" >> beam.Map(lambda m: (m.source_id, (_MEDIA, m)))]
        for t in tables:
            keyed.append(streams[t] | f"Key[{t}]" >> beam.Map(
                lambda r, t=t: (getattr(r, "source_id", None) or "", (t, r))))
        out = (
            keyed
            | "AllRows" >> beam.Flatten()
            | "BySource" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteFn(self.directory)).with_outputs(*(_TAG + t for t in tables))
        )
        return {t: out[_TAG + t] for t in tables}


# --------------------------------------------------------------------------- model steps
#
# The per-source checkpoint above appears once a source's per-source stages are all done: on
# the local runner, after the last of them has run for every source. The model steps inside
# them (ASR, diarization) are the expensive part, so each result is also kept as soon as the
# model returns it, inside the fused step that runs the model: a run killed during ASR keeps
# the transcripts already made, and the re-run's model steps return them instead of running
# the model again. The key is a hash of the request itself (the decoded samples, the regions,
# the hints), under the run id's directory, so only the same job with the same input re-uses it.


def step_dir(output: str, run_id: str, step: str) -> str:
    return commit.join(output, WORK_DIR, run_id, "steps", step)


def request_key(example) -> str:
    """A hash of a model request: its arrays' bytes, dtypes and shapes, and its other fields."""
    import numpy as np

    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, np.ndarray):
            h.update(f"nd{x.dtype.str}{x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            h.update(type(x).__name__.encode())
            for f in dataclasses.fields(x):
                h.update(f.name.encode())
                feed(getattr(x, f.name))
        elif isinstance(x, (list, tuple)):
            h.update(f"seq{len(x)}".encode())
            for y in x:
                feed(y)
        elif isinstance(x, dict):
            feed(sorted(x.items()))
        else:
            h.update(repr(x).encode())

    feed(example)
    return h.hexdigest()[:32]


class CachedModelHandler(ModelHandler):
    """A RunInference model handler that keeps each result under `directory` and returns the
    kept one for a request it has seen (model steps, above). Everything else is the wrapped
    handler's: model loading, batching, metrics, resource hints, `model_info`."""

    def __init__(self, inner, directory: str, step: str):
        super().__init__()
        self.inner, self.directory, self.step = inner, directory, step

    def __getattr__(self, name):  # cfg, model_info, ... of the wrapped handler
        if name in ("inner", "directory", "step") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def load_model(self):
        return self.inner.load_model()

    def run_inference(self, batch, model, inference_args=None):
        todo, keys, done = [], {}, {}
        for i, example in enumerate(batch):
            keys[i] = key = request_key(example)
            path = commit.join(self.directory, key + SUFFIX)
            if commit.exists(path):
                try:
                    inference, model_id = pickle.loads(commit.read_bytes(path))
                    done[i] = PredictionResult(example, inference, model_id)
                    Metrics.counter("mmcurate", f"checkpoint.{self.step}.reused").inc()
                    log.info("%s: a result of an earlier attempt reused from its checkpoint (%s)",
                             self.step, key[:12])
                    continue
                except Exception as e:  # noqa: BLE001 - a bad checkpoint only costs the work again
                    log.warning("%s: checkpoint %s unreadable (%s): running the model", self.step, printable(path), printable(e))
            todo.append(i)
        if todo:
            ran = self.inner.run_inference([batch[i] for i in todo], model, inference_args)
            for i, result in zip(todo, ran):
                # the result without its request (the request holds the decoded samples)
                data = pickle.dumps((result.inference, result.model_id), protocol=4)
                commit.write_atomic(commit.join(self.directory, keys[i] + SUFFIX), data,
                                    tmp_suffix=f".tmp-{uuid.uuid4().hex[:12]}")
                done[i] = result
        for i in range(len(batch)):
            yield done[i]

    def get_num_bytes(self, batch) -> int:
        return self.inner.get_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return self.inner.get_metrics_namespace()

    def get_resource_hints(self) -> dict:
        return self.inner.get_resource_hints()

    def batch_elements_kwargs(self):
        return self.inner.batch_elements_kwargs()

    def validate_inference_args(self, inference_args):
        return self.inner.validate_inference_args(inference_args)

    def update_model_path(self, model_path=None):
        return self.inner.update_model_path(model_path)

    def update_model_paths(self, model, model_paths=None):
        return self.inner.update_model_paths(model, model_paths)

    def get_preprocess_fns(self):
        return self.inner.get_preprocess_fns()

    def get_postprocess_fns(self):
        return self.inner.get_postprocess_fns()

    def should_skip_batching(self) -> bool:
        return self.inner.should_skip_batching()

    def share_model_across_processes(self) -> bool:
        return self.inner.share_model_across_processes()

    def model_copies(self) -> int:
        return self.inner.model_copies()

    def override_metrics(self, metrics_namespace: str = "") -> bool:
        return self.inner.override_metrics(metrics_namespace)

    def should_garbage_collect_on_timeout(self) -> bool:
        return self.inner.should_garbage_collect_on_timeout()

    def set_environment_vars(self):
        return self.inner.set_environment_vars()
