"""The rephrase stage: passages, deterministic selection at a token ratio, guards, backends.

Fast tests run the real Beam graph with a fake generator (copies, chatter, truncations, drift
and rewrites of varying length, chosen by a hash of the passage) and a bag-of-words embedder;
the real-model tests run SmolLM2-135M-Instruct in-process (xllamacpp) and behind a loopback
OpenAI-compatible server process the test starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from mmcurate.quality.scorers import rephrase_guards as rg
from mmcurate.schemas.records import Segment, SegmentQuality, TextMix
from mmcurate.transforms import rephrase as rp
from mmcurate.transforms.rephrase_backends import Generation

SENTENCES = [
    "The river floods every spring and the farmers move their animals to the hills.",
    "Our team measured the water level at six stations along the valley.",
    "You know, the old bridge was built in eighteen ninety and it still carries trucks.",
    "Engineers plan to raise the road by two meters before the next winter.",
    "Um, the village school closes for a week whenever the water comes in.",
    "Most families keep a boat in the barn, just in case.",
    "The museum shows photographs of the great flood of nineteen fifty three.",
    "Volunteers fill sandbags at the fire station on Saturday mornings.",
]


def make_segments(n_sources: int, per_source: int, seed: int = 0) -> list[Segment]:
    out = []
    for s in range(n_sources):
        sid = f"src{s:04d}"
        t = 0.0
        for k in range(per_source):
            text = SENTENCES[(s * 7 + k * 3 + seed) % len(SENTENCES)]
            if k % 4 == 0:
                text += " " + SENTENCES[(s + k) % len(SENTENCES)]
            out.append(Segment(
                segment_id=f"{sid}-seg-{k:05d}", source_id=sid, start=t, end=t + 4.0, speaker=None,
                text=text, language="en", language_probability=0.99, words=[], avg_logprob=None,
                no_speech_prob=None, compression_ratio=None, asr_model="fake", asr_model_version=None,
                diarization_model=None, audio_uri=f"file:///{sid}.wav", audio=None, run_id="r"))
            t += 4.0
    return out


def verdict(seg: Segment, keep: bool) -> SegmentQuality:
    return SegmentQuality(
        segment_id=seg.segment_id, source_id=seg.source_id, start=seg.start, end=seg.end,
        duration_s=4.0, num_words=10, chars=50, chars_per_s=12.0, language="en",
        language_probability=0.99, text_language="en", text_language_probability=0.99,
        transcript_language="en", transcript_language_probability=0.99, language_mismatch=False,
        language_low_confidence=False, phrase_share=0.0, phrases=[], repeat_share=0.0,
        outside_vad_share=0.0, dnsmos_sig=None, dnsmos_bak=None, dnsmos_ovrl=None, rate_q1=None,
        rate_q3=None, source_speech_ratio=0.9, failed=[] if keep else ["phrase"], keep=keep,
        reason=None if keep else "phrase", run_id="r")


def _h(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


class FakeGenerator:
    """Deterministic stand-in for a chat model: by a hash of the passage it copies it, chats,
    runs out of tokens, wanders off, or rewrites it (reversed word order, 60-140% of its length)."""

    model = "fake-generator"
    sha256 = "0" * 64

    def generate(self, messages, max_tokens, temperature=0.0, repeat_penalty=None, seed=0):
        text = messages[-1]["content"].rsplit("Text:", 1)[-1].split("\n\n")[0].strip()
        h = _h(text) % 100
        if h < 12:
            return Generation(text, "stop")  # copy
        if h < 20:
            return Generation("Sure, here is the rewritten text: " + text[::-1], "stop")
        if h < 25:
            return Generation(" ".join(text.split()[:12]), "length")
        if h < 30:
            return Generation("Completely unrelated words about quantum chromodynamics and jazz "
                              "festivals in distant cities.", "stop")
        words = text.split()
        share = 0.6 + (h % 9) / 10.0  # 0.6 .. 1.4
        n = max(8, int(len(words) * share))
        out = list(reversed(words)) * 2
        return Generation("In short, " + " ".join(out[:n]), "stop")


def fake_loader():
    return FakeGenerator()


def bow_embed(texts):
    """Hashed bag of words, L2-normalised: rewrites with the same words score ~1."""
    out = np.zeros((len(texts), 256), np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"\w+", t.lower()):
            out[i, _h(w) % 256] += 1.0
        n = np.linalg.norm(out[i])
        if n:
            out[i] /= n
    return out


def run_stage(segments, cfg: rp.RephraseConfig, verdicts=None, handler=None, embedder=bow_embed):
    """Run the Rephrase transform; returns (text_mix rows, rejected rows)."""
    import pickle
    import tempfile

    d = tempfile.mkdtemp(prefix="rephrase-test-")

    def keep(name):  # the matcher runs on a worker: hand the rows back through a file
        def check(rows, path=os.path.join(d, name)):
            with open(path, "wb") as fh:
                pickle.dump(list(rows), fh)
        return check

    handler = handler or rp.RephraseModelHandler(cfg, loader=fake_loader)
    with TestPipeline() as p:
        inputs = {"segments": p | "Segs" >> beam.Create(segments)}
        if verdicts is not None:
            inputs["segment_quality"] = p | "Verdicts" >> beam.Create(verdicts)
        out = inputs | rp.Rephrase(cfg, "run-test", generator_handler=handler, embedder=embedder)
        assert_that(out["text_mix"], keep("text_mix"), label="TextMix")
        assert_that(out["rejected"], keep("rejected"), label="Rejected")
        assert_that(out["stats"], keep("stats"), label="Stats")
    got = {}
    for name in ("text_mix", "rejected", "stats"):
        with open(os.path.join(d, name), "rb") as fh:
            got[name] = pickle.load(fh)
    return got["text_mix"], got["rejected"], got["stats"]


def share(rows: list[TextMix]) -> float:
    syn = sum(r.tokens for r in rows if r.is_synthetic)
    return syn / sum(r.tokens for r in rows)


# --------------------------------------------------------------------------- pure functions


def test_passages_are_cut_on_sentence_boundaries_within_the_budget_and_skip_dropped_segments():
    segs = make_segments(1, 12)
    kept = {s.segment_id for s in segs if s.segment_id != segs[5].segment_id}
    rows = rp.cut_passages("src0000", segs, kept, 40, "r")
    assert all(r.tokens <= 40 for r in rows)
    assert all(r.text.rstrip()[-1] in ".!?" for r in rows)  # sentences are never cut here
    assert segs[5].segment_id not in {sid for r in rows for sid in r.segment_ids}
    assert segs[5].text not in " ".join(r.text for r in rows)
    assert [r.text_id for r in rows] == [f"src0000-psg-{k:05d}" for k in range(len(rows))]
    # the passage text is exactly the kept segments' text, in order
    assert " ".join(r.text for r in rows).split() == " ".join(
        s.text for s in segs if s.segment_id in kept).split()
    long = "word " * 100 + "end."
    cut = rp._pack([long.strip()], 30)
    assert all(rg.count_tokens(c) <= 30 for c in cut) and " ".join(cut).split() == long.split()


def test_plan_closes_the_gap_from_the_measured_yield():
    hist = {b: 10 for b in range(0, 2000, 2)}  # 1000 passages of 10 tokens
    st = {"lo": 0, "selected": 0, "accepted": 0}
    pl = rp.plan_round(st, 10000, hist, 0.3, 0.5, 1.0)
    # target 0.3/0.7*10000 = 4286 synthetic tokens at yield 0.5 -> ~8571 natural tokens
    assert abs(pl["round_tokens"] - 8571) <= 10 and pl["lo"] == 0
    # a measured yield of 1.0 after selecting 2000 tokens that gave 2000: the rest is 2286
    pl2 = rp.plan_round({"lo": 400, "selected": 2000, "accepted": 2000}, 10000, hist, 0.3, 0.5, 1.0)
    assert pl2["lo"] == 400 and abs(pl2["round_tokens"] - 2286) <= 10
    assert rp.plan_round({"lo": 0, "selected": 10, "accepted": 5000}, 10000, hist, 0.3, 0.5, 1.0)["hi"] == 0


def test_each_guard_keeps_or_drops_with_its_reason():
    src = "The river floods every spring and the farmers move their animals to the hills above."
    good = "Each spring the river overflows, so farmers lead their livestock up into the hills."
    assert rg.EmptyGuard(3).check(src, "  ", "stop").reason == "empty"
    assert rg.TruncatedGuard().check(src, good, "length").reason == "truncated"
    assert rg.TruncatedGuard().check(src, good, "stop").keep
    assert rg.ChatterGuard().check(src, "Sure, here is the rewritten text: " + good, "stop").reason == "chatter"
    assert rg.ChatterGuard().check(src, good + " I hope this helps!", "stop").reason == "chatter"
    assert rg.ChatterGuard().check(src, good, "stop").keep
    assert rg.CopyGuard(0.5).check(src, src, "stop").reason == "copy"
    assert rg.CopyGuard(0.5).check(src, good, "stop").keep
    v = rg.DriftGuard(bow_embed, 0.5).check(src, "Quantum chromodynamics describes quarks and gluons.", "stop")
    assert v.reason == "drift" and v.scores["drift_cosine"] < 0.5
    de = "Jeden Frühling tritt der Fluss über die Ufer und die Bauern treiben ihre Tiere in die Berge."
    assert rg.LanguageGuard().check(src, de, "stop", "en").reason == "wrong_language"
    assert rg.LanguageGuard().check(src, good, "stop", "en").keep
    v = rg.judge([rg.EmptyGuard(3), rg.CopyGuard(0.5)], src, good, "stop")
    assert v.keep and 0.0 <= v.scores["copy_jaccard"] <= 0.5


def test_styles_are_versioned_templates_in_the_repository():
    assert set(rp.RephraseConfig().styles) <= set(rp.known_styles())
    for name in rp.RephraseConfig().styles:
        st = rp.load_style(name)
        assert st.version and len(st.sha256) == 64
        assert "PASSAGE-X" in st.messages("PASSAGE-X")[-1]["content"]


def test_config_rules():
    from mmcurate.pipelines.config import ConfigError, CurateConfig

    with pytest.raises(ConfigError) as e:
        CurateConfig.from_dict({"rephrase": {"synthetic_ratio": 1.0, "styles": ["poem"],
                                             "backend": "openai"}})
    text = str(e.value)
    assert "synthetic_ratio" in text and "poem" in text and "url and api_model" in text


# --------------------------------------------------------------------------- the stage, fake model


@pytest.mark.slow  # seconds: out of the fast tier
@pytest.mark.parametrize("ratio", [0.3, 0.1])
def test_ratio_within_two_points_on_1000_passages_and_every_row_has_its_parent(ratio):
    segs = make_segments(50, 44)
    cfg = rp.RephraseConfig(synthetic_ratio=ratio, passage_max_tokens=40, passage_min_tokens=8)
    rows, rejected, stats = run_stage(segs, cfg)
    natural = {r.text_id: r for r in rows if not r.is_synthetic}
    synthetic = [r for r in rows if r.is_synthetic]
    assert len(natural) >= 1000
    print(f"ratio {ratio}: {len(natural)} passages, {len(synthetic)} synthetic, share {share(rows):.4f}")
    assert abs(share(rows) - ratio) <= 0.02, share(rows)
    for r in synthetic:
        parent = natural[r.parent_id]  # exists
        assert r.text_id.startswith(parent.text_id + "-syn-")
        assert r.style in cfg.styles and r.prompt_version and len(r.prompt_sha256) == 64
        assert r.generator == "fake-generator" and r.generator_sha256 == "0" * 64
        assert r.copy_jaccard <= cfg.max_copy_jaccard and r.drift_cosine >= cfg.min_drift_cosine
        assert r.text != parent.text and r.source_id == parent.source_id
    # the guards' drops are ledger rows naming the synthetic id; nothing else is rejected
    reasons = {r.reason for r in rejected}
    assert {"copy", "chatter", "truncated", "drift"} <= reasons <= {"copy", "chatter", "truncated",
                                                                    "drift", "surplus"}, reasons
    assert all(r.stage == "rephrase" and "-syn-" in r.item_id for r in rejected)
    assert not ({r.item_id for r in rejected} & {r.text_id for r in rows})
    # the manifest's stats give the same share
    totals: dict[str, int] = {}
    for k, n in stats:
        totals[k] = totals.get(k, 0) + n
    assert totals["rephrase.synthetic_tokens"] / totals["rephrase.total_tokens"] == pytest.approx(share(rows))


def test_surplus_ids_choose_the_kept_rewrites_closest_to_the_ratio():
    rows = [((1, "a"), 50), ((2, "b"), 50), ((3, "c"), 50), ((4, "d"), 50)]
    # 100 natural tokens, target 0.5 (100 synthetic): c and d go, last-selected first
    assert rp.surplus_ids(rows, 100, 0.5) == ["d", "c"]
    assert rp.surplus_ids(rows, 100, 0.7) == []  # short of the target: nothing dropped
    # dropping b too would land further away (0.333 vs 0.5 at 100 natural + 50 synthetic)
    assert rp.surplus_ids(rows, 100, 0.45) == ["d", "c"]
    assert rp.surplus_ids([], 100, 0.3) == []
    # the last-selected rewrite is too long to drop (0.565 -> 0.231 for 0.4), an earlier one is not
    assert rp.surplus_ids([((1, "a"), 30), ((2, "b"), 100)], 100, 0.4) == ["a"]
    # the shared media at 0.1 (752 natural tokens): the closest subset is 58 + 14 + 13 (0.1016);
    # dropping from the end alone reached 0.060
    demo = [((1, "p"), 58), ((2, "q"), 13), ((3, "r"), 21), ((4, "s"), 14), ((5, "t"), 184)]
    assert rp.surplus_ids(demo, 752, 0.1) == ["t", "r"]
    # past EXACT_TRIM_MAX_ROWS the greedy pass: last-selected first, each drop that gets closer
    many = [((i, f"x{i:03d}"), 10) for i in range(100)]
    assert rp.surplus_ids(many, 1000, 0.2) == [f"x{i:03d}" for i in range(99, 24, -1)]


class LongGenerator(FakeGenerator):
    """Rewrites three times as long as their passage (a question-answer rewrite of a short
    passage does this): a few of them overshoot a small corpus's target."""

    def generate(self, messages, max_tokens, temperature=0.0, repeat_penalty=None, seed=0):
        text = messages[-1]["content"].rsplit("Text:", 1)[-1].split("\n\n")[0].strip()
        words = list(reversed(text.split()))
        return Generation("In other words, " + " ".join(words * 3), "stop")


