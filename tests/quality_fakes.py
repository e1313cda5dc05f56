"""Fakes for the quality tests: a transcriber that writes given text over each VAD region (so the
graph runs on real audio without Whisper's time), and a DNSMOS model whose score is a function
of the samples (so a threshold's effect is known in advance)."""

from __future__ import annotations

import numpy as np

from mmcurate.quality.scorers.dnsmos import DnsmosScore
from mmcurate.schemas.records import AsrResult, AsrSegment, Word

SR = 16000

FILLER = ("we measured the signal again and wrote down every number we saw in the log "
          "before lunch").split()


class TextTranscriber:
    """One ASR segment per region, words 0.4 s long every 0.5 s (at most 60); region k of a
    source gets texts[k % len(texts)], repeated to fill it (deterministic per source)."""

    def __init__(self, texts: list[str] | None = None, language: str = "en"):
        self.texts = texts or [" ".join(FILLER)]
        self.language = language

    def transcribe(self, audio, regions=None, language=None):
        dur = audio.shape[0] / SR
        segments = []
        for k, (a, b) in enumerate(regions or [(0.0, dur)]):
            vocab = self.texts[k % len(self.texts)].split()
            words, t, i = [], a, 0
            while t + 0.4 <= b and i < 60:
                words.append(Word(vocab[i % len(vocab)], round(t, 3), round(t + 0.4, 3), 0.9))
                t += 0.5
                i += 1
            if words:
                segments.append(AsrSegment(words[0].start, words[-1].end,
                                           " ".join(w.word for w in words), words,
                                           avg_logprob=-0.3, no_speech_prob=0.05, compression_ratio=1.2))
        return AsrResult(language or self.language, 0.97, segments, "fake-asr", "fake 1.0")

    def model_info(self):
        return {"role": "asr", "name": "fake-asr", "version": "1.0", "path": None, "sha256": None}


class LoudnessDnsmos:
    """OVRL = 1 + 10 x RMS of the samples (clipped to 5); SIG = OVRL + 0.5, BAK = OVRL + 1."""

    def __init__(self):
        self.network_runs = 0  # what the real network would run on: a window per call here

    def score(self, audio):
        rms = float(np.sqrt(np.mean(np.square(np.asarray(audio, dtype=np.float64)))))
        ovrl = min(5.0, 1.0 + 10.0 * rms)
        return DnsmosScore(min(5.0, ovrl + 0.5), min(5.0, ovrl + 1.0), ovrl)

    def score_windows(self, windows):
        self.network_runs += len(windows)
        return [self.score(w) for w in windows]


def fake_run(media: list[str], out: str, *, quality: dict | None = None, texts: list[str] | None = None,
             real_dnsmos: bool = False, stages=("vad", "speech", "quality"), dnsmos_loader=LoudnessDnsmos,
             segments: dict | None = None):
    """Run the real pipeline (real VAD, decode, sink, manifest) with the fake transcriber,
    diarization off and the fake (`dnsmos_loader`, or the real) DNSMOS; returns the manifest.
    `segments`: settings of the config's segments section (e.g. include_audio)."""
    from mmcurate.pipelines import curate
    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.transforms.asr import AsrModelHandler
    from mmcurate.transforms.segment_quality import DnsmosModelHandler

    data = {"stages": list(stages), "diarization": {"backend": "none"}, "quality": quality or {},
            "segments": segments or {}}
    cfg = CurateConfig.from_dict(data)
    tr = TextTranscriber(texts)
    overrides = {"asr_handler": AsrModelHandler(cfg.asr, loader=lambda _cfg: tr)}
    if not real_dnsmos:
        overrides["dnsmos_handler"] = DnsmosModelHandler(loader=dnsmos_loader)
    return curate.run(media, out, cfg, overrides=overrides)
