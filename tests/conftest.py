import os
from pathlib import Path

import pytest

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _no_prism_download(monkeypatch):
    """TestPipeline's DirectRunner tries the Prism runner first, which downloads a binary from
    GitHub; fail that attempt at once so Beam falls back to its in-process FnApiRunner."""
    from apache_beam.runners.portability import prism_runner

    def refuse(self, *args, **kwargs):
        raise RuntimeError("Prism is not used in tests (it would download a binary)")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", refuse)

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"


@pytest.fixture
def media() -> Path:
    return MEDIA