@pytest.mark.slow  # seconds: out of the fast tier
def test_surplus_rewrites_are_trimmed_on_a_small_corpus():
    """13-passage corpora (the shared media's size) reached 0.48 for a 0.3 target: the trim
    step drops the last-selected accepted rewrites to the ledger (reason surplus) while that
    brings the share closer."""
    segs = make_segments(2, 8)
    base = dict(synthetic_ratio=0.3, passage_max_tokens=40, passage_min_tokens=8,
                max_copy_jaccard=0.9, min_drift_cosine=0.1)
    handler = lambda c: rp.RephraseModelHandler(c, loader=LongGenerator)  # noqa: E731
    cfg_off = rp.RephraseConfig(**base, trim_surplus=False)
    untrimmed, rej_off, _ = run_stage(segs, cfg_off, handler=handler(cfg_off))
    cfg = rp.RephraseConfig(**base)
    rows, rejected, _ = run_stage(segs, cfg, handler=handler(cfg))
    natural = sum(r.tokens for r in rows if not r.is_synthetic)
    print(f"\nuntrimmed {share(untrimmed):.4f}, trimmed {share(rows):.4f}, {natural} natural tokens")
    assert share(untrimmed) > 0.32  # the case exists: long rewrites overshoot
    assert abs(share(rows) - 0.3) < abs(share(untrimmed) - 0.3)
    kept = {r.text_id for r in rows if r.is_synthetic}
    dropped = {r.item_id for r in rejected if r.reason == "surplus"}
    assert dropped and not dropped & kept
    assert dropped | kept == {r.text_id for r in untrimmed if r.is_synthetic}  # same rewrites
    assert not any(r.reason == "surplus" for r in rej_off)
    # restoring the first dropped rewrite would not be closer
    syn = sum(r.tokens for r in rows if r.is_synthetic)
    first_back = min((r for r in untrimmed if r.text_id in dropped),
                     key=lambda r: rp.selection_order(cfg.seed, r, tuple(cfg.styles)))
    back = (syn + first_back.tokens) / (natural + syn + first_back.tokens)
    assert abs(back - 0.3) >= abs(share(rows) - 0.3)


