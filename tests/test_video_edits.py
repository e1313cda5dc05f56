"""Video near-duplicates under common edits (bench/video_edits.py, the suite that
bench/bench_vidsuite.py measures at full size): for every edit kind, an edited copy of a real
clip's excerpt is found by the dedup stage's video fingerprint as it clusters (a shared LSH key
and `verify_pair` at the configured thresholds), and is not found against an unrelated clip.
Small: 5 s excerpts at 320 pixels; the excerpts are made once per module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mmcurate.transforms import fingerprint as fp
from mmcurate.transforms import image_hash as ih
from mmcurate.transforms.dedup_config import DedupConfig
from mmcurate.transforms.dedup_lsh import lsh_keys, verify_pair

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
sys.path.insert(0, str(ROOT / "bench"))

import video_edits as ve  # noqa: E402

# a clip with its own black side bars, and one without bars (the crop and the bars differ there)
SOURCES = ("neardup/chair-orig-22-sd-bar.mp4", "neardup/doorknob-hd-no-bar.mp4")
SECONDS, SIDE = 5.0, 320

pytestmark = pytest.mark.skipif(not all((MEDIA / s).exists() for s in SOURCES),
                                reason="shared media missing")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    d = tmp_path_factory.mktemp("vidsuite")
    cfg = DedupConfig()
    origs = {s: ve.generate(MEDIA / s, d, kinds=(), seconds=SECONDS, max_side=SIDE)[0] for s in SOURCES}
    prints = {s: fp.video_fingerprint(str(c.path), step_s=cfg.video_step_s).to_bytes()
              for s, c in origs.items()}
    return d, cfg, prints


def _found(a: bytes, b: bytes, cfg: DedupConfig) -> bool:
    shared = set(lsh_keys("video_fp", a, cfg)) & set(lsh_keys("video_fp", b, cfg))
    return bool(shared) and verify_pair("video_fp", a, b, cfg) is not None


# A logo on a clip with little texture (the doorknob's bare door, auto-editor's flat colour) is
# most of what a whole-frame hash sees: the pHash sequence, PDQ and vPDQ all miss those copies
# (bench/README.md, "Video near-duplicates under common edits"). Still checked: not a false pair.
MISSED = {("logo", SOURCES[1])}


@pytest.mark.parametrize("kind", ve.EDITS)
def test_edited_copy_is_a_near_duplicate(suite, kind):
    d, cfg, prints = suite
    for src in SOURCES:
        edited = ve.generate(MEDIA / src, d, kinds=(kind,), seconds=SECONDS, max_side=SIDE)[1]
        e = fp.video_fingerprint(str(edited.path), step_s=cfg.video_step_s).to_bytes()
        if (kind, src) not in MISSED:
            assert _found(prints[src], e, cfg), f"{kind} of {src}: not found"
        (other,) = (s for s in SOURCES if s != src)
        assert not _found(prints[other], e, cfg), f"{kind} of {src}: matched {other}"


def test_the_suite_is_deterministic(tmp_path):
    a = ve.generate(MEDIA / SOURCES[1], tmp_path / "a", kinds=("logo", "speed_up"), seconds=2.0, max_side=160)
    b = ve.generate(MEDIA / SOURCES[1], tmp_path / "b", kinds=("logo", "speed_up"), seconds=2.0, max_side=160)
    assert [x.path.read_bytes() for x in a] == [x.path.read_bytes() for x in b]


def test_retime_maps_frames():
    assert ve.retime("trim_start", 8) == [2, 3, 4, 5, 6, 7]
    assert ve.retime("trim_end", 8) == [0, 1, 2, 3, 4, 5]
    up, down = ve.retime("speed_up", 100), ve.retime("speed_down", 100)
    assert len(up) == 95 and len(set(up)) == 95  # 5% faster: frames dropped, none repeated
    assert len(down) == 105 and set(down) == set(range(100))  # slower: every frame, some twice
    assert up == sorted(up) and down == sorted(down)


def test_content_box_cuts_black_bars_only():
    import numpy as np

    rng = np.random.default_rng(0)
    pic = rng.integers(60, 250, (90, 160)).astype(np.uint8)
    boxed = np.full((120, 200), 16, np.uint8)  # letterbox and pillarbox bars, limited-range black
    boxed[15:105, 20:180] = pic
    boxed[20:28, 184:198] = 235  # a logo laid over a bar does not widen the picture
    assert ih.content_box(boxed) == (slice(15, 105), slice(20, 180))
    assert ih.content_box(pic) == (slice(0, 90), slice(0, 160))
    dark = np.full((120, 200), 16, np.uint8)
    dark[50:60, 90:100] = 200  # a dark frame with a small bright spot keeps its whole frame
    assert ih.content_box(dark) == (slice(0, 120), slice(0, 200))
    assert ih.frame_hashes(boxed) == ih.frame_hashes(pic)


def test_a_signature_written_before_the_centre_hash_still_compares():
    import numpy as np

    new = fp.VideoPrint(np.arange(12, dtype=np.float32) * 0.25,
                        np.arange(1, 13, dtype=np.uint64) * np.uint64(0x0F0F0F0F0F0F0F0F),
                        np.arange(12, dtype=np.uint64))
    rec = np.zeros(12, dtype=[("t", "<f4"), ("h", "<u8")])
    rec["t"], rec["h"] = new.times, new.hashes
    old = fp.VideoPrint.from_bytes(rec.tobytes())
    assert old.centres is None and (old.hashes == new.hashes).all()
    again = fp.VideoPrint.from_bytes(new.to_bytes())
    assert (again.centres == new.centres).all() and (again.times == new.times).all()
    al = fp.compare_video(old, again)
    assert al is not None and al.similarity == 1.0


# ------------------------------------------------------------------------------------ images

FRAME_EDITS = ("greyscale", "sepia", "letterbox", "pillarbox", "logo", "crop10", "scale360", "lowbitrate")
STILLS = (1.0, 3.0)


def _still_signatures(path) -> list[bytes]:
    """The dedup signature of the frame shown at each of STILLS, hashed as the video stage
    hashes a keyframe (its luma plane: whole frame, picture inside bars, centre)."""
    import av

    from mmcurate.transforms.dedup_lsh import image_signature
    from mmcurate.transforms.keyframes import _luma_plane

    out, want = [], list(STILLS)
    with av.open(str(path)) as c:
        for frame in c.decode(c.streams.video[0]):
            if want and float(frame.pts * frame.time_base) + 1e-6 >= want[0]:
                y = _luma_plane(frame)
                out.append(image_signature(ih.phash(y), *ih.frame_hashes(y)))
                want.pop(0)
    assert len(out) == len(STILLS)
    return out


def _image_pair(a: bytes, b: bytes, cfg: DedupConfig) -> bool:
    shared = set(lsh_keys("phash", a, cfg)) & set(lsh_keys("phash", b, cfg))
    return bool(shared) and verify_pair("phash", a, b, cfg) is not None


# Stills the keyframe hashes miss (of the 2 per clip), measured: the logo covers most of what the
# doorknob's bare door shows, as for the video fingerprint above. Before the picture and centre
# hashes, every letterbox, pillarbox and crop10 still was missed as well (bench/README.md,
# "Keyframes", recall per edit over more stills).
IMAGE_MISSED = {("logo", SOURCES[1]): 2}


@pytest.mark.parametrize("kind", FRAME_EDITS)
def test_an_edited_keyframe_is_an_image_duplicate(suite, kind):
    d, cfg, _ = suite
    for src in SOURCES:
        orig = _still_signatures(ve.generate(MEDIA / src, d, kinds=(), seconds=SECONDS, max_side=SIDE)[0].path)
        edited = _still_signatures(ve.generate(MEDIA / src, d, kinds=(kind,), seconds=SECONDS, max_side=SIDE)[1].path)
        found = sum(_image_pair(o, e, cfg) for o, e in zip(orig, edited))
        print(f"{kind} of {src}: {found}/{len(STILLS)} stills found")
        assert found >= len(STILLS) - IMAGE_MISSED.get((kind, src), 0), f"{kind} of {src}: {found} found"
        (other,) = (s for s in SOURCES if s != src)
        others = _still_signatures(ve.generate(MEDIA / other, d, kinds=(), seconds=SECONDS, max_side=SIDE)[0].path)
        assert not any(_image_pair(o, e, cfg) for o in others for e in edited), f"{kind} of {src}: matched {other}"


def test_image_signatures_of_the_whole_frame_alone_still_compare():
    from mmcurate.transforms.dedup_lsh import image_distance, image_keys, image_signature

    whole, picture, centre = 0x0123456789ABCDEF, 0xFEDCBA9876543210, 0x0F0F0F0F0F0F0F0F
    new = image_signature(whole, picture, centre)
    old = image_signature(whole ^ 0b111)  # 8 bytes, as written before: 3 bits from the new one
    assert len(new) == 24 and len(old) == 8
    assert image_distance(new, old) == image_distance(old, new) == 3
    assert set(image_keys(old)) & set(image_keys(new))
    # a picture within 2 bits of the other's centre is a pair though the whole frames differ
    boxed = image_signature(~whole & (2**64 - 1), centre ^ 0b11, 0)
    assert image_distance(new, boxed) == 2
    assert set(image_keys(new)) & set(image_keys(boxed))
