"""Balanced work for the local multi-worker DirectRunner.

Beam's local runner (the FnApiRunner behind `--direct_running_mode multi_processing|
multi_threading --direct_num_workers N`) deals the keys of a grouped PCollection to its workers
round-robin: the i-th distinct key goes to worker i % N, and each worker then runs the fused
steps after the shuffle (decode, VAD, ASR, diarization, keyframes) over its share alone. After
a `Reshuffle` (random keys) the shares hold about the same *number* of sources, not the same
*work*: one worker gets the two-minute talk and the meeting, the other the short clips, and
finishes early and idles (bench/README.md, bench_orchestration.py: both workers busy ~45 s, then one alone
for ~25 s).

`SpreadByCost` assigns the sources to exactly N keys instead, longest first to the least
loaded worker (LPT; within 4/3 of the best split), with a source's duration as its cost (the
container's claim, probed without decoding; the byte size at 32 kB/s when there is none).
Distributed runners get a plain `Reshuffle`: they rebalance work dynamically, and N keys
would cap their parallelism at N.

This is the pipeline layer's business: the stages never look at the runner. They take a
`spread(cost=..., key=..., what=...)` callable (`Spread` below, handed to them through
`BuildContext`) and apply what it returns, or their runner-neutral default when it returns
None (a `Reshuffle` before the VAD, nothing before DNSMOS and the fingerprints).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import apache_beam as beam

log = logging.getLogger("mmcurate.balance")

_LOCAL_RUNNERS = (None, "", "DirectRunner", "direct", "FnApiRunner")


def local_workers(options: Any) -> int:
    """Workers the local DirectRunner runs these options' stages on: N for a multi-worker
    mode, 1 for in-memory, 0 for any other runner."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    if options is None:
        return 1
    if options.view_as(StandardOptions).runner not in _LOCAL_RUNNERS:
        return 0
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode not in ("multi_processing", "multi_threading"):
        return 1
    n = direct.direct_num_workers
    return (os.cpu_count() or 1) if n == 0 else max(1, n or 1)


def estimated_cost_s(ref) -> float:
    """Seconds of media in a MediaRef: the container's duration, else bytes at 32 kB/s."""
    from mmcurate.transforms.decode import probe

    try:
        duration = probe(ref.media_uri).duration_s
    except Exception:  # noqa: BLE001 - unreadable here: the decode step says why, later
        duration = None
    return float(duration) if duration and duration > 0 else ref.bytes / 32000.0


def assign_buckets(items: list, n: int, cost: Callable[[Any], float],
                   key: Callable[[Any], str], what: str = "s of media") -> list[tuple[int, Any]]:
    """(bucket, item) pairs: longest first to the bucket with the least total cost (ties: the
    lower bucket; equal costs: by `key`), so the result depends only on the items. `what`
    names the cost's unit in the log line."""
    costed = sorted(((cost(x), key(x), x) for x in items), key=lambda t: (-t[0], t[1]))
    loads = [0.0] * n
    out = []
    for c, _k, x in costed:
        b = min(range(n), key=lambda i: (loads[i], i))
        loads[b] += c
        out.append((b, x))
    if costed:
        log.info("balance: %d source(s), %.0f %s over %d worker(s): %s each", len(costed),
                 sum(loads), what, n, " / ".join(f"{x:.0f}" for x in loads))
    return out


class SpreadByCost(beam.PTransform):
    """PCollection[MediaRef] (or anything `cost` and `key` read) -> the same, shuffled so that
    worker k of the local runner's N gets the k-th of N cost-balanced shares (module
    docstring)."""

    def __init__(self, workers: int, cost: Callable[[Any], float] = estimated_cost_s,
                 key: Callable[[Any], Any] = lambda m: (m.source_id, m.uri), what: str = "s of media"):
        super().__init__()
        self.workers = workers
        self.cost = cost
        self.key = key
        self.what = what

    def expand(self, pcoll):
        n, cost, key, what = self.workers, self.cost, self.key, self.what
        return (
            pcoll
            | "OneKey" >> beam.Map(lambda x: (0, x))
            | "AllSources" >> beam.GroupByKey()
            | "AssignWorker" >> beam.FlatMap(
                lambda kv: assign_buckets(list(kv[1]), n, cost, key=key, what=what))
            | "ByWorker" >> beam.GroupByKey()
            | "Sources" >> beam.FlatMap(lambda kv: kv[1])
        )


class Spread:
    """What the stages call to deal costed work: `SpreadByCost(workers, **kwargs)` on the local
    runner with several workers, None otherwise (one worker, or a runner that rebalances by
    itself). The one place that decides whether a stage spreads its work by cost."""

    def __init__(self, workers: int):
        self.workers = workers

    def __call__(self, **kwargs) -> SpreadByCost | None:
        return SpreadByCost(self.workers, **kwargs) if self.workers > 1 else None