@pytest.mark.slow  # seconds: out of the fast tier
def test_a_rerun_selects_the_same_passages_and_another_seed_others():
    segs = make_segments(12, 30)
    cfg = rp.RephraseConfig(synthetic_ratio=0.3, passage_max_tokens=40, passage_min_tokens=8)
    a, ra, _ = run_stage(segs, cfg)
    b, rb, _ = run_stage(list(reversed(segs)), cfg)
    key = lambda rows: sorted((r.text_id, r.text) for r in rows)  # noqa: E731
    assert key(a) == key(b) and sorted(r.rejection_id for r in ra) == sorted(r.rejection_id for r in rb)
    c, _, _ = run_stage(segs, rp.RephraseConfig(synthetic_ratio=0.3, passage_max_tokens=40,
                                                passage_min_tokens=8, seed=7))
    chosen = lambda rows: {r.parent_id for r in rows if r.is_synthetic}  # noqa: E731
    assert chosen(a) != chosen(c)


def test_dropped_segments_are_not_passages_and_zero_ratio_adds_nothing():
    segs = make_segments(3, 10)
    verdicts = [verdict(s, keep=(i % 3 != 0)) for i, s in enumerate(segs)]
    rows, rejected, _ = run_stage(segs, rp.RephraseConfig(synthetic_ratio=0.0), verdicts)
    dropped = {v.segment_id for v in verdicts if not v.keep}
    assert rows and not any(r.is_synthetic for r in rows) and not rejected
    assert not dropped & {sid for r in rows for sid in r.segment_ids}


