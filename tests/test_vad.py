"""mmcurate.transforms.vad: the real silero model on real media, and the DetectSpeech stage in Beam."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import write_video

from mmcurate.transforms.decode import decode_audio, iter_audio, write_audio
from der_reference import read_rttm
from mmcurate.transforms.intervals import intersection_duration, merge_intervals, total_duration
from mmcurate.transforms.vad import SileroVad, _silero_data_dir, vad_model_info

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
ROOT = Path(__file__).resolve().parents[1]
SR = 16000
# measured from the silero-vad 6.2.3 wheel (sha256sum silero_vad/data/silero_vad_16k_sequence.onnx)
SEQUENCE_MODEL_SHA256 = "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85"

SPEECH_FILES = [
    "speech/jfk.wav", "speech/jfk.mp3", "speech/jfk.flac", "speech/LDC93S1.wav",
    "diarization/sample.wav", "video/laion_talk.mp4", "video/autoeditor_example.mp4",
]


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


# ------------------------------------------------------------------ interval helpers

def test_interval_math():
    assert merge_intervals([(3, 4), (0, 1), (0.5, 2), (5, 5)]) == [(0, 2), (3, 4)]
    assert total_duration([(0, 1), (0.5, 2)]) == 2
    assert intersection_duration([(0, 2), (3, 5)], [(1, 4)]) == 2


# ------------------------------------------------------------------ the model

@pytest.mark.slow  # seconds (a fresh process or a real model): out of the fast tier
def test_model_info_without_a_session():
    info = vad_model_info()
    assert info["role"] == "vad" and "silero" in info["name"]
    assert info["version"].startswith("silero-vad 6.2.3")
    assert info["sha256"] == SEQUENCE_MODEL_SHA256
    assert info["sha256"] == hashlib.sha256(Path(info["path"]).read_bytes()).hexdigest()
    # located, never imported (it sets torch threads); checked in a fresh interpreter, whose
    # modules are only those this call imports
    code = ("import sys; from mmcurate.transforms.vad import vad_model_info; vad_model_info(); "
            "print('silero_vad' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.slow
@pytest.mark.model_score
def test_reference_speech_coverage(vad):
    """sample.wav against the union of its RTTM speaker turns."""
    regions = vad.regions(iter_audio(str(MEDIA / "diarization" / "sample.wav")))
    ref = merge_intervals((s, e) for s, e, _ in read_rttm(str(MEDIA / "diarization" / "sample.rttm")))
    duration = decode_audio(str(MEDIA / "diarization" / "sample.wav")).shape[0] / SR
    ref_speech = total_duration(ref)
    hit = intersection_duration(ref, regions)
    false_alarm = total_duration(regions) - hit
    coverage = hit / ref_speech
    fa_rate = false_alarm / (duration - ref_speech)
    print(f"\nsample.wav: reference speech {ref_speech:.2f} s of {duration:.2f} s; VAD speech "
          f"{total_duration(regions):.2f} s in {len(regions)} regions; coverage {coverage:.1%}, "
          f"false alarm {false_alarm:.2f} s = {fa_rate:.1%} of non-speech")
    assert coverage >= 0.95
    assert fa_rate <= 0.05


@pytest.mark.slow
def test_sequence_and_stepwise_models_agree():
    """The default block model gives the streaming model's probabilities, whatever the chunking."""
    audio = decode_audio(str(MEDIA / "diarization" / "sample.wav"))
    seq = SileroVad(block_windows=100)
    step = SileroVad(model_path=os.path.join(_silero_data_dir(), "silero_vad.onnx"))
    assert (seq.kind, step.kind) == ("sequence", "stepwise")
    p_seq = np.concatenate(list(seq.probabilities([audio[i : i + 7777] for i in range(0, len(audio), 7777)])))
    p_step = np.concatenate(list(step.probabilities([audio])))
    assert p_seq.shape == p_step.shape == (int(np.ceil(len(audio) / 512)),)
    assert np.abs(p_seq - p_step).max() < 1e-5
    assert seq.regions([audio]) == step.regions([audio])


