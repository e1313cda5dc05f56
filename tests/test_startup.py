"""The `mmcurate` command's start-up (mmcurate.pipelines.startup)."""

from __future__ import annotations

import pytest

import shutil
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
        "from mmcurate.transforms import vad, speech, segment_quality, video, dedup\n"
        "print(base.ModelManager, sorted(m for m in ('torch', 'scipy.optimize') if m in sys.modules))\n"
        "from apache_beam.ml.inference.model_manager import ModelManager\n"
        "print('torch' in sys.modules, ModelManager.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["None []", "True ModelManager"]


def test_memoized_dofn_specs_equal_beams_and_are_found_once_per_instance():
    """The memo of Beam's DoFn introspection (startup.memoize_dofn_specs) gives Beam's own
    answer for every DoFn of the default graph, state and timer DoFns included, and asks Beam
    once per instance however often a graph's construction asks it."""
    import apache_beam as beam
    from apache_beam.transforms import userstate
    from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer

    from mmcurate.pipelines import curate
    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.pipelines.startup import memoize_dofn_specs

    class Stateful(beam.DoFn):
        BAG = BagStateSpec("bag", beam.coders.StrUtf8Coder())
        TIMER = TimerSpec("t", beam.TimeDomain.WATERMARK)

        def process(self, kv, bag=beam.DoFn.StateParam(BAG), t=beam.DoFn.TimerParam(TIMER)):
            yield kv

        @on_timer(TIMER)
        def fire(self):
            pass

    assert memoize_dofn_specs() and memoize_dofn_specs()  # idempotent: wrapped once
    memo = userstate.get_dofn_specs
    beams = memo.__wrapped__
    assert not getattr(beams, "_mmcurate_memo", False)

    cfg = CurateConfig()
    p = beam.Pipeline()
    curate.build(p, ["in.wav"], "/nonexistent-out", cfg, "run-x",
                 curate.ManifestBuilder("run-x", "v", cfg.to_json(), [], []))
    dofns = [t.transform.fn for t in _all_parts(p)
             if isinstance(t.transform, beam.ParDo)] + [Stateful(), beam.Map(len).fn]
    shutil.rmtree(p.local_tempdir, ignore_errors=True)  # made by Beam for a run that never comes
    assert len(dofns) > 100
    for fn in dofns:
        assert memo(fn) == beams(fn) == memo(fn), fn
    states, timers = memo(Stateful())
    assert {s.name for s in states} == {"bag"} and {t.name for t in timers} == {"ts-t"}  # Beam prefixes timer names

    calls = []
    userstate.get_dofn_specs = beams  # a fresh memo over a counting Beam function
    try:
        import mmcurate.pipelines.startup as startup

        def counting(fn):
            calls.append(fn)
            return beams(fn)

        userstate.get_dofn_specs = counting
        assert startup.memoize_dofn_specs()
        one = Stateful()
        for _ in range(8):
            userstate.is_stateful_dofn(one)
        userstate.validate_stateful_dofn(one)
        assert calls == [one]
        got = userstate.get_dofn_specs(one)
        got[0].clear()  # a caller's changes stay its own
        assert len(userstate.get_dofn_specs(one)[0]) == 1
    finally:
        userstate.get_dofn_specs = memo


def _all_parts(p):
    out, todo = [], list(p.transforms_stack[0].parts)
    while todo:
        t = todo.pop()
        out.append(t)
        todo.extend(t.parts)
    return out


def test_kept_option_views_share_values_as_new_views_do():
    """The memo of PipelineOptions.view_as (startup.memoize_option_views): a view is kept per
    options object and class, a value set through one view is seen through every other and
    through the options, and values given as flags are read as Beam reads them."""
    from apache_beam.options.pipeline_options import DebugOptions, DirectOptions, PipelineOptions, StandardOptions

    from mmcurate.pipelines.startup import memoize_option_views

    assert memoize_option_views() and memoize_option_views()
    make = PipelineOptions.view_as.__wrapped__
    options = PipelineOptions(["--direct_num_workers=3", "--experiments=a"])
    direct = options.view_as(DirectOptions)
    assert direct is options.view_as(DirectOptions)  # kept
    assert direct.direct_num_workers == 3 == make(options, DirectOptions).direct_num_workers
    debug = options.view_as(DebugOptions)
    debug.experiments = [*debug.experiments, "b"]  # as Beam adds experiments
    assert options.view_as(DebugOptions).experiments == ["a", "b"] == make(options, DebugOptions).experiments
    options.view_as(StandardOptions).streaming = True
    assert make(options, StandardOptions).streaming is True
    other = PipelineOptions([])
    assert other.view_as(DirectOptions) is not direct and other.view_as(DirectOptions).direct_num_workers == 1
    options._all_options = dict(options._all_options)  # values replaced: a view of the new ones
    assert options.view_as(DirectOptions) is not direct
