"""Interleaving rules on hand-made keyframes and words (no decoding): word boundaries, order,
speaker tags, max words; then the Beam stage (`InterleaveVideo`) on a synthetic video."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from mmcurate.schemas.records import Document, InterleavedItem, Segment, SourceRecord, Word
from mmcurate.transforms.interleave import SpokenWord, interleave, words_from_segments
from mmcurate.transforms.keyframes import FrameScores, Keyframe

SCORES = FrameScores(120.0, 50.0, 250.0, 0.5, 900.0)


def kf(n: int, start: float, end: float) -> Keyframe:
    return Keyframe(f"s-kf-{n:05d}", start, end, start + 0.1, "shot" if n else "start",
                    None, 64, 36, b"jpeg", "jpeg", f"{n:016x}", f"{n:016x}", f"{n:016x}", SCORES)


def w(text: str, start: float, end: float, spk: str | None = "s-spk0") -> SpokenWord:
    return SpokenWord(" " + text, start, end, spk)


def texts(items) -> list[str]:
    return [it.text if it.modality == "text" else f"<img {it.keyframe.keyframe_id[-1]}>" for it in items]


def all_words(items) -> list[SpokenWord]:
    return [x for it in items for x in it.words]


def test_words_follow_the_image_on_screen_at_their_midpoint_and_are_never_split():
    frames = [kf(0, 0.0, 2.0), kf(1, 2.0, 4.0), kf(2, 4.0, 6.0)]
    words = [w("one", 0.5, 0.9), w("two", 1.0, 1.4),
             w("straddles", 1.8, 2.4),  # midpoint 2.1: after the cut at 2.0
             w("three", 2.5, 2.9),
             w("across", 3.7, 4.1),  # midpoint 3.9: before the cut at 4.0
             w("four", 4.5, 5.0)]
    items = interleave(frames, words)
    assert texts(items) == ["<img 0>", "one two", "<img 1>", "straddles three across", "<img 2>", "four"]
    assert all_words(items) == words  # nothing lost, repeated or reordered
    cuts = [k.start for k in frames] + [float("inf")]
    image_at = -1
    for it in items:
        if it.modality == "image":
            image_at += 1
            continue
        for x in it.words:  # each word lies between its neighbouring keyframes' start times
            assert cuts[image_at] <= x.mid < cuts[image_at + 1]
        # a text item starts/ends within one word of those times
        assert it.start >= cuts[image_at] - (it.words[0].end - it.words[0].start)
        assert it.end <= cuts[image_at + 1] + (it.words[-1].end - it.words[-1].start)


def test_words_before_the_first_keyframe_come_first_and_silence_gives_images_only():
    frames = [kf(0, 3.0, 6.0), kf(1, 6.0, 9.0)]
    items = interleave(frames, [w("early", 0.2, 0.6), w("late", 7.0, 7.3)])
    assert texts(items) == ["early", "<img 0>", "<img 1>", "late"]
    assert texts(interleave(frames, [])) == ["<img 0>", "<img 1>"]
    assert interleave([], [w("said", 0.0, 1.0)]) == []  # no image: no document


def test_speaker_changes_cut_text_items_and_tags_name_the_speaker():
    frames = [kf(0, 0.0, 10.0)]
    words = [w("hello", 0.0, 0.5, "s-spk0"), w("there.", 0.6, 1.0, "s-spk0"),
             w("hi", 1.5, 1.8, "s-spk1"), w("what", 2.0, 2.2, None)]
    plain = interleave(frames, words)
    assert texts(plain) == ["<img 0>", "hello there.", "hi", "what"]
    assert [it.speaker for it in plain[1:]] == ["s-spk0", "s-spk1", None]
    tagged = interleave(frames, words, speaker_tags=True)
    assert texts(tagged) == ["<img 0>", "[spk0] hello there.", "[spk1] hi", "[spk?] what"]


def test_max_words_splits_at_a_sentence_end_in_the_second_half_else_at_the_limit():
    frames = [kf(0, 0.0, 100.0)]
    sent = "a b c d e. f g h i j k l m n".split()
    words = [w(x, i, i + 0.5) for i, x in enumerate(sent)]
    items = interleave(frames, words, max_words=6)
    pieces = [it.text for it in items[1:]]
    assert pieces == ["a b c d e.", "f g h i j k", "l m n"]
    assert all(len(it.words) <= 6 for it in items[1:])
    assert all_words(items) == words


def test_whisper_words_keep_their_own_spacing_and_segments_without_words_are_spread():
    seg = Segment("s-seg-00000", "s", 0.0, 2.0, "s-spk0", " Hi there", "en", 0.9,
                  [Word(" Hi", 0.0, 0.4, 0.9), Word(" there", 0.5, 1.0, 0.9)], None, None, None,
                  None, None, None, "u", None, "r")
    bare = dataclasses.replace(seg, segment_id="s-seg-00001", start=2.0, end=4.0, text="no times",
                               words=[])
    words = words_from_segments([bare, seg])  # sorted by start
    assert [x.word for x in words] == [" Hi", " there", " no", " times"]
    assert words[2].start == 2.0 and words[3].end == 4.0
    items = interleave([kf(0, 0.0, 4.0)], words)
    assert texts(items) == ["<img 0>", "Hi there no times"]


# ------------------------------------------------------------------------------ the Beam stage


def _source(path, sid: str, kind: str = "video", speech_s: float = 3.0) -> SourceRecord:
    return SourceRecord(sid, sid * 3, str(path), str(path), "file", kind, "mp4", "aac", "h264",
                        6.0, 16000, 1, 100, speech_s, speech_s / 6.0, {}, "r")


def test_stage_interleaves_a_video_with_its_segments_and_skips_audio_sources(tmp_path):
    """InterleaveVideo on a 3-slide video and hand-made segments: one document, images in
    order, words after the image on screen; an audio source gets nothing."""
    from video_fixtures import slides_video
    from mmcurate.transforms.video import InterleaveVideo
    from mmcurate.transforms.video_config import VideoConfig

    video = slides_video(tmp_path / "s.mp4", 3, 2.0, gop=25)
    src = _source(video, "vid")
    audio = _source(tmp_path / "a.wav", "aud", kind="audio")
    spoken = [("Look", 0.5, 0.8), ("here.", 0.9, 1.3), ("Next", 2.6, 2.9), ("slide.", 3.0, 3.4)]
    seg = Segment("vid-seg-00000", "vid", 0.5, 3.4, "vid-spk0", "Look here. Next slide.", "en",
                  0.99, [Word(" " + t, a, b, 0.9) for t, a, b in spoken], -0.1, 0.01, 1.0,
                  "m", "v", None, f"{video}#t=0.5,3.4", None, "r")
    other = dataclasses.replace(seg, segment_id="aud-seg-00000", source_id="aud")

    def check(rows):
        rows = sorted(rows, key=lambda r: r.position)
        assert [r.modality for r in rows] == ["image", "text", "image", "text", "image"]
        assert [r.text for r in rows if r.modality == "text"] == ["Look here.", "Next slide."]
        assert all(r.document_id == "vid-doc" and r.item_id == f"vid-doc-{r.position:05d}" for r in rows)
        imgs = [r for r in rows if r.modality == "image"]
        assert all(r.image and r.width == 192 and r.sharpness and r.phash for r in imgs)

    def check_doc(docs):
        (d,) = docs
        assert isinstance(d, Document) and d.num_images == 3 and d.num_texts == 2 and d.num_words == 4
        assert [t is None for t in d.texts] == [i is not None for i in d.images]
        assert d.images[0]["path"].endswith(".jpg") and d.language == "en"

    with TestPipeline() as p:
        sources = p | "Sources" >> beam.Create([src, audio])
        segments = p | "Segments" >> beam.Create([seg, other])
        out = {"sources": sources, "segments": segments} | InterleaveVideo(VideoConfig(), "r")
        assert_that(out["interleaved"], check)
        assert_that(out["documents"], check_doc, label="Docs")
        assert_that(out["rejected"] | beam.Map(lambda r: r.reason), equal_to([]), label="Ledger")


def test_stage_without_segments_gives_image_only_and_corrupt_video_a_ledger_row(tmp_path):
    from test_keyframes import garble
    from video_fixtures import slides_video, tone
    from mmcurate.transforms.video import InterleaveVideo
    from mmcurate.transforms.video_config import VideoConfig

    good = slides_video(tmp_path / "s.mp4", 2, 2.0)
    bad = garble(slides_video(tmp_path / "b.mkv", 3, 2.0, audio=tone(6.0), fmt="matroska"),
                 tmp_path / "garbled.mkv", 10, 50)
    with TestPipeline() as p:
        sources = p | beam.Create([_source(good, "good", speech_s=0.0), _source(bad, "bad")])
        out = {"sources": sources} | InterleaveVideo(VideoConfig(), "r")
        assert_that(out["interleaved"] | beam.Map(lambda r: (r.document_id, r.modality)),
                    equal_to([("good-doc", "image")] * 2))
        assert_that(out["rejected"] | beam.Map(lambda r: (r.stage, r.reason, r.source_id, r.item_id)),
                    equal_to([("keyframes", "decode_error", "bad", "bad")]), label="Ledger")


def test_item_records_match_the_table():
    from mmcurate.schemas.records import to_table

    text = InterleavedItem(item_id="d-00001", document_id="d", source_id="s", position=1,
                           modality="text", start=0.0, end=1.0, speaker="s-spk0", text="hi",
                           num_words=1, run_id="r")
    t = to_table("interleaved", [text])
    assert t.to_pylist()[0]["text"] == "hi" and t.to_pylist()[0]["image"] is None
