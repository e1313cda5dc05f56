"""Test harness for the Ingest stage, shared by test_ingest.py and test_rss.py."""

from __future__ import annotations

import hashlib
import wave
from pathlib import Path

import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from mmcurate.pipelines.config import IngestConfig
from mmcurate.schemas.records import MediaRef, Rejection
from mmcurate.transforms.ingest import Ingest

_SEEN: dict[str, list] = {}


class Collect:
    """assert_that matcher that keeps what it saw (module-level class: pickled by reference)."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, actual):
        _SEEN[self.key] = list(actual)


def run_ingest(inputs, cfg=None, download_dir="/nonexistent-download-dir", media_check=None, exclude=()):
    """Run Ingest in a TestPipeline; returns (media, rejected, counters)."""
    p = TestPipeline()
    kw = {"exclude": [str(x) for x in exclude]} if exclude else {}
    res = p | "Ingest" >> Ingest([str(i) for i in inputs], cfg or IngestConfig(), "run-test", str(download_dir), **kw)
    assert_that(res["media"], Collect("media"), label="CollectMedia")
    assert_that(res["rejected"], Collect("rejected"), label="CollectRejected")
    if media_check is not None:
        assert_that(res["media"] | "Project" >> _project(), media_check, label="CheckMedia")
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("mmcurate"))["counters"]
    }
    media, rejected = _SEEN.pop("media"), _SEEN.pop("rejected")
    assert all(isinstance(m, MediaRef) for m in media)
    assert all(isinstance(r, Rejection) and r.stage == "ingest" and r.detail for r in rejected)
    # nothing vanishes: every expanded input is one media ref or one ledger row
    assert counters["ingest.inputs"] == len(media) + len(rejected) == counters.get("ingest.media", 0) + counters.get(
        "ingest.rejected", 0
    )
    assert len({r.rejection_id for r in rejected}) == len(rejected), "rejection ids must be unique"
    return media, rejected, counters


def _project():
    import apache_beam as beam

    return beam.Map(lambda m: (m.uri, m.ingested_via, m.sha256, m.bytes))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_wav(path: Path, freq: float, seconds: float = 0.3, sr: int = 16000) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path.read_bytes()
