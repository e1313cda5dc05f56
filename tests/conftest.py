import os
from pathlib import Path

import pytest

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def xdist_core_share() -> int:
    """This test process's share of the cores under pytest-xdist (0: not under several workers)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0


def pytest_configure(config):
    """Under pytest-xdist each worker process gets its share of the cores for torch's intra-op
    pool (and the ONNX Runtime sessions that take torch's count): two workers each spinning a
    2-thread pool on 2 cores made the torch-heavy diarizer tests 3-6x slower than alone
    (bench/README.md, "Suite times"). Subprocesses the tests start keep their own defaults."""
    share = os.environ.get("MMCURATE_TEST_TORCH_THREADS")
    if xdist_core_share() and share != "default":
        import torch

        torch.set_num_threads(int(share) if share else xdist_core_share())


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


# --------------------------------------------------------------------------- the fast tier
# `make test-fast` (MMCURATE_TEST_TIER=fast): the edit-test loop without real models. Tests
# marked slow, prod or model_score are deselected (Makefile); any other test that would load a
# real model's weights in this process (ONNX Runtime sessions: VAD, DNSMOS, the diarizer;
# CTranslate2's Whisper; the MiniLM embedder; llama.cpp) is skipped at that point, and a test
# whose model load fails inside a Beam pipeline is reported as skipped too. Tests with fake
# model loaders run in full.
FAST_TIER = os.environ.get("MMCURATE_TEST_TIER") == "fast"
_NEEDS_MODEL = "needs a real model: skipped in the fast tier"


class NeedsRealModel(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NeedsRealModel(_NEEDS_MODEL)


@pytest.fixture(autouse=True)
def _fast_tier_refuses_real_models(monkeypatch):
    if not FAST_TIER:
        return
    import ctranslate2
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", _refuse)
    monkeypatch.setattr(ctranslate2.models, "Whisper", _refuse)
    from mmcurate.transforms import embed

    monkeypatch.setattr(embed.SentenceEmbedder, "__init__", _refuse)
    try:
        import xllamacpp

        monkeypatch.setattr(xllamacpp, "Server", _refuse)
    except ImportError:
        pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if FAST_TIER and report.failed and call.excinfo is not None and _NEEDS_MODEL in str(report.longrepr):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {_NEEDS_MODEL}")


# --------------------------------------------------------------------------- test order
# The files that take longest (most to least, from `pytest --durations` on 2 cores: bench/README.md,
# "Suite times") are collected first. `make test` hands whole files to two pytest-xdist workers
# in collection order (`--dist loadfile --no-loadscope-reorder`): longest first, the short files
# fill in at the end (xdist's own order, most tests first, left the two long quality-acceptance
# tests for last). Without xdist only the order changes.
LONGEST_FILES = ["test_dask.py", "test_asr.py", "test_diarize.py", "test_quality_acceptance.py", "test_pipeline.py",
                 "test_rephrase.py", "test_orchestration.py", "test_resume.py", "test_determinism.py",
                 "test_dedup.py", "test_video_stage.py", "test_export.py", "test_quality_report.py",
                 "test_reliability.py", "test_quality_stage.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # stable: in-file order kept
