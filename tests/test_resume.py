"""Resume (issue 13): a `mmcurate run` killed with SIGKILL at any point and started again with
the same arguments finishes with output identical to an uninterrupted run (every table, every
row and id, the manifest's shard list, the shard bytes), without re-running the model work of
chunks it had committed.

The runs are real `mmcurate run` processes (VAD on the shared speech and diarization files, 8
sources in 4 chunks of 2) killed with SIGKILL: once at a random point after the first chunk
commit is seen, once parked just before a chunk's commit (its shards staged), once parked in
the merge after the final shards were moved into place but before `manifest.json` was
committed (the most delicate point: new-generation files beside no manifest).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmcurate.pipelines import resume
from mmcurate.pipelines.config import CurateConfig
from mmcurate.quality import audit

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
INPUTS = [str(MEDIA / "speech"), str(MEDIA / "diarization")]
ARGS = ["--stages", "vad", "--set", "output.chunk_sources=2", "--no-audit"]

# Runs the CLI; KILL_HOOK parks the process at a chosen point (writing KILL_MARKER) so the test
# can SIGKILL it there. The hooks wrap functions only; nothing in mmcurate knows about them.
WRAPPER = r"""
import os, sys, time
hook, marker = os.environ.get("KILL_HOOK", ""), os.environ.get("KILL_MARKER", "")
from mmcurate.pipelines import cli
cli._setup_logging(False)  # before the hooks' imports (Beam's import warning would set it up)

def park(what):
    with open(marker, "w") as fh:
        fh.write(what)
    time.sleep(600)

if hook.startswith("chunk:"):  # parked inside chunk n's commit: its shards are staged
    from mmcurate.pipelines import resume
    n, orig = int(hook.split(":")[1]), resume._CommitStepFn.process
    def process(self, _unused, written, media):
        if self.step.startswith(f"chunk-{n:05d}-"):
            park(self.step)
        return orig(self, _unused, written, media)
    resume._CommitStepFn.process = process
elif hook == "publish":  # the final shards are in place, manifest.json not yet written
    from mmcurate.transforms import sink
    sink.commit_manifest = lambda *a, **k: park("publish")
