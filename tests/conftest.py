import os
from pathlib import Path

import pytest

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"


@pytest.fixture
def media() -> Path:
    return MEDIA
