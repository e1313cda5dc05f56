"""The video stage: shot-aware keyframes interleaved with the time-aligned transcript.

    sources (media_kind video) ----------- "ExtractKeyframes" (one decode of the video stream)
                                                  |  keyframes per source + ledger rows
    segments (when the speech stage ran) -- "KeyWords"
                                                  |
                                     "JoinKeyframesAndWords" (CoGroupByKey on source_id)
                                                  |
                                          "Interleave" -> interleaved (one row per item)
                                                       -> documents (one row per video)

A video is one document: its kept keyframes in time order, each followed by what was said while
it was on screen (words cut on word boundaries at the keyframes' start times, see
`mmcurate.transforms.interleave`). A video without speech (or when the speech stage does not
run) gives an image-only document; audio-only sources give none.

Ledger rows (stage `keyframes`; the source stays in `sources`):
  decode_error     the video stream is corrupt beyond decoding: no document
  no_video_stream  a source said to be video has no decodable video stream: no document
  truncated        the stream ends before its container says: the decodable part is kept
  black, blank, single_color, blurry   a chosen frame failed a quality filter (scores in detail)
  near_duplicate   a chosen frame looks like the keyframe before it (perceptual hash)
  no_keyframes     every chosen frame was dropped: no document
Drops of a frame carry item_id = the frame's id (f"{source_id}-kf-{n:05d}").
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterable

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from mmcurate.schemas.printable import printable
from mmcurate.schemas.records import (
    Document,
    InterleavedItem,
    Rejection,
    Segment,
    SourceRecord,
)
from mmcurate.transforms.video_config import VideoConfig

log = logging.getLogger("mmcurate.video")

NS = "mmcurate"
STAGE = "keyframes"  # rejected.stage of this stage's ledger rows


# ---------------------------------------------------------------------------------------------
# The Beam stage


@dataclass(frozen=True)
class VideoKeyframes:
    """What "ExtractKeyframes" sends through the join: a video source and its kept keyframes
    (the images travel because they are the output; the decoded frames never do)."""

    source: SourceRecord
    keyframes: list  # [mmcurate.transforms.keyframes.Keyframe]


def _reject(source: SourceRecord, run_id: str, reason: str, detail: str, item_id: str,
            duration_s: float | None = None) -> Rejection:
    return Rejection.make(stage=STAGE, reason=reason, detail=detail, uri=source.uri, run_id=run_id,
                          source_id=source.source_id, item_id=item_id, duration_s=duration_s)


class _KeyframesFn(beam.DoFn):
    """SourceRecord (a video) -> (source_id, VideoKeyframes) + ledger rows: one per dropped
    frame, one when the stream is truncated, one instead of keyframes when it does not decode."""

    def __init__(self, cfg: VideoConfig, run_id: str):
        self._cfg = cfg
        self._run_id = run_id

    def setup(self):
        self._videos = Metrics.counter(NS, "keyframes.videos")
        self._kept = Metrics.counter(NS, "keyframes.kept")
        self._dropped = Metrics.counter(NS, "keyframes.dropped")
        self._failed = Metrics.counter(NS, "keyframes.failed")
        self._speed = Metrics.distribution(NS, "keyframes.video_s_per_wall_s")

    def process(self, source: SourceRecord):
        from mmcurate.transforms.keyframes import KeyframeError, extract_keyframes

        sid = source.source_id
        self._videos.inc()
        try:
            result = extract_keyframes(source.media_uri, self._cfg, sid, source.duration_s)
        except KeyframeError as e:
            self._failed.inc()
            log.warning("%s: no keyframes (%s): %s", printable(source.uri), e.reason, printable(e.detail))
            yield pvalue.TaggedOutput("rejected", _reject(
                source, self._run_id, e.reason, f"no document: {e.detail}", sid, source.duration_s))
            return
        except Exception as e:  # noqa: BLE001 - one bad video must not end the run
            self._failed.inc()
            detail = f"no document: {type(e).__name__}: {e}"[:500]
            log.warning("%s: keyframe extraction failed: %s", printable(source.uri), printable(detail))
            yield pvalue.TaggedOutput("rejected", _reject(
                source, self._run_id, "decode_error", detail, sid, source.duration_s))
            return
        st = result.stats
        for d in result.dropped:
            lost = None if d.reason == "near_duplicate" else round(d.end - d.start, 3)
            yield pvalue.TaggedOutput("rejected", _reject(
                source, self._run_id, d.reason,
                f"frame at {d.frame_time:.2f} s for {d.start:.2f}-{d.end:.2f} s: {d.detail}",
                d.keyframe_id, lost))
        if result.truncated:
            yield pvalue.TaggedOutput("rejected", _reject(
                source, self._run_id, "truncated", f"kept the decodable part: {result.truncated}",
                f"{sid}-video-truncated", round(max(0.0, (st.declared_s or 0) - st.video_s), 3)))
        self._kept.inc(len(result.keyframes))
        self._dropped.inc(len(result.dropped))
        if st.elapsed_s > 0:
            self._speed.update(int(round(st.speed)))
        drops = ", ".join(f"{r} {n}" for r, n in result.dropped_by_reason().items()) or "none"
        log.info("%s: %d keyframe candidate(s) in %.1f s of %s %dx%d video, %d kept, dropped: %s; "
                 "%d of %d frames decoded, %d analysed, %d converted; %.0fx realtime",
                 printable(source.uri), st.candidates, st.video_s, st.codec, st.width, st.height,
                 len(result.keyframes), drops, st.frames_decoded, st.frames_total or st.packets,
                 st.frames_analysed, st.frames_converted, st.speed)
        if not result.keyframes:
            yield pvalue.TaggedOutput("rejected", _reject(
                source, self._run_id, "no_keyframes",
                f"no document: all {st.candidates} keyframe candidate(s) dropped ({drops})",
                f"{sid}-doc"))
            return
        yield sid, VideoKeyframes(source, result.keyframes)


def _segment_words(seg: Segment) -> tuple[str, Segment]:
    """(source_id, the segment without inline audio): only words and times cross the join."""
    return seg.source_id, dataclasses.replace(seg, audio=None) if seg.audio else seg


class _InterleaveFn(beam.DoFn):
    """(source_id, {keyframes, segments}) -> InterleavedItem rows + one Document row."""

    def __init__(self, cfg: VideoConfig, run_id: str):
        self._cfg = cfg
        self._run_id = run_id

    def setup(self):
        self._documents = Metrics.counter(NS, "video.documents")
        self._image_only = Metrics.counter(NS, "video.image_only_documents")
        self._texts = Metrics.counter(NS, "video.text_items")

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]):
        from mmcurate.transforms.interleave import interleave, words_from_segments

        sid, groups = element
        found = list(groups.get("keyframes", []))
        if not found:  # an audio source, or a video with no document (its ledger row is written)
            return
        video: VideoKeyframes = found[0]
        segments = list(groups.get("segments", []))
        items = interleave(video.keyframes, words_from_segments(segments),
                           max_words=self._cfg.max_words_per_text,
                           speaker_tags=self._cfg.speaker_tags)
        doc_id = f"{sid}-doc"
        images, texts, starts, ends = [], [], [], []
        n_words = n_texts = 0
        for pos, it in enumerate(items):
            row = dict(item_id=f"{doc_id}-{pos:05d}", document_id=doc_id, source_id=sid,
                       position=pos, modality=it.modality, start=round(it.start, 3),
                       end=round(it.end, 3), run_id=self._run_id)
            starts.append(row["start"])
            ends.append(row["end"])
            if it.modality == "image":
                k = it.keyframe
                s = k.scores
                yield InterleavedItem(
                    **row, image=k.image, image_format=k.image_format, width=k.width,
                    height=k.height, phash=k.phash, picture_phash=k.picture_phash,
                    centre_phash=k.centre_phash, keyframe_id=k.keyframe_id,
                    frame_time=k.frame_time, cut=k.cut, cut_score=k.cut_score,
                    luma_mean=s.luma_mean, luma_std=s.luma_std, luma_p99=s.luma_p99,
                    dominant_share=s.dominant_share, sharpness=s.sharpness)
                ext = "jpg" if k.image_format == "jpeg" else k.image_format
                images.append({"bytes": k.image, "path": f"{k.keyframe_id}.{ext}"})
                texts.append(None)
            else:
                n_texts += 1
                n_words += len(it.words)
                yield InterleavedItem(**row, speaker=it.speaker, text=it.text,
                                      num_words=len(it.words))
                images.append(None)
                texts.append(it.text)
        languages = [s.language for s in segments if s.language]
        source = video.source
        n_images = len(items) - n_texts
        self._documents.inc()
        self._texts.inc(n_texts)
        if not n_texts:
            self._image_only.inc()
        yield pvalue.TaggedOutput("documents", Document(
            document_id=doc_id, source_id=sid, uri=source.uri, duration_s=source.duration_s,
            speech_s=source.speech_s,
            language=max(set(languages), key=languages.count) if languages else None,
            num_images=n_images, num_texts=n_texts, num_words=n_words, images=images,
            texts=texts, starts=starts, ends=ends, run_id=self._run_id))


class InterleaveVideo(beam.PTransform):
    """{"sources": PCollection[SourceRecord], "segments": PCollection[Segment] (optional)}
    -> {"interleaved", "documents", "rejected"}. Audio sources pass through untouched."""

    def __init__(self, cfg: VideoConfig, run_id: str):
        super().__init__()
        self._cfg = cfg
        self._run_id = run_id

    def expand(self, inputs: dict):
        extracted = (
            inputs["sources"]
            | "VideoSources" >> beam.Filter(lambda s: s.media_kind == "video")
            | "SpreadVideos" >> beam.Reshuffle()
            | "ExtractKeyframes" >> beam.ParDo(_KeyframesFn(self._cfg, self._run_id)).with_outputs(
                "rejected", main="keyframes")
        )
        groups = {"keyframes": extracted.keyframes}
        if inputs.get("segments") is not None:
            groups["segments"] = inputs["segments"] | "KeyWords" >> beam.Map(_segment_words)
        out = (
            groups
            | "JoinKeyframesAndWords" >> beam.CoGroupByKey()
            | "Interleave" >> beam.ParDo(_InterleaveFn(self._cfg, self._run_id)).with_outputs(
                "documents", main="interleaved")
        )
        return {"interleaved": out.interleaved, "documents": out.documents,
                "rejected": extracted.rejected}