@pytest.mark.slow  # seconds: out of the fast tier
def test_corpus_job_adds_text_mix_and_the_ratio_to_the_manifest(tmp_path):
    from mmcurate.pipelines import corpus, curate
    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.transforms.sink import WriteTables

    out = tmp_path / "out"
    segs = make_segments(6, 20)
    cfg = CurateConfig.from_dict({"stages": ["vad", "speech", "quality"]})
    manifest = curate.ManifestBuilder("run-base", "test", cfg.to_json(), [], [])
    with TestPipeline() as p:
        tables = {"segments": p | "S" >> beam.Create(segs),
                  "segment_quality": p | "Q" >> beam.Create([verdict(s, True) for s in segs]),
                  "rejected": p | "R" >> beam.Create([])}
        _ = tables | WriteTables(str(out), "run-base", cfg.output, manifest)
    cfg = CurateConfig.from_dict({"rephrase": {"passage_max_tokens": 40, "passage_min_tokens": 8}})
    m = corpus.run_corpus(str(out), cfg, ["rephrase"], overrides={
        "rephrase_handler": rp.RephraseModelHandler(cfg.rephrase, loader=fake_loader),
        "rephrase_embedder": bow_embed})
    assert m["tables"]["text_mix"] > 0
    ratio = m["stats"]["rephrase.synthetic_ratio"]
    assert 0.2 <= ratio <= 0.4  # a small corpus: ~60 passages
    from mmcurate.quality import audit

    s = audit.summarize(str(out))
    assert s["rephrase"]["synthetic_ratio"] == pytest.approx(ratio, abs=1e-6)
    assert s["rephrase"]["after_dedup"] is None  # dedup has not compared the mix
    m2 = corpus.run_corpus(str(out), cfg, ["rephrase"], overrides={
        "rephrase_handler": rp.RephraseModelHandler(cfg.rephrase, loader=fake_loader),
        "rephrase_embedder": bow_embed})
    assert m2["tables"]["text_mix"] == m["tables"]["text_mix"]
    assert m2["stats"]["rephrase.synthetic_ratio"] == ratio


