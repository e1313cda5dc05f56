"""Keyframes: shot detection, sharpest-frame choice, quality filters, near-duplicates, decode
economy and broken streams, on small synthetic videos; the acceptance figures on the real
laion_talk.mp4 (slow)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from video_fixtures import blur, flat, noisy, slide, slides_video, still, tone, write_video
from mmcurate.transforms import keyframes as K
from mmcurate.transforms.video_config import VideoConfig

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
LAION = MEDIA / "video" / "laion_talk.mp4"


def _cfg(**kw) -> VideoConfig:
    return dataclasses.replace(VideoConfig(), **kw)


def _extract(path: Path, **kw) -> K.KeyframeResult:
    return K.extract_keyframes(str(path), _cfg(**kw), "src")


# ------------------------------------------------------------------------------ detection


def test_slide_changes_are_cuts_in_the_middle_of_gops(tmp_path):
    """Three slides of 2 s, keyframes every 2.5 s: the cuts fall inside GOPs and are found at
    the first analysed frame that shows the new slide (within one analysis step after it)."""
    video = slides_video(tmp_path / "s.mp4", 3, 2.0, gop=25)
    r = _extract(video)
    starts = [k.start for k in r.keyframes]
    assert starts[0] == 0.0 and len(starts) == 3, starts
    for got, want in zip(starts[1:], (2.0, 4.0)):
        assert want <= got <= want + 0.21, starts
    assert [k.cut for k in r.keyframes] == ["start", "shot", "shot"]
    assert all(k.cut_score > 10 for k in r.keyframes[1:])
    assert r.keyframes[-1].end == pytest.approx(6.0, abs=0.11)
    # every image is a real picture of its slide at the configured size
    for k in r.keyframes:
        im = Image.open(io.BytesIO(k.image))
        assert im.format == "JPEG" and im.size == (k.width, k.height) == (192, 108)
        assert k.start <= k.frame_time < k.end


def test_handheld_motion_is_not_a_cut_and_long_shots_get_interval_frames(tmp_path):
    """A drifting textured picture (a big change at every analysed frame, like handheld footage)
    has no cut; a 5 s shot with max_interval_s 2 gets a keyframe per window."""
    video = write_video(tmp_path / "pan.mp4", [(5.0, noisy(3))], gop=30)
    r = _extract(video, max_interval_s=2.0, near_duplicate_bits=-1)
    assert [k.cut for k in r.keyframes] == ["start", "interval", "interval"], r.keyframes
    assert [round(k.start) for k in r.keyframes] == [0, 2, 4]
    # spans tile the video
    assert all(a.end == b.start for a, b in zip(r.keyframes, r.keyframes[1:]))


def test_sharpest_frame_of_a_shot_is_chosen_not_the_first(tmp_path):
    """A shot that starts blurred and comes into focus (a focus pull: no cut) and is sharp only
    from 1.5 s: its keyframe is a sharp frame, not the first one."""
    img = slide(7)
    pull = lambda i, t: blur(img, max(0.0, 3.0 - 0.2 * i)) if i < 15 else img  # noqa: E731
    r = _extract(write_video(tmp_path / "focus.mp4", [(2.5, pull), (2.0, still(slide(8)))], gop=50))
    first = r.keyframes[0]
    assert first.start == 0.0 and 1.5 <= first.frame_time < 2.5, r.keyframes
    assert [k.cut for k in r.keyframes] == ["start", "shot"]
    assert first.scores.sharpness > 3 * K.frame_scores(blur(img, 3)).sharpness


def test_consecutive_near_duplicates_are_dropped_and_the_kept_span_grows(tmp_path):
    """A still slide over several windows: one image, its span the whole shot, the other
    windows' frames in the drop list as near_duplicate (nothing disappears silently)."""
    r = _extract(write_video(tmp_path / "still.mp4", [(5.0, still(slide(1)))], gop=20),
                 max_interval_s=2.0)
    assert len(r.keyframes) == 1 and r.keyframes[0].end == pytest.approx(5.0, abs=0.11)
    assert [d.reason for d in r.dropped] == ["near_duplicate", "near_duplicate"]
    assert all(int(d.detail.split()[2]) <= 4 for d in r.dropped)  # "phash distance N <= ..."
    kept_ids = {k.keyframe_id for k in r.keyframes}
    assert not kept_ids & {d.keyframe_id for d in r.dropped}


# ------------------------------------------------------------------------------ quality filters


