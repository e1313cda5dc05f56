"""Resume: a `mmcurate run` killed with SIGKILL and started again with the same arguments
finishes with output identical to an uninterrupted run (every table, row and id, the
manifest's shard list, the shard bytes), re-using the per-source checkpoints of the sources it
had finished; a file replaced or added between the two is processed as new.

The runs are real `mmcurate run` processes, one Beam pipeline each (VAD per source, dedup over
the run), on copies of shared speech files, killed with SIGKILL: during the per-source stage
(VAD), during the merge (dedup's fingerprints, after every source was checkpointed) and
during publication (final shards moved into place, `manifest.json` not yet committed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmcurate.pipelines import checkpoints
from mmcurate.pipelines.curate import split_stages
from mmcurate.quality import audit
from mmcurate.schemas.stages import resolve

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
FILES = [MEDIA / "speech" / n for n in ("jfk.wav", "jfk.flac", "LDC93S1.wav")] + \
        [MEDIA / "speakers" / n for n in ("sb_spk1_snt1.wav", "sb_spk2_snt1.wav", "lj_LJ002-0020.wav")]
ARGS = ["--stages", "vad,dedup", "--set", "dedup.methods=[\"sha256\",\"audio_fp\",\"minhash\"]", "--no-audit",
        "--direct_running_mode=in_memory"]

# Runs the CLI; KILL_HOOK parks the process at a chosen point (writing KILL_MARKER) so the test
# can SIGKILL it there. The hooks wrap functions only; nothing in mmcurate knows about them.
WRAPPER = r"""
import os, sys, time
hook, marker = os.environ.get("KILL_HOOK", ""), os.environ.get("KILL_MARKER", "")
from mmcurate.pipelines import cli
cli._setup_logging(False)

def park(what):
    with open(marker, "w") as fh:
        fh.write(what)
    time.sleep(600)

if hook == "vad":  # the third source's VAD: two sources done, none checkpointed yet
    from mmcurate.transforms import vad
    orig, seen = vad.VadModelHandler.detect, []
    def detect(self, ref, model):
        seen.append(ref.uri)
        if len(seen) == 3:
            park("vad")
        return orig(self, ref, model)
    vad.VadModelHandler.detect = detect
elif hook == "asr":  # the third source's ASR: two transcripts made, no source checkpointed
    from mmcurate.transforms import asr
    orig, seen = asr.AsrModelHandler.run_inference, []
    def run_inference(self, batch, model, inference_args=None):
        seen.extend(batch)
        if len(seen) == 3:
            park("asr")
        return orig(self, batch, model, inference_args)
    asr.AsrModelHandler.run_inference = run_inference
elif hook == "merge":  # dedup's fingerprints: every source checkpointed
    from mmcurate.transforms import dedup_signatures
    dedup_signatures.SourceSignatures.process = lambda self, kv: park("merge")
elif hook == "publish":  # the final shards are in place, manifest.json not yet written
    from mmcurate.transforms import sink
    sink.commit_manifest = lambda *a, **k: park("publish")
