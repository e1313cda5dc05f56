"""What the `mmcurate` command does before it imports its stages, to start sooner."""

from __future__ import annotations

import sys


def import_runinference_without_model_manager() -> None:
    """Import Beam's RunInference module without its optional ModelManager.

    `apache_beam.ml.inference.base` imports `model_manager` when it loads, and that imports
    torch and scipy.optimize: 1.3 s of the command's 2.1 s before it checks anything, for a
    feature (`use_model_manager`) this project never asks for. base expects the module may be
    missing (its `ModelManager` is then None, and imported when a pipeline asks for it), so
    it is hidden while base loads and importable again afterwards. The driver runs no model;
    torch still loads where a model needs it, when the first model loads."""
    name = "apache_beam.ml.inference.model_manager"
    if "apache_beam.ml.inference.base" in sys.modules or name in sys.modules:
        return
    sys.modules[name] = None  # type: ignore[assignment]  # `from name import ...` raises ImportError
    try:
        import apache_beam.ml.inference.base  # noqa: F401
    finally:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


# The Beam releases whose internals the memos below were checked against; elsewhere Beam's own
# functions stay.
_CHECKED_BEAM = ("2.77.",)


def _replace(owner, name: str, wrap) -> bool:
    """Put `wrap(original)` in place of `owner.name`, once, on a checked Beam release: the
    wrapper is marked (a second call finds it) and keeps the original as `__wrapped__`.
    Returns whether the wrapper is in place."""
    import apache_beam

    current = getattr(owner, name)
    if getattr(current, "_mmcurate_memo", False):
        return True
    if not apache_beam.__version__.startswith(_CHECKED_BEAM):
        return False
    wrapper = wrap(current)
    wrapper._mmcurate_memo = True
    wrapper.__wrapped__ = current
    wrapper.__doc__ = current.__doc__
    setattr(owner, name, wrapper)
    return True


def memoize_dofn_specs() -> bool:
    """Remember each DoFn instance's state and timer specs instead of finding them again.

    Beam's `userstate.get_dofn_specs` walks every method of a DoFn (about 30, most inherited)
    through `inspect.signature` on each call, and Beam calls it about eight times per ParDo
    while it builds, validates and translates a graph (`is_stateful_dofn`,
    `validate_stateful_dofn`). The default graph has about 300 ParDos: 2,360 calls and 76,000
    signatures, 5.8 of the 16.2 s of a one-file run under cProfile. The answer depends only on
    the instance's methods, which do not change after it is made, so it is kept per instance
    (weakly: an instance dropped is forgotten; one that cannot be a weak key is not cached).
    Returns whether the memo is in place. Results equal Beam's: tests/test_startup.py."""
    import weakref

    from apache_beam.transforms import userstate

    def wrap(find):
        known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

        def get_dofn_specs(dofn):
            try:
                states, timers = known[dofn]
            except (KeyError, TypeError):
                states, timers = find(dofn)
                try:
                    known[dofn] = frozenset(states), frozenset(timers)
                except TypeError:  # unhashable or not weakly referenceable: not cached
                    pass
            return set(states), set(timers)  # Beam's callers get sets of their own, as before

        return get_dofn_specs

    return _replace(userstate, "get_dofn_specs", wrap)


def memoize_option_views() -> bool:
    """Keep each `PipelineOptions.view_as(cls)` view instead of making it again.

    Beam makes a new view on every call: a new options object whose constructor builds an
    argparse parser of every registered option and parses the flags again (about 1 ms), and
    graph construction asks about 2,000 times per default graph (`Pipeline.apply`, type
    inference). A view holds no value of its own: it reads and writes the options' shared
    `_all_options`, so the kept view behaves as a new one would (a value set through any view
    is seen through all of them). One view per (options, class), dropped with the options;
    made again if the options' values were replaced. `bench/bench_graph.py` measures both
    memos. Returns whether it is in place."""
    import weakref

    from apache_beam.options.pipeline_options import PipelineOptions

    def wrap(make):
        views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

        def view_as(self, cls):
            try:
                mine = views.setdefault(self, {})
            except TypeError:  # not weakly referenceable: a new view, as Beam does
                return make(self, cls)
            view = mine.get(cls)
            if view is None or view._all_options is not self._all_options:
                view = mine[cls] = make(self, cls)
            return view

        return view_as

    return _replace(PipelineOptions, "view_as", wrap)