sys.exit(cli.main(sys.argv[1:]))
"""


def _start(out: Path, log: Path, hook: str = "", marker: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, KILL_HOOK=hook, KILL_MARKER=str(marker or ""), PYTHONUNBUFFERED="1",
               MMCURATE_CODE_VERSION="test-resume")  # a commit landing meanwhile must not change the run id
    return subprocess.Popen([sys.executable, "-c", WRAPPER, "run", *INPUTS, "--output", str(out), *ARGS],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _chunk_manifests(out: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in out.glob(f"{resume.CHUNKS_DIR}/*/chunk-*/{resume.MANIFEST}")}


def _tables(out: Path) -> dict[str, list[str]]:
    """Every row of every table the manifest lists (all columns, ids included), sorted."""
    manifest = json.loads((out / "manifest.json").read_text())
    rows: dict[str, list[str]] = {}
    for rel in manifest["shards"]:
        table = rel.split("/", 1)[0]
        rows.setdefault(table, []).extend(
            json.dumps(r, sort_keys=True, default=str) for r in pq.read_table(out / rel).to_pylist())
    return {t: sorted(v) for t, v in rows.items()}


def _vad_lines(log: Path) -> list[str]:
    return [line.split("mmcurate.vad: ", 1)[1].split(":", 1)[0]
            for line in log.read_text().splitlines() if "mmcurate.vad: " in line and " audio, " in line]


@pytest.mark.slow
def test_sigkill_at_any_point_then_restart_gives_identical_output(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    logs = [tmp_path / f"run{i}.log" for i in range(5)]
    marker = tmp_path / "parked"

    # the uninterrupted run
    p = _start(ref, logs[0])
    assert p.wait(timeout=600) == 0, logs[0].read_text()[-3000:]

    # 1: killed at whatever point it reached once the first chunk commit is seen
    p = _start(out, logs[1])
    _wait_for(lambda: _chunk_manifests(out), p, "the first chunk commit")
    _kill(p)
    first = _chunk_manifests(out)
    mtimes = {k: v.stat().st_mtime_ns for k, v in first.items()}
    media = {m["sha256"][:20]: m["media_uri"] for m in map(json.loads, next(
        out.glob(f"{resume.CHUNKS_DIR}/*/{resume.INGEST}/{resume.MEDIA}")).read_text().splitlines())}
    committed_by_1 = {media[sid] for m in first.values() for sid in json.loads(m.read_text())["sources"]}
    assert not (out / "manifest.json").exists()

    # 2: restarted, killed inside chunk 2's commit (its shards staged, not committed)
    p = _start(out, logs[2], "chunk:2", marker)
    _wait_for(marker.exists, p, "chunk 2's commit")
    _kill(p)
    marker.unlink()
    text = logs[2].read_text()
    assert all(f"{c} (2 source(s)) committed earlier, skipped" in text for c in first), text[-3000:]
    assert {k: v.stat().st_mtime_ns for k, v in first.items()} == mtimes, "a committed chunk was rewritten"
    staged = list(out.glob(f"{resume.CHUNKS_DIR}/*/chunk-00002-*/*/_staging-*/*.parquet"))
    assert staged and not list(out.glob(f"{resume.CHUNKS_DIR}/*/chunk-00002-*/manifest.json"))

    # 3: restarted, killed in the merge: final shards moved into place, no manifest.json yet
    p = _start(out, logs[3], "publish", marker)
    _wait_for(marker.exists, p, "the merge's commit")
    _kill(p)
    assert list(out.glob("sources/part-*.parquet")) and not (out / "manifest.json").exists()
    assert len(_chunk_manifests(out)) == 4

    # 4: restarted: every chunk is skipped, only the merge runs
    p = _start(out, logs[4])
    assert p.wait(timeout=600) == 0, logs[4].read_text()[-3000:]
    text = logs[4].read_text()
    assert "committed earlier, skipped" in text and text.count("committed earlier, skipped") == 5  # ingest + 4
    assert _vad_lines(logs[4]) == []  # no source went through VAD again

    # identical output: every table, row and id; the shard list; the bytes
    m_ref = json.loads((ref / "manifest.json").read_text())
    m_out = json.loads((out / "manifest.json").read_text())
    assert m_out["run_id"] == m_ref["run_id"] and m_out["shards"] == m_ref["shards"]
    assert m_out["tables"] == m_ref["tables"] and m_out["rejected"] == m_ref["rejected"]
    assert _tables(out) == _tables(ref)
    assert set(_tables(ref)) == {"sources", "speech_regions", "rejected"}
    for rel in m_ref["shards"]:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    assert sorted(p.relative_to(out) for p in out.rglob("*.parquet")) == \
        sorted(p.relative_to(ref) for p in ref.rglob("*.parquet"))
    assert not (out / resume.CHUNKS_DIR).exists()
    s = audit.summarize(str(out))
    assert s["problems"] == [] and s["invariant_ok"]

    # nothing committed was reprocessed: each source of a chunk committed by run 1 went through
    # VAD once over all the interrupted runs; no source more than twice (once per kill inside
    # its uncommitted chunk)
    seen = [s for log in logs[1:] for s in _vad_lines(log)]
    assert all(seen.count(uri) == 1 for uri in committed_by_1), (seen, committed_by_1)
    assert len(set(seen)) == m_ref["tables"]["sources"]


def test_plan_puts_per_source_stages_in_chunks_and_the_rest_in_the_merge():
    steps = resume.plan(CurateConfig(stages=("vad", "speech", "quality", "video")))
    assert [s.name for s in steps.chunk] == ["vad", "speech"]
    # quality's speaking-rate quartiles span the run; video reads quality's kept segments
    assert [s.name for s in steps.merge] == ["quality", "video"]
    steps = resume.plan(CurateConfig(stages=("vad", "speech", "video")))
    assert [s.name for s in steps.chunk] == ["vad", "speech", "video"] and steps.merge == []
    assert resume.plan(CurateConfig(stages=("vad",))).merge == []


def test_chunks_are_deterministic_and_cover_every_source():
    from mmcurate.schemas.records import MediaRef

    media = [MediaRef(f"/x/{i}.wav", f"/x/{i}.wav", "file", f"{i:064x}", 10) for i in range(7)]
    a = resume.chunk_sources(media, 3)
    b = resume.chunk_sources(list(reversed(media)), 3)
    assert [c for c, _ in a] == [c for c, _ in b] and [len(r) for _, r in a] == [3, 3, 1]
    assert sorted(m.uri for _, refs in a for m in refs) == sorted(m.uri for m in media)
