"""The same command twice gives the same bytes: `mmcurate run --stages vad,speech` over the
hardest audio in the shared media (far-field 4-person meetings, a voice with long pauses over a
synthetic background), wordless hums and noise, and speech played backwards, which passes the VAD
and makes Whisper invent text (the windows where its temperature fallback would sample). Every shard must match byte for byte; the output is moved aside between the
runs, so the second run starts from nothing (no checkpoint is reused)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmcurate.pipelines import cli
from mmcurate.transforms.decode import decode_audio, write_audio
from nonspeech_fixtures import write_clips

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
HARD = [MEDIA / "diarization" / "ami" / f"{n}.wav" for n in ("dev01", "trn07")] + \
       [MEDIA / "video" / "autoeditor_example.mp4"]
BACKWARDS = [MEDIA / "diarization" / "ami" / "dev00.wav"]


@pytest.mark.slow
def test_the_same_run_twice_gives_identical_shards(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in HARD:
        shutil.copy(f, inputs / f.name)
    write_clips(inputs, ["hum_a", "noise_white_0.3"])
    for f in BACKWARDS:
        audio = decode_audio(str(f))
        write_audio(str(inputs / f"{f.stem}_backwards.wav"), [audio[::-1].copy()], 16000)
    out, first = tmp_path / "out", tmp_path / "first"
    args = ["run", str(inputs), "--output", str(out), "--stages", "vad,speech", "--no-audit"]
    assert cli.main(args) == 0
    out.rename(first)
    assert cli.main(args) == 0

    m1 = json.loads((first / "manifest.json").read_text())
    m2 = json.loads((out / "manifest.json").read_text())
    assert m1["run_id"] == m2["run_id"] and m1["shards"] == m2["shards"]
    assert m1["tables"] == m2["tables"] and m1["stats"] == m2["stats"]
    assert m1["tables"].get("segments", 0) > 0 and m1["tables"].get("turns", 0) > 0, m1["tables"]
    differ = [rel for rel in m1["shards"] if (first / rel).read_bytes() != (out / rel).read_bytes()]
    assert not differ, f"shards that differ between two runs of the same command: {differ}"
