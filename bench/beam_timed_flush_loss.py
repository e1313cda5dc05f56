"""Beam alone (no mmcurate import): the multi-threaded FnApiRunner loses or garbles elements
that a bundle writes while the SDK's periodic data-buffer flush runs.

`--direct_running_mode=multi_threading` starts embedded gRPC SDK workers whose output buffers
are flushed by a timer thread every DATA_BUFFER_TIME_LIMIT_MS (1000 ms in Beam 2.77) while the
bundle's thread keeps encoding into the same buffer without taking the flush lock. An element
written between the timer's copy of the buffer and its clear is dropped; one caught half
encoded is split over two messages that are decoded apart (wrong values, or a length read from
the middle of an element: MemoryError). One element fans out to N dataclass values (pickled:
Python code runs mid-element) for several seconds, then a Reshuffle; the count after the
shuffle should be N.

    .venv/bin/python bench/beam_timed_flush_loss.py RUNS N WORKERS [no-time-flush]

`no-time-flush` sets the module value to 0 (size-based flushes only), as
mmcurate.pipelines.curate.without_timed_flushes does. Run it under `ulimit -v 6000000`: a
garbled length can ask for tens of GB."""
import dataclasses, sys, time
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers
from apache_beam.metrics import Metrics

@dataclasses.dataclass(frozen=True)
class Item:  # pickled by Beam's fallback coder: Python code runs while it is encoded
    i: int
    text: str
    meta: dict

def fan(_, n):
    for i in range(n):
        yield Item(i, "x" * 100, {"title": f"line {i}"})

def count(_):
    Metrics.counter("repro", "after_shuffle").inc()

def once(n, workers):
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(
        ["--direct_running_mode=multi_threading", f"--direct_num_workers={workers}"]))
    _ = p | beam.Create([None]) | beam.FlatMap(fan, n) | beam.Reshuffle() | beam.Map(count)
    r = p.run()
    r.wait_until_finish()
    [c] = r.metrics().query()["counters"]
    return c.committed

if __name__ == "__main__":
    runs, n, workers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4 and sys.argv[4] == "no-time-flush":
        worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0  # size-based flushes only
    lost = 0
    for k in range(runs):
        t = time.time()
        try:
            got = once(n, workers)
        except Exception as e:  # a garbled chunk: decode errors, MemoryError
            got = f"failed: {type(e).__name__}"
        bad = got != n
        lost += bad
        print(f"run {k}: {got} of {n}{'  <-- LOST' if bad else ''} ({time.time() - t:.1f} s)", flush=True)
    print(f"lost or failed in {lost} of {runs} runs", flush=True)