# --------------------------------------------------------------------------- loopback server


def start_server(*args: str, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("rephrase_server.py")), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    t0 = time.time()
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    assert time.time() - t0 < timeout
    return proc, line.split()[-1].strip() + "/v1"


@pytest.fixture
def fake_server(request):
    proc, url = start_server("--fake", *getattr(request, "param", ()))
    yield url
    proc.terminate()
    proc.wait(10)


def _openai_cfg(url: str, **kw) -> rp.RephraseConfig:
    base = dict(synthetic_ratio=0.5, passage_max_tokens=40, passage_min_tokens=8, backend="openai",
                url=url, api_model="fake-rephraser", concurrency=4, timeout_s=5.0, retries=2,
                backoff_s=0.05, rounds=1, expected_yield=1.0)
    base.update(kw)
    return rp.RephraseConfig(**base)


@pytest.mark.parametrize("fake_server", [("--fail-matching", "bridge")], indirect=True)
def test_server_errors_become_ledger_rows_and_the_run_finishes(fake_server):
    segs = make_segments(4, 8)
    cfg = _openai_cfg(fake_server)
    rows, rejected, _ = run_stage(segs, cfg, handler=rp.RephraseModelHandler(cfg))
    errors = [r for r in rejected if r.reason == "server_error"]
    assert errors and all("HTTP 500" in r.detail and "3 attempt" in r.detail for r in errors)
    syn = [r for r in rows if r.is_synthetic]
    assert syn and all("bridge" not in r.text for r in syn)
    assert all(r.generator == "fake-rephraser" for r in syn)


