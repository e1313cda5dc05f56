"""Beam's DaskRunner, with the three gaps that stop it from running mmcurate's graph closed.

    mmcurate run IN --output OUT --runner dask --dask_client_address HOST:PORT

`--runner dask` (or `DaskRunner`) names this class. It is Beam 2.77's
`apache_beam.runners.dask.dask_runner.DaskRunner` (a PCollection is a `dask.bag`, a bundle is a
bag partition, running on a `dask.distributed` cluster) with its translation fixed where the
stock runner computes wrong results or nothing for a graph like ours. The graph is the same
on every runner; only how this runner translates it changes. Reproductions of each gap are in
`tests/test_dask.py` (`test_stock_dask_runner_gaps`), run against the stock runner.

1. **Tagged outputs are mixed together.** The stock runner keeps one bag per transform: a
   `ParDo(...).with_outputs("rejected", main="sources")` hands *every* consumer of either
   output the elements of both (the ingest's "KeyRejection" step got media candidates and
   failed). Here a multi-output ParDo's bundle emits (tag, value) pairs, and each output
   PCollection gets its own bag filtered by its tag; bags are kept per PCollection.
2. **Only the last transform is computed.** The stock runner computes the bag of the last
   transform it visited and assumes the rest of the graph hangs off it; any other leaf (a side
   branch that writes something and feeds nothing) never runs. Here every leaf PCollection is
   computed.
3. **Reshuffle is a no-op**, so a pipeline that starts from one `Create` (ours: the list of
   inputs) stays in one partition, and one worker does all the work. Here a Reshuffle
   repartitions the bag into `--dask_npartitions` partitions (default: 4 per worker thread of
   the cluster, so that uneven sources still balance).

What it still lacks (documented, not worked around): metrics (`result.metrics()` raises
NotImplementedError, so the run's counters are not reported), state and timers, streaming,
and Beam `Read` sources such as `ReadFromText` (no translation: their bag is None; mmcurate's
graphs start from a `Create`). Side inputs are computed where they are read, as in the stock runner.
"""

from __future__ import annotations

import logging

from apache_beam import pvalue
from apache_beam.runners.dask import dask_runner as _stock
from apache_beam.runners.dask import overrides as _overrides
from apache_beam.runners.dask import transform_evaluator as _te

log = logging.getLogger("mmcurate.dask")


def _apply_tagged(items, step, invoker_args, invoker_kwargs, receivers, side_specs, *side_values):
    """A bundle of a ParDo: (tag, value) for every output (tag None: the main output). The side
    inputs arrive computed (`side_values`, one list each): the stock runner computed them inside
    the task, a second graph on the same scheduler whose fused keys clashed with the first's."""
    from apache_beam.runners.common import DoFnInvoker

    if side_specs:
        invoker_kwargs = dict(invoker_kwargs, side_inputs=[
            _stock.SideInputMap(kind, view, _te.DaskBagWindowedIterator(values, window_fn))
            for (kind, view, window_fn), values in zip(side_specs, side_values)])
    invoker = DoFnInvoker.create_invoker(*invoker_args, **invoker_kwargs)
    invoker.invoke_setup()
    # the step's last DoFn stays alive in this worker process, torn down with the process: a
    # RunInference DoFn keeps its model in Beam's process-wide `Shared` cache only while some
    # DoFn holds it, and every partition is a new DoFn, so each one loaded the models again
    _LIVE[step] = invoker
    invoker.invoke_start_bundle()
    for it in items:
        invoker.invoke_process(it)
    invoker.invoke_finish_bundle()
    out = []  # values without their windows, as the stock runner's main output (global window)
    for v in receivers.values:
        if isinstance(v, pvalue.TaggedOutput):
            out.append((v.tag, v.value.value))
        else:
            out.append((None, v.value))
    del receivers.values[:]
    return out


_LIVE: dict = {}  # step name -> the DoFn invoker of its latest partition in this process


def _concat(*partitions):
    return [x for part in partitions for x in part]


class _TaggedParDo(_te.ParDo):
    def apply(self, input_bag, side_inputs=None):
        import dask
        from apache_beam.runners.common import DoFnSignature
        from apache_beam.runners.dask.transform_evaluator import DoFnContext, _OutputHandler
        from apache_beam.transforms.core import DoFn

        transform = self.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        receivers = _te.OneReceiver()
        invoker_args = [
            DoFnSignature(transform.fn),
            _OutputHandler(window_fn=window_fn, main_receivers=receivers[None],
                           tagged_receivers=receivers, per_element_output_counter=None,
                           output_batch_converter=None, process_yields_batches=False,
                           process_batch_yields_elements=False),
        ]
        invoker_kwargs = dict(context=DoFnContext(transform.label, state=None), side_inputs=None,
                              input_args=list(args), input_kwargs=kwargs, user_state_context=None,
                              bundle_finalizer_param=DoFn.BundleFinalizerParam())
        specs, values = [], []
        for si, bag in side_inputs or []:
            specs.append((type(si), si._view_options(), si._window_mapping_fn))
            # the whole side input as one value, a dependency of every bundle of this step
            values.append(dask.delayed(_concat)(*bag.to_delayed(optimize_graph=False)))
        step = _name(self.applied, "*")
        return input_bag.map(_te.get_windowed_value, window_fn).map_partitions(
            _apply_tagged, step, invoker_args, invoker_kwargs, receivers, specs, *values, token=step)


