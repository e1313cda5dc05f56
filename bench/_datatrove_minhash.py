"""datatrove 0.10.1's MinHash dedup (signatures -> buckets -> clusters) on a JSONL corpus, one
task, one worker; prints one JSON line {"seconds", "cpu_s", "clusters": {doc_index: cluster}}.

Run by bench/bench_dedup.py with the python of a separate venv (bench/requirements-datatrove.txt):
datatrove 0.10.1 requires huggingface-hub >= 1.6, which this project's pins (transformers 4.57
needs huggingface-hub < 1.0) exclude, so it cannot share .venv.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time


def main(corpus: str, work: str, bands: int, rows: int, ngram: int) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets,
                                                  MinhashDedupCluster, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Whitespace(WordTokenizer):  # the corpus is normalised already: words = split()
        def word_tokenize(self, text, language=None):
            return text.split()

        def sent_tokenize(self, text, language=None):
            return [text]

        def span_tokenize(self, text, language=None):
            raise NotImplementedError

    cfg = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows,
                        hash_config=HashConfig(precision=64, hash_fc="xxhash"))
    reader = lambda: JsonlReader(os.path.dirname(corpus), glob_pattern=os.path.basename(corpus),  # noqa: E731
                                 text_key="text", id_key="id")
    t0, c0 = time.perf_counter(), time.process_time()
    steps = [
        [reader(), MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg, language=Whitespace())],
        [MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)],
        [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove", config=cfg,
                             save_cluster_id=True)],
    ]
    for i, s in enumerate(steps):
        tasks = bands if i == 1 else 1
        LocalPipelineExecutor(pipeline=s, tasks=tasks, workers=1, logging_dir=f"{work}/logs{i}",
                              skip_completed=False).run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    clusters = {}
    path = f"{work}/remove/000000.clusters"
    if os.path.exists(path):
        data = open(path, "rb").read()
        for k in range(0, len(data), 8):
            doc, cl = struct.unpack("<II", data[k:k + 8])
            clusters[doc] = cl
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "clusters": clusters}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
