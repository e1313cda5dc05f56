"""What a run says while it runs: a progress line ("k of N sources, elapsed, ETA", the step under
way) at least every 10 s on any runner, mmcurate's own line first, third-party chatter in the
run's log file instead of the console (mmcurate.pipelines.progress, mmcurate.pipelines.logs)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import pytest

from mmcurate.pipelines import cli, logs, progress
from mmcurate.schemas.records import MediaRef

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
OWN_LINE = re.compile(r"^\d\d:\d\d:\d\d [A-Z] mmcurate[.:]")


def _mark(d: Path, step: str, side: str, *ids: str) -> None:
    (d / step / side).mkdir(parents=True, exist_ok=True)
    for i in ids:
        (d / step / side / i).touch()


@dataclasses.dataclass(frozen=True)
class _Src:  # a sources row as far as the marks read it
    source_id: str
    media_kind: str


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_reporter_names_the_step_its_sources_and_the_time_left(tmp_path):
    clock = _Clock()
    # a run without videos: the video step is handed no source, and is not waited for
    r = progress.Reporter(str(tmp_path), ["ingest", "vad", "speech", "video", "dedup"], clock=clock)
    assert r.line(r.counts()).startswith("ingest: finding, hashing and fetching the inputs | run: elapsed 0:00")

    _mark(tmp_path, "ingest", "out", "a", "b", "c", "d")
    _mark(tmp_path, "vad", "in", "a", "b", "c", "d")
    clock.t += 10
    r.line(r.counts())  # vad is seen starting now
    _mark(tmp_path, "vad", "out", "a")
    clock.t += 20
    line = r.line(r.counts())
    # one of four in 20 s: three more take 60 s; the run: vad 1/4 of 4 steps -> 1/16 done in 30 s
    assert line == ("vad: 1 of 4 source(s) in 0:20, ETA 1:00 | run: 4 source(s), elapsed 0:30, "
                    "ETA ~7:30 | vad 1/4, speech 0/0, video 0/0, dedup 0/0"), line

    _mark(tmp_path, "vad", "out", "b", "c", "d")
    line = r.line(r.counts())
    assert line.startswith("speech: waiting for its input"), line

    _mark(tmp_path, "speech", "in", "a", "b")
    _mark(tmp_path, "speech", "out", "a", "b")
    assert r.line(r.counts()).startswith("video: waiting for its input"), line
    _mark(tmp_path, "dedup", "in", "a", "b", "c", "d")
    _mark(tmp_path, "dedup", "out", "a", "b", "c", "d")
    line = r.line(r.counts())
    assert line.startswith("merging: run-wide steps and writing the tables"), line
    assert line.endswith("vad 4/4, speech 2/2, video 0/0, dedup 4/4"), line


def test_a_corpus_job_knows_its_sources_up_front(tmp_path):
    r = progress.Reporter(str(tmp_path), ["dedup"], what="corpus job dedup", total=7, clock=_Clock())
    _mark(tmp_path, "dedup", "in", *"abcdefg")
    _mark(tmp_path, "dedup", "out", *"abc")
    assert r.line(r.counts()).startswith("dedup: 3 of 7 source(s) in 0:00 | corpus job dedup: 7 source(s)")


def test_the_reporter_logs_at_least_every_interval(tmp_path, caplog):
    _mark(tmp_path, "ingest", "out", "a")
    with caplog.at_level(logging.INFO, logger="mmcurate.progress"):
        with progress.Reporter(str(tmp_path), ["ingest", "vad"], every_s=0.3, poll_s=0.05):
            time.sleep(1.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "mmcurate.progress"]
    assert len(lines) >= 3, lines
    assert all("run: 1 source(s), elapsed" in line for line in lines), lines


def test_a_job_shorter_than_the_interval_still_tells_its_counts_once(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mmcurate.progress"):
        with progress.Reporter(str(tmp_path), ["ingest", "vad"], every_s=60, poll_s=0.05):
            _mark(tmp_path, "ingest", "out", "a", "b")
            _mark(tmp_path, "vad", "in", "a", "b")
            _mark(tmp_path, "vad", "out", "a", "b")
            time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "mmcurate.progress"]
    assert len(lines) == 1 and "| run: 2 source(s), elapsed" in lines[0], lines
    assert lines[0].endswith("| vad 2/2"), lines


def test_the_assembler_marks_each_source_once_per_step_and_side(tmp_path):
    """`mark_step` on real Beam PCollections: one empty file per source (rows of one source
    are one mark), the video step counting only videos."""
    from mmcurate.schemas.records import Rejection

    ref = lambda sha: MediaRef(uri=f"/m/{sha}.wav", media_uri=f"/m/{sha}.wav", ingested_via="file",  # noqa: E731
                               sha256=sha * 64, bytes=1)
    rows = [Rejection.make(stage="vad", reason="no_speech", detail="", uri="/m/a.wav", run_id="r",
                           source_id="a" * 20, item_id=str(i)) for i in range(3)]

    with beam.Pipeline() as p:
        media = p | "Media" >> beam.Create([ref("a"), ref("b")])
        made = p | "Rows" >> beam.Create(rows)
        progress.mark_step(str(tmp_path), "vad", [media], [made])
        srcs = p | "Sources" >> beam.Create([_Src("v1", "video"), _Src("a1", "audio")])
        progress.mark_step(str(tmp_path), "video", [srcs], [])
    assert sorted(os.listdir(tmp_path / "vad" / "in")) == ["a" * 20, "b" * 20]
    assert os.listdir(tmp_path / "vad" / "out") == ["a" * 20]
    assert os.listdir(tmp_path / "video" / "in") == ["v1"]


# --------------------------------------------------------------------------- the console


def test_third_party_chatter_goes_to_the_log_file_not_the_console(tmp_path, capsys):
    """Without -v: faiss's AVX2 probing, Beam's resource-module and apitools warnings are not on
    the console; mmcurate's lines and other warnings are. All of them are in the log file,
    those logged before it was opened included. With -v the console has everything."""
    level = logging.getLogger().level
    try:
        logs.setup(False, force=True)  # force: pytest has handlers of its own on the root logger
        logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
        logging.getLogger().warning("Resource module is not available for current platform")
        logging.getLogger().warning("apitools not found, and bigquery client libraries are not available")
        logging.getLogger("mmcurate").info("run run-x: 2 input(s)")
        logging.getLogger("some.library").warning("a real problem")
        path = logs.open_debug_log(str(tmp_path / "out"))
        logging.getLogger("apache_beam.runners").info("Running stage 3")
        err = capsys.readouterr().err
        assert "faiss" not in err and "Resource module" not in err and "apitools" not in err, err
        assert "Running stage" not in err, err
        assert "mmcurate: run run-x: 2 input(s)" in err and "a real problem" in err, err
        assert Path(path).parent == tmp_path / "out" / "_logs"
        text = Path(path).read_text()
        for expected in ("Loading faiss", "Resource module", "apitools", "run run-x", "a real problem",
                         "Running stage 3"):
            assert expected in text, text

        logs.setup(True, force=True)
        logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
        assert "Loading faiss" in capsys.readouterr().err
        assert logs.debug_log().path is None  # a new set-up: nothing written until opened
    finally:
        logs.remove()
        logging.getLogger().setLevel(level)


def test_an_output_keeps_its_newest_debug_logs(tmp_path):
    folder = tmp_path / "out" / "_logs"
    folder.mkdir(parents=True)
    for i in range(logs.KEEP_LOGS + 5):
        (folder / f"debug-20260101T0000{i:02d}Z-1.log").write_text("old")
    (folder / "crash-20260101T000000Z-1.log").write_text("kept")
    level = logging.getLogger().level
    try:
        logs.setup(False, force=True)
        path = Path(logs.open_debug_log(str(tmp_path / "out")))
    finally:
        logs.remove()
        logging.getLogger().setLevel(level)
    names = sorted(p.name for p in folder.iterdir())
    assert len([n for n in names if n.startswith("debug-")]) == logs.KEEP_LOGS
    assert path.name in names and "crash-20260101T000000Z-1.log" in names
    assert "debug-20260101T000000Z-1.log" not in names  # the oldest went


def test_a_host_that_set_up_logging_keeps_it(capsys):
    """Called in a process whose root logger has handlers (an application embedding the CLI,
    pytest), set-up leaves them and the level alone, as logging.basicConfig does."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    assert handlers  # pytest's
    cli._setup_logging(False)
    assert root.handlers == handlers and root.level == level and logs.debug_log() is None


