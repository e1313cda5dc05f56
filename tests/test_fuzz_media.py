"""200 damaged copies of real media through the pipeline: every one ends as a source or a
ledger row, nothing raises, nothing hangs, and the audit of the result is clean.

Mutations (seeded, so a failure reproduces): truncation at a random point, flipped bytes,
a zeroed range, another file's header spliced onto this one's body, garbage before the
header, a repeated chunk. The run is `mmcurate run` in a subprocess with a hard timeout, so a
hang fails the test instead of stalling CI; decode + VAD is where damaged bytes are read.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
ORIGINALS = ["speech/jfk.wav", "speech/jfk.mp3", "speech/jfk.flac", "speech/LDC93S1.wav",
             "diarization/sample.wav", "neardup/chair-19-sd-bar.mp4",
             "neardup/doorknob-hd-no-bar.mp4", "video/autoeditor_example.mp4"]
N = 200


def _mutate(data: bytes, other: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "flip", "zero", "splice", "prefix", "repeat"])
    n = len(data)
    if kind == "truncate":
        return kind, data[: rng.randrange(0, n)]
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rng.choice([1, 8, 64, 512])):
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind == "zero":
        a = rng.randrange(n)
        return kind, data[:a] + bytes(min(n - a, rng.randrange(1, 1 << 16))) + data[a + (1 << 16):]
    if kind == "splice":
        cut = rng.randrange(16, 4096)
        return kind, other[:cut] + data[cut:]
    if kind == "prefix":
        return kind, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2048))) + data
    a = rng.randrange(n)
    return kind, data[:a] + data[a : a + 8192] * 3 + data[a:]


@pytest.mark.slow
def test_200_damaged_files_each_end_as_a_source_or_a_ledger_row(tmp_path):
    rng = random.Random(20261123)
    originals = [(p, (MEDIA / p).read_bytes()) for p in ORIGINALS if (MEDIA / p).is_file()]
    if len(originals) < 4:
        pytest.skip("shared media missing")
    inputs = tmp_path / "fuzz"
    inputs.mkdir()
    made = {}
    for i in range(N):
        name, data = originals[i % len(originals)]
        other = originals[rng.randrange(len(originals))][1]
        kind, bad = _mutate(data, other, rng)
        path = inputs / f"{i:03d}-{kind}{Path(name).suffix}"
        path.write_bytes(bad)
        made[str(path)] = kind
    out = tmp_path / "out"
    mmcurate = Path(sys.executable).with_name("mmcurate")
    env = {**os.environ, "PYANNOTE_METRICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(mmcurate), "run", str(inputs), "-o", str(out), "--stages", "vad",
                           "--no-audit", "--allow-empty"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]

    from mmcurate.quality import audit

    kept = set(audit.query(str(out), "SELECT uri FROM sources").column(0).to_pylist())
    rows = audit.query(str(out), "SELECT uri, stage, reason FROM rejected").to_pylist()
    removed = {r["uri"] for r in rows if r["reason"] != "truncated_kept"}
    missing = [p for p in made if p not in kept and p not in removed]
    assert missing == [], f"{len(missing)} damaged inputs neither kept nor in the ledger: {missing[:5]}"
    assert not (kept & removed)
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[f"{r['stage']}/{r['reason']}"] = reasons.get(f"{r['stage']}/{r['reason']}", 0) + 1
    print(f"\n[fuzz] {N} damaged files: {len(kept)} sources, ledger {dict(sorted(reasons.items()))}")
    # damaged bytes are the input's problem (decode), never the model's
    assert "vad/vad_error" not in reasons, [r for r in rows if r["reason"] == "vad_error"]
    audited = subprocess.run([str(mmcurate), "audit", str(out)], capture_output=True, text=True,
                             timeout=300, env=env)
    assert audited.returncode == 0, audited.stdout[-3000:] + audited.stderr[-2000:]
