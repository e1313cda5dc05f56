"""The Beam speech stage (TranscribeSpeech): fake models for the graph and ledger rules, and
one real-model run (embedded Whisper + embedded diarizer) on the two-speaker sample."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

import apache_beam as beam  # noqa: E402
from apache_beam.testing.test_pipeline import TestPipeline  # noqa: E402
from apache_beam.testing.util import assert_that  # noqa: E402

from mmcurate.pipelines.config import CurateConfig  # noqa: E402
from mmcurate.schemas.records import (  # noqa: E402
    AsrResult,
    AsrSegment,
    SourceRecord,
    SpeechRegion,
    Turn,
    Word,
    to_table,
)
from mmcurate.transforms.asr import AsrModelHandler  # noqa: E402
from mmcurate.transforms.diarize import DiarizationModelHandler  # noqa: E402
from mmcurate.transforms.speech import TranscribeSpeech, encode_flac, overlapped_flags  # noqa: E402
from mmcurate.transforms.vad import SpeechInput  # noqa: E402

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SR = 16000
RUN = "run-test"


# ---------------------------------------------------------------- fakes
# Behaviour is keyed on the audio itself (the models only ever see samples):
#   silence -> ASR finds nothing; exactly 3.0 s -> ASR raises; exactly 4.0 s -> diarizer raises;
#   exactly 2.5 s -> diarizer finds no turn; exactly 6.0 s -> ASR reports a dropped segment.


class FakeTranscriber:
    def transcribe(self, audio, regions=None, language=None):
        dur = audio.shape[0] / SR
        dropped = []
        if abs(dur - 6.0) < 1e-6:  # like mmcurate.transforms.asr: segments its hallucination rules dropped
            dropped = [("repetitive", AsrSegment(1.0, 2.0, "la la la la", [], compression_ratio=3.1))]
        if abs(dur - 3.0) < 1e-6:
            raise RuntimeError("CUDA out of memory (fake)")
        if not np.any(audio):
            return AsrResult(None, None, [], "fake-asr", "fake 1.0")
        segments = []
        for a, b in regions or [(0.0, dur)]:
            words, t, i = [], a, 0
            while t + 0.4 <= b:
                text = f" w{int(t * 10)}" + ("." if i % 4 == 3 else "")
                words.append(Word(text, round(t, 3), round(t + 0.4, 3), 0.9))
                t += 0.5
                i += 1
            if words:
                segments.append(AsrSegment(words[0].start, words[-1].end,
                                           "".join(w.word for w in words), words,
                                           avg_logprob=-0.25, no_speech_prob=0.05,
                                           compression_ratio=1.3))
        return AsrResult(language or "en", 0.97, segments, "fake-asr", "fake 1.0", dropped)

    def model_info(self):
        return {"role": "asr", "name": "fake-asr", "version": "1.0", "path": None, "sha256": None}


class FakeDiarizer:
    """Speaker 5 before the middle of the file, speaker 2 after (renumbered 0, 1)."""

    def diarize(self, audio, sample_rate=16000, *, num_speakers=None, min_speakers=None,
                max_speakers=None):
        dur = audio.shape[0] / sample_rate
        if abs(dur - 4.0) < 1e-6:
            raise ValueError("embedding extraction failed (fake)")
        if abs(dur - 2.5) < 1e-6:
            return []  # e.g. a voice too short or too faint for the diarizer
        if num_speakers == 1:
            return [Turn(0.0, dur, 3)]
        return [Turn(0.0, dur / 2, 5), Turn(dur / 2, dur, 2)]

    def model_info(self):
        return [{"role": "diarization", "name": "fake-diar", "version": "1", "path": None,
                 "sha256": None}]


def fake_transcriber_factory(asr_cfg):
    return FakeTranscriber()


def fake_diarizer_factory(diar_cfg):
    return FakeDiarizer()


# ---------------------------------------------------------------- helpers


def write_wav(path: Path, seconds: float, amplitude: float = 0.3) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
    return path


def source_of(path: Path, regions: list[tuple[float, float]] | None = None,
              metadata: dict[str, str] | None = None) -> tuple[SourceRecord, list[SpeechRegion]]:
    import soundfile as sf

    dur = sf.info(str(path)).duration
    sid = f"src{path.stem}"
    regions = regions if regions is not None else [(0.2, dur - 0.2)]
    src = SourceRecord(
        source_id=sid, sha256=sid * 2, uri=str(path), media_uri=str(path), ingested_via="file",
        media_kind="audio", container="wav", audio_codec="pcm_s16le", video_codec=None,
        duration_s=dur, sample_rate=SR, channels=1, bytes=path.stat().st_size,
        speech_s=sum(b - a for a, b in regions), speech_ratio=0.5, metadata=metadata or {},
        run_id=RUN,
    )
    regs = [SpeechRegion(f"{sid}-vad-{n:05d}", sid, a, b, RUN) for n, (a, b) in enumerate(regions)]
    return src, regs


def _capture(path: str):
    # The matcher hands its rows to the test through a file (it is pickled to the runner), so
    # failures are ordinary pytest asserts with readable diffs.
    def matcher(rows):
        import pickle

        with open(path, "wb") as fh:
            pickle.dump(list(rows), fh)

    return matcher


def run_stage(inputs, cfg: CurateConfig | None = None, *, transcriber=fake_transcriber_factory,
              diarizer=fake_diarizer_factory, turns: list | None = None):
    """Run TranscribeSpeech on (source, regions) pairs with model handlers whose loaders are
    `transcriber(cfg.asr)` / `diarizer(cfg.diarization)` (None: the real models). Audio is not
    passed in, so the stage's DecodeOnce step decodes each source. `turns`, when a list, gets
    the turns rows."""
    import pickle
    import tempfile

    cfg = cfg or CurateConfig()
    p = TestPipeline()
    stage = TranscribeSpeech(
        cfg.asr, cfg.diarization, cfg.segments, RUN,
        asr_handler=AsrModelHandler(cfg.asr, loader=transcriber),
        diarization_handler=DiarizationModelHandler(cfg.diarization, loader=diarizer),
    )
    out = p | beam.Create([SpeechInput(src, regs) for src, regs in inputs]) | stage
    names = ("segments", "transcripts", "turns", "rejected")
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            assert_that(out[name], _capture(os.path.join(d, name)), label=f"Capture{name}")
        result = p.run()
        result.wait_until_finish()
        got = {}
        for name in names:
            with open(os.path.join(d, name), "rb") as fh:
                got[name] = pickle.load(fh)
    if turns is not None:
        turns.extend(sorted(got["turns"], key=lambda t: t.turn_id))
    query = result.metrics().query()
    counters = {c.key.metric.name: c.committed for c in query["counters"]}
    dists = {c.key.metric.name: c.committed for c in query["distributions"]}
    return (sorted(got["segments"], key=lambda s: s.segment_id),
            {t.source_id: t for t in got["transcripts"]},
            sorted(got["rejected"], key=lambda r: (r.stage, r.reason)),
            counters, dists)


# ---------------------------------------------------------------- fake-model tests


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("speech")
    inputs = [
        source_of(write_wav(d / "two.wav", 6.0)),
        source_of(write_wav(d / "french.wav", 5.0), metadata={"language": "fr",
                                                             "num_speakers": "1"}),
        source_of(write_wav(d / "silent.wav", 2.0, amplitude=0.0)),
        source_of(write_wav(d / "asrboom.wav", 3.0)),
        source_of(write_wav(d / "diarboom.wav", 4.0)),
        source_of(write_wav(d / "noturns.wav", 2.5)),
    ]
    turns: list = []
    result = run_stage(inputs, turns=turns)
    return inputs, result, turns


def test_segments_transcripts_and_ledger(fake_run):
    inputs, (segments, transcripts, rejected, counters, dists), _ = fake_run
    by_src: dict[str, list] = {}
    for s in segments:
        by_src.setdefault(s.source_id, []).append(s)
    assert set(by_src) == {"srctwo", "srcfrench", "srcdiarboom", "srcnoturns"}

    two = by_src["srctwo"]
    assert [s.segment_id for s in two] == [f"srctwo-seg-{n:05d}" for n in range(len(two))]
    # words only inside the VAD region (0.2 .. 5.8 s), cut at every 4th word ("." ends it)
    assert all(0.2 <= w.start and w.end <= 5.8 for s in two for w in s.words)
    assert all(len(s.words) <= 4 and s.words for s in two)
    # diarizer said 5 then 2: renumbered by first appearance -> spk0 then spk1
    assert two[0].speaker == "srctwo-spk0" and two[-1].speaker == "srctwo-spk1"
    assert {s.speaker for s in two} == {"srctwo-spk0", "srctwo-spk1"}
    s0 = two[0]
    assert s0.audio_uri == f"{inputs[0][0].media_uri}#t={s0.start:.3f},{s0.end:.3f}"
    assert s0.audio is None  # references by default
    assert (s0.language, s0.asr_model, s0.asr_model_version) == ("en", "fake-asr", "fake 1.0")
    assert s0.diarization_model == "fake-diar"
    assert s0.avg_logprob == pytest.approx(-0.25) and s0.no_speech_prob == pytest.approx(0.05)
    assert s0.text == "".join(w.word for w in s0.words).strip()

    t = transcripts["srctwo"]
    assert t.num_speakers == 2 and t.num_segments == len(two)
    assert t.num_words == sum(len(s.words) for s in two)
    assert t.speech_s == pytest.approx(sum(s.end - s.start for s in two))
    assert t.text.splitlines()[0] == f"[spk0] {two[0].text}"
    assert t.text.splitlines()[-1] == f"[spk1] {two[-1].text}"

    # metadata hints: language passed to ASR, num_speakers passed to the diarizer
    fr = by_src["srcfrench"]
    assert {s.language for s in fr} == {"fr"} and {s.speaker for s in fr} == {"srcfrench-spk0"}
    assert transcripts["srcfrench"].num_speakers == 1

    # diarization failed: words kept, speaker None, annotated in the ledger
    assert {s.speaker for s in by_src["srcdiarboom"]} == {None}
    assert transcripts["srcdiarboom"].text.startswith("[spk?] ")
    assert transcripts["srcdiarboom"].num_speakers == 0
    assert {s.speaker for s in by_src["srcnoturns"]} == {None}

    ledger = [(r.stage, r.reason, r.source_id, r.item_id) for r in rejected]
    assert ledger == [
        ("asr", "hallucination", "srctwo", "srctwo-asr-1.000"),
        ("asr", "model_error", "srcasrboom", None),
        ("asr", "no_transcript", "srcsilent", None),
        ("diarize", "diarization_failed", "srcdiarboom", "srcdiarboom"),
        ("diarize", "no_turns", "srcnoturns", "srcnoturns"),
    ]
    err = next(r for r in rejected if r.reason == "model_error")
    assert "CUDA out of memory" in err.detail and err.run_id == RUN
    assert "embedding extraction failed" in rejected[-2].detail
    assert "repetitive" in rejected[0].detail and "la la la" in rejected[0].detail
    assert rejected[0].duration_s == pytest.approx(1.0)
    assert set(transcripts) == {"srctwo", "srcfrench", "srcdiarboom", "srcnoturns"}

    assert counters["asr.sources"] == 6
    assert counters["asr.no_transcript"] == 1
    assert counters["asr.segments"] == len(segments)
    assert counters["diarize.sources"] == 6
    assert counters["asr.dropped_segments"] == 1
    assert dists["asr.rtf_x1000"].count == 5  # every source the model finished


def test_rows_fit_the_arrow_schemas(fake_run):
    _, (segments, transcripts, rejected, _, _), turns = fake_run
    seg_table = to_table("segments", segments)
    assert seg_table.num_rows == len(segments)
    words = seg_table.column("words").to_pylist()[0]
    assert set(words[0]) == {"word", "start", "end", "probability"}
    assert to_table("transcripts", list(transcripts.values())).num_rows == len(transcripts)
    assert to_table("rejected", rejected).num_rows == len(rejected)
    assert to_table("turns", turns).num_rows == len(turns)


def test_turns_rows_use_the_segments_speaker_labels(fake_run):
    _, (segments, _, _, counters, _), turns = fake_run
    two = [t for t in turns if t.source_id == "srctwo"]
    # the fake diarizer said speaker 5 on [0, 3) and speaker 2 on [3, 6): the segments call
    # them spk0 and spk1 (first words), and so must the turns
    assert [(t.turn_id, t.speaker, t.start, t.end, t.overlapped) for t in two] == [
        ("srctwo-turn-00000", "srctwo-spk0", 0.0, 3.0, False),
        ("srctwo-turn-00001", "srctwo-spk1", 3.0, 6.0, False),
    ]
    seg_speakers = {s.speaker for s in segments if s.source_id == "srctwo"}
    assert {t.speaker for t in two} == seg_speakers
    assert {t.diarization_model for t in two} == {"fake-diar"}
    # the ASR failure still has the diarizer's turns; a failed diarization has none
    assert {t.source_id for t in turns} == {"srctwo", "srcfrench", "srcasrboom", "srcsilent"}
    assert counters["diarize.turns"] == len(turns)


def test_overlapped_flags():
    t = [Turn(0.0, 2.0, 0), Turn(1.5, 3.0, 1), Turn(3.0, 4.0, 0), Turn(3.5, 3.8, 0), Turn(5, 6, 2)]
    # 0/1 overlap; a speaker overlapping itself is not overlapped speech; touching is not overlap
    assert overlapped_flags(t) == [True, True, False, False, False]


@pytest.mark.parametrize("fmt", ["flac", "opus"])
def test_no_diarization_backend_means_one_speaker_and_inline_audio(tmp_path, monkeypatch, fmt):
    import soundfile as sf

    from mmcurate.transforms import decode

    cfg = CurateConfig()
    cfg.diarization.backend = "none"
    cfg.segments.include_audio = True
    cfg.segments.audio_format = fmt
    inputs = [source_of(write_wav(tmp_path / "one.wav", 4.0))]  # 4.0 s would fail diarization
    decoded = []
    real_decode = decode.decode_audio

    def counted_decode(uri, *a, **kw):
        decoded.append(uri)
        return real_decode(uri, *a, **kw)

    monkeypatch.setattr(decode, "decode_audio", counted_decode)

    def no_diarizer(_):
        raise AssertionError("diarizer must not be loaded when backend is none")

    segments, transcripts, rejected, counters, _ = run_stage(inputs, cfg, diarizer=no_diarizer)
    assert rejected == []
    assert segments and {s.speaker for s in segments} == {"srcone-spk0"}
    assert {s.diarization_model for s in segments} == {None}
    assert "diarize.sources" not in counters
    # the segments' audio is cut from the decode the ASR model read: the source is decoded once
    assert decoded == [inputs[0][0].media_uri]
    assert counters["segments.audio_bytes"] == sum(len(s.audio["bytes"]) for s in segments)
    for s in segments:
        assert s.audio["path"] == f"{s.segment_id}.{fmt}"
        audio, sr = sf.read(io.BytesIO(s.audio["bytes"]))
        assert sr == SR
        assert len(audio) / SR == pytest.approx(s.end - s.start, abs=2 / SR)
        assert np.abs(audio).max() == pytest.approx(0.3, abs=0.01 if fmt == "flac" else 0.05)
    assert transcripts["srcone"].num_speakers == 1


def test_speech_clips_hold_every_word_and_skip_long_silences():
    from mmcurate.schemas.records import AsrResult, AsrSegment, Word
    from mmcurate.transforms.speech import speech_clips

    audio = np.linspace(-0.5, 0.5, 10 * SR, dtype=np.float32)
    words = [Word("a", 1.0, 1.4, 0.9), Word("b", 1.6, 2.0, 0.9), Word("c", 6.0, 6.5, 0.9)]
    result = AsrResult("en", 1.0, [AsrSegment(0.9, 2.1, "a b", words[:2]),
                                 AsrSegment(6.0, 6.5, "c", words[2:])], "m", "1")
    clips = speech_clips(audio, result, SR)
    # two clips (the 3.9 s pause is not carried), each holding its words' samples exactly
    assert [t for c in clips for t in (c.start / SR, c.end / SR)] == pytest.approx([0.9, 2.1, 6.0, 6.5], abs=2 / SR)
    a = clips[0]
    got = np.frombuffer(a.pcm, dtype="<i2")[SR - a.start : 2 * SR - a.start] / 32767.0
    assert got == pytest.approx(audio[SR : 2 * SR], abs=1 / 32767)


def test_source_without_vad_regions_is_no_transcript(tmp_path):
    inputs = [source_of(write_wav(tmp_path / "novad.wav", 2.0), regions=[])]
    segments, transcripts, rejected, _, _ = run_stage(inputs)
    assert segments == [] and transcripts == {}
    assert [(r.stage, r.reason) for r in rejected] == [("asr", "no_transcript")]


def test_encode_flac_round_trip():
    import soundfile as sf

    x = (0.5 * np.sin(np.linspace(0, 200, SR))).astype(np.float32)
    y, sr = sf.read(io.BytesIO(encode_flac(x, SR)), dtype="float32")
    assert sr == SR and y.shape == x.shape
    assert np.max(np.abs(y - x)) < 1e-3


def test_speech_model_info_names_the_embedded_models():
    pytest.importorskip("mmcurate.transforms.diarize", reason="diarization backend not in this checkout")
    def info(cfg):
        return TranscribeSpeech(cfg.asr, cfg.diarization, cfg.segments, RUN).model_info()

    infos = info(CurateConfig())
    roles = [i["role"] for i in infos]
    assert roles == ["asr", "diarization-segmentation", "speaker-embedding"]
    assert all(set(i) == {"role", "name", "version", "path", "sha256"} for i in infos)
    assert all(len(i["sha256"]) == 64 and Path(i["path"]).exists() for i in infos)
    assert infos[0]["name"] == "whisper-base"
    cfg = CurateConfig()
    cfg.diarization.backend = "none"
    assert [i["role"] for i in info(cfg)] == ["asr"]


# ---------------------------------------------------------------- real models


def _read_rttm(path: Path) -> list[tuple[float, float, str]]:
    turns = []
    for line in path.read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            turns.append((float(f[3]), float(f[3]) + float(f[4]), f[7]))
    return turns


def _vad_regions(path: Path) -> list[tuple[float, float]]:
    """VAD regions from the project's silero stage; the whole file if it is not available."""
    from mmcurate.transforms.decode import decode_audio

    audio = decode_audio(str(path))
    try:
        from mmcurate.transforms.vad import SileroVad
    except ImportError:
        return [(0.0, audio.shape[0] / SR)]
    return SileroVad().regions([audio])


