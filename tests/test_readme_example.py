"""The README's worked example shows the counts of a real `make demo` run
(tests/readme_example.py): the check reads every count the README shows, finds a planted drift,
rewrites the README's counts, and holds on `make demo`'s output when there is one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import readme_example as rx

ROOT = Path(__file__).resolve().parents[1]


def test_the_check_reads_every_count_and_finds_a_drift():
    text = rx.README.read_text(encoding="utf-8")
    shown = rx.claims(text)
    assert {"sources", "segments", "rejected"} <= set(shown["tables"])
    assert set(shown["inputs"]) == {"inputs", "sources", "source-level rejected"}
    assert shown["inputs"]["inputs"] == shown["inputs"]["sources"] + shown["inputs"]["source-level rejected"]
    assert "ingest/unsupported_extension" in shown["rejected"]
    real = {k: dict(v) for k, v in shown.items()}
    assert rx.drift(shown, real) == []
    real["tables"]["segments"] += 1
    assert "text_mix" not in shown["tables"]  # rephrase is opt-in: make demo has no text_mix
    real["tables"]["text_mix"] = 70
    real["rejected"]["quality/low_dnsmos"] = 3  # not shown: the README's "..." leaves rows out
    assert rx.drift(shown, real) == [
        f"tables segments: README {shown['tables']['segments']}, run {shown['tables']['segments'] + 1}",
        "tables text_mix: 70 rows in the run, not in the README"]
    # --write makes the README say what the run gives, nothing else changes
    fixed = rx.rewrite(text, real)
    assert rx.drift(rx.claims(fixed), real) == []
    assert "  text_mix               70 rows" in fixed
    assert len(fixed.splitlines()) == len(text.splitlines()) + 1


DEMO = Path(os.environ.get("MMCURATE_DEMO_OUTPUT", ROOT / "out" / "demo"))


# The README records a run with these unset (its "Worked example"). Under them the models'
# scores move, and so can counts of model output: make demo gave 90 segments instead of
# 91 under the AVX2 variables on the 2-core AVX2 box the README was made on (batched ASR's word
# times moved a pause across the 1 s that ends an utterance).
ISA_VARIABLES = ("CT2_FORCE_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO / "manifest.json").exists(),
                    reason=f"no make demo output at {DEMO} (MMCURATE_DEMO_OUTPUT names another)")
@pytest.mark.skipif(any(os.environ.get(v) for v in ISA_VARIABLES),
                    reason="the README records a run without the ISA variables; counts of model "
                           "output move with them")
def test_readme_worked_example_matches_make_demo():
    """After `make demo` (MEDIA=../shared/media): fix a drift with
    `python tests/readme_example.py out/demo --write`."""
    lines = rx.drift(rx.claims(rx.README.read_text(encoding="utf-8")), rx.measured(str(DEMO)))
    assert lines == [], "\n".join(lines)