def _select(partition, tag):
    """The values of one output of a multi-output ParDo's partition of (tag, value) pairs."""
    return [v for t, v in partition if t == tag]


def _key(item):
    return _te.defenestrate(item)[0]


def _grouped(item):
    """(key, [(key, value with its window, as ReifyWindows left it)]) -> (key, [value])."""
    k, v = item
    return k, [_te.defenestrate(_te.defenestrate(e)[1]) for e in v]


def _count(partition) -> list[int]:
    return [sum(1 for _ in partition)]


def _name_of(pcoll, what: str) -> str:
    import hashlib

    return "beam-" + hashlib.sha1(f"{pcoll.producer.full_label}\x1f{pcoll.tag}\x1f{what}".encode()).hexdigest()[:16]


def _name(node, tag) -> str:
    import hashlib

    return "beam-" + hashlib.sha1(f"{node.full_label}\x1f{tag}".encode()).hexdigest()[:16]


class DaskRunner(_stock.DaskRunner):
    """Beam's DaskRunner with tagged outputs, every leaf and Reshuffle (module docstring)."""

    def run_pipeline(self, pipeline, options):
        import dask.distributed as ddist

        dask_options = options.view_as(_stock.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = _stock.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        threads = sum(client.nthreads().values()) or 1
        shuffle_partitions = bag_kwargs.get("npartitions") or 4 * threads
        log.info("dask: %d worker(s), %d thread(s) at %s; %d partitions after a shuffle",
                 len(client.nthreads()), threads, client.scheduler.address, shuffle_partitions)
        pipeline.replace_all(_stock.dask_overrides())
        visitor = _Visitor(bag_kwargs, shuffle_partitions)
        pipeline.visit(visitor)
        # every leaf at once: one graph, optimised together (separately optimised, the shared
        # steps were fused under different names and the scheduler saw one key twice)
        futures = client.compute(visitor.leaves())
        return _stock.DaskRunnerResult(client, futures)


class _Visitor(_stock.PipelineVisitor):
    def __init__(self, bag_kwargs: dict, shuffle_partitions: int):
        self.bag_kwargs, self.shuffle_partitions = bag_kwargs, shuffle_partitions
        self.bags: dict = {}  # PCollection -> dask bag
        self.consumed: set = set()
        self.order: list = []

    def _bag(self, pcoll):
        self.consumed.add(pcoll)
        return self.bags[pcoll]

    def visit_transform(self, node) -> None:
        transform = node.transform
        cls = _te.TRANSLATIONS.get(transform.__class__, _te.NoOp)
        inputs = [i for i in node.inputs if not isinstance(i, pvalue.PBegin)]
        bag_inputs = [self._bag(i) for i in inputs]
        side_inputs = [(si, self._bag(si.pvalue)) for si in node.side_inputs]
        if cls is _te.Flatten:
            input_bag = bag_inputs
        elif not bag_inputs:
            input_bag = None
        else:
            input_bag = bag_inputs[0]
        outputs = {tag: pc for tag, pc in node.outputs.items() if isinstance(pc, pvalue.PCollection)}
        if cls is _te.Flatten:
            bag = _te.Flatten(node, bag_kwargs=self.bag_kwargs).apply(input_bag)
            if bag.npartitions > self.shuffle_partitions:  # concatenated bags add up partitions
                bag = bag.repartition(npartitions=self.shuffle_partitions)
            for pc in outputs.values():
                self.bags[pc] = bag
        elif cls is _te.GroupByKey:
            # a task shuffle's graph grows with the partitions squared (a few hundred after the
            # flattens of every table made a 6 GB graph on the client): at most
            # shuffle_partitions go in, and as many come out
            if input_bag.npartitions > self.shuffle_partitions:
                input_bag = input_bag.repartition(npartitions=self.shuffle_partitions)
            bag = input_bag.groupby(_key, shuffle="tasks").map(_grouped)
            for pc in outputs.values():
                self.bags[pc] = bag
        elif isinstance(transform, _overrides._Reshuffle):
            bag = input_bag.repartition(npartitions=self.shuffle_partitions)
            for pc in outputs.values():
                self.bags[pc] = bag
        elif cls is _te.ParDo:
            pairs = _TaggedParDo(node, bag_kwargs=self.bag_kwargs).apply(input_bag, side_inputs)
            for tag, pc in outputs.items():
                want = None if tag in (None, "None") else tag  # the main output's tag is None
                # an explicit name per output: dask names a step by hashing its arguments, and
                # outputs told apart by a tag alone must not share one
                self.bags[pc] = pairs.map_partitions(_select, want, token=_name(node, tag))
        else:
            bag = cls(node, bag_kwargs=self.bag_kwargs).apply(input_bag=input_bag, side_inputs=None)
            for pc in outputs.values():
                self.bags[pc] = bag
        self.order.extend(outputs.values())

    def leaves(self) -> list:
        """The bags nothing reads, each reduced to its element count: the client waits for
        them without receiving their elements (the stock runner sent the last bag's elements to
        the client; an unread stream of decoded audio made a 16 GB driver)."""
        seen, out = set(), []
        for pc in self.order:
            if pc not in self.consumed and id(self.bags[pc]) not in seen:
                seen.add(id(self.bags[pc]))
                out.append(self.bags[pc].map_partitions(_count, token=_name_of(pc, "count")))
                log.debug("dask: leaf %s[%s]", pc.producer.full_label, pc.tag)
        return out
