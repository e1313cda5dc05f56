"""mmcurate.transforms.decode on real media and on files of every container, made here with PyAV."""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mmcurate.transforms.decode import (
    DecodeError,
    decode_audio,
    iter_audio,
    probe,
    stream_audio,
    write_audio,
)

from media_fixtures import mux_audio, sine, write_video

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SR = 16000


def write_with_cover(path: Path, acodec: str, fmt: str | None = None) -> None:
    """Audio plus an attached picture (album art), as taggers write mp3/m4a."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        a = out.add_stream(acodec, rate=SR, layout="mono")
        v = out.add_stream("mjpeg")
        v.width, v.height, v.pix_fmt = 32, 32, "yuvj420p"
        v.disposition = av.stream.Disposition.attached_pic
        pic = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        pic = pic.reformat(format="yuvj420p")
        pic.pts = 0
        for p in v.encode(pic):
            out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        mux_audio(out, a, sine(300, 2.0, SR, 0.5)[:, None], "mono", SR)


def peak_freq(x: np.ndarray, rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spec) * rate / x.shape[0])


# ------------------------------------------------------------------ every container we accept

AUDIO_FORMATS = [  # (suffix, codec, input rate, codec name as probed)
    (".wav", "pcm_s16le", 44100, "pcm_s16le"),
    (".flac", "flac", 44100, "flac"),
    (".mp3", "libmp3lame", 44100, "mp3float"),
    (".m4a", "aac", 44100, "aac"),
    (".aac", "aac", 22050, "aac"),
    (".ogg", "vorbis", 44100, "vorbis"),
    (".opus", "libopus", 48000, "opus"),
    (".webm", "libopus", 48000, "opus"),
]


@pytest.mark.parametrize("suffix,codec,rate,probed", AUDIO_FORMATS, ids=[f[0] for f in AUDIO_FORMATS])
def test_audio_containers_decode_to_16k_mono(tmp_path, suffix, codec, rate, probed):
    path = tmp_path / f"tone{suffix}"
    x = sine(440, 2.0, rate)
    write_audio(str(path), [np.stack([x, x], 1)[:30000], np.stack([x, x], 1)[30000:]], rate,
                codec=codec, channels=2, container_format="adts" if suffix == ".aac" else None)
    info = probe(str(path))
    assert info.media_kind == "audio" and info.video_codec is None
    assert info.audio_codec == probed
    assert info.sample_rate == rate and info.channels == 2
    y = decode_audio(str(path))
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.shape[0] / SR - 2.0) < 0.1, y.shape  # encoder priming adds a few ms at most
    # in-phase full-scale stereo stays full scale in mono, never above 1 (FFmpeg's own
    # float downmix would give 1.4)
    mid = y[SR // 4 : -SR // 4]
    assert 0.85 < np.abs(mid).max() <= 1.0
    assert abs(np.sqrt(np.mean(mid**2)) - 0.99 / np.sqrt(2)) < 0.06
    assert abs(peak_freq(mid) - 440) < 5


VIDEO_FORMATS = [  # (suffix, video codec, audio codec, muxer)
    (".mp4", "libx264", "aac", None),
    (".mkv", "mpeg4", "libopus", None),
    (".webm", "libvpx", "libopus", None),
    (".mov", "mpeg4", "aac", None),
]


@pytest.mark.parametrize("suffix,vcodec,acodec,fmt", VIDEO_FORMATS, ids=[f[0] for f in VIDEO_FORMATS])
def test_video_containers_give_their_audio_track(tmp_path, suffix, vcodec, acodec, fmt):
    path = tmp_path / f"clip{suffix}"
    write_video(path, vcodec, acodec, fmt=fmt)
    info = probe(str(path))
    assert info.media_kind == "video"
    assert info.video_codec is not None and info.audio_codec is not None
    assert info.sample_rate == 48000 and info.channels == 2
    y = decode_audio(str(path))
    assert abs(y.shape[0] / SR - 2.0) < 0.15
    mid = y[SR // 4 : -SR // 4]
    assert 0.85 < np.abs(mid).max() <= 1.0
    assert abs(peak_freq(mid) - 440) < 5


def test_stereo_downmix_is_the_channel_mean(tmp_path):
    path = tmp_path / "left_only.wav"
    x = sine(440, 1.0, SR, 0.8)
    write_audio(str(path), [np.stack([x, np.zeros_like(x)], 1)], SR, channels=2)
    y = decode_audio(str(path))
    assert y.shape[0] == SR
    assert abs(np.abs(y).max() - 0.4) < 0.01  # (L + R) / 2; FFmpeg's matrix gives 0.566


@pytest.mark.parametrize("suffix,acodec,fmt", [(".mp3", "libmp3lame", None), (".m4a", "aac", "mp4")])
def test_cover_art_is_not_video(tmp_path, suffix, acodec, fmt):
    import av

    path = tmp_path / f"song{suffix}"
    write_with_cover(path, acodec, fmt)
    with av.open(str(path)) as c:  # the picture really is there, as a flagged video stream
        assert len(c.streams.video) == 1
        assert c.streams.video[0].disposition & av.stream.Disposition.attached_pic
    info = probe(str(path))
    assert info.media_kind == "audio" and info.video_codec is None
    y = decode_audio(str(path))
    assert abs(y.shape[0] / SR - 2.0) < 0.1
    assert abs(peak_freq(y[SR // 4 : -SR // 4]) - 300) < 5


# ------------------------------------------------------------------ real media

def test_real_speech_files_agree():
    wav = decode_audio(str(MEDIA / "speech" / "jfk.wav"))
    flac = decode_audio(str(MEDIA / "speech" / "jfk.flac"))  # 44.1 kHz stereo original
    mp3 = decode_audio(str(MEDIA / "speech" / "jfk.mp3"))
    assert probe(str(MEDIA / "speech" / "jfk.flac")).channels == 2
    for y in (wav, flac, mp3):
        assert abs(y.shape[0] / SR - 11.0) < 0.1
        assert np.abs(y).max() <= 1.0
    n = min(wav.shape[0], flac.shape[0])
    corr = np.corrcoef(wav[:n], flac[:n])[0, 1]
    print(f"jfk wav~flac correlation {corr:.3f}")
    assert corr > 0.9  # the same recording after resampling and downmix


def test_real_video_audio_track():
    info = probe(str(MEDIA / "video" / "laion_talk.mp4"))
    assert info.media_kind == "video" and info.audio_codec == "aac"
    n = sum(c.shape[0] for c in iter_audio(str(MEDIA / "video" / "laion_talk.mp4")))
    assert abs(n / SR - 122.67) < 0.2


def test_iter_audio_matches_decode_audio_in_chunks():
    path = str(MEDIA / "diarization" / "sample.wav")
    whole = decode_audio(path)
    chunks = list(iter_audio(path, chunk_s=4.0))
    assert len(chunks) >= 7
    assert all(c.shape[0] >= 4 * SR for c in chunks[:-1])
    assert np.array_equal(np.concatenate(chunks), whole)
    with stream_audio(path, chunk_s=4.0) as (info, it):
        assert info.sample_rate == 16000 and info.container == "wav"
        assert np.array_equal(np.concatenate(list(it)), whole)


def test_iter_audio_is_constant_memory(tmp_path):
    """3 minutes of FLAC streamed in 5 s chunks: peak Python/numpy allocations stay near one
    chunk, while decode_audio holds (only) one copy of the samples."""
    path = tmp_path / "long.flac"
    rng = np.random.default_rng(0)
    write_audio(str(path), (0.1 * rng.standard_normal(10 * SR) for _ in range(18)), SR)
    full_bytes = 180 * SR * 4
    tracemalloc.start()
    try:
        n = 0
        for c in iter_audio(str(path), chunk_s=5.0):
            n += c.shape[0]
        _, peak_iter = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        y = decode_audio(str(path))
        _, peak_whole = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"iter_audio peak {peak_iter / 1e6:.1f} MB, decode_audio peak {peak_whole / 1e6:.1f} MB"
          f" for {full_bytes / 1e6:.1f} MB of samples")
    assert n == 180 * SR == y.shape[0]
    assert peak_iter < 0.15 * full_bytes
    assert peak_whole < 1.3 * full_bytes


# ------------------------------------------------------------------ what must be rejected

def test_text_file_named_mp3_is_not_media(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio\n" * 50)
    with pytest.raises(DecodeError) as e:
        decode_audio(str(path))
    assert e.value.reason == "not_media"


def test_empty_inputs(tmp_path):
    zero = tmp_path / "zero.wav"
    zero.write_bytes(b"")
    with pytest.raises(DecodeError) as e:
        probe(str(zero))
    assert e.value.reason == "empty_audio"
    no_samples = tmp_path / "no_samples.wav"
    write_audio(str(no_samples), [], SR)
    assert probe(str(no_samples)).audio_codec == "pcm_s16le"
    with pytest.raises(DecodeError) as e:
        decode_audio(str(no_samples))
    assert e.value.reason == "empty_audio"


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent_screen.mp4"
    write_video(path, "mpeg4", None)
    assert probe(str(path)).media_kind == "video"
    with pytest.raises(DecodeError) as e:
        decode_audio(str(path))
    assert e.value.reason == "no_audio_stream"


def test_truncated_mp3(tmp_path):
    data = (MEDIA / "speech" / "jfk.mp3").read_bytes()
    head = tmp_path / "head200.mp3"
    head.write_bytes(data[:200])  # the ID3 tag and nothing else
    with pytest.raises(DecodeError) as e:
        decode_audio(str(head))
    assert e.value.reason == "decode_error"
    part = tmp_path / "part30.mp3"
    part.write_bytes(data[: len(data) * 3 // 10])
    # FFmpeg decodes what is there: we keep it, with the decoded (not the claimed) length
    assert probe(str(part)).duration_s == pytest.approx(11.0, abs=0.1)  # the header's claim
    y = decode_audio(str(part))
    assert 2.5 < y.shape[0] / SR < 4.0


def test_too_long(tmp_path):
    path = tmp_path / "tone.flac"
    write_audio(str(path), [sine(440, 3.0, SR)], SR)
    with pytest.raises(DecodeError) as e:
        list(iter_audio(str(path), chunk_s=1.0, max_duration_s=2.0))
    assert e.value.reason == "too_long"
    assert decode_audio(str(path), max_duration_s=4.0).shape[0] == 3 * SR


def test_decode_error_pickles():
    e = pickle.loads(pickle.dumps(DecodeError("decode_error", "bad packet")))
    assert (e.reason, e.detail) == ("decode_error", "bad packet")


def _with_holes(data: bytes, every: int, seed: int = 1) -> bytes:
    """40 random bytes every `every` bytes after the first 2000 (damaged download or disk)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in range(2000, len(out), every):
        out[i : i + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    return bytes(out)


def test_damaged_mp3_skips_a_few_bad_packets_but_not_many(tmp_path):
    data = (MEDIA / "speech" / "jfk.mp3").read_bytes()
    few = tmp_path / "few_holes.mp3"  # 2 of ~300 packets fail to decode: skipped
    few.write_bytes(_with_holes(data, 3000))
    y = decode_audio(str(few))
    assert 10.0 < y.shape[0] / SR <= 11.05
    many = tmp_path / "many_holes.mp3"  # about one packet in five fails: the input is damaged
    many.write_bytes(_with_holes(data, 300))
    with pytest.raises(DecodeError) as e:
        decode_audio(str(many))
    assert e.value.reason == "decode_error" and "corrupt packets" in e.value.detail
