"""Progress of a run, told by the driver on any runner: "k of N sources, elapsed, ETA".

Runners report counters differently or not at all while a job runs (the local FnApiRunner
returns only when the job is done; the Dask runner has no metrics; a portable runner's worker
logs stay with the workers), so the pipeline leaves marks in the output's work folder and the
driver counts them:

    OUT/_work/<run_id>/progress/<step>/in/<source_id>    the step was handed this source
    OUT/_work/<run_id>/progress/<step>/out/<source_id>   the step put out its rows or ledger rows

`mark_step` (called by the assembler, `mmcurate.pipelines.curate.build_stages`; stages know
nothing of it) adds a leaf step per stream that writes one empty file per source the first time
it sees it. `Reporter` polls the folder from a thread of the driver and logs one line at least
every `every_s` seconds, naming the step under way, its sources done of those handed to it, the
run's elapsed time and an estimate of the time left. Once every step has all its sources the
run is merging (run-wide statistics, dedup's clusters, writing the shards): the line says so.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import apache_beam as beam

from mmcurate.transforms import commit

log = logging.getLogger("mmcurate.progress")

PROGRESS = "progress"

# The sources a stage is handed, where its first input holds more than it works on: the video
# stage reads every source and makes documents of the videos only (its "VideoSources" filter)
HANDLES = {"video": lambda row: getattr(row, "media_kind", "video") == "video"}


def progress_dir(output: str, run_id: str) -> str:
    from mmcurate.pipelines.checkpoints import WORK_DIR

    return commit.join(output, WORK_DIR, run_id, PROGRESS)


def _source_id(row) -> str | None:
    sid = getattr(row, "source_id", None)
    if sid is None and hasattr(row, "source"):  # a SpeechInput carries its SourceRecord
        sid = getattr(row.source, "source_id", None)
    return sid if isinstance(sid, str) and sid else None


def _touch(path: str) -> None:
    if commit.is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        FileSystems.create(path).close()
        return
    try:
        open(path, "ab").close()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "ab").close()


class _MarkFn(beam.DoFn):
    """Row -> nothing; an empty file named after the row's source, once per source and worker."""

    def __init__(self, directory: str, keep=None):
        self.directory, self.keep = directory, keep
        self._seen: set[str] = set()

    def setup(self):
        self._seen = set()

    def process(self, row):
        sid = _source_id(row)
        if sid is None or sid in self._seen or (self.keep is not None and not self.keep(row)):
            return
        self._seen.add(sid)
        try:
            _touch(commit.join(self.directory, sid))
        except OSError as e:  # a progress mark must never fail the run
            log.debug("progress mark %s not written: %s", sid, e)


def mark_step(directory: str, step: str, inputs: list, outputs: list) -> None:
    """Leaf steps marking the sources `step` was handed (`inputs`: PCollections) and those it
    put out rows for (`outputs`), under `directory`/<step>/in|out/."""
    keep = HANDLES.get(step)
    for side, pcolls, k in (("in", inputs, keep), ("out", outputs, None)):
        for i, pc in enumerate(pcolls):
            pc | f"Progress[{step}][{side}{i}]" >> beam.ParDo(
                _MarkFn(commit.join(directory, step, side), k))


def _count(directory: str) -> int:
    if not commit.is_remote(directory):
        try:
            return len(os.listdir(directory))
        except OSError:
            return 0
    return len(commit.match(commit.join(directory, "*")))


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _state(text: str) -> tuple[str, str]:
    """A `Reporter.line` without the run's clock: its head and its per-step counts (the middle
    part holds the run's elapsed time and ETA)."""
    parts = text.split(" | ")
    return parts[0], parts[-1]


