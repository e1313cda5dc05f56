"""The dedup stage: exact, MinHash-LSH, connected components, the representative rule, ledger
rows and determinism (fast, fake records); audio and video fingerprints on real media; the
cross-run index (a second run drops repeats of the first without its media); the corpus path
(stored fingerprints, media never opened)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import apache_beam as beam
import duckdb
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from mmcurate.schemas.records import Rejection, SourceRecord, Transcript
from mmcurate.transforms import fingerprint as fp
from mmcurate.transforms.components import ConnectedComponents
from mmcurate.transforms.dedup import Deduplicate
from mmcurate.transforms.dedup_config import DedupConfig
from mmcurate.transforms.dedup_lsh import bucket_pairs
from mmcurate.transforms.dedup_minhash import MinHasher, exact_jaccard, normalize_text, shingles
from mmcurate.transforms.dedup_nodes import node_is_new, node_of

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
FAST = ("sha256", "text_hash", "minhash", "embedding")


# ----------------------------------------------------------------------------------- fakes


def _src(sid: str, dur: float = 10.0, sr: int = 16000, ch: int = 1, size: int = 1000) -> SourceRecord:
    return SourceRecord(sid, sid * 3, f"/m/{sid}.wav", f"/m/{sid}.wav", "file", "audio", "wav",
                        "pcm_s16le", None, dur, sr, ch, size, dur, 1.0, {}, "run-t")


def _tr(sid: str, text: str) -> Transcript:
    return Transcript(sid, text, "en", 1.0, 1, 1, len(text.split()), 10.0, None, None, "run-t")


class FakeEmbedder:
    """Unit vectors seeded by the first three normalised words: texts that start alike are
    'semantically' identical (cosine 1), others ~orthogonal (384-d random)."""

    def embed(self, texts, batch_size=32):
        out = []
        for t in texts:
            key = " ".join(normalize_text(t).split()[:3])
            v = np.random.default_rng(int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)).normal(size=384)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32)


BASE = ("the quick brown fox jumps over the lazy dog while the cat watches from the old wooden "
        "fence and the sun sets slowly behind the distant hills of the quiet valley tonight")
SID = {k: k * 20 for k in "abcdef"}
SOURCES = [_src(SID["a"]), _src(SID["b"], dur=12.0), _src(SID["c"]), _src(SID["d"]),
           _src(SID["e"]), _src(SID["f"])]
TRANSCRIPTS = [
    _tr(SID["a"], BASE),
    _tr(SID["b"], "[spk0] " + BASE.upper() + "!"),  # exact after normalisation; longer source
    _tr(SID["c"], "a" + BASE[3:]),  # the first word changed: J = 27/29
    _tr(SID["d"], "completely different words about something else entirely and more of them"),
    _tr(SID["e"], "alpha beta gamma one two three four five six seven eight nine ten"),
    _tr(SID["f"], "alpha beta gamma eleven twelve thirteen fourteen fifteen sixteen"),  # 'semantic'
]


def _dedup(p, cfg=None):
    cfg = cfg or DedupConfig(methods=FAST)
    return ({"sources": p | "S" >> beam.Create(SOURCES), "transcripts": p | "T" >> beam.Create(TRANSCRIPTS)}
            | Deduplicate(cfg, "run-t", "run-t", decode_media=False, embedder=FakeEmbedder()))


# ------------------------------------------------------------------------------ unit tests


def test_shingles_and_exact_jaccard_match_python_sets():
    h = MinHasher(128, 1, 5)
    a = normalize_text(BASE)
    b = normalize_text(BASE.replace("tonight", "today").replace("quick", "slow"))
    sa, sb = set(shingles(a, 5)), set(shingles(b, 5))
    want = len(sa & sb) / len(sa | sb)
    (va, ha), (vb, hb) = h.signature(a), h.signature(b)
    assert ha.size == len(sa) and hb.size == len(sb)
    assert exact_jaccard(ha, hb) == pytest.approx(want)
    assert float((va == vb).mean()) == pytest.approx(want, abs=0.15)  # MinHash estimate
    assert h.signature("") is None
    assert shingles("two words", 5) == [b"two words"]


def test_ascii_fast_path_normalises_as_the_unicode_path():
    from mmcurate.transforms.dedup_minhash import _normalize_unicode

    rng = np.random.default_rng(5)
    alphabet = [chr(c) for c in range(128)] + ["[spk0]", "[SPK12]", "  ", "Word"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 40))))
        assert normalize_text(text) == _normalize_unicode(text), repr(text)
    assert normalize_text("[spk0] Hello,  WORLD!\x1f ok_1") == "hello world ok_1"


def test_vectorised_minhash_is_datasketchs():
    """MinHasher.minhash must give datasketch's affine32 values bit for bit: signatures in the
    cross-run index were made by it and must stay comparable."""
    from datasketch import MinHash

    h = MinHasher(128, 1, 5)
    rng = np.random.default_rng(3)
    for n in (1, 7, 300):
        values = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
        m = MinHash(num_perm=128, seed=1, scheme="affine32", hashfunc=lambda x: x)
        m.update_batch(values.tolist())
        assert np.array_equal(h.minhash(values), np.asarray(m.hashvalues, np.uint32))
    words = normalize_text(BASE).split()
    assert np.array_equal(h.shingle_hashes(" ".join(words)), h.shingle_hashes(" ".join(words)))  # cached path


def test_compiled_signatures_are_the_numpy_ones():
    """The numba kernel (the default path) and the numpy reference give the same values and
    distinct shingle hashes, dtype included, for texts of 1 word to far more than n."""
    h, ref = MinHasher(128, 1, 5), MinHasher(128, 1, 5, jit=False)
    assert h._kernel is not None, "numba is in the lock: the compiled path must be the one in use"
    rng = np.random.default_rng(11)
    vocab = [f"w{i}" for i in range(40)]  # a small vocabulary: repeated shingles
    texts = [" ".join(rng.choice(vocab, size=n)) for n in (1, 2, 4, 5, 6, 9, 50, 400) for _ in range(5)]
    texts += [normalize_text(BASE), "a a a a a a a a"]
    for t in texts:
        (va, ha), (vb, hb) = h.signature(t), ref.signature(t)
        assert va.dtype == vb.dtype == np.uint32 and ha.dtype == hb.dtype == np.uint32
        assert np.array_equal(va, vb) and np.array_equal(ha, hb), t
        assert np.array_equal(vb, ref.minhash(ref.shingle_hashes(t)))  # datasketch's, above
    assert h.signature("") is None and ref.signature("") is None


def test_representative_rule_orders_nodes():
    from mmcurate.transforms.dedup_nodes import make_signature, source_info

    def sig(sid, dur, sr=16000, ch=1, size=100, part="p"):
        return make_signature("source", sid, "sha256", source_info(_src(sid, dur, sr, ch, size)),
                              b"x", dur, part, "r")

    new_long = node_of(sig("z", 20.0), new=True)
    new_short = node_of(sig("a", 10.0), new=True)
    hifi = node_of(sig("y", 10.0, sr=44100, ch=2), new=True)
    bigger = node_of(sig("x", 10.0, size=500), new=True)
    old = node_of(sig("q", 1.0, part="2026-01-01"), new=False)
    older = node_of(sig("r", 1.0, part="2025-12-31"), new=False)
    assert min(new_long, new_short) == new_long  # longest source first
    assert min(hifi, new_short) == hifi  # then fidelity
    assert min(bigger, new_short) == bigger  # then bytes
    assert min(node_of(sig("b", 10.0), True), new_short) == new_short  # then id
    assert min(new_long, old, older) == older  # curated before: earliest partition first

    def mix(kind, sid, dur, part="p"):
        return make_signature(kind, sid, "minhash", source_info(_src(sid, dur)), b"x", dur, part, "r")

    # a synthetic text-mix row ranks after every natural one, curated before or not
    old_syn = node_of(mix("synthetic", "s", 99.0, part="2025-01-01"), new=False)
    new_passage = node_of(mix("passage", "p", 1.0), new=True)
    assert min(old_syn, new_passage) == new_passage
    assert not node_is_new(old_syn) and node_is_new(node_of(mix("synthetic", "t", 1.0), new=True))


def test_bucket_pairs_all_star_and_index_pairs_skipped():
    n = lambda i, new=True: (1 if new else 0, "" if new else "p", 0.0, 0.0, 0, 0.0, "t", f"{i:03d}")  # noqa: E731
    assert len(list(bucket_pairs([n(i) for i in range(5)], 32))) == 10
    star = list(bucket_pairs([n(i) for i in range(40)], 32))
    assert len(star) == 39 and all(a == n(0) for a, _ in star)
    assert list(bucket_pairs([n(1, False), n(2, False)], 32)) == []  # decided by earlier runs


def test_compact_lsh_shards_give_every_bucket_pair():
    """The LSH shuffle carries hashed keys and pickled nodes; grouped back, a shard yields the
    pairs of exactly the buckets a plain dictionary of (key -> nodes) has."""
    from mmcurate.transforms.dedup import _pairs_from_shard, _shard_keys
    from mmcurate.transforms.dedup_lsh import lsh_keys

    cfg = DedupConfig(methods=("minhash",), bands=16, rows=8, lsh_shards=4)
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(400)]
    texts = [" ".join(rng.choice(words, 60)) for _ in range(120)]
    texts += [t.replace(t.split()[5], "changed", 1) for t in texts[:40]]  # near-duplicates
    texts += texts[:10]  # exact copies
    hasher = MinHasher(cfg.num_perm)
    views = []
    for i, t in enumerate(texts):
        node = (1, "", -1.0, -1.0, -1, -float(len(t)), "transcript", f"{i:05d}")
        views.append((node, "minhash", MinHasher.pack(*hasher.signature(normalize_text(t)))))
    want = set()
    buckets: dict = {}
    for node, m, sig in views:
        for k in lsh_keys(m, sig, cfg):
            buckets.setdefault(k, []).append(node)
    for nodes in buckets.values():
        want |= {("minhash", a, b) for a, b in bucket_pairs(nodes, 32)}
    shards: dict = {}
    for batch in (views[:70], views[70:]):  # two batches: two parts per shard
        for shard, part in _shard_keys(batch, cfg):
            assert part[0].dtype == np.uint64 and isinstance(part[1], bytes)
            shards.setdefault(shard, []).append(part)
    got = [p for kv in shards.items() for p in _pairs_from_shard(kv, 32)]
    assert len(want) > 50 and set(got) == want


@pytest.mark.parametrize("rounds", [1, 8])
def test_connected_components_min_label(rounds):
    chain = [(f"c{i:02d}", f"c{i + 1:02d}") for i in range(30)]  # one long path
    tri = [("t1", "t2"), ("t2", "t3"), ("t3", "t1")]
    want = [(f"c{i:02d}", "c00") for i in range(31)] + [(x, "t1") for x in ("t1", "t2", "t3")]
    with TestPipeline() as p:
        out = p | beam.Create(chain[::-1] + tri) | ConnectedComponents(rounds)
        assert_that(out, equal_to(want))  # 1 round cannot converge: the residual union-find does


def _semantic_pairs(items, cfg, path: Path) -> set:
    import json

    from mmcurate.transforms.dedup_semantic import SemanticPairs

    with TestPipeline() as p:
        _ = (p | beam.Create(items) | SemanticPairs(cfg)
             | beam.Map(lambda kv: (kv[0][1][7], kv[0][2][7])) | beam.Distinct()
             | beam.combiners.ToList() | beam.Map(lambda l: path.write_text(json.dumps(sorted(l)))))
    return {tuple(pq) for pq in json.loads(path.read_text())}


def test_partitioned_semantic_search_finds_the_flat_search_pairs(tmp_path):
    """k-means partitions (each vector indexed in its nearest, searched in its 2 nearest) find
    every pair one flat index finds, on clustered vectors (6 clusters, 7 partitions: pairs straddle
    partition boundaries)."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(6, 32))
    x = centres[rng.integers(0, 6, size=400)] + rng.normal(scale=0.3, size=(400, 32))
    x[380:] = x[:20] + rng.normal(scale=0.05, size=(20, 32))  # 20 planted near-copies
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    items = [((1, "", 0.0, 0.0, 0, 0.0, "transcript", f"{i:04d}"), x[i].tobytes()) for i in range(400)]
    flat = _semantic_pairs(items, DedupConfig(semantic_threshold=0.93), tmp_path / "flat")
    parts = _semantic_pairs(items, DedupConfig(semantic_threshold=0.93, semantic_flat_max=50,
                                               semantic_partition_size=60, semantic_train_size=400),
                            tmp_path / "parts")
    print(f"[semantic] flat {len(flat)} pairs, partitioned {len(parts)}")
    planted = {(f"{i:04d}", f"{i + 380:04d}") for i in range(20)}
    # seeded data and k-means: here all of them (searched in 1 partition only: 40 of 2872 lost)
    assert planted <= flat and parts == flat, (len(parts), len(flat))


