"""MinHash dedup benchmark: a generated corpus with planted near-duplicates at known Jaccard
levels; precision and recall for pairs at Jaccard >= 0.8; throughput and peak memory of
mmcurate's dedup stage (Beam, DirectRunner's FnApiRunner, one worker) against datatrove 0.10.1's
MinHash pipeline (signatures -> buckets -> clusters, one task, one worker) on the same corpus,
in the same command; and a bands x rows sweep (the measured curve behind the defaults).

    .venv/bin/python bench/bench_dedup.py                    # 100k docs, defaults, datatrove
    .venv/bin/python bench/bench_dedup.py --docs 20000 --sweep
    .venv/bin/python bench/bench_dedup.py --faiss 100000     # FAISS stage time for 100k vectors

datatrove runs from a separate venv (`--datatrove-python`, default .venv-datatrove/bin/python;
`make bench-dedup` creates it from bench/requirements-datatrove.txt) because datatrove 0.10.1
requires huggingface-hub >= 1.6 and this project's transformers pin needs < 1.0.

Corpus: words drawn from a 30,000-word Zipf vocabulary, 60-200 words per document, already
normalised (lower case, no punctuation) so both systems see the same 5-grams. A share
`--dup-share` of the documents are copies of another document with m scattered words replaced,
m uniform in [0, len/8]: their exact 5-gram Jaccard with the original spans ~0.25-1.0 and is
computed exactly (the ground truth). A predicted pair is two documents in one cluster; truth:
planted pairs with Jaccard >= 0.8 (random documents share no 5-gram: checked, 0 pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------------------- the corpus


def vocabulary(n: int, rng) -> list[str]:
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "da", "fo", "gu", "ha", "je",
            "ki", "po", "qu", "ze", "wa", "yo", "an", "el", "in", "or", "us"]
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(syll, size=rng.integers(2, 5))))
    return sorted(words)


def shingle_set(words: list[str], n: int = 5) -> set:
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def make_corpus(n_docs: int, dup_share: float, seed: int = 0):
    """(texts, planted {(i, j): jaccard}) with i < j."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(30000, rng)
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    n_dups = int(n_docs * dup_share)
    n_base = n_docs - n_dups
    docs: list[list[str]] = []
    for _ in range(n_base):
        L = int(rng.integers(60, 201))
        docs.append([vocab[k] for k in rng.choice(len(vocab), size=L, p=p)])
    planted = {}
    for _ in range(n_dups):
        src = int(rng.integers(0, n_base))
        words = list(docs[src])
        m = int(rng.integers(0, len(words) // 8 + 1))
        for pos in rng.choice(len(words), size=m, replace=False):
            words[pos] = vocab[int(rng.integers(0, len(vocab)))]
        j = len(docs)
        docs.append(words)
        planted[(src, j)] = jaccard(shingle_set(docs[src]), shingle_set(words))
    # copies of one source are planted pairs with each other too
    by_src: dict[int, list[int]] = {}
    for (a, b) in list(planted):
        by_src.setdefault(a, []).append(b)
    for a, copies in by_src.items():
        for x in range(len(copies)):
            for y in range(x + 1, len(copies)):
                i, j = copies[x], copies[y]
                planted[(i, j)] = jaccard(shingle_set(docs[i]), shingle_set(docs[j]))
    order = rng.permutation(len(docs))  # copies are not next to their sources
    pos = {int(old): new for new, old in enumerate(order)}
    texts = [" ".join(docs[int(old)]) for old in order]
    planted = {tuple(sorted((pos[a], pos[b]))): j for (a, b), j in planted.items()}
    return texts, planted


def write_jsonl(texts: list[str], path: str) -> None:
    with open(path, "w") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": str(i), "text": t}) + "\n")


def pairs_of(clusters: dict[int, object]) -> set:
    groups: dict[object, list[int]] = {}
    for doc, c in clusters.items():
        groups.setdefault(c, []).append(int(doc))
    out = set()
    for members in groups.values():
        members.sort()
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                out.add((members[x], members[y]))
    return out


def score(clusters: dict, planted: dict, threshold: float = 0.8) -> dict:
    truth = {pq for pq, j in planted.items() if j >= threshold}
    pred = pairs_of(clusters)
    tp = len(pred & truth)
    return {"pairs_true": len(truth), "pairs_predicted": len(pred), "tp": tp,
            "precision": tp / len(pred) if pred else 1.0, "recall": tp / len(truth) if truth else 1.0}


# ------------------------------------------------------------------------------- mmcurate


READ_RANGE = 8 << 20  # bytes of the corpus per read task


def _read_range(rng: tuple[str, int, int]):
    """The lines of `path` that start in [start, end)."""
    path, start, end = rng
    with open(path, "rb") as fh:
        if start:
            fh.seek(start - 1)
            fh.readline()  # the rest of the line holding byte start - 1: the previous range's
        while fh.tell() < end:
            line = fh.readline()
            if not line:
                break
            yield line.decode()


DASK_MEMORY = {"distributed.worker.memory.target": 0.4, "distributed.worker.memory.spill": 0.5,
               "distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False}


def run_ours(corpus: str, bands: int, rows: int, verify: str, threshold: float,
             runner: str = "fnapi", dask_workers: int = 2, dask_memory: str = "2GiB",
             dask_partitions: int = 0) -> dict:
    """mmcurate's `Deduplicate` over the corpus. runner "fnapi": Beam's FnApiRunner in this
    process (every shuffle held in its memory); "dask": mmcurate's DaskRunner on a
    dask.distributed LocalCluster of `dask_workers` worker processes (one thread each) with
    `dask_memory` each, which spill to disk as they fill; `dask_partitions` (0: the runner's
    default, 4 per worker thread) bag partitions after each shuffle."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from mmcurate.schemas.records import SourceRecord, Transcript
    from mmcurate.transforms.dedup import Deduplicate
    from mmcurate.transforms.dedup_config import DedupConfig

    cfg = DedupConfig(methods=("minhash",), bands=bands, rows=rows, verify=verify,
                      jaccard_threshold=threshold)
    out_path = corpus + ".ours.json"

    def records(line):
        d = json.loads(line)
        sid = f"{int(d['id']):020d}"
        yield beam.pvalue.TaggedOutput("s", SourceRecord(
            sid, sid, sid, sid, "file", "audio", None, None, None, 1.0, None, None, 1, 1.0, 1.0, {}, "b"))
        yield Transcript(sid, d["text"], None, None, 1, 1, 0, 1.0, None, None, "b")

    def save(rows_):
        with open(out_path, "w") as fh:
            json.dump({str(int(r.item_id)): r.cluster_id for r in rows_}, fh)

    cluster = None
    if runner == "dask":
        import dask
        from dask.distributed import LocalCluster

        from mmcurate.pipelines.dask_runner import DaskRunner

        # spill to disk from 40 % of the limit and never pause or restart a worker: a paused
        # worker (Dask's default at 80 %) holding a shuffle's only copy stalled a 1M run, and
        # a restarted one recomputed its share (bench/README.md)
        with dask.config.set(DASK_MEMORY):
            cluster = LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                                   memory_limit=dask_memory, dashboard_address=None)
        flags = [f"--dask_client_address={cluster.scheduler_address}"]
        if dask_partitions:
            flags.append(f"--dask_npartitions={dask_partitions}")
        pipeline = beam.Pipeline(runner=DaskRunner(), options=PipelineOptions(flags))
    else:
        pipeline = beam.Pipeline(runner=FnApiRunner())
    # the corpus is read in byte ranges made by a Create, not by ReadFromText: Beam 2.77's
    # DaskRunner has no translation for a Read (its bag is None: "'NoneType' object has no
    # attribute 'map'"), and mmcurate's own graphs start from a Create as well
    size = os.path.getsize(corpus)
    ranges = [(corpus, start, min(size, start + READ_RANGE)) for start in range(0, size, READ_RANGE)]
    t0 = time.perf_counter()
    with pipeline as p:
        recs = (p | "Ranges" >> beam.Create(ranges) | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.FlatMap(_read_range)
                | "Records" >> beam.FlatMap(records).with_outputs("s", main="t"))
        out = {"sources": recs.s, "transcripts": recs.t} | "Dedup" >> Deduplicate(
            cfg, "bench", "bench", decode_media=False)
        _ = out["dedup_clusters"] | beam.combiners.ToList() | beam.Map(save)
    seconds = time.perf_counter() - t0  # CPU: the --measure parent's, of every process
    if cluster is not None:
        cluster.close()
    with open(out_path) as fh:
        clusters = json.load(fh)
    return {"seconds": seconds, "clusters": clusters}


def child(cmd: list[str]) -> tuple[dict, float]:
    """Run a measurement in a child process: its JSON result and its peak RSS (MiB)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # noqa: F841 (accumulates; use wait4 below)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {err[-2000:]}")
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    res = json.loads(line)
    return res, res.get("peak_rss_mib", float("nan"))


class _TreeRss:
    """Samples the summed RSS of a process and all its descendants every 0.2 s (wait4's
    ru_maxrss is the largest single process: a Dask cluster is several)."""

    def __init__(self, pid: int):
        import threading

        import psutil

        self.peak, self._done = 0, threading.Event()
        self._root = psutil.Process(pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._done.wait(0.2):
            total = 0
            try:
                for proc in [self._root, *self._root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def measured(argv: list[str]) -> list[str]:
    """A command that runs argv and appends its own peak RSS to its JSON line."""
    return [sys.executable, os.path.join(HERE, "bench_dedup.py"), "--measure", "--", *argv]


# ------------------------------------------------------------------------------- sweep


def sweep(texts: list[str], planted: dict, grid: list[tuple[int, int]]) -> list[dict]:
    """LSH candidate recall for pairs at J >= 0.8 and the share of lower-Jaccard planted pairs
    that become candidates, per bands x rows (signatures of 512 permutations, first b*r used);
    precision after verification: exact -> 1.0 by construction; estimate -> measured."""
    from mmcurate.transforms.dedup_minhash import MinHasher, band_keys, estimated_jaccard

    h = MinHasher(512, 1, 5)
    docs = sorted({d for pq in planted for d in pq})
    sig = {d: h.signature(texts[d])[0] for d in docs}
    rows_out = []
    pos = [(pq, j) for pq, j in planted.items() if j >= 0.8]
    neg = [(pq, j) for pq, j in planted.items() if j < 0.8]
    for b, r in grid:
        def cand(pq):
            ka, kb = band_keys(sig[pq[0]], b, r), band_keys(sig[pq[1]], b, r)
            return any(x == y for x, y in zip(ka, kb))
        cpos = [cand(pq) for pq, _ in pos]
        cneg = [cand(pq) for pq, _ in neg]
        # "estimate" verification at 0.8 on the first b*r permutations
        est_tp = sum(1 for (pq, _), c in zip(pos, cpos) if c and estimated_jaccard(sig[pq[0]][:b * r], sig[pq[1]][:b * r]) >= 0.8)
        est_fp = sum(1 for (pq, _), c in zip(neg, cneg) if c and estimated_jaccard(sig[pq[0]][:b * r], sig[pq[1]][:b * r]) >= 0.8)
        rows_out.append({
            "bands": b, "rows": r, "perm": b * r, "s_curve_mid": round((1 / b) ** (1 / r), 3),
            "lsh_recall": round(sum(cpos) / max(1, len(pos)), 4),
            "neg_candidates": round(sum(cneg) / max(1, len(neg)), 4),
            "unverified_precision": round(sum(cpos) / max(1, sum(cpos) + sum(cneg)), 4),
            "estimate_precision": round(est_tp / max(1, est_tp + est_fp), 4),
            "estimate_recall": round(est_tp / max(1, len(pos)), 4),
        })
    return rows_out


# ------------------------------------------------------------------------------- FAISS


def _faiss_vectors(chunk: int, n: int, k: int, size: int):
    """Vectors chunk*size .. of the FAISS corpus, made where they are used (a Create of 100k
    vectors would pickle 150 MB into the pipeline: that, not FAISS, was most of the first
    measurement): vector i is drawn from seed i; the last k are copies of the first k plus noise
    (cosine ~0.985 with their originals)."""
    def unit(i):
        return np.random.default_rng(i).normal(size=384).astype(np.float32)

    for i in range(chunk * size, min(n, (chunk + 1) * size)):
        v = unit(i)
        if i >= n - k:
            v = unit(i - (n - k)) + np.random.default_rng([i, 1]).normal(scale=0.03, size=384).astype(np.float32)
        v /= np.linalg.norm(v)
        yield (1, "", 0.0, 0.0, 0, 0.0, "transcript", f"{i:08d}"), v.tobytes()


def bench_faiss(n: int, threshold: float = 0.95) -> dict:
    """SemanticPairs (partitioned FAISS range search) over n random unit vectors with planted
    near-copies (1%), through Beam: wall time of the pipeline, distinct pairs found, recall of
    the planted ones."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from mmcurate.transforms.dedup_config import DedupConfig
    from mmcurate.transforms.dedup_semantic import SemanticPairs

    k, size = n // 100, 5000
    cfg = DedupConfig(semantic_threshold=threshold)
    out = tempfile.mktemp(prefix="bench-faiss-")

    def summary(pairs):
        pairs = set(pairs)
        planted = sum(1 for a, b in pairs if int(b) - int(a) == n - k and int(a) < k)
        return json.dumps({"pairs": len(pairs), "planted_found": planted})

    t0 = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p | beam.Create(list(range(-(-n // size)))) | beam.Reshuffle()
             | beam.FlatMap(_faiss_vectors, n, k, size)
             | SemanticPairs(cfg)
             | beam.Map(lambda kv: (kv[0][1][7], kv[0][2][7])) | beam.combiners.ToList()
             | beam.Map(lambda ps: open(out, "w").write(summary(ps))))
    seconds = time.perf_counter() - t0
    got = json.loads(open(out).read())
    os.unlink(out)
    return {"vectors": n, "seconds": round(seconds, 2), "pairs": got["pairs"], "planted": k,
            "planted_recall": round(got["planted_found"] / k, 4),
            "partitions": "flat" if n <= cfg.semantic_flat_max else
            f"~{-(-n // cfg.semantic_partition_size)} k-means, each vector indexed in 1, searched in {cfg.semantic_assign}"}


# ------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--dup-share", type=float, default=0.1)
    ap.add_argument("--bands", type=int, default=None)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--faiss", type=int, default=0, metavar="N")
    ap.add_argument("--datatrove-python", default=os.path.join(ROOT, ".venv-datatrove", "bin", "python"))
    ap.add_argument("--no-datatrove", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--runner", choices=["fnapi", "dask"], default="fnapi",
                    help="mmcurate's runner: Beam's FnApiRunner in one process (default), or "
                         "mmcurate's DaskRunner on a LocalCluster (--dask-workers processes)")
    ap.add_argument("--dask-workers", type=int, default=2)
    ap.add_argument("--dask-memory", default="2GiB", help="memory limit per Dask worker; it spills beyond")
    ap.add_argument("--dask-partitions", type=int, default=0,
                    help="bag partitions after a shuffle (0: 4 per worker thread)")
    # internal: child processes
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--verify", default=None, help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    from mmcurate.transforms.dedup_config import DedupConfig

    d = DedupConfig()
    bands, rows = a.bands or d.bands, a.rows or d.rows

    if a.measure:  # run the command, report its JSON plus its own peak RSS
        # output to files, not pipes: wait4 does not read them, and a child that logs more than
        # a pipe holds (64 KiB: Beam's logs on 100k documents) would block writing, forever
        with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
            proc = subprocess.Popen(a.rest, stdout=fo, stderr=fe, text=True)
            tree = _TreeRss(proc.pid)
            _, status, ru = os.wait4(proc.pid, 0)
            tree.stop()
            fo.seek(0), fe.seek(0)
            out, err = fo.read(), fe.read()
        if status != 0:
            sys.stderr.write(err[-3000:])
            return 1
        res = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
        res["peak_rss_mib"] = ru.ru_maxrss / 1024.0  # the largest single process
        res["peak_tree_rss_mib"] = tree.peak / 2**20  # all its processes together (sampled)
        res["cpu_s_all"] = ru.ru_utime + ru.ru_stime  # with every descendant it reaped
        print(json.dumps(res))
        return 0
    if a.worker == "ours":
        print(json.dumps(run_ours(a.corpus, bands, rows, a.verify or d.verify, d.jaccard_threshold,
                                  a.runner, a.dask_workers, a.dask_memory, a.dask_partitions)))
        return 0

    results: dict = {"config": {"bands": bands, "rows": rows, "shingle": d.shingle_size,
                                "verify": d.verify, "jaccard_threshold": d.jaccard_threshold}}
    if a.faiss:
        results["faiss"] = bench_faiss(a.faiss)
        print(json.dumps(results["faiss"]))
    if a.docs:
        t0 = time.perf_counter()
        texts, planted = make_corpus(a.docs, a.dup_share)
        js = sorted(planted.values())
        print(f"corpus: {len(texts)} docs, {len(planted)} planted pairs, "
              f"{sum(j >= 0.8 for j in js)} at J >= 0.8 (generated in {time.perf_counter() - t0:.1f} s)")
        with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
            corpus = os.path.join(tmp, "corpus.jsonl")
            write_jsonl(texts, corpus)
            n_texts = len(texts)
            if not a.sweep:  # the harness keeps only the ground truth while the systems run
                del texts
            rows_ = []
            ours, rss = child(measured([sys.executable, os.path.join(HERE, "bench_dedup.py"),
                                        "--worker", "ours", "--corpus", corpus, "--bands", str(bands),
                                        "--rows", str(rows), "--runner", a.runner,
                                        "--dask-workers", str(a.dask_workers),
                                        "--dask-memory", a.dask_memory,
                                        "--dask-partitions", str(a.dask_partitions)]))
            s = score(ours["clusters"], planted)
            where = ("FnApiRunner, 1 process" if a.runner == "fnapi" else
                     f"DaskRunner, {a.dask_workers} workers x 1 thread, {a.dask_memory} each, "
                     f"{a.dask_partitions or 4 * a.dask_workers} partitions")
            rows_.append({"system": f"mmcurate dedup (Beam {where}, {bands}x{rows}, {d.verify} verify)",
                          "seconds": round(ours["seconds"], 1), "docs_per_s": round(n_texts / ours["seconds"]),
                          "cpu_s": round(ours["cpu_s_all"], 1), "peak_rss_mib": round(rss),
                          "peak_tree_rss_mib": round(ours["peak_tree_rss_mib"]), **s})
            if not a.no_datatrove:
                if not os.path.exists(a.datatrove_python):
                    print(f"datatrove: {a.datatrove_python} not found (make bench-dedup creates it)")
                else:
                    dt, rss = child(measured([a.datatrove_python, os.path.join(HERE, "_datatrove_minhash.py"),
                                              corpus, os.path.join(tmp, "dt"), "14", "8", "5"]))
                    s = score({int(k): v for k, v in dt["clusters"].items()}, planted)
                    rows_.append({"system": "datatrove 0.10.1 MinHash (14x8, no verification)",
                                  "seconds": round(dt["seconds"], 1), "docs_per_s": round(n_texts / dt["seconds"]),
                                  "cpu_s": round(dt["cpu_s_all"], 1), "peak_rss_mib": round(rss),
                                  "peak_tree_rss_mib": round(dt["peak_tree_rss_mib"]), **s})
            results["runs"] = rows_
            results["harness_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            print(f"harness (corpus and ground truth, not a system under test): peak RSS "
                  f"{results['harness_peak_rss_mib']} MiB")
            for r in rows_:
                print(json.dumps(r))
            if len(rows_) == 2:
                results["throughput_ratio_vs_datatrove"] = round(rows_[0]["docs_per_s"] / rows_[1]["docs_per_s"], 3)
                print(f"throughput ratio mmcurate / datatrove: {results['throughput_ratio_vs_datatrove']}")
        if a.sweep:
            grid = [(b, r) for r in (4, 5, 6, 8, 10) for b in (8, 9, 10, 12, 14, 16, 20, 25, 32)
                    if b * r <= 512]
            results["sweep"] = sweep(texts, planted, grid)
            for r in results["sweep"]:
                print(json.dumps(r))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