def test_quality_filters_drop_black_blank_single_colour_and_blurry_with_scores(tmp_path):
    """HunyuanImage-style staged filters, each on a shot of its own between two slides; the
    kept frames carry their scores."""
    green = flat((60, 200, 120))
    green[50:58, 80:112] = 255  # a little text on a flat colour: not blank, but one colour
    scenes = [(1.0, still(slide(1))), (1.0, still(flat((8, 8, 8)))),
              (1.0, still(slide(2))), (1.0, still(flat((128, 128, 128)))),
              (1.0, still(slide(3))), (1.0, still(green)),
              (1.0, still(slide(4))), (1.0, still(blur(slide(5), 4))),
              (1.0, still(slide(6)))]
    r = _extract(write_video(tmp_path / "q.mp4", scenes, gop=15))
    assert [d.reason for d in r.dropped] == ["black", "blank", "single_color", "blurry"]
    for d in r.dropped:
        assert d.scores is not None and d.keyframe_id.startswith("src-kf-")
        assert "luma_mean" in d.detail and "sharpness" in d.detail  # scores in the ledger detail
    assert len(r.keyframes) == 5
    for k in r.keyframes:
        s = k.scores
        assert s.luma_p99 > 40 and s.luma_std > 5 and s.dominant_share < 0.97 and s.sharpness >= 30


def test_quality_reason_order_and_thresholds():
    cfg = VideoConfig()
    ok = K.FrameScores(130.0, 60.0, 250.0, 0.5, 500.0)
    assert K.quality_reason(ok, cfg) is None
    assert K.quality_reason(dataclasses.replace(ok, luma_p99=20.0, luma_std=1.0), cfg)[0] == "black"
    assert K.quality_reason(dataclasses.replace(ok, luma_std=1.0, dominant_share=1.0), cfg)[0] == "blank"
    assert K.quality_reason(dataclasses.replace(ok, dominant_share=0.99), cfg)[0] == "single_color"
    assert K.quality_reason(dataclasses.replace(ok, sharpness=10.0), cfg)[0] == "blurry"


def test_phash_is_stable_under_resizing_and_tells_slides_apart():
    a = slide(1, 384, 216)
    small = np.asarray(Image.fromarray(a).resize((192, 108), Image.BILINEAR))
    assert K.hamming(K.phash(a), K.phash(small)) <= 4
    assert K.hamming(K.phash(a), K.phash(slide(2, 384, 216))) > 10


def test_webp_output_and_max_side(tmp_path):
    video = slides_video(tmp_path / "s.mp4", 1, 1.0)
    r = _extract(video, image_format="webp", image_quality=70, max_side=96)
    k = r.keyframes[0]
    im = Image.open(io.BytesIO(k.image))
    assert im.format == "WEBP" and im.size == (96, 54) == (k.width, k.height)


# ------------------------------------------------------------------------------ decoding


def test_decoding_skips_b_frames_and_still_stretches_and_converts_only_chosen_frames(tmp_path):
    """x264 with B-frames: non-reference frames are never decoded; the still stretch of a GOP
    after a slide settles is held back undecoded; only the chosen frames are converted."""
    video = slides_video(tmp_path / "s.mp4", 3, 4.0, gop=60)
    r = _extract(video)
    st = r.stats
    assert st.packets == st.frames_total == 120
    assert st.frames_decoded < 0.5 * st.frames_total, st
    assert st.packets_skipped > 0 and st.frames_converted == len(r.keyframes) == 3
    full = _extract(video, skip_nonref=False, skip_static_gops=False)
    assert full.stats.frames_decoded == 120
    # the same cuts either way, up to one skipped B-frame (0.1 s)
    assert np.allclose([k.start for k in full.keyframes], [k.start for k in r.keyframes], atol=0.11)


def test_a_video_stream_with_garbage_packets_is_a_decode_error(tmp_path):
    video = slides_video(tmp_path / "s.mkv", 3, 2.0, audio=tone(6.0), fmt="matroska")
    bad = garble(video, tmp_path / "garbled.mkv", 10, 50)
    with pytest.raises(K.KeyframeError) as e:
        _extract(bad)
    assert e.value.reason == "decode_error" and "corrupt video packets" in e.value.detail


