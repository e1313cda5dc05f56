"""The `mmcurate` command's start-up (mmcurate.pipelines.startup)."""

from __future__ import annotations

import pytest

import subprocess
import sys


@pytest.mark.slow  # seconds (a fresh process or a real model): out of the fast tier
def test_the_driver_imports_runinference_without_torch():
    """`mmcurate run` imports Beam's RunInference without its optional ModelManager (which
    imports torch and scipy.optimize: 1.3 s of the command's start) before its stages; the
    module stays importable for a pipeline that asks for it, and the stages load without torch."""
    code = (
        "import sys\n"
        "from mmcurate.pipelines.startup import import_runinference_without_model_manager\n"
        "import_runinference_without_model_manager()\n"
        "import apache_beam.ml.inference.base as base\n"
        "from mmcurate.pipelines import curate, checkpoints, stages\n"
        "from mmcurate.transforms import vad, speech, quality, video, dedup\n"
        "print(base.ModelManager, sorted(m for m in ('torch', 'scipy.optimize') if m in sys.modules))\n"
        "from apache_beam.ml.inference.model_manager import ModelManager\n"
        "print('torch' in sys.modules, ModelManager.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["None []", "True ModelManager"]