sys.exit(cli.main(sys.argv[1:]))
"""


def _start(inputs: Path, out: Path, log: Path, hook: str = "", marker: Path | None = None,
           args: list[str] = ARGS) -> subprocess.Popen:
    env = dict(os.environ, KILL_HOOK=hook, KILL_MARKER=str(marker or ""), PYTHONUNBUFFERED="1",
               MMCURATE_CODE_VERSION="test-resume")  # a commit landing meanwhile must not change the run id
    return subprocess.Popen([sys.executable, "-c", WRAPPER, "run", str(inputs), "--output", str(out), *args],
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


def _reused(log: Path) -> list[str]:
    return [line.split("mmcurate.checkpoints: ", 1)[1].split(": per-source", 1)[0]
            for line in log.read_text().splitlines() if "per-source stages reused from checkpoint" in line]


def _ckpts(out: Path) -> list[Path]:
    return sorted(out.glob(f"{checkpoints.WORK_DIR}/*/sources/*{checkpoints.SUFFIX}"))


def _assert_identical(out: Path, ref: Path) -> None:
    m_ref = json.loads((ref / "manifest.json").read_text())
    m_out = json.loads((out / "manifest.json").read_text())
    assert m_out["run_id"] == m_ref["run_id"] and m_out["shards"] == m_ref["shards"]
    assert m_out["tables"] == m_ref["tables"] and m_out["rejected"] == m_ref["rejected"]
    assert m_out["stats"] == m_ref["stats"]
    assert _tables(out) == _tables(ref)
    for rel in m_ref["shards"]:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel


@pytest.mark.slow
def test_sigkill_during_stages_merge_and_publication_then_restart_gives_identical_output(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in FILES:
        shutil.copy(f, inputs / f.name)
    ref, out = tmp_path / "ref", tmp_path / "out"
    logs = [tmp_path / f"run{i}.log" for i in range(5)]
    marker = tmp_path / "parked"

    # the uninterrupted run: one pipeline, a checkpoint per source, the manifest's stats
    p = _start(inputs, ref, logs[0])
    assert p.wait(timeout=600) == 0, logs[0].read_text()[-3000:]
    m_ref = json.loads((ref / "manifest.json").read_text())
    assert m_ref["tables"]["sources"] == len(FILES) and len(_ckpts(ref)) == len(FILES)
    assert any(k.startswith("dedup.") for k in m_ref["stats"]), m_ref["stats"]  # not {}

    # 1: killed during the per-source stage (VAD of the third source)
    p = _start(inputs, out, logs[1], "vad", marker)
    _wait_for(marker.exists, p, "the third source's VAD")
    _kill(p)
    marker.unlink()
    assert not (out / "manifest.json").exists()

    # 2: restarted, killed during the merge: every source checkpointed, no manifest
    p = _start(inputs, out, logs[2], "merge", marker)
    _wait_for(marker.exists, p, "the merge")
    _kill(p)
    marker.unlink()
    assert len(_ckpts(out)) == len(FILES) and not (out / "manifest.json").exists()
    stamps = {c: c.stat().st_mtime_ns for c in _ckpts(out)}

    # 3: restarted, killed in publication: final shards in place, manifest.json not yet written
    p = _start(inputs, out, logs[3], "publish", marker)
    _wait_for(marker.exists, p, "the publication")
    _kill(p)
    marker.unlink()
    assert list(out.glob("sources/part-*.parquet")) and not (out / "manifest.json").exists()
    assert sorted(_reused(logs[3])) == sorted(str(inputs / f.name) for f in FILES)
    assert _vad_lines(logs[3]) == []  # no source went through VAD again
    assert {c: c.stat().st_mtime_ns for c in _ckpts(out)} == stamps, "a checkpoint was rewritten"

    # 4: restarted: every source reused, output identical to the uninterrupted run's
    p = _start(inputs, out, logs[4])
    assert p.wait(timeout=600) == 0, logs[4].read_text()[-3000:]
    assert len(_reused(logs[4])) == len(FILES) and _vad_lines(logs[4]) == []
    assert f"{len(FILES)} source(s) finished by an earlier attempt" in logs[4].read_text()
    _assert_identical(out, ref)
    s = audit.summarize(str(out))
    assert s["problems"] == [] and s["invariant_ok"]
    assert not (out / ".mmcurate.lock").exists()


@pytest.mark.slow
def test_a_replaced_and_an_added_file_are_processed_as_new(tmp_path):
    """Killed after every source was checkpointed; then one file is replaced by another
    recording under the same name and one is added: the re-run re-uses only the untouched
    sources and its output equals a fresh run's over the changed folder."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in FILES[:4]:
        shutil.copy(f, inputs / f.name)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    marker = tmp_path / "parked"
    p = _start(inputs, out, tmp_path / "a.log", "merge", marker)
    _wait_for(marker.exists, p, "the merge")
    _kill(p)
    shutil.copy(FILES[4], inputs / FILES[1].name)  # jfk.flac's name, another speaker's bytes
    shutil.copy(FILES[5], inputs / FILES[5].name)  # a new file in the folder

    p = _start(inputs, out, tmp_path / "b.log")
    assert p.wait(timeout=600) == 0, (tmp_path / "b.log").read_text()[-3000:]
    reused = sorted(_reused(tmp_path / "b.log"))
    assert reused == sorted(str(inputs / f.name) for f in (FILES[0], FILES[2], FILES[3]))
    assert sorted(_vad_lines(tmp_path / "b.log")) == sorted(str(inputs / n) for n in (FILES[1].name, FILES[5].name))

    p = _start(inputs, fresh, tmp_path / "c.log")
    assert p.wait(timeout=600) == 0, (tmp_path / "c.log").read_text()[-3000:]
    _assert_identical(out, fresh)
    sources = {r["uri"]: r for r in pq.read_table(out / "sources").to_pylist()}
    replaced = sources[str(inputs / FILES[1].name)]
    assert replaced["sha256"] == __import__("hashlib").sha256(FILES[4].read_bytes()).hexdigest()
    assert replaced["bytes"] == FILES[4].stat().st_size
    assert str(inputs / FILES[5].name) in sources


