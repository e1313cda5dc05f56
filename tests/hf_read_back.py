"""Read `mmcurate export --format hf` back with Hugging Face `datasets` (run in .venv-hf, which
has datasets 5.2 and no mmcurate): `python tests/hf_read_back.py DIR` prints, as JSON, what the
library loaded, for tests/test_export.py to compare with the tables.

Both ways in: `load_dataset(DIR, config)` through the card's configs, and
`load_dataset("parquet", data_files=...)` straight from the files; each must give the `Audio` and
`List(Image)` features from the files' own metadata. Images are decoded by `datasets` (PIL).
datasets 5.x decodes `Audio` through torchcodec (torch + FFmpeg libraries), which this venv
leaves out: the Audio feature's bytes are decoded with soundfile (what datasets 3 did), unless
torchcodec is importable, then by `datasets` itself."""

from __future__ import annotations

import io
import json
import os
import sys


def main(root: str) -> dict:
    import datasets
    import soundfile as sf
    from datasets import Audio, Image, load_dataset

    datasets.disable_progress_bars()
    out: dict = {"version": datasets.__version__}
    segs = load_dataset(root, "segments", split="train")
    direct = load_dataset("parquet", data_files=os.path.join(root, "segments", "*.parquet"), split="train")
    assert segs.features == direct.features, (segs.features, direct.features)
    assert isinstance(segs.features["audio"], Audio), segs.features["audio"]
    try:
        import torchcodec  # noqa: F401
        by_datasets = True
    except ImportError:
        by_datasets = False
    out["audio_decoded_by"] = "datasets" if by_datasets else "soundfile"
    rows = segs if by_datasets else segs.cast_column("audio", Audio(decode=False))
    out["segments"] = []
    for row in rows:
        if by_datasets:
            samples = row["audio"].get_all_samples()
            n, sr = samples.data.shape[-1], samples.sample_rate
        else:
            data, sr = sf.read(io.BytesIO(row["audio"]["bytes"]))
            n = len(data)
        out["segments"].append({**{k: row[k] for k in ("segment_id", "start", "end", "text", "speaker", "language")},
                                "num_words": len(row["words"]), "samples": n, "sample_rate": sr})
    docs = load_dataset(root, "documents", split="train")
    direct = load_dataset("parquet", data_files=os.path.join(root, "documents", "*.parquet"), split="train")
    assert docs.features == direct.features, (docs.features, direct.features)
    assert isinstance(docs.features["images"].feature, Image), docs.features["images"]
    out["documents"] = [{"document_id": row["document_id"], "texts": row["texts"],
                         "images": [None if im is None else [type(im).__module__, *im.size] for im in row["images"]]}
                        for row in docs]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
