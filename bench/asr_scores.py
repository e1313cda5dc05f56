"""Scores of every whisper-base segment, with no drop rule applied, on generated noise/hum clips
and on all real speech in ../shared/media: no_speech_prob, avg_logprob, best word probability,
compression ratio. The data behind the hallucination thresholds in transforms/asr.py; run it
under each CPU instruction-set setting (CT2_FORCE_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2) before moving one.

    .venv/bin/python bench/asr_scores.py OUT.json            # sequential decoding
    .venv/bin/python bench/asr_scores.py OUT.json batched    # asr.batched (BatchedInferencePipeline)
"""
import json
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nonspeech_fixtures import write_clips
from mmcurate.transforms.asr import AsrConfig, load_transcriber
from mmcurate.transforms.decode import decode_audio
from mmcurate.transforms.vad import SileroVad
import test_asr as T

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
BATCHED = sys.argv[2:3] == ["batched"]
cfg = AsrConfig(batched=BATCHED, no_speech_alone_threshold=None, vad_no_speech_threshold=None, low_confidence_word_prob=None,
                no_speech_threshold=1.0, compression_ratio_threshold=100.0, no_speech_alone_max_logprob=None)
m = load_transcriber(cfg)
vad = SileroVad()
rows = []
def run(kind, name, audio, regions, lang=None):
    res = m.transcribe(audio, regions, language=lang)
    for s in res.segments:
        probs = [w.probability for w in s.words if w.probability is not None]
        rows.append(dict(kind=kind, name=name, nsp=round(s.no_speech_prob, 3), lp=round(s.avg_logprob, 3),
                         maxp=round(max(probs), 3) if probs else None, cr=round(s.compression_ratio, 2),
                         words=len(s.words), text=s.text[:60]))
for p in write_clips(Path(sys.argv[1]).with_suffix(".clips"), None):
    a = decode_audio(str(p)); r = vad.regions([a])
    if r: run("noise", p.stem, a, r)
noise = [("white0.1", lambda: T._noise(0, 0.1), None), ("white0.3en", lambda: T._noise(0, 0.3), "en"),
         ("white0.3s2", lambda: T._noise(2, 0.3), None), ("tones", T._tones, "en"),
         ("white0.03s1", lambda: T._noise(1, 0.03), None), ("white0.3s3", lambda: T._noise(3, 0.3), None),
         ("white0.1s4", lambda: T._noise(4, 0.1), None), ("white0.1s2en", lambda: T._noise(2, 0.1), "en"),
         ("pink", lambda: T._pink(0, 0.05), None), ("sweep", T._sweep, None)]
for n, fn, lang in noise:
    a = fn(); run("noise", n, a, [(0.0, len(a) / 16000)], lang)
for n in T.REAL_SPEECH:
    a = decode_audio(str(MEDIA / n)); run("speech", n, a, vad.regions([a]))
json.dump(rows, open(sys.argv[1], "w"), indent=0)
for k in ("noise", "speech"):
    rr = [r for r in rows if r["kind"] == k]
    print(k, len(rr), "nsp", min(r["nsp"] for r in rr), max(r["nsp"] for r in rr), "lp", min(r["lp"] for r in rr), max(r["lp"] for r in rr))
for r in rows:
    if r["nsp"] > 0.3: print(r)
