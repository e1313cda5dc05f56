"""Rephrasing throughput: generated tokens/s of the embedded backend, and the speed-up of N
concurrent requests over one at a time against the loopback OpenAI-compatible server.

    .venv/bin/python bench/bench_rephrase.py [--passages 8] [--concurrency 4] [--json OUT]

Both figures are ratios or rates measured in the same command (the machine is shared):
  embedded: the same passages decoded one at a time (1 llama.cpp slot) and with `concurrency`
            slots in one process (continuous batching), greedy, the stage's own templates;
  server:   `python tests/rephrase_server.py --parallel N` on 127.0.0.1, the same
            requests sent by 1 client thread, then by N threads (OpenAIChatClient, as the stage).
Generated tokens are the server's `usage.completion_tokens`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PASSAGES = [  # ../shared/media transcripts (whisper-base), cut as the stage cuts them
    "Hello and welcome to Lion400M, an open data set of clip filtered 400 million image text pairs. "
    "Actually 413 million image text pairs. We went to common crawl and looked for all the image "
    "URLs in it, where we also have an alternative text.",
    "Hello, this is an example video for your convenience and pleasure. You are allowed to use this "
    "voice for any purpose, including commercial uses. On the bottom right you can see the time.",
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for "
    "your country.",
    "Okay, well, I think we're ready to begin. My name's Adam Diggard. We're here because of real "
    "reaction. We have in the group.",
    "put it on the desk, all I see is the desk top. No, on the desktop you'll find, you should find "
    "that there's a project documents link, well, actually just there.",
    "She had a dark suit and greasy washwater all year.",
    "Hello. Oh, hello. I didn't know you were there. Okay, I thought, you know, I heard of deep. "
    "This is Diane in New Jersey.",
    "And then we calculated the image and text embeddings with CLIP and kept only the pairs whose "
    "similarity was high enough.",
]


def requests(n: int):
    from mmcurate.quality.scorers.rephrase_guards import count_tokens
    from mmcurate.transforms.rephrase import RephraseConfig, load_style

    styles = RephraseConfig().styles
    out = []
    for i in range(n):
        p = PASSAGES[i % len(PASSAGES)]
        st = load_style(styles[i % len(styles)])
        out.append((st.messages(p), st.max_tokens(count_tokens(p)), st.temperature, st.repeat_penalty))
    return out


def timed(gen, reqs, workers: int) -> tuple[float, int, list]:
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=workers) as ex:
        outs = list(ex.map(lambda r: gen.generate(*r), reqs))
    dt = time.perf_counter() - t0
    return dt, sum(o.completion_tokens or 0 for o in outs), outs


def bench_embedded(n: int, conc: int) -> dict:
    from mmcurate.transforms.rephrase_backends import EmbeddedGenerator

    reqs = requests(n)
    one = EmbeddedGenerator("smollm2-135m-instruct", parallel=1)
    timed(one, reqs[:1], 1)  # warm-up
    t1, k1, _ = timed(one, reqs, 1)
    del one
    many = EmbeddedGenerator("smollm2-135m-instruct", parallel=conc)
    timed(many, reqs[:1], 1)
    tn, kn, _ = timed(many, reqs, conc)
    return {"requests": n, "tokens_1": k1, "seconds_1": round(t1, 2), "tok_s_1": round(k1 / t1, 1),
            "tokens_n": kn, "seconds_n": round(tn, 2), "tok_s_n": round(kn / tn, 1),
            "concurrency": conc, "speedup_tok_s": round((kn / tn) / (k1 / t1), 2)}


def bench_server(n: int, conc: int) -> dict:
    from mmcurate.transforms.rephrase_backends import OpenAIChatClient

    server = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "rephrase_server.py")
    proc = subprocess.Popen([sys.executable, server,
                             "--parallel", str(conc)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().split()[-1] + "/v1"
        c = OpenAIChatClient(url, "smollm2-135m-instruct", timeout_s=600, retries=0)
        reqs = requests(n)
        timed(c, reqs[:1], 1)
        t1, k1, o1 = timed(c, reqs, 1)
        tn, kn, on = timed(c, reqs, conc)
        errors = sum(1 for o in o1 + on if o.error)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"requests": n, "seconds_1": round(t1, 2), "tok_s_1": round(k1 / t1, 1),
            "seconds_n": round(tn, 2), "tok_s_n": round(kn / tn, 1), "concurrency": conc,
            "speedup_wall": round(t1 / tn, 2), "speedup_tok_s": round((kn / tn) / (k1 / t1), 2),
            "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--json")
    a = ap.parse_args()
    res = {"embedded": bench_embedded(a.passages, a.concurrency),
           "server": bench_server(a.passages, a.concurrency),
           "load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