def test_a_truncated_stream_keeps_the_decodable_part_and_says_so(tmp_path):
    video = slides_video(tmp_path / "s.mkv", 3, 2.0, audio=tone(6.0), fmt="matroska")
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(video.read_bytes()[: int(video.stat().st_size * 0.5)])
    r = _extract(cut)
    assert r.truncated and "missing" in r.truncated
    assert 1 <= len(r.keyframes) <= 2 and r.stats.video_s < 4.5


def test_no_video_stream_is_a_clear_error(tmp_path):
    from mmcurate.transforms.decode import write_audio

    wav = tmp_path / "a.wav"
    write_audio(str(wav), [tone(1.0)], 16000)
    with pytest.raises(K.KeyframeError) as e:
        _extract(wav)
    assert e.value.reason == "no_video_stream"


def garble(src: Path, dst: Path, lo: int, hi: int, seed: int = 0) -> Path:
    """A copy of `src` whose video packets lo..hi-1 are random bytes of the same size: the
    container is intact, the video bitstream is not."""
    rng = np.random.default_rng(seed)
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vo = out.add_stream_from_template(inp.streams.video[0])
        ao = out.add_stream_from_template(inp.streams.audio[0]) if inp.streams.audio else None
        k = 0
        for pkt in inp.demux():
            if pkt.size == 0:
                continue
            if pkt.stream.type == "video":
                if lo <= k < hi:
                    new = av.Packet(rng.integers(0, 256, pkt.size, dtype=np.uint8).tobytes())
                    new.pts, new.dts, new.time_base = pkt.pts, pkt.dts, pkt.time_base
                    new.is_keyframe = pkt.is_keyframe
                    pkt = new
                k += 1
                pkt.stream = vo
            else:
                pkt.stream = ao
            out.mux(pkt)
    return dst


# ------------------------------------------------------------------------------ real media


def slide_boundaries() -> list[float]:
    lines = (MEDIA / "video" / "laion_talk.slide_boundaries.txt").read_text().splitlines()
    return [float(x) for x in lines if x.strip() and not x.startswith("#")]


def frame_accurate_changes(path: Path, listed: list[float], window: float = 0.6) -> list[float]:
    """The listed boundaries were read off 5 fps samples (+-0.2 s): find each change's exact
    frame, the largest mean difference of consecutive full-rate 64x36 grey frames within
    `window` s of the listed time (the frame that differs from its predecessor)."""
    import av

    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for b in listed:
            c.seek(int((b - 2.0) / s.time_base), stream=s, backward=True)
            prev, best = None, (0.0, None)
            for f in c.decode(s):
                t = float(f.pts * s.time_base)
                if t > b + window:
                    break
                g = f.to_ndarray(format="gray", width=64, height=36).astype(np.float32)
                if prev is not None and t >= b - window:
                    d = float(np.abs(g - prev).mean())
                    if d > best[0]:
                        best = (d, t)
                prev = g
            out.append(best[1])
    return out


@pytest.mark.slow
def test_laion_talk_every_slide_change_has_a_keyframe_and_at_most_14_images():
    """Acceptance: each of the 7 slide changes has a keyframe starting within 0.5 s after it,
    and at most 14 images. "After" is measured from the change's exact frame (the listed times
    carry +-0.2 s; the exact frames, 7.100 ... 113.700 s, lie within that of them)."""
    assert LAION.exists(), LAION
    listed = slide_boundaries()
    exact = frame_accurate_changes(LAION, listed)
    assert all(t is not None and abs(t - b) <= 0.2 + 1e-6 for t, b in zip(exact, listed)), exact
    r = K.extract_keyframes(str(LAION), VideoConfig(), "laion")
    starts = [k.start for k in r.keyframes]
    offsets = []
    for b in exact:
        hits = [s - b for s in starts if -1e-3 <= s - b <= 0.5]
        offsets.append(round(hits[0], 3) if hits else None)
    st = r.stats
    print(f"\nlaion_talk.mp4: {len(r.keyframes)} images, starts {starts}")
    print(f"offsets after each exact change: {dict(zip(exact, offsets))}")
    print(f"dropped {r.dropped_by_reason()}; decoded {st.frames_decoded}/{st.frames_total} frames, "
          f"analysed {st.frames_analysed}, converted {st.frames_converted}, {st.speed:.0f}x realtime")
    assert None not in offsets, offsets
    assert len(r.keyframes) <= 14
    # no frame was converted at full size except the chosen ones, and most were never decoded
    assert st.frames_converted <= st.candidates and st.frames_decoded < 0.15 * st.frames_total