_SILERO_REFERENCE = r"""
import json, sys
import numpy as np, torch
from silero_vad import load_silero_vad, get_speech_timestamps
from mmcurate.transforms.decode import decode_audio
model = load_silero_vad(onnx=True)
out = {}
for path in sys.argv[1:]:
    audio = torch.from_numpy(decode_audio(path))
    out[path] = [(d["start"], d["end"]) for d in get_speech_timestamps(audio, model)]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_regions_match_silero_get_speech_timestamps(vad):
    """Our streaming hysteresis against silero's own function (in a child process: importing
    silero_vad sets torch's thread count for the whole process)."""
    paths = [str(MEDIA / "diarization" / "sample.wav"), str(MEDIA / "video" / "autoeditor_example.mp4")]
    proc = subprocess.run([sys.executable, "-c", _SILERO_REFERENCE, *paths], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=True)
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in paths:
        ours = [(round(s * SR), round(e * SR)) for s, e in vad.regions(iter_audio(path, chunk_s=3.0))]
        theirs = [tuple(r) for r in reference[path]]
        print(f"\n{Path(path).name}: {len(ours)} regions, silero's own: {len(theirs)}")
        assert len(theirs) > 1
        assert ours == theirs


@pytest.mark.slow
@pytest.mark.model_score
@pytest.mark.parametrize("name", SPEECH_FILES)
def test_speech_files_have_speech(vad, name):
    result = vad.detect(iter_audio(str(MEDIA / name)))
    ratio = result.speech_s / result.duration_s
    print(f"\n{name}: {result.duration_s:.1f} s, speech {ratio:.1%} in {len(result.regions)} regions")
    assert result.regions and ratio > 0.25
    assert all(0 <= s < e <= result.duration_s + 1e-6 for s, e in result.regions)
    assert all(a[1] <= b[0] for a, b in zip(result.regions, result.regions[1:]))


@pytest.mark.slow
def test_silence_and_low_noise_have_no_speech(vad):
    rng = np.random.default_rng(7)
    silence = np.zeros(10 * SR, np.float32)
    noise = (0.003 * rng.standard_normal(10 * SR)).astype(np.float32)  # about -50 dBFS
    assert vad.regions([silence]) == []
    assert vad.regions([noise[i : i + 3000] for i in range(0, len(noise), 3000)]) == []
    assert vad.regions([]) == []


@pytest.mark.slow
@pytest.mark.model_score
def test_long_pauses_split_regions(vad):
    """autoeditor_example.mp4 has long real pauses: several regions, none spanning them all."""
    result = vad.detect(iter_audio(str(MEDIA / "video" / "autoeditor_example.mp4")))
    assert len(result.regions) >= 3
    assert result.speech_s < 0.8 * result.duration_s


# ------------------------------------------------------------------ the Beam stage

