"""whisperx production backend, run offline as far as it goes on CPU.

The whisper model is the packaged whisper-base CTranslate2 dir, the VAD is whisperx's packaged
pyannote model (vad_method="pyannote"), HF_HUB_OFFLINE=1 and network connections fail loudly,
so any hub access is an error. No real wav2vec2 alignment model can be had offline, so the
alignment path is exercised with a tiny randomly initialised local wav2vec2 CTC model: it proves
the wiring (local dir, offline load, absolute word times, scores), not timing accuracy.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from mmcurate.pipelines.config import AsrConfig
from wer_reference import normalize, wer
from mmcurate.transforms.asr import NO_ALIGN_WARNING, load_transcriber
from mmcurate.transforms.decode import decode_audio

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SPEECH = MEDIA / "speech"
SR = 16000

pytestmark = [pytest.mark.prod, pytest.mark.slow]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYANNOTE_METRICS_ENABLED", "false")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def jfk():
    return decode_audio(str(SPEECH / "jfk.wav"))


def test_whisperx_offline_without_alignment(offline, caplog, jfk):
    caplog.set_level(logging.WARNING, logger="mmcurate.transforms.asr")
    tr = load_transcriber(AsrConfig(backend="whisperx", batch_size=4))
    warnings = [r.getMessage() for r in caplog.records if r.name == "mmcurate.transforms.asr"]
    assert warnings == [NO_ALIGN_WARNING]

    dur = len(jfk) / SR
    res = tr.transcribe(jfk, [(0.0, dur)])
    hyp = " ".join(s.text for s in res.segments)
    score = wer((SPEECH / "jfk.txt").read_text(), hyp)
    print(f"\n[asr] whisperx whisper-base jfk.wav: WER {score:.3f} lang {res.language} | {hyp}")
    assert score <= 0.05
    assert res.language == "en" and res.language_probability > 0.5
    assert res.model == "whisper-base (whisperx)"
    assert res.model_version.startswith("whisperx 3.8.6") and "no alignment" in res.model_version
    words = [w for s in res.segments for w in s.words]
    assert len(words) == len(normalize(hyp).split())
    assert all(w.probability is None for w in words)  # interpolated, not measured
    for s in res.segments:
        assert 0.0 <= s.start <= s.end <= dur + 1e-3
        assert s.words[0].start == pytest.approx(s.start) and s.words[-1].end == pytest.approx(s.end)
        assert all(a.end <= b.start + 1e-6 for a, b in zip(s.words, s.words[1:]))
    # only the regions are transcribed: the first 2.6 s hold "And so my fellow Americans"
    part = tr.transcribe(jfk, [(0.0, 2.6)], language="en")
    part_text = normalize(" ".join(s.text for s in part.segments))
    assert part_text.startswith("and so my fellow americans") and "country" not in part_text
    assert all(s.end <= 2.6 + 1e-3 for s in part.segments)
    assert tr.transcribe(jfk, [], language="en").segments == []
    assert len([r for r in caplog.records if r.name == "mmcurate.transforms.asr"]) == 1  # said once


def test_whisperx_missing_align_dir_is_a_clear_error(offline, tmp_path):
    missing = tmp_path / "no-such-wav2vec2"
    with pytest.raises(FileNotFoundError, match="asr.align_model_dir") as err:
        load_transcriber(AsrConfig(backend="whisperx", align_model_dir=str(missing)))
    assert str(missing) in str(err.value)


def _tiny_wav2vec2(d: Path) -> Path:
    """A 1-layer random wav2vec2 CTC model with an English character vocabulary, saved locally."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    d.mkdir(parents=True)
    chars = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("abcdefghijklmnopqrstuvwxyz'")
    (d / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    tok = Wav2Vec2CTCTokenizer(str(d / "vocab.json"), word_delimiter_token="|")
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0,
                                  do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(d)
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(vocab_size=len(chars), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                         pad_token_id=0)
    Wav2Vec2ForCTC(cfg).save_pretrained(d)
    return d


def test_whisperx_alignment_from_local_dir(offline, caplog, tmp_path, jfk):
    align_dir = _tiny_wav2vec2(tmp_path / "w2v2")
    caplog.set_level(logging.WARNING, logger="mmcurate.transforms.asr")
    tr = load_transcriber(AsrConfig(backend="whisperx", batch_size=4, language="en",
                                    align_model_dir=str(align_dir)))
    assert not [r for r in caplog.records if r.getMessage() == NO_ALIGN_WARNING]
    assert tr.model_info()["align_model_dir"] == str(align_dir.resolve())
    # jfk after 3 s of silence: aligned word times must come back in source time
    import numpy as np

    audio = np.concatenate([np.zeros(3 * SR, dtype=np.float32), jfk])
    res = tr.transcribe(audio, [(3.0, len(audio) / SR)])
    words = [w for s in res.segments for w in s.words]
    assert wer((SPEECH / "jfk.txt").read_text(), " ".join(w.word for w in words)) <= 0.05
    assert words and all(3.0 - 1e-3 <= w.start <= w.end <= len(audio) / SR + 1e-3 for w in words)
    assert any(isinstance(w.probability, float) for w in words)  # aligner scores
    assert all(a.start <= b.start + 1e-6 for a, b in zip(words, words[1:]))
    assert res.model_version.endswith(", align w2v2")