def speaker_agreement(segments, reference: list[tuple[float, float, str]]):
    """Fraction of words whose speaker is the reference speaker at the word's midpoint.

    Hypothesis speakers are mapped to reference labels by the best one-to-one mapping
    (Hungarian on word counts). Words whose midpoint lies in reference overlap (two speakers)
    or in reference non-speech are skipped: there is no single right answer there. A word
    with speaker None counts as wrong. Returns (fraction, words scored, words skipped).
    """
    from scipy.optimize import linear_sum_assignment

    pairs, skipped = [], 0
    for s in segments:
        for w in s.words:
            mid = (w.start + w.end) / 2
            active = {lab for a, b, lab in reference if a <= mid < b}
            if len(active) != 1:
                skipped += 1
                continue
            pairs.append((s.speaker, active.pop()))
    hyps = sorted({h for h, _ in pairs if h is not None})
    refs = sorted({r for _, r in pairs})
    counts = np.zeros((len(hyps), len(refs)))
    for h, r in pairs:
        if h is not None:
            counts[hyps.index(h), refs.index(r)] += 1
    rows, cols = linear_sum_assignment(-counts)
    correct = counts[rows, cols].sum()
    return (correct / len(pairs) if pairs else 0.0), len(pairs), skipped


@pytest.mark.slow
def test_real_models_attribute_the_two_speakers_of_the_sample():
    wav = MEDIA / "diarization" / "sample.wav"
    rttm = MEDIA / "diarization" / "sample.rttm"
    if not wav.is_file():
        pytest.skip(f"{wav} is missing")
    try:
        import mmcurate.transforms.asr  # noqa: F401
        import mmcurate.transforms.diarize  # noqa: F401
    except ImportError as e:
        pytest.skip(f"real ASR/diarization backends not in this checkout: {e}")

    regions = _vad_regions(wav)
    src, regs = source_of(wav, regions=regions)
    src = dataclasses.replace(src, source_id="sample")
    regs = [dataclasses.replace(r, source_id="sample") for r in regs]
    segments, transcripts, rejected, counters, _ = run_stage(
        [(src, regs)], transcriber=None, diarizer=None
    )
    assert [(r.stage, r.reason) for r in rejected if r.reason != "hallucination"] == []
    t = transcripts["sample"]
    assert t.num_speakers == 2, t.text
    assert {s.speaker for s in segments} == {"sample-spk0", "sample-spk1"}
    assert t.num_words >= 40  # ~30 s of conversation
    assert max(s.end - s.start for s in segments) <= 30.0
    assert all(s.asr_model and s.diarization_model for s in segments)
    to_table("segments", segments)

    frac, scored, skipped = speaker_agreement(segments, _read_rttm(rttm))
    print(f"\nsample.wav: {len(regions)} VAD regions, {len(segments)} segments, "
          f"{t.num_words} words; speaker agreement with sample.rttm at word midpoints: "
          f"{frac:.3f} over {scored} words ({skipped} skipped: reference overlap/non-speech)")
    print(t.text)
    assert scored >= 30
    assert frac >= 0.85