@pytest.mark.slow
def test_sigkill_during_asr_keeps_the_transcripts_already_made(tmp_path):
    """The speech stage's model steps keep each result as the model returns it: killed during
    the third source's ASR, the re-run takes the first two sources' ASR from their checkpoints
    and its output equals an uninterrupted run's."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in [FILES[0], *FILES[2:5]]:  # jfk.flac left out: a third copy of jfk's 11 s for the models
        shutil.copy(f, inputs / f.name)
    args = ["--stages", "vad,speech", "--no-audit", "--direct_running_mode=in_memory"]
    ref, out, marker = tmp_path / "ref", tmp_path / "out", tmp_path / "parked"
    p = _start(inputs, ref, tmp_path / "ref.log", args=args)
    assert p.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    p = _start(inputs, out, tmp_path / "a.log", "asr", marker, args=args)
    _wait_for(marker.exists, p, "the third source's ASR")
    _kill(p)
    assert not _ckpts(out)  # no source finished its per-source stages
    p = _start(inputs, out, tmp_path / "b.log", args=args)
    assert p.wait(timeout=600) == 0, (tmp_path / "b.log").read_text()[-3000:]
    text = (tmp_path / "b.log").read_text()
    assert text.count("asr: a result of an earlier attempt reused from its checkpoint") == 2, text[-3000:]
    _assert_identical(out, ref)


def test_split_puts_per_source_stages_first_and_the_rest_after():
    def names(stages):
        per_source, rest = split_stages(resolve(stages)[1:])
        return [s.name for s in per_source], [s.name for s in rest]

    # quality's speaking-rate quartiles span the run; video reads quality's kept segments
    assert names(("vad", "speech", "quality", "video")) == (["vad", "speech"], ["quality", "video"])
    assert names(("vad", "speech", "video")) == (["vad", "speech", "video"], [])
    assert names(("vad", "dedup")) == (["vad"], ["dedup"])


def test_checkpoint_key_follows_bytes_name_and_metadata():
    from mmcurate.schemas.records import MediaRef

    a = MediaRef("/x/a.wav", "/x/a.wav", "file", "0" * 64, 10)
    assert checkpoints.source_key(a) == checkpoints.source_key(MediaRef("/x/a.wav", "/x/a.wav", "file", "0" * 64, 10))
    others = [MediaRef("/x/a.wav", "/x/a.wav", "file", "1" * 64, 10),
              MediaRef("/x/b.wav", "/x/b.wav", "file", "0" * 64, 10),
              MediaRef("/x/a.wav", "/x/a.wav", "file", "0" * 64, 10, {"language": "de"})]
    assert len({checkpoints.source_key(m) for m in [a, *others]}) == 4
