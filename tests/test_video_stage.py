"""The video stage inside the whole job: which inputs become documents, the ledger, the
nothing-is-lost invariant; on the real talk (slow): the words of `segments` in order in the
document, images read back from Parquet by DuckDB, pandas and `datasets`, the HTML view."""

from __future__ import annotations

import io
import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from PIL import Image

from test_keyframes import LAION, MEDIA, garble
from video_fixtures import slides_video, tone
from mmcurate.pipelines import cli, curate
from mmcurate.pipelines.config import CurateConfig
from mmcurate.quality import audit
from mmcurate.schemas.tables import TABLES


def _read(out: Path, table: str) -> list[dict]:
    rows = []
    for f in sorted((out / table).glob("*.parquet")):
        t = pq.read_table(f)
        assert t.schema.equals(TABLES[table]), f
        rows.extend(t.to_pylist())
    return rows


def _by_name(rows: list[dict]) -> dict[str, dict]:
    """source rows keyed by file name"""
    return {r["uri"].rsplit("/", 1)[-1]: r for r in rows}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("video_inputs")
    full = slides_video(d / "talk.mkv", 3, 2.0, audio=tone(6.0), fmt="matroska")
    files = {
        "no_audio.mp4": slides_video(d / "no_audio.mp4", 3, 2.0, gop=25),
        "tone.mp4": slides_video(d / "tone.mp4", 2, 2.0, audio=tone(4.0)),
        "garbled.mkv": garble(full, d / "garbled.mkv", 10, 50),
        "cut.mp4": d / "cut.mp4",
        "speech.wav": d / "speech.wav",
    }
    whole = slides_video(d / "whole.mp4", 2, 2.0, audio=tone(4.0))  # moov at the end
    files["cut.mp4"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    files["speech.wav"].write_bytes((MEDIA / "speech" / "jfk.wav").read_bytes())
    return files


def test_videos_without_speech_or_audio_become_image_only_documents(inputs, tmp_path):
    """stages vad,video: a video without an audio stream and one whose audio has no speech are
    sources (speech_s 0) with image-only documents; an audio-only input gets no document; a
    corrupt video stream is a keyframes/decode_error row; a truncated mp4 is a decode row; the
    run goes on and the invariant holds."""
    out = tmp_path / "out"
    curate.run([str(p) for p in inputs.values()], str(out), CurateConfig(stages=("vad", "video")))
    sources = _by_name(_read(out, "sources"))
    assert set(sources) == {"no_audio.mp4", "tone.mp4", "garbled.mkv", "speech.wav"}
    for name in ("no_audio.mp4", "tone.mp4"):
        assert sources[name]["speech_s"] == 0.0 and sources[name]["media_kind"] == "video"
    assert sources["no_audio.mp4"]["audio_codec"] is None
    regions = {r["source_id"] for r in _read(out, "speech_regions")}
    assert sources["no_audio.mp4"]["source_id"] not in regions
    assert sources["tone.mp4"]["source_id"] not in regions

    docs = {d["source_id"]: d for d in _read(out, "documents")}
    by_id = {s["source_id"]: n for n, s in sources.items()}
    assert sorted(by_id[s] for s in docs) == ["no_audio.mp4", "tone.mp4"]
    for d in docs.values():
        assert d["num_texts"] == 0 and d["num_images"] == len(d["images"]) >= 2
        assert all(t is None for t in d["texts"])

    ledger = [(r["uri"].rsplit("/", 1)[-1], r["stage"], r["reason"]) for r in _read(out, "rejected")]
    assert ("garbled.mkv", "keyframes", "decode_error") in ledger
    assert any(n == "cut.mp4" and s == "decode" for n, s, _ in ledger), ledger
    summary = audit.summarize(str(out))
    assert summary["invariant_ok"] and summary["inputs"] == 5
    assert summary["video"]["documents"] == 2 and summary["video"]["image_only_documents"] == 2


def test_without_the_video_stage_a_video_without_audio_is_still_rejected(inputs, tmp_path):
    out = tmp_path / "out"
    curate.run([str(inputs["no_audio.mp4"]), str(inputs["tone.mp4"])], str(out),
               CurateConfig(stages=("vad",)))
    assert _read(out, "sources") == []
    got = sorted((r["uri"].rsplit("/", 1)[-1], r["stage"], r["reason"]) for r in _read(out, "rejected"))
    assert got == [("no_audio.mp4", "decode", "no_audio_stream"), ("tone.mp4", "vad", "no_speech")]


# ------------------------------------------------------------------------------ real media


def _tokens(text: str) -> list[str]:
    return text.split()


@pytest.fixture(scope="module")
def talk_run(inputs, tmp_path_factory) -> Path:
    """vad, speech and video on the talk, a near-duplicate clip and a video without audio (the
    quality and dedup stages add nothing these tests read; the default job's documents, with
    the quality stage's kept segments, are checked on the shared media by test_pipeline.py and
    the README example)."""
    out = tmp_path_factory.mktemp("talk") / "out"
    chair = MEDIA / "neardup" / "chair-orig-22-sd-bar.mp4"
    curate.run([str(LAION), str(chair), str(inputs["no_audio.mp4"])], str(out),
               CurateConfig(stages=("vad", "speech", "video")))
    return out


@pytest.mark.slow
def test_talk_document_holds_the_segments_words_in_order_between_its_keyframes(talk_run):
    out = talk_run
    sources = _by_name(_read(out, "sources"))
    sid = sources["laion_talk.mp4"]["source_id"]
    segments = sorted((s for s in _read(out, "segments") if s["source_id"] == sid),
                      key=lambda s: (s["start"], s["segment_id"]))
    words = [w for s in segments for w in s["words"]]
    assert len(words) > 250
    items = sorted((r for r in _read(out, "interleaved") if r["source_id"] == sid),
                   key=lambda r: r["position"])
    images = [r for r in items if r["modality"] == "image"]
    assert 8 <= len(images) <= 14
    # every word of `segments`, in order, none split, lost or repeated
    said = [t for r in items if r["modality"] == "text" for t in _tokens(r["text"])]
    assert said == [t for w in words for t in _tokens(w["word"])]
    # walk the items with the words: each word lies between its neighbouring keyframes' starts
    cuts = [r["start"] for r in images] + [float("inf")]
    k, i, straddling = -1, 0, 0
    for r in items:
        if r["modality"] == "image":
            k += 1
            continue
        n = len(_tokens(r["text"]))
        mine = []
        while n > 0:
            mine.append(words[i])
            n -= len(_tokens(words[i]["word"]))
            i += 1
        for w in mine:
            mid = (w["start"] + w["end"]) / 2
            assert cuts[k] <= mid < cuts[k + 1], (r, w)
            straddling += w["start"] < cuts[k] or w["end"] > cuts[k + 1]
        assert r["start"] == pytest.approx(mine[0]["start"], abs=1e-3)
        assert r["end"] == pytest.approx(mine[-1]["end"], abs=1e-3)
    assert i == len(words)
    print(f"\n{len(words)} words in {sum(r['modality'] == 'text' for r in items)} text items, "
          f"{len(images)} images; {straddling} word(s) straddle a keyframe start (cut at their middle)")
    doc = next(d for d in _read(out, "documents") if d["source_id"] == sid)
    assert doc["num_words"] == len(words) and doc["num_images"] == len(images)
    assert [t for t in doc["texts"] if t] == [r["text"] for r in items if r["modality"] == "text"]


@pytest.mark.slow
def test_images_read_back_with_duckdb_pandas_and_datasets(talk_run):
    out = talk_run
    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT keyframe_id, image, width, height FROM read_parquet('{out}/interleaved/*.parquet')
        WHERE modality = 'image' ORDER BY document_id, position""").fetchall()
    assert len(rows) >= 10
    for kid, data, w, h in rows:
        im = Image.open(io.BytesIO(data))
        assert im.size == (w, h) and max(w, h) <= 512, kid
    n_doc_images = con.execute(f"""
        SELECT count(*) FROM (SELECT unnest(images) AS im
                              FROM read_parquet('{out}/documents/*.parquet')) WHERE im IS NOT NULL""").fetchone()[0]
    assert n_doc_images == len(rows)

    import pandas as pd

    docs = pd.concat(pd.read_parquet(p) for p in sorted((out / "documents").glob("*.parquet")))
    assert len(docs) == 3
    first = next(im for im in docs.iloc[0]["images"] if im is not None)
    assert Image.open(io.BytesIO(first["bytes"])).format == "JPEG" and first["path"].endswith(".jpg")

    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(out / "documents" / "*.parquet"), split="train")
    images = [im for im in ds[0]["images"] if im is not None]
    assert images and isinstance(images[0], Image.Image)


@pytest.mark.slow
def test_audit_figures_and_show_html(talk_run, tmp_path, capsys):
    out = talk_run
    v = audit.summarize(str(out))["video"]
    print(json.dumps(v, indent=1))
    assert v["documents"] == 3 and v["image_only_documents"] == 2
    assert v["text_tokens_per_image"] > 5 and 0.1 < v["speech_share_of_document_time"] < 1
    page = tmp_path / "doc.html"
    assert cli.main(["audit", str(out), "--show", "laion_talk.mp4", "--html", str(page)]) == 0
    text = page.read_text()
    assert text.count("<img ") >= 8 and "data:image/jpeg;base64," in text and "<p>" in text
    assert cli.main(["audit", str(out), "--show", "no-such-video"]) == 2