@pytest.mark.slow  # seconds: out of the fast tier
@pytest.mark.parametrize("fake_server", [("--sleep-matching", "bridge", "--sleep", "3")], indirect=True)
def test_a_request_past_the_timeout_is_a_timeout_row(fake_server):
    segs = make_segments(4, 8)
    cfg = _openai_cfg(fake_server, timeout_s=1.0, retries=1)
    rows, rejected, _ = run_stage(segs, cfg, handler=rp.RephraseModelHandler(cfg))
    timeouts = [r for r in rejected if r.reason == "timeout"]
    assert timeouts and all("2 attempt" in r.detail for r in timeouts)
    assert any(r.is_synthetic for r in rows)


@pytest.mark.parametrize("fake_server", [("--fail-every", "2")], indirect=True)
def test_transient_errors_are_retried(fake_server):
    from mmcurate.transforms.rephrase_backends import OpenAIChatClient

    c = OpenAIChatClient(fake_server, "fake-rephraser", retries=3, backoff_s=0.01, timeout_s=5)
    gens = [c.generate([{"role": "user", "content": f"Text: passage number {i}"}], 32) for i in range(6)]
    assert all(g.error is None and g.text for g in gens)
    assert any(g.attempts == 2 for g in gens)
    dead = OpenAIChatClient("http://127.0.0.1:9/v1", "x", retries=1, backoff_s=0.01, timeout_s=2)
    g = dead.generate([{"role": "user", "content": "Text: hi"}], 8)
    assert g.error == "server_error" and "connection failed" in g.detail