def _ref(path: Path, via: str = "local"):
    from mmcurate.schemas.records import MediaRef

    data = path.read_bytes()
    return MediaRef(uri=str(path), media_uri=str(path), ingested_via=via,
                    sha256=hashlib.sha256(data + str(path).encode()).hexdigest(), bytes=len(data),
                    metadata={"name": path.name})


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Files that must each end as exactly one rejection: name -> (stage, reason)."""
    jfk = (MEDIA / "speech" / "jfk.mp3").read_bytes()
    (tmp_path / "zero_bytes.wav").write_bytes(b"")
    write_audio(str(tmp_path / "zero_samples.wav"), [], SR)
    (tmp_path / "head200.mp3").write_bytes(jfk[:200])
    (tmp_path / "notes.mp3").write_text("definitely not audio\n" * 40)
    write_audio(str(tmp_path / "silence.wav"), [np.zeros(5 * SR)], SR)
    write_video(tmp_path / "screen.mp4", "mpeg4", None, seconds=0.5)
    return {
        "zero_bytes.wav": ("decode", "empty_audio"),
        "zero_samples.wav": ("decode", "empty_audio"),
        "head200.mp3": ("decode", "decode_error"),
        "notes.mp3": ("decode", "not_media"),
        "screen.mp4": ("decode", "no_audio_stream"),
        "silence.wav": ("vad", "no_speech"),
    }


def _good_inputs(tmp_path: Path) -> list[Path]:
    jfk = (MEDIA / "speech" / "jfk.mp3").read_bytes()
    part = tmp_path / "part30.mp3"  # a truncated mp3 that still decodes: it is a source
    part.write_bytes(jfk[: len(jfk) * 3 // 10])
    return [MEDIA / "speech" / "jfk.flac", MEDIA / "diarization" / "sample.wav", part]


@pytest.mark.slow
def test_detect_speech_stage(tmp_path, caplog):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.schemas.records import Rejection, SourceRecord, SpeechRegion
    from mmcurate.transforms.vad import DetectSpeech

    bad = _bad_inputs(tmp_path)
    good = _good_inputs(tmp_path)
    refs = [_ref(p) for p in good] + [_ref(tmp_path / n) for n in bad]
    def keep(name):
        path = tmp_path / f"{name}.pkl"

        def check(items):  # runs in the pipeline (a pickled copy): hand results back by file
            path.write_bytes(pickle.dumps(list(items)))
        return check

    caplog.set_level(logging.INFO, logger="mmcurate.vad")
    p = TestPipeline()
    out = p | beam.Create(refs) | "Detect" >> DetectSpeech(CurateConfig().vad, CurateConfig().decode, "run-test")
    for name in ("sources", "regions", "rejected", "speech"):
        assert_that(out[name], keep(name), label=f"Keep{name}")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
                if c.key.metric.namespace == "mmcurate"}
    assert counters["decode.ok"] == len(good) + 1  # the silent file decodes fine
    assert counters["decode.rejected"] == len(bad) - 1
    assert counters["vad.no_speech"] == 1
    ratios = [d.committed for d in result.metrics().query()["distributions"]
              if d.key.metric.name == "vad.speech_ratio_pct"]
    assert ratios and ratios[0].count == len(good) + 1 and ratios[0].min == 0

    got = {n: pickle.loads((tmp_path / f"{n}.pkl").read_bytes())
           for n in ("sources", "regions", "rejected", "speech")}
    sources: list[SourceRecord] = got["sources"]
    regions: list[SpeechRegion] = got["regions"]
    rejected: list[Rejection] = got["rejected"]
    speech = got["speech"]
    by_uri = {s.uri: s for s in sources}
    assert sorted(by_uri) == sorted(str(p) for p in good)
    # the truncated mp3 is kept (decode.truncated = "keep") with an annotation row
    kept = [r for r in rejected if r.reason == "truncated_kept"]
    assert [(Path(r.uri).name, r.stage, r.item_id) for r in kept] == [
        ("part30.mp3", "decode", f"{by_uri[str(tmp_path / 'part30.mp3')].source_id}-truncated")]
    assert kept[0].duration_s > 5.0  # most of jfk's 11 s were cut off
    rejected = [r for r in rejected if r.reason != "truncated_kept"]
    assert sorted(r.uri for r in rejected) == sorted(str(tmp_path / n) for n in bad)
    for r in rejected:
        assert (r.stage, r.reason) == bad[Path(r.uri).name], r
        assert r.run_id == "run-test" and r.detail
    silence = next(r for r in rejected if r.reason == "no_speech")
    assert silence.duration_s == pytest.approx(5.0)

    flac = by_uri[str(MEDIA / "speech" / "jfk.flac")]
    assert (flac.container, flac.audio_codec, flac.sample_rate, flac.channels) == ("flac", "flac", 44100, 2)
    assert flac.media_kind == "audio" and flac.duration_s == pytest.approx(11.0, abs=0.05)
    assert flac.metadata == {"name": "jfk.flac"} and flac.ingested_via == "local"
    part = by_uri[str(tmp_path / "part30.mp3")]
    assert 2.5 < part.duration_s < 4.0  # decoded length, not the header's 11 s
    for s in sources:
        mine = sorted((r for r in regions if r.source_id == s.source_id), key=lambda r: r.start)
        assert mine, s.uri
        assert [r.region_id for r in mine] == [f"{s.source_id}-vad-{n:05d}" for n in range(len(mine))]
        assert s.speech_s == pytest.approx(sum(r.end - r.start for r in mine), abs=0.01)
        assert s.speech_ratio == pytest.approx(s.speech_s / s.duration_s)
        assert 0 < s.speech_ratio <= 1 and s.run_id == "run-test"
    assert sorted(e.source.uri for e in speech) == sorted(by_uri)
    assert all(e.audio is None for e in speech)  # samples are kept only when asked
    for src, regs in ((e.source, e.regions) for e in speech):
        assert [r.region_id for r in regs] == sorted(r.region_id for r in regions if r.source_id == src.source_id)
    done = [r.getMessage() for r in caplog.records if r.name == "mmcurate.vad" and "realtime" in r.getMessage()]
    assert len(done) >= len(good)


@pytest.mark.slow
def test_too_long_is_rejected(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.transforms.vad import DetectSpeech

    cfg = CurateConfig()
    cfg.decode.max_duration_s = 10.0
    refs = [_ref(MEDIA / "speech" / "jfk.wav"), _ref(MEDIA / "speech" / "LDC93S1.wav")]
    with TestPipeline() as p:
        out = p | beam.Create(refs) | DetectSpeech(cfg.vad, cfg.decode, "run-test")
        assert_that(out["rejected"] | beam.Map(lambda r: (r.stage, r.reason, Path(r.uri).name)),
                    equal_to([("decode", "too_long", "jfk.wav")]), label="Rejected")
        assert_that(out["sources"] | beam.Map(lambda s: Path(s.uri).name),
                    equal_to(["LDC93S1.wav"]), label="Sources")


@pytest.mark.slow
def test_detect_speech_multiprocessing(tmp_path):
    """Two worker processes (each loads the model in setup); one outcome per input."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.transforms.vad import DetectSpeech

    bad = _bad_inputs(tmp_path)
    good = [MEDIA / "speech" / "jfk.wav", MEDIA / "speech" / "LDC93S1.wav"]
    refs = [_ref(p) for p in good] + [_ref(tmp_path / n) for n in ("notes.mp3", "silence.wav", "screen.mp4")]
    opts = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with TestPipeline(options=opts) as p:
        out = p | beam.Create(refs) | DetectSpeech(CurateConfig().vad, CurateConfig().decode, "run-mp")
        assert_that(out["sources"] | beam.Map(lambda s: (Path(s.uri).name, s.run_id, s.speech_ratio > 0.3)),
                    equal_to([("jfk.wav", "run-mp", True), ("LDC93S1.wav", "run-mp", True)]),
                    label="Sources")
        assert_that(out["rejected"] | beam.Map(lambda r: (Path(r.uri).name, r.stage, r.reason)),
                    equal_to([(n, *bad[n]) for n in ("notes.mp3", "silence.wav", "screen.mp4")]),
                    label="Rejected")
        assert_that(out["speech"] | beam.Map(lambda e: (Path(e.source.uri).name, len(e.regions) > 0)),
                    equal_to([("jfk.wav", True), ("LDC93S1.wav", True)]), label="Speech")


def test_progress_lines_for_long_sources(monkeypatch, caplog):
    """A progress line per PROGRESS_EVERY_S of decoded audio (10 min; 5 s here)."""
    import mmcurate.transforms.vad as vad_mod

    monkeypatch.setattr(vad_mod, "PROGRESS_EVERY_S", 5.0)
    caplog.set_level(logging.INFO, logger="mmcurate.vad")
    from mmcurate.transforms.decode import SampleBuffer

    keep = SampleBuffer(30.0, SR)
    watched = vad_mod._Watched(iter_audio(str(MEDIA / "diarization" / "sample.wav"), chunk_s=1.0),
                               "sample.wav", keep)
    chunks = list(watched)
    assert sum(c.shape[0] for c in chunks) == 30 * SR == watched.seen
    # the kept samples are the decoded ones, in order (the speech stage reads them)
    assert np.array_equal(keep.finish(), np.concatenate(chunks))
    lines = [r.getMessage() for r in caplog.records if "decoded" in r.getMessage()]
    assert len(lines) == 6, lines