class Reporter:
    """Logs the progress of a job from a thread until `stop()` (module docstring). `steps`: the
    step names in order. `total`: the job's number of sources when known up front (a corpus
    job); else the first step finds them (ingest: "out" marks only, their count is N)."""

    def __init__(self, directory: str, steps: list[str], what: str = "run", total: int | None = None,
                 every_s: float = 8.0, poll_s: float | None = None, clock=time.monotonic):
        self.directory, self.steps, self.what, self.total = directory, list(steps), what, total
        self.every_s = every_s
        self.poll_s = poll_s if poll_s is not None else (5.0 if commit.is_remote(directory) else 1.0)
        self.clock = clock
        self.t0 = clock()
        self._started: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_text: str | None = None

    # ---------------------------------------------------------------- what the marks say
    def counts(self) -> dict[str, tuple[int, int]]:
        """{step: (sources handed to it, sources it is done with)}."""
        out = {}
        for i, step in enumerate(self.steps):
            done = _count(commit.join(self.directory, step, "out"))
            finder = i == 0 and self.total is None
            handed = done if finder else _count(commit.join(self.directory, step, "in"))
            out[step] = (max(handed, done), done)
        return out

    def line(self, counts: dict[str, tuple[int, int]], now: float | None = None) -> str:
        now = self.clock() if now is None else now
        for step, (handed, _done) in counts.items():
            if handed and step not in self._started:
                self._started[step] = now
        if self.total is None:
            first, later = self.steps[0], self.steps[1:]
            n = counts[first][1]
        else:
            first, later, n = None, self.steps, self.total
        started = [s for s in later if counts[s][0]]
        current = next((s for s in started if counts[s][1] < counts[s][0]), None)
        if first is not None and not n:
            head = f"{first}: finding, hashing and fetching the inputs"
        elif current is not None:
            handed, done = counts[current]
            took = now - self._started.get(current, now)
            head = f"{current}: {done} of {handed} source(s) in {_clock(took)}"
            if done and took > 0:
                head += f", ETA {_clock(took * (handed - done) / done)}"
        elif started and later.index(started[-1]) + 1 < len(later) or not started:
            # a step after the last started one (one handed no source before it, such as video
            # in a run without videos, is skipped): its input is being grouped
            waiting = later[later.index(started[-1]) + 1 if started else 0]
            head = f"{waiting}: waiting for its input (the steps before it group their rows)"
        else:
            head = "merging: run-wide steps and writing the tables (every step has all its sources)"
        # the job's share done: each step's done of handed, a step not reached yet counting 0
        # and one handed no source before the last started step not counting at all
        last = later.index(started[-1]) if started else -1
        shares = [counts[s][1] / counts[s][0] if counts[s][0] else 0.0
                  for i, s in enumerate(later) if counts[s][0] or i > last]
        share = sum(shares) / len(shares) if shares else 0.0
        elapsed = now - self.t0
        tail = f"{self.what}: {n} source(s), elapsed {_clock(elapsed)}" if n else \
            f"{self.what}: elapsed {_clock(elapsed)}"
        if 0 < share < 1 and elapsed > 0:
            tail += f", ETA ~{_clock(elapsed * (1 - share) / share)}"
        steps = ", ".join(f"{s} {counts[s][1]}/{counts[s][0]}" for s in later)
        return f"{head} | {tail} | {steps}"

    # ---------------------------------------------------------------- the thread
    def start(self) -> "Reporter":
        self._thread = threading.Thread(target=self._loop, name="mmcurate-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the thread and logs where the job stood, unless that line was the last one
        logged: a job shorter than the thread's gaps still tells its counts once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            text = self.line(self.counts())
        except Exception as e:  # noqa: BLE001 - progress must never fail the run
            log.debug("progress: %s", e)
            return
        if self._last_text is None or _state(text) != _state(self._last_text):
            log.info("%s", text)

    def __enter__(self) -> "Reporter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        last_line, last_head = self.clock(), None
        while not self._stop.wait(self.poll_s):
            try:
                text = self.line(self.counts())
            except Exception as e:  # noqa: BLE001 - progress must never fail the run
                log.debug("progress: %s", e)
                continue
            head = text.split(" | ", 1)[0].split(":", 1)[0]
            now = self.clock()
            # at least every every_s; sooner (not more than one line in 2 s) when a step begins
            if now - last_line >= self.every_s or (head != last_head and now - last_line >= 2.0):
                log.info("%s", text)
                last_line, last_head, self._last_text = now, head, text