# --------------------------------------------------------------------------- real model

REAL_PASSAGES = [
    "Hello and welcome to Lion400M, an open data set of clip filtered 400 million image text "
    "pairs. Actually 413 million image text pairs. We went to common crawl and looked for all "
    "the image URLs in it, where we also have an alternative text.",
    "Hello, this is an example video for your convenience and pleasure. You are allowed to use "
    "this voice for any purpose, including commercial uses. On the bottom right you can see the time.",
]


def test_embedded_model_checksum_and_real_rephrasing():
    from mmcurate.transforms.rephrase_backends import EMBEDDED, EmbeddedGenerator, verified_path

    path, sha = verified_path("smollm2-135m-instruct")
    assert sha == EMBEDDED["smollm2-135m-instruct"].sha256 and path.stat().st_size > 50e6
    gen = EmbeddedGenerator("smollm2-135m-instruct", parallel=2)
    st = rp.load_style("spoken_to_written")
    out = gen.generate(st.messages(REAL_PASSAGES[1]), 96, st.temperature, st.repeat_penalty)
    assert out.error is None and out.finish_reason in ("stop", "length")
    assert rg.count_tokens(out.text) >= 5 and out.completion_tokens > 0
    # greedy decoding: the same request gives the same text
    again = gen.generate(st.messages(REAL_PASSAGES[1]), 96, st.temperature, st.repeat_penalty)
    assert again.text == out.text


def test_real_stage_on_real_passages_with_the_real_guards():
    """The embedded model and the all-MiniLM-L6-v2 drift guard on two transcript passages:
    whatever is accepted links to its parent and is no copy of it."""
    segs = [Segment(segment_id=f"real-seg-{i:05d}", source_id="real", start=10.0 * i, end=10.0 * i + 9,
                    speaker=None, text=t, language="en", language_probability=0.99, words=[],
                    avg_logprob=None, no_speech_prob=None, compression_ratio=None, asr_model="whisper-base",
                    asr_model_version=None, diarization_model=None, audio_uri="file:///real.wav",
                    audio=None, run_id="r") for i, t in enumerate(REAL_PASSAGES)]
    cfg = rp.RephraseConfig(synthetic_ratio=0.5, rounds=1, expected_yield=1.0, concurrency=2,
                            embedded_parallel=2,
                            passage_max_tokens=60, passage_min_tokens=8)
    rows, rejected, _ = run_stage(segs, cfg, handler=rp.RephraseModelHandler(cfg), embedder=None)
    natural = {r.text_id: r for r in rows if not r.is_synthetic}
    syn = [r for r in rows if r.is_synthetic]
    assert len(syn) + len(rejected) >= 1  # something was generated
    for r in syn:
        assert r.parent_id in natural and r.generator.startswith("SmolLM2")
        assert rg.minhash_jaccard(natural[r.parent_id].text, r.text) <= cfg.max_copy_jaccard
        assert r.drift_cosine >= cfg.min_drift_cosine
    assert {r.reason for r in rejected} <= {"empty", "truncated", "chatter", "wrong_language",
                                             "copy", "drift"}


def test_loopback_server_backed_by_the_embedded_model():
    """A real server process speaking the chat-completions protocol, the real model behind it."""
    from mmcurate.transforms.rephrase_backends import OpenAIChatClient

    proc, url = start_server("--parallel", "2")
    try:
        c = OpenAIChatClient(url, "smollm2-135m-instruct", timeout_s=120, retries=0)
        st = rp.load_style("encyclopedic")
        g = c.generate(st.messages(REAL_PASSAGES[0]), 96, st.temperature, st.repeat_penalty)
        assert g.error is None, g.detail
        assert g.finish_reason in ("stop", "length") and rg.count_tokens(g.text) >= 5
    finally:
        proc.terminate()
        proc.wait(10)