def test_model_steps_have_stable_labels():
    """Runners scale and monitor steps by label: the two model steps and the join keep theirs."""
    from apache_beam.pipeline import PipelineVisitor

    def labels(cfg):
        p = beam.Pipeline()
        _ = p | beam.Create([]) | "Speech" >> TranscribeSpeech(cfg.asr, cfg.diarization,
                                                                cfg.segments, RUN)
        seen: set[str] = set()

        class Visitor(PipelineVisitor):
            def enter_composite_transform(self, node):
                seen.add(node.full_label)

            def visit_transform(self, node):
                seen.add(node.full_label)

        p.visit(Visitor())
        return seen

    want = {"Speech/Transcribe", "Speech/Diarize", "Speech/JoinAsrAndTurns",
            "Speech/AttributeSpeakers"}
    assert want <= labels(CurateConfig())
    cfg = CurateConfig()
    cfg.diarization.backend = "none"
    got = labels(cfg)
    assert "Speech/Diarize" not in got and want - {"Speech/Diarize"} <= got


_LOADS: list[str] = []


def _counting_transcriber(asr_cfg):
    _LOADS.append("asr")
    return FakeTranscriber()


def _counting_diarizer(diar_cfg):
    _LOADS.append("diarizer")
    return FakeDiarizer()