@pytest.mark.slow  # seconds (a fresh process or a real model): out of the fast tier
def test_the_embedding_model_runs_on_the_threads_it_is_given():
    """dedup.semantic_threads (cores / workers on the local runner) caps torch's threads in the
    worker that embeds: two worker processes on torch's default threads each took 0.4-0.9 s per
    embedding call on 2 cores, 20-40x one alone. In a fresh process: torch's threads are global."""
    import subprocess
    import sys

    code = ("import torch\n"
            "from mmcurate.transforms.dedup_config import DedupConfig\n"
            "from mmcurate.transforms.dedup_signatures import EmbedTranscripts\n"
            "before = torch.get_num_threads()\n"
            "fn = EmbedTranscripts(DedupConfig(semantic_threads=1))\n"
            "fn.setup()\n"
            "v = fn.model.embed(['the same words'], 8)\n"
            "print(before, torch.get_num_threads(), v.shape[1])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, dim = map(int, out.stdout.split())
    assert after == 1 and dim == 384 and before >= 1


def test_config_rules():
    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.schemas.params import ConfigError

    assert "dedup" in CurateConfig().stages
    with pytest.raises(ConfigError) as e:
        CurateConfig.from_dict({"dedup": {"partition": "a/b", "methods": ["nope"], "verify": "x"}})
    text = str(e.value)
    assert "dedup.partition" in text and "dedup.methods" in text and "dedup.verify" in text


# ------------------------------------------------------------------- the stage on fake rows


def _capture(pcoll, path: Path, label: str):
    """Write a PCollection's elements to `path` (pickled list): results leave the pipeline
    through a file, not through a closure (Beam pickles closures)."""
    import pickle

    def save(xs):
        path.write_bytes(pickle.dumps(list(xs)))

    return pcoll | f"List{label}" >> beam.combiners.ToList() | f"Save{label}" >> beam.Map(save)


def _load(path: Path):
    import pickle

    return pickle.loads(path.read_bytes())


def _collect(tmp: Path, cfg=None):
    names = ("dedup_clusters", "rejected", "dedup_signatures")
    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = _dedup(p, cfg)
        for name in names:
            _capture(out[name], tmp / f"{name}.pkl", name)
    return {name: _load(tmp / f"{name}.pkl") for name in names}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return _collect(tmp_path_factory.mktemp("text1"))


def test_text_clusters_representative_and_ledger(text_run):
    clusters = {(r.kind, r.item_id): r for r in text_run["dedup_clusters"]}
    a, b, c, e, f = (clusters.get(("transcript", SID[k])) for k in "abcef")
    assert ("transcript", SID["d"]) not in clusters  # unrelated text: no row
    assert a and b and c and a.cluster_id == b.cluster_id == c.cluster_id
    assert b.is_representative and b.representative_id == SID["b"]  # the longest source
    assert (a.method, a.similarity) == ("text_hash", 1.0)
    assert c.method == "minhash" and c.similarity == pytest.approx(27 / 29, abs=1e-4)
    assert e.cluster_id == f.cluster_id and {e.method, f.method} == {"embedding"}
    ledger = {r.item_id: r for r in text_run["rejected"]}
    assert set(ledger) == {f"transcript:{SID[k]}" for k in "ac"} | {
        f"transcript:{r.item_id}" for r in (e, f) if not r.is_representative}
    assert ledger[f"transcript:{SID['a']}"].reason == "exact_duplicate"
    assert ledger[f"transcript:{SID['c']}"].reason == "near_duplicate"
    assert any(r.reason == "semantic_duplicate" for r in ledger.values())
    for r in ledger.values():
        assert r.stage == "dedup" and isinstance(r, Rejection)
        rep = clusters[("transcript", r.item_id.split(":", 1)[1])].representative_id
        assert rep in r.detail  # the ledger names the representative
    kinds = {(s.kind, s.method) for s in text_run["dedup_signatures"]}
    assert kinds == {("source", "sha256"), ("transcript", "text_hash"), ("transcript", "minhash"),
                     ("transcript", "embedding")}


@pytest.mark.slow  # seconds (a fresh process or a real model): out of the fast tier
def test_rerun_gives_the_same_clusters(text_run, tmp_path):
    again = _collect(tmp_path)
    key = lambda rows: sorted(r.to_row().items() for r in rows)  # noqa: E731
    assert key(again["dedup_clusters"]) == key(text_run["dedup_clusters"])
    assert key(again["rejected"]) == key(text_run["rejected"])


# ------------------------------------------------------------- fingerprints on real media


def _decoded(path: Path) -> np.ndarray:
    from mmcurate.transforms.decode import iter_audio

    return np.concatenate(list(iter_audio(str(path))))


def _write_wav(path: Path, x: np.ndarray, rate: int, channels: int) -> Path:
    import soundfile as sf

    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(str(path), data, rate)
    return path


def test_audio_fingerprint_across_rate_and_channels(tmp_path):
    from scipy.signal import resample_poly

    x = _decoded(MEDIA / "speech" / "jfk.wav")
    copy = _write_wav(tmp_path / "jfk-44k-stereo.wav", resample_poly(x, 441, 160).astype(np.float32), 44100, 2)
    a, b = fp.audio_fingerprint(x), fp.audio_fingerprint(_decoded(copy))
    al = fp.compare_audio(a, b)
    assert al is not None and al.similarity >= 0.9 and abs(al.offset_s) < 0.05
    other = fp.audio_fingerprint(_decoded(MEDIA / "diarization" / "sample.wav"))
    no = fp.compare_audio(a, other)
    assert no is None or no.similarity < 0.75
    assert set(fp.audio_keys(a)) & set(fp.audio_keys(b))  # LSH keys bring the pair together


def test_video_fingerprint_chair_pair_and_doorknob():
    nd = MEDIA / "neardup"
    c22, c19, door = (fp.video_fingerprint(str(nd / f)) for f in
                      ("chair-orig-22-sd-bar.mp4", "chair-19-sd-bar.mp4", "doorknob-hd-no-bar.mp4"))
    al = fp.compare_video(c22, c19)
    assert al is not None and al.similarity >= 0.6  # measured 0.89 (TMK's score: 0.95)
    for x in (c22, c19):
        no = fp.compare_video(x, door)
        assert no is None or no.similarity < 0.6


# ------------------------------------------------------ in-graph runs, cross-run index, corpus


def _run(inputs, out, stages, index, partition, methods=("sha256", "audio_fp", "video_fp", "phash")):
    from mmcurate.pipelines import curate
    from mmcurate.pipelines.config import CurateConfig

    cfg = CurateConfig.from_dict({"stages": list(stages), "dedup": {
        "methods": list(methods), "index_dir": str(index), "partition": partition}})
    return curate.run([str(i) for i in inputs], str(out), cfg,
                      test_pipeline=beam.Pipeline(runner=FnApiRunner()))


def _q(out: Path, sql: str):
    con = duckdb.connect()
    for t in ("sources", "dedup_clusters", "rejected", "dedup_signatures"):
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM '{out}/{t}/*.parquet'")
    return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run 1 (partition 2026-11-01): copies of jfk.wav/mp3/flac, sample.wav and a 22.05 kHz
    stereo copy of it. Its media are then deleted. Run 2 (2026-11-02): a new copy of jfk.wav's
    bytes, an 8 kHz re-encode of jfk, and LDC93S1 (new)."""
    from scipy.signal import resample_poly

    tmp = tmp_path_factory.mktemp("dedup")
    m1 = tmp / "media1"
    m1.mkdir()
    for f in ("jfk.wav", "jfk.mp3", "jfk.flac"):
        shutil.copy(MEDIA / "speech" / f, m1 / f)
    shutil.copy(MEDIA / "diarization" / "sample.wav", m1 / "sample.wav")
    x = _decoded(MEDIA / "diarization" / "sample.wav")
    _write_wav(m1 / "sample-22k-stereo.wav", resample_poly(x, 441, 320).astype(np.float32), 22050, 2)
    index = tmp / "index"
    run1 = _run([m1], tmp / "out1", ("vad", "dedup"), index, "2026-11-01")
    m2 = tmp / "media2"
    m2.mkdir()
    shutil.copy(MEDIA / "speech" / "jfk.wav", m2 / "jfk-again.wav")
    _write_wav(m2 / "jfk-8k.wav", resample_poly(_decoded(MEDIA / "speech" / "jfk.wav"), 1, 2).astype(np.float32), 8000, 1)
    shutil.copy(MEDIA / "speech" / "LDC93S1.wav", m2 / "LDC93S1.wav")
    shutil.rmtree(m1)  # run 2 cannot read run 1's media
    run2 = _run([m2], tmp / "out2", ("vad", "dedup"), index, "2026-11-02")
    return {"tmp": tmp, "index": index, "out1": tmp / "out1", "out2": tmp / "out2", "run1": run1, "run2": run2}


@pytest.mark.slow
def test_jfk_encodings_and_resampled_copy_cluster(two_runs):
    out = two_runs["out1"]
    rows = _q(out, """SELECT regexp_extract(s.uri, '[^/]+$'), d.cluster_id, d.is_representative, d.method
                      FROM dedup_clusters d JOIN sources s ON s.source_id = d.item_id
                      WHERE d.kind = 'source' ORDER BY 1""")
    by = {r[0]: r for r in rows}
    assert set(by) == {"jfk.wav", "jfk.mp3", "jfk.flac", "sample.wav", "sample-22k-stereo.wav"}
    assert by["jfk.wav"][1] == by["jfk.mp3"][1] == by["jfk.flac"][1]
    assert by["sample.wav"][1] == by["sample-22k-stereo.wav"][1] != by["jfk.wav"][1]
    # the rule: equal durations, then the highest sample rate x channels (jfk.flac: 44.1 kHz
    # stereo; the 22.05 kHz stereo copy over the 16 kHz mono original: the rule cannot know
    # that it was upsampled)
    assert [r[0] for r in rows if r[2]] == ["jfk.flac", "sample-22k-stereo.wav"]
    ledger = _q(out, """SELECT r.reason, r.detail, d.representative_id FROM rejected r
                        JOIN dedup_clusters d ON r.item_id = 'source:' || d.item_id WHERE r.stage = 'dedup'""")
    assert len(ledger) == 3 and all(reason == "near_duplicate" and rep in detail for reason, detail, rep in ledger)
    assert two_runs["run1"]["stats"]["dedup.duplicates.source.audio_fp"] == 3
    # the index holds what run 1 kept
    assert (two_runs["index"] / "2026-11-01" / "_SUCCESS").exists()


@pytest.mark.slow
def test_second_run_drops_repeats_against_the_index(two_runs):
    out = two_runs["out2"]
    rows = {r[0]: r[1:] for r in _q(out, """
        SELECT regexp_extract(s.uri, '[^/]+$'), d.method, d.representative_partition, d.is_representative
        FROM dedup_clusters d JOIN sources s ON s.source_id = d.item_id WHERE d.kind = 'source'""")}
    assert set(rows) == {"jfk-again.wav", "jfk-8k.wav"}  # LDC93S1 is new
    assert rows["jfk-again.wav"] == ("sha256", "2026-11-01", False)  # same bytes as run 1's jfk.wav
    assert rows["jfk-8k.wav"][1:] == ("2026-11-01", False)
    reasons = dict(_q(out, "SELECT regexp_extract(uri, '[^/]+$'), reason FROM rejected WHERE stage = 'dedup'"))
    assert reasons == {"jfk-again.wav": "exact_duplicate", "jfk-8k.wav": "near_duplicate"}


@pytest.mark.slow
def test_retried_older_partition_is_not_dropped_against_a_later_one(two_runs, tmp_path):
    """Run 1's partition again, after run 2 wrote 2026-11-02 to the index: it compares only
    against partitions before 2026-11-01 (none), so it keeps what it kept the first time."""
    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.pipelines.stages import BuildContext, _build_dedup
    from mmcurate.transforms.read import ReadTables

    cfg = CurateConfig.from_dict({"stages": ["vad", "dedup"], "dedup": {
        "methods": ["sha256", "audio_fp"], "index_dir": str(two_runs["index"]), "partition": "2026-11-01"}})
    out1 = str(two_runs["out1"])
    with beam.Pipeline(runner=FnApiRunner()) as p:  # the corpus path: stored fingerprints only
        streams = p | ReadTables(out1, ["sources"])
        ctx = BuildContext(p, [], out1, cfg, two_runs["run1"]["run_id"], ["vad", "dedup"])
        res = _build_dedup(ctx, streams)
        _capture(res["dedup_clusters"], tmp_path / "c.pkl", "c")
    got = {"c": _load(tmp_path / "c.pkl")}
    first = _q(two_runs["out1"], "SELECT member_id, cluster_id, representative_id, is_representative FROM dedup_clusters ORDER BY 1")
    again = sorted((r.member_id, r.cluster_id, r.representative_id, r.is_representative) for r in got["c"])
    assert again == first  # media deleted: the stored fingerprints gave the same clusters


@pytest.mark.slow
def test_chair_pair_one_cluster_doorknob_alone(tmp_path):
    out = tmp_path / "out"
    _run([MEDIA / "neardup"], out, ("vad", "video", "dedup"), tmp_path / "index", None)
    rows = _q(out, """SELECT regexp_extract(s.uri, '[^/]+$'), d.cluster_id FROM dedup_clusters d
                      JOIN sources s ON s.source_id = d.item_id WHERE d.kind = 'source'""")
    clusters = dict(rows)
    assert set(clusters) == {"chair-orig-22-sd-bar.mp4", "chair-19-sd-bar.mp4"}
    assert len(set(clusters.values())) == 1
    docs = _q(out, "SELECT count(*) FROM dedup_clusters WHERE kind = 'document'")
    assert docs == [(2,)]  # the documents follow their sources


@pytest.mark.slow
def test_audit_dedup_section_and_cluster_query(two_runs):
    from mmcurate.quality import audit
    from mmcurate.quality.dedup_audit import cluster_members_sql

    s = audit.summarize(str(two_runs["out1"]))["dedup"]
    audio = [r for r in s["per_method"] if (r["kind"], r["method"]) == ("source", "audio_fp")][0]
    assert (audio["items"], audio["duplicates"]) == (5, 3)
    assert [c["members"] for c in s["largest_clusters"]] == [3, 2]
    members = audit.query(str(two_runs["out1"]), cluster_members_sql(s["largest_clusters"][0]["cluster_id"]))
    uris = sorted(u.rsplit("/", 1)[-1] for u in members.column("uri").to_pylist())
    assert uris == ["jfk.flac", "jfk.mp3", "jfk.wav"]
    assert members.column("is_representative").to_pylist()[0] is True
    s2 = audit.summarize(str(two_runs["out2"]))["dedup"]
    assert s2["duplicates_of_earlier_partitions"] == 2


@pytest.mark.slow
def test_default_resumable_run_fingerprints_its_media(tmp_path):
    """`mmcurate run` as users call it (checkpointed: dedup runs after the per-source stages) must
    fingerprint the run's own media: jfk.wav and jfk.mp3 differ in bytes and end in one source
    cluster through audio_fp. (The merge once had no media stream, took itself for a corpus job
    and compared sources by sha256 only.)"""
    from mmcurate.pipelines import curate
    from mmcurate.pipelines.config import CurateConfig

    out = tmp_path / "out"
    cfg = CurateConfig.from_dict({"stages": ["vad", "dedup"]})
    assert cfg.output.checkpoints  # the checkpointed path
    curate.run([str(MEDIA / "speech" / "jfk.wav"), str(MEDIA / "speech" / "jfk.mp3")], str(out), cfg)
    con = duckdb.connect()
    methods = {r[0] for r in con.execute(
        f"SELECT DISTINCT method FROM read_parquet('{out}/dedup_signatures/*.parquet') WHERE kind = 'source'").fetchall()}
    assert "audio_fp" in methods, methods
    rows = con.execute(f"SELECT method, is_representative FROM read_parquet('{out}/dedup_clusters/*.parquet') "
                       "WHERE kind = 'source'").fetchall()
    assert sorted(r[1] for r in rows) == [False, True] and {r[0] for r in rows} <= {"audio_fp", None}, rows


# ------------------------------------------------------------------ the text mix (rephrase)


def _mix(text_id: str, sid: str, text: str, parent: str | None = None) -> "TextMix":
    from mmcurate.schemas.records import TextMix

    syn = parent is not None
    return TextMix(text_id, sid, syn, parent, 0, text, len(text.split()),
                   hashlib.sha1(text.encode()).hexdigest(), 0.0, 1.0, [], "en",
                   "encyclopedic" if syn else None, "v1" if syn else None, None,
                   "fake" if syn else None, None, "stop" if syn else None, None, None, "run-t")


OTHER = ("completely different words about something else entirely and more of them said by "
         "another speaker in another room on another day of the week")
MIX = [
    _mix("p-a", SID["a"], BASE),
    _mix("p-d", SID["d"], OTHER),
    # a rephrasing of p-d that repeats p-a nearly word for word, from the LONGEST source (b):
    # by the source rule alone it would be the representative; a synthetic row never is
    _mix("s-b", SID["b"], BASE.replace("tonight", "today"), parent="p-d"),
    _mix("s-e", SID["e"], OTHER, parent="p-d"),  # an exact copy of a natural passage
    _mix("s-a", SID["a"], "a fox leapt across a sleeping dog as evening fell over a still valley",
         parent="p-a"),  # a real rephrasing: no duplicate
]


def test_synthetic_rows_are_deduplicated_against_natural_ones(tmp_path):
    names = ("dedup_clusters", "rejected")
    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = ({"sources": p | "S" >> beam.Create(SOURCES),
                "transcripts": p | "T" >> beam.Create(TRANSCRIPTS),
                "text_mix": p | "M" >> beam.Create(MIX)}
               | Deduplicate(DedupConfig(methods=("sha256", "text_hash", "minhash")), "run-t", "run-t",
                             decode_media=False))
        for name in names:
            _capture(out[name], tmp_path / f"{name}.pkl", name)
    got = {name: _load(tmp_path / f"{name}.pkl") for name in names}
    rows = {(r.kind, r.item_id): r for r in got["dedup_clusters"]}
    sb, se, pa, pd = (rows.get(k) for k in (("synthetic", "s-b"), ("synthetic", "s-e"),
                                              ("passage", "p-a"), ("passage", "p-d")))
    assert sb and pa and sb.cluster_id == pa.cluster_id and pa.is_representative
    assert not sb.is_representative and sb.representative_id == "p-a" and sb.method == "minhash"
    assert se and pd and se.cluster_id == pd.cluster_id and pd.is_representative
    assert (se.method, se.similarity) == ("text_hash", 1.0)
    assert ("synthetic", "s-a") not in rows
    # the mix is compared with itself only: p-a (= transcript a's text) joins no transcript
    assert {r.kind for r in got["dedup_clusters"] if r.cluster_id == pa.cluster_id} == {"passage", "synthetic"}
    assert rows[("transcript", SID["a"])].cluster_id != pa.cluster_id
    ledger = {r.item_id: r for r in got["rejected"] if r.item_id.startswith(("passage:", "synthetic:"))}
    assert set(ledger) == {"synthetic:s-b", "synthetic:s-e"}
    assert ledger["synthetic:s-b"].reason == "near_duplicate" and "p-a" in ledger["synthetic:s-b"].detail
    assert ledger["synthetic:s-e"].reason == "exact_duplicate"


@pytest.mark.slow
def test_minilm_encoder_is_transformers_bertmodel():
    """The embedded MiniLM runs on mmcurate's own BERT encoder (transformers' import cost each
    worker seconds): its embeddings of real transcripts equal `transformers.BertModel`'s
    bit for bit, padding and truncation included, and no transformers module is imported."""
    import subprocess
    import sys

    from transformers import BertModel

    from mmcurate.transforms.embed import SentenceEmbedder, verify

    jfk = (MEDIA / "speech" / "jfk.txt").read_text().strip()
    texts = [jfk, jfk.lower(), "Ask what you can do for your country.", "", "word " * 400,
             "Le chat dort sur le canapé."]
    ours = SentenceEmbedder()
    got = ours.embed(texts, batch_size=4)
    bert = BertModel.from_pretrained(verify(), local_files_only=True).eval()
    ours.model = type("Reference", (), {"last_hidden_state": lambda self, ids, mask: bert(
        input_ids=ids, attention_mask=mask).last_hidden_state})()
    want = ours.embed(texts, batch_size=4)
    assert got.shape == (6, 384) and np.array_equal(got, want)
    assert got[0] @ got[2] > got[0] @ got[5]  # the paraphrase is nearer than the French cat
    code = ("import sys; from mmcurate.transforms.embed import SentenceEmbedder; "
            "SentenceEmbedder().embed(['a']); print('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