# --------------------------------------------------------------------------- a real run

# Runs the CLI with the VAD model step held up 14 s once: a step that logs nothing for longer
# than the heartbeat, as DNSMOS or dedup do on a real corpus.
WRAPPER = r"""
import sys, time
from mmcurate.pipelines import cli
cli._setup_logging(False)  # as `mmcurate` does before it imports Beam
from mmcurate.transforms import vad
inner = vad.VadModelHandler.run_inference
held = []

def slow(self, batch, model, inference_args=None):
    if not held:
        held.append(1)
        time.sleep(14)
    return inner(self, batch, model, inference_args)

vad.VadModelHandler.run_inference = slow
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_run_says_something_at_least_every_10_s_and_mmcurate_speaks_first(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-c", WRAPPER, "run", str(MEDIA / "speech" / "jfk.wav"),
            str(MEDIA / "speech" / "LDC93S1.wav"), "--output", str(out), "--stages", "vad,dedup",
            "--no-audit"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYANNOTE_METRICS_ENABLED": "false"})
    stamped = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
    rc = proc.wait(timeout=300)
    text = "\n".join(f"{t - t0:6.1f} {line}" for t, line in stamped)
    assert rc == 0, text
    lines = [(t, line) for t, line in stamped if line.strip()]
    assert OWN_LINE.match(lines[0][1]), text  # not faiss's loader, not Beam's warnings
    times = [t0] + [t for t, _ in lines]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 10, text
    # the held step is named with its sources while it says nothing itself
    assert any(re.search(r"mmcurate\.progress: vad: \d of \d source\(s\) in ", line) for _, line in lines), text
    assert not any("faiss" in line or "Resource module" in line for _, line in lines), text
    assert not (out / "_work").exists() or not list(out.glob("_work/*/progress")), "marks left behind"
    logs_dir = list((out / "_logs").glob("debug-*.log"))
    assert len(logs_dir) == 1 and "faiss" in logs_dir[0].read_text()


LLAMA = r"""
import logging, sys
if sys.argv[1] == "-v":
    logging.basicConfig(level=logging.DEBUG)
from mmcurate.transforms.rephrase_backends import EmbeddedGenerator
g = EmbeddedGenerator("smollm2-135m-instruct")
print(g.generate([{"role": "user", "content": "Say hi"}], max_tokens=3).error)
"""


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_llama_cpp_keeps_its_log_to_itself_unless_verbose(verbose):
    """The embedded rephrasing model's engine writes to stderr itself (not through logging):
    its 20 lines of start-up and slot chatter only with -v."""
    r = subprocess.run([sys.executable, "-c", LLAMA, "-v" if verbose else ""], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stdout + r.stderr
    llama = [line for line in r.stderr.splitlines() if " srv " in line or " cmn " in line]
    assert (len(llama) > 5) if verbose else (llama == []), r.stderr
