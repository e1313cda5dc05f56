"""The DoFns that turn dedup's items into `DedupSignature`s, one per method: a source's sha256
and media fingerprints (audio_fp, video_fp), a text's text_hash and minhash, an image's phash,
a transcript's embedding. Their input is an item joined with its source's
`SourceInfo.wire()` tuple (`dedup_nodes.keyed_source_info`)."""

from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam
import numpy as np

from mmcurate.schemas.printable import printable
from mmcurate.transforms.dedup_config import DedupConfig
from mmcurate.transforms.dedup_lsh import image_signature
from mmcurate.transforms.dedup_minhash import MinHasher, normalize_text, text_hash
from mmcurate.transforms.dedup_nodes import SourceInfo, make_signature

log = logging.getLogger("mmcurate.dedup")

class SourceSignatures(beam.DoFn):
    """(source_id, {"info": [SourceInfo.wire()], "prior": [DedupSignature]}) -> DedupSignature
    per method: sha256 when selected; audio_fp / video_fp reused from `prior` (stored by an
    earlier dedup of this output) or computed from the media when `decode` (in-graph, or
    decode_missing)."""

    def __init__(self, cfg: DedupConfig, partition: str, run_id: str, decode: bool):
        self.cfg, self.partition, self.run_id, self.decode = cfg, partition, run_id, decode
        self.decoded = beam.metrics.Metrics.counter("mmcurate", "dedup.fingerprints_computed")
        self.reused = beam.metrics.Metrics.counter("mmcurate", "dedup.fingerprints_reused")
        self.missing = beam.metrics.Metrics.counter("mmcurate", "dedup.fingerprints_missing")
        self.failed = beam.metrics.Metrics.counter("mmcurate", "dedup.fingerprint_errors")

    def process(self, kv):
        sid, g = kv
        if not g["info"]:
            return
        info = SourceInfo(*g["info"][0])
        methods = set(self.cfg.methods)
        sig = lambda m, data: make_signature("source", sid, m, info, data, info.duration_s,  # noqa: E731
                                              self.partition, self.run_id)
        if "sha256" in methods:
            yield sig("sha256", bytes.fromhex(info.sha256))
        prior = {p.method: p for p in g["prior"] if p.kind == "source"}
        wanted = [m for m in ("audio_fp", "video_fp") if m in methods
                  and (m == "audio_fp" or info.media_kind == "video")]
        for m in wanted:
            if m in prior:
                self.reused.inc()
                yield sig(m, prior[m].signature)
                continue
            if not self.decode:
                self.missing.inc()
                continue
            try:
                data = self._fingerprint(m, info)
            except Exception as e:  # noqa: BLE001 - a source that fails here is only not compared
                self.failed.inc()
                log.warning("%s: no %s (%s: %s); not compared by it", printable(info.uri), m, type(e).__name__,
                            printable(e))
                continue
            self.decoded.inc()
            if data:
                yield sig(m, data)

    def _fingerprint(self, method: str, info: SourceInfo) -> bytes:
        from mmcurate.transforms import fingerprint as fp

        c = self.cfg
        if method == "audio_fp":
            from mmcurate.transforms.decode import DecodeError, iter_audio

            f = fp.AudioFingerprinter(c.audio_max_s)
            try:
                for chunk in iter_audio(info.media_uri, fp.SAMPLE_RATE, chunk_s=30.0,
                                        max_duration_s=c.audio_max_s + 60.0):
                    f.push(chunk)
            except DecodeError as e:
                if e.reason == "no_audio_stream":
                    return b""
                if e.reason != "too_long":  # too long: the first audio_max_s are fingerprinted
                    raise
            return f.finish().astype("<u4").tobytes()
        vp = fp.video_fingerprint(info.media_uri, step_s=c.video_step_s, max_s=c.video_max_s)
        return vp.to_bytes() if vp.hashes.size else b""


