"""The local runner (`mmcurate.pipelines.curate.local_runner`) with several worker threads loses
nothing when a bundle writes its output for longer than Beam's periodic data-plane flush.

Beam's embedded gRPC workers (`--direct_running_mode=multi_threading`) flush each output buffer
from a timer thread every second while the bundle's thread is still writing into it, without a
lock on the writer's side: elements were dropped or split over two messages (the ingest's
`duplicate` rows of tests/test_faults.py). `local_runner` turns the timed flush off
(`curate.without_timed_flushes`); bench/beam_timed_flush_loss.py shows the race with Beam alone.
"""

from __future__ import annotations

import dataclasses
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from mmcurate.pipelines.curate import local_runner

WRITE_FOR_S = 2.5  # > 2 periods of Beam's 1 s timed flush


@dataclasses.dataclass(frozen=True)
class _Item:
    """Encoded by Beam's pickling fallback: Python code runs mid-element, so the timer thread
    gets the GIL while an element is half written (as the ingest's candidates were)."""

    i: int
    text: str
    meta: dict


def _write_for(_unused, seconds: float):
    """As many items as the bundle can write in `seconds`, counted as they are made."""
    made = Metrics.counter("test", "made")
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        for _ in range(200):
            made.inc()
            yield _Item(i, "x" * 100, {"title": f"line {i}"})
            i += 1


def _arrived(_item) -> None:
    Metrics.counter("test", "arrived").inc()


def test_a_long_writing_bundle_on_two_threads_loses_nothing():
    options = PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    p = beam.Pipeline(runner=local_runner(options), options=options)
    _ = (p | beam.Create([None]) | beam.FlatMap(_write_for, WRITE_FOR_S)
         | beam.Reshuffle() | beam.Map(_arrived))
    result = p.run()
    result.wait_until_finish()
    counts = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    assert counts["made"] > 10_000, counts  # the bundle wrote across several flush periods
    assert counts.get("arrived") == counts["made"], counts


def test_the_local_runner_flushes_by_size_only():
    """The data server and the workers the local runner creates read this value (0: no timer
    thread per output buffer, the size limit and the end of the bundle flush)."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    local_runner(PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=2"]))
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