def test_one_model_per_process_shared_by_worker_threads(tmp_path):
    """Two DirectRunner worker threads, eight sources: each model is loaded once (RunInference
    keeps it in a per-process shared.Shared), not once per thread or per DoFn instance."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    _LOADS.clear()
    inputs = [source_of(write_wav(tmp_path / f"s{i}.wav", 2.0 + i / 10)) for i in range(8)]
    cfg = CurateConfig()
    opts = PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    with beam.Pipeline(runner=FnApiRunner(), options=opts) as p:
        out = (p | beam.Create([SpeechInput(s, r) for s, r in inputs])
               | TranscribeSpeech(cfg.asr, cfg.diarization, cfg.segments, RUN,
                                  asr_handler=AsrModelHandler(cfg.asr, loader=_counting_transcriber),
                                  diarization_handler=DiarizationModelHandler(
                                      cfg.diarization, loader=_counting_diarizer)))
        counted = out["transcripts"] | beam.combiners.Count.Globally()
        assert_that(counted, lambda n: None if list(n) == [8] else (_ for _ in ()).throw(
            AssertionError(f"transcripts {list(n)}")))
    assert sorted(_LOADS) == ["asr", "diarizer"], _LOADS


def test_gpu_model_steps_carry_accelerator_resource_hints():
    """A model on cuda asks the runner for an accelerator on its step (Dataflow's syntax by
    default, or the configured one); CPU models ask for nothing."""
    from mmcurate.transforms.asr import DEFAULT_GPU_HINT

    cfg = CurateConfig()
    assert AsrModelHandler(cfg.asr).get_resource_hints() == {}
    assert DiarizationModelHandler(cfg.diarization).get_resource_hints() == {}
    cfg.asr.device = "cuda"
    cfg.diarization.device = "cuda:0"
    cfg.diarization.accelerator = "type:nvidia-tesla-t4;count:1"
    assert AsrModelHandler(cfg.asr).get_resource_hints() == {"accelerator": DEFAULT_GPU_HINT}

    p = beam.Pipeline()
    _ = p | beam.Create([]) | "Speech" >> TranscribeSpeech(cfg.asr, cfg.diarization, cfg.segments, RUN)
    hints = {}
    from apache_beam.pipeline import PipelineVisitor

    class Visitor(PipelineVisitor):
        def visit_transform(self, node):
            if node.resource_hints:
                hints[node.full_label] = node.resource_hints

    p.visit(Visitor())
    asr_steps = [h for label, h in hints.items() if label.startswith("Speech/Transcribe/")]
    diar_steps = [h for label, h in hints.items() if label.startswith("Speech/Diarize/")]
    assert asr_steps and all(DEFAULT_GPU_HINT.encode() in h[k] for h in asr_steps for k in h)
    assert diar_steps and all(b"nvidia-tesla-t4" in h[k] for h in diar_steps for k in h)
    assert not any(label.startswith("Speech/AttributeSpeakers") for label in hints)


class _SureOfTwoDiarizer(FakeDiarizer):
    """The fake diarizer's turns, with a speaker-count confidence as the embedded one reports it."""

    def diarize_full(self, audio, sample_rate=16000, **hints):
        from mmcurate.schemas.records import DiarizationResult

        return DiarizationResult(self.diarize(audio, sample_rate, **hints), None, confidence=0.25)


def test_diarization_confidence_reaches_turns_and_transcripts(tmp_path, fake_run):
    """The diarizer's per-source confidence is a column of `turns` and `transcripts`; a diarizer
    that reports none (the plain fake) leaves it null."""
    inputs = [source_of(write_wav(tmp_path / "two.wav", 5.0))]
    turns: list = []
    _, transcripts, rejected, _, _ = run_stage(inputs, diarizer=lambda _: _SureOfTwoDiarizer(), turns=turns)
    assert rejected == [] and len(turns) == 2
    assert {t.diarization_confidence for t in turns} == {0.25}
    assert transcripts["srctwo"].diarization_confidence == 0.25
    assert to_table("turns", turns).column("diarization_confidence").to_pylist() == [0.25, 0.25]
    _, (_, transcripts, _, _, _), turns = fake_run
    assert {t.diarization_confidence for t in turns} == {None}
    assert {t.diarization_confidence for t in transcripts.values()} == {None}