def fingerprint_cost(methods: frozenset, kv) -> float:
    """What fingerprinting a joined source costs, in seconds of audio: its duration for
    audio_fp, 4x that again for a video's video_fp (one 2-core box: ~3 ms of audio
    fingerprinting and ~12 ms of video per second of media; laion_talk's two take 1.75 s, the
    other twelve sources' 1.9 s together)."""
    _, g = kv
    rows = g["info"]
    if not rows:
        return 0.0
    info = SourceInfo(*rows[0])
    d = float(info.duration_s or 0.0)
    video = "video_fp" in methods and info.media_kind == "video"
    return d * (("audio_fp" in methods) + 4.0 * video)


class TextSignatures(beam.DoFn):
    """(source_id, {"info": [SourceInfo.wire()], "items": [(kind, item_id, text)]}) ->
    text_hash and minhash signatures of every non-empty item."""

    def __init__(self, cfg: DedupConfig, partition: str, run_id: str):
        self.cfg, self.partition, self.run_id = cfg, partition, run_id
        self.hasher = None

    def setup(self):
        self.hasher = MinHasher(self.cfg.num_perm, self.cfg.seed, self.cfg.shingle_size)

    def process(self, kv):
        _, g = kv
        if not g["info"]:
            return
        info = SourceInfo(*g["info"][0])
        methods = set(self.cfg.methods)
        for kind, item_id, text in g["items"]:
            norm = normalize_text(text)
            if not norm:
                continue
            mk = lambda m, data: make_signature(kind, item_id, m, info, data, len(norm),  # noqa: E731
                                                self.partition, self.run_id)
            if "text_hash" in methods:
                yield mk("text_hash", text_hash(norm))
            if "minhash" in methods:
                s = self.hasher.signature(norm)
                if s is not None:
                    yield mk("minhash", MinHasher.pack(*s))


class ImageSignatures(beam.DoFn):
    """(source_id, {"info": [SourceInfo.wire()], "items": [(item_id, phash hex, picture_phash
    hex, centre_phash hex, pixels)]}) -> the phash signature of every keyframe
    (dedup_lsh.image_signature; the whole-frame hash alone for rows written without the other two)."""

    def __init__(self, partition: str, run_id: str):
        self.partition, self.run_id = partition, run_id

    def process(self, kv):
        _, g = kv
        if not g["info"]:
            return
        info = SourceInfo(*g["info"][0])
        for item_id, phash_hex, picture_hex, centre_hex, pixels in g["items"]:
            framed = (int(picture_hex, 16), int(centre_hex, 16)) if picture_hex and centre_hex else ()
            yield make_signature("image", item_id, "phash", info,
                                 image_signature(int(phash_hex, 16), *framed), pixels,
                                 self.partition, self.run_id)


class EmbedTranscripts(beam.DoFn):
    """Signatures of method `text_hash`/`minhash` of transcripts in -> `embedding` signatures
    (float32 bytes); the model is loaded once per worker (DoFn.setup, shared by threads)."""

    def __init__(self, cfg: DedupConfig, embedder=None):
        self.cfg, self._fake = cfg, embedder
        self.model = None

    def setup(self):
        if self._fake is not None:
            self.model = self._fake
            return
        from mmcurate.transforms.embed import shared_embedder

        self.model = shared_embedder(self.cfg.semantic_device, self.cfg.semantic_threads or None)

    def process(self, batch):
        texts = [t for _, t in batch]
        # one text per forward pass: a batch's padding and shape change the last float bits,
        # and how a runner cuts batches is its own (DirectRunner and Dask runs differed by up
        # to 1e-7 in 14 of 28 transcripts' bytes); one transcript a source, so this is cheap
        vecs = self.model.embed(texts, 1)
        for (sig, _), v in zip(batch, vecs):
            yield dataclasses.replace(sig, method="embedding", signature_id=f"{sig.kind}:{sig.item_id}:embedding",
                                      signature=np.asarray(v, "<f4").tobytes())

