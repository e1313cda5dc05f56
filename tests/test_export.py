"""The curated view and its exports (`mmcurate export`), read back by their consumers: Lhotse
(`load_manifest`, `validate`, `fix_manifests`, `CutSet.from_shar`), a NeMo manifest reader
written to NeMo's documented schema (NeMo itself does not install here), the `webdataset`
library, and Hugging Face `datasets` 5.2 in its own venv (.venv-hf: its huggingface-hub pin is
outside the lock's), through tests/hf_read_back.py.

One real run over the shared media (jfk trio, LDC93S1, the chair pair and the doorknob clip, with
segments.include_audio) is shared by the slow tests; the curated-view rules also have a fast test
on hand-made tables."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mmcurate.pipelines import cli
from mmcurate.pipelines.export import run_export
from mmcurate.quality import audit

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
if not MEDIA.is_dir():
    MEDIA = Path("/work/shared/media")
JFK = ("jfk.wav", "jfk.mp3", "jfk.flac")
TOLERANCE_S = 0.010  # audio decodes to the segment's duration within 10 ms


# ------------------------------------------------------------------ curated view, hand-made rows


def test_curated_views_drop_quality_drops_and_dedup_duplicates_with_their_rows(tmp_path):
    from test_audit import SOURCES, _manifest, _segment, _write

    from mmcurate.schemas.records import DedupCluster, SegmentQuality, Transcript, Word

    a, b, c = SOURCES[0].source_id, SOURCES[2].source_id, SOURCES[3].source_id  # b: a's copy
    words = [Word("hello", 0.0, 0.5, 0.9)]
    segs = [_segment(a, 0, 0.0, 1.0, 0, "en", words, -0.2), _segment(a, 1, 1.0, 2.0, 0, "en", words, -0.2),
            _segment(b, 0, 0.0, 1.0, 0, "en", words, -0.2), _segment(c, 0, 0.0, 1.0, 0, "en", words, -0.2)]
    quality = [SegmentQuality(s.segment_id, s.source_id, s.start, s.end, 1.0, 1, 5, 5.0, "en", 0.9, "en",
                              0.9, "en", 0.9, False, False, 0.0, [], 0.0, 0.0, None, None, None, None, None,
                              0.5, [] if s.segment_id != f"{a}-seg-00001" else ["too_short"],
                              s.segment_id != f"{a}-seg-00001",
                              None if s.segment_id != f"{a}-seg-00001" else "too_short", "r")
               for s in segs]
    transcripts = [Transcript(sid, "[spk0] hello", "en", 0.9, 1, 1, 1, 1.0, "m", None, "r") for sid in (a, b, c)]
    clusters = [DedupCluster(f"source:{sid}", sid, "source", sid, "dc-1", a, None, sid == a, "audio_fp", 0.97, "r")
                for sid in (a, b)]
    # c's transcript repeats a's text: a text duplicate takes c's segments with it, c stays a source
    clusters += [DedupCluster(f"transcript:{sid}", sid, "transcript", sid, "dc-2", a, None, sid == a, "text_hash",
                              1.0, "r") for sid in (a, c)]
    for table, rows in (("sources", [SOURCES[0], SOURCES[2], SOURCES[3]]), ("segments", segs),
                        ("segment_quality", quality), ("transcripts", transcripts), ("dedup_clusters", clusters)):
        _write(tmp_path, table, rows)
    _manifest(tmp_path, {"sources": 3, "segments": 4, "segment_quality": 4, "transcripts": 3, "dedup_clusters": 4})
    con = audit.connect(str(tmp_path))
    ids = lambda sql: sorted(r[0] for r in con.execute(sql).fetchall())  # noqa: E731
    assert ids("SELECT source_id FROM curated_sources") == sorted([a, c])
    assert ids("SELECT source_id FROM curated_transcripts") == [a]
    assert ids("SELECT segment_id FROM curated_segments") == [f"{a}-seg-00000"]
    summary = audit.summarize(str(tmp_path))["curated"]
    assert summary["rows"]["segments"] == {"curated": 1, "rows": 4}
    assert summary["rows"]["sources"] == {"curated": 2, "rows": 3}
    assert "Curated (kept by quality" in audit.format_summary(audit.summarize(str(tmp_path)))


# ------------------------------------------------------------------ one real run, its exports


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("curated") / "out"
    inputs = [str(MEDIA / "speech" / f) for f in (*JFK, "LDC93S1.wav")] + [str(MEDIA / "neardup")]
    assert cli.main(["run", *inputs, "--output", str(out), "--no-audit",
                     "--set", "segments.include_audio=true"]) == 0
    return out


def _uri_of(out: Path) -> dict[str, str]:
    return {r["source_id"]: os.path.basename(r["uri"])
            for r in audit.query(str(out), "SELECT source_id, uri FROM sources").to_pylist()}


def _curated_segments(out: Path) -> dict[str, dict]:
    rows = audit.query(str(out), 'SELECT segment_id, source_id, start, "end", text, speaker, language '
                                 "FROM curated_segments").to_pylist()
    return {r["segment_id"]: r for r in rows}


@pytest.mark.slow
def test_curated_counts_on_the_shared_media_are_the_hand_checked_ones(run_out):
    names = _uri_of(run_out)
    q = lambda sql: sorted(names[r["source_id"]] for r in audit.query(str(run_out), sql).to_pylist())  # noqa: E731
    # jfk: three encodings of one recording, the 44.1 kHz stereo FLAC is the representative;
    # chair-19 is a near-duplicate of chair-orig; the doorknob clip is no one's duplicate
    assert q("SELECT source_id FROM curated_sources") == sorted(
        ["jfk.flac", "LDC93S1.wav", "chair-orig-22-sd-bar.mp4", "doorknob-hd-no-bar.mp4"])
    assert q("SELECT source_id FROM curated_transcripts") == ["LDC93S1.wav", "jfk.flac"]
    assert q("SELECT DISTINCT source_id FROM curated_segments") == ["LDC93S1.wav", "jfk.flac"]
    assert q("SELECT source_id FROM curated_documents") == ["chair-orig-22-sd-bar.mp4", "doorknob-hd-no-bar.mp4"]
    summary = audit.summarize(str(run_out))
    kept = audit.query(str(run_out), "SELECT count(*) n FROM kept_segments k JOIN sources s USING (source_id) "
                                     "WHERE s.uri LIKE '%jfk.flac' OR s.uri LIKE '%LDC93S1.wav'").to_pylist()[0]["n"]
    assert summary["curated"]["rows"]["segments"]["curated"] == kept
    assert summary["curated"]["rows"]["transcripts"] == {"curated": 2, "rows": 4}
    assert summary["curated"]["rows"]["documents"] == {"curated": 2, "rows": 3}
    assert not summary["problems"]
    # the stored audio: every segment has its FLAC, the Hugging Face Audio layout
    rows = audit.query(str(run_out), "SELECT segment_id, audio FROM segments").to_pylist()
    assert rows and all(r["audio"]["path"] == f"{r['segment_id']}.flac" for r in rows)


def _export(run_out: Path, fmt: str, to: Path, **kw) -> dict:
    summary = run_export(str(run_out), fmt, str(to), **kw)
    assert summary["segments"] == len(_curated_segments(run_out))
    return summary


def _same_bytes(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and "_parts" not in p.parts)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and "_parts" not in p.parts)
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


@pytest.mark.slow
def test_lhotse_export_reads_back_with_lhotse(run_out, tmp_path):
    from lhotse import CutSet, RecordingSet, SupervisionSet, fix_manifests, load_manifest, validate
    from lhotse.qa import validate_recordings_and_supervisions

    _export(run_out, "lhotse", tmp_path / "a")
    recs = load_manifest(tmp_path / "a" / "recordings.jsonl.gz")
    sups = load_manifest(tmp_path / "a" / "supervisions.jsonl.gz")
    cuts = load_manifest(tmp_path / "a" / "cuts.jsonl.gz")
    assert (type(recs), type(sups), type(cuts)) == (RecordingSet, SupervisionSet, CutSet)
    for manifest in (recs, sups, cuts):
        validate(manifest)
    validate_recordings_and_supervisions(recs, sups)
    fixed_recs, fixed_sups = fix_manifests(recs, sups)
    assert len(fixed_recs) == len(recs) and len(fixed_sups) == len(sups)  # nothing to fix
    want = _curated_segments(run_out)
    assert sorted(c.id for c in cuts) == sorted(want) and sorted(s.id for s in sups) == sorted(want)
    for cut in cuts:
        seg, sup = want[cut.id], cut.supervisions[0]
        assert (sup.text, sup.speaker, sup.language) == (seg["text"].strip(), seg["speaker"], seg["language"])
        assert cut.start == pytest.approx(seg["start"], abs=1e-6)
        assert cut.duration == pytest.approx(seg["end"] - seg["start"], abs=1e-6)
        # Lhotse keeps alignments in the recording's time (a cut's supervision start is the cut's)
        assert sup.alignment["word"] and all(cut.start <= w.start <= cut.end for w in sup.alignment["word"])
        audio = cut.load_audio()  # from the source media
        assert audio.shape[-1] / cut.sampling_rate == pytest.approx(cut.duration, abs=TOLERANCE_S)
    _export(run_out, "lhotse", tmp_path / "b")
    _same_bytes(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_shar_export_loads_its_audio_without_the_source_media(run_out, tmp_path, monkeypatch):
    from lhotse import CutSet

    from mmcurate.transforms import decode

    def no_media(*_a, **_k):
        raise AssertionError("the Shar export decoded a source: the stored audio was not used")

    monkeypatch.setattr(decode, "decode_audio", no_media)
    first = _export(run_out, "shar", tmp_path / "a", shard_size=2)
    assert first["shards"] == math.ceil(first["segments"] / 2)
    want = _curated_segments(run_out)
    got = list(CutSet.from_shar(in_dir=tmp_path / "a"))
    assert sorted(c.id for c in got) == sorted(want)  # every curated segment, once
    for cut in got:
        seg, sup = want[cut.id], cut.supervisions[0]
        assert cut.recording.sources[0].type == "memory"  # the audio is in the shard
        assert sup.text == seg["text"].strip() and sup.speaker == seg["speaker"]
        assert sup.duration == pytest.approx(seg["end"] - seg["start"], abs=1e-6)
        # the recording is the segment's own audio: the words in its time
        assert all(0 <= w.start <= cut.duration for w in sup.alignment["word"])
        audio = cut.load_audio()
        assert cut.sampling_rate == 16000
        assert audio.shape[-1] / 16000 == pytest.approx(seg["end"] - seg["start"], abs=TOLERANCE_S)
    again = _export(run_out, "shar", tmp_path / "a", shard_size=2)  # resumes: nothing to redo
    assert again["shards_skipped"] == again["shards"]
    _export(run_out, "shar", tmp_path / "b", shard_size=2)
    _same_bytes(tmp_path / "a", tmp_path / "b")


# NeMo's ASR manifest (nemo.collections.asr.data: one JSON object per line): audio_filepath
# (relative paths resolve against the manifest's folder), duration (seconds), text; optional
# offset (seconds), speaker, lang and any further keys, which its readers keep.
NEMO_REQUIRED = {"audio_filepath": str, "duration": float, "text": str}
NEMO_OPTIONAL = {"offset": float, "speaker": (str, type(None)), "lang": (str, type(None))}


def read_nemo_manifest(path: Path) -> list[dict]:
    """A NeMo manifest reader to that schema: each line checked, its audio loaded (offset,
    duration) with soundfile as NeMo's AudioSegment does."""
    import soundfile as sf

    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        e = json.loads(line)
        for key, typ in NEMO_REQUIRED.items():
            assert isinstance(e.get(key), typ), f"line {n}: {key} missing or not {typ}"
        for key, typ in NEMO_OPTIONAL.items():
            assert key not in e or isinstance(e[key], typ), f"line {n}: {key} not {typ}"
        assert e["duration"] > 0 and e.get("offset", 0.0) >= 0
        audio_path = e["audio_filepath"]
        if not os.path.isabs(audio_path):
            audio_path = str(path.parent / audio_path)
        with sf.SoundFile(audio_path) as f:
            f.seek(int(round(e.get("offset", 0.0) * f.samplerate)))
            e["samples"] = f.read(int(round(e["duration"] * f.samplerate)))
            e["sample_rate"] = f.samplerate
        entries.append(e)
    return entries


@pytest.mark.slow
def test_nemo_manifest_follows_the_schema_and_reads_back(run_out, tmp_path):
    _export(run_out, "nemo", tmp_path / "a", shard_size=3)
    entries = read_nemo_manifest(tmp_path / "a" / "manifest.json")
    want = _curated_segments(run_out)
    assert sorted(e["segment_id"] for e in entries) == sorted(want)
    for e in entries:
        seg = want[e["segment_id"]]
        assert (e["text"], e["speaker"], e["lang"]) == (seg["text"].strip(), seg["speaker"], seg["language"])
        assert e["duration"] == pytest.approx(seg["end"] - seg["start"], abs=1e-6)
        assert not os.path.isabs(e["audio_filepath"])  # the stored audio, beside the manifest
        assert len(e["samples"]) / e["sample_rate"] == pytest.approx(e["duration"], abs=TOLERANCE_S)
    _export(run_out, "nemo", tmp_path / "b", shard_size=3)
    _same_bytes(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_export_cli_refuses_what_it_cannot_export(run_out, tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nothing"), "--format", "nemo", "--to", str(tmp_path / "x")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert cli.main(["export", str(run_out), "--format", "nemo", "--to", str(tmp_path / "x"), "--shard-size", "0"]) == 2
    broken = tmp_path / "broken"
    shutil.copytree(run_out, broken)
    next((broken / "segments").glob("*.parquet")).unlink()
    assert cli.main(["export", str(broken), "--format", "nemo", "--to", str(tmp_path / "y")]) == 1
    assert "not consistent" in capsys.readouterr().err
    assert cli.main(["export", str(run_out), "--format", "nemo", "--to", str(tmp_path / "z")]) == 0
    assert "exported" in capsys.readouterr().out


# ------------------------------------------------------------------ webdataset, hf


def test_webdataset_groups_a_document_and_its_images_into_one_sample(tmp_path):
    """The tar layout alone: `<document_id>.json` and `<document_id>.<position>.jpg` are one
    WebDataset sample whose JSON names its image members; the same members give the same bytes."""
    import webdataset as wds
    from PIL import Image

    from mmcurate.transforms.export import _tar, document_json

    jpeg = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(jpeg, format="JPEG")
    items = [{"position": 0, "modality": "image", "start": 0.0, "end": 1.0, "speaker": None, "text": None,
              "num_words": None, "image_format": "jpeg", "keyframe_id": "s1-kf-00000", "image": jpeg.getvalue()},
             {"position": 1, "modality": "text", "start": 0.0, "end": 1.0, "speaker": "s1-spk0", "text": "hi there",
              "num_words": 2, "image_format": None, "keyframe_id": None}]
    doc = {"document_id": "s1-doc", "source_id": "s1", "uri": "/m/a.mp4", "duration_s": 1.0, "speech_s": 1.0,
           "language": "en", "items": items}
    meta = document_json(doc)
    assert (meta["texts"], meta["images"]) == ([None, "hi there"], ["00000.jpg", None])
    assert (meta["num_images"], meta["num_texts"], meta["num_words"]) == (1, 1, 2)
    members = [("s1-doc.json", json.dumps(meta).encode()), ("s1-doc.00000.jpg", jpeg.getvalue())]
    _tar(str(tmp_path / "a.tar"), iter(members))
    _tar(str(tmp_path / "b.tar"), iter(members))
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    [sample] = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False).decode("pil"))
    assert sample["__key__"] == "s1-doc" and sample["json"]["document_id"] == "s1-doc"
    assert sample[meta["images"][0]].size == (8, 6)


def _curated_documents(out: Path) -> dict[str, dict]:
    """Each curated document's curated items, as the tables hold them."""
    docs = {r["document_id"]: {"texts": [], "images": []} for r in
            audit.query(str(out), "SELECT document_id FROM curated_documents").to_pylist()}
    for it in audit.query(str(out), "SELECT document_id, modality, text, width, height FROM curated_interleaved "
                                    "ORDER BY document_id, position").to_pylist():
        docs[it["document_id"]]["texts"].append(it["text"] if it["modality"] == "text" else None)
        docs[it["document_id"]]["images"].append((it["width"], it["height"]) if it["modality"] == "image" else None)
    return docs


@pytest.mark.slow
def test_webdataset_export_reads_back_with_webdataset(run_out, tmp_path, monkeypatch):
    import soundfile as sf
    import webdataset as wds

    from mmcurate.transforms import decode

    def no_media(*_a, **_k):
        raise AssertionError("the webdataset export decoded a source: the stored audio was not used")

    monkeypatch.setattr(decode, "decode_audio", no_media)
    first = _export(run_out, "webdataset", tmp_path / "a", shard_size=2)
    want, want_docs = _curated_segments(run_out), _curated_documents(run_out)
    assert first["documents"] == len(want_docs) == 2
    seg_tars = sorted(str(p) for p in (tmp_path / "a").glob("segments-*.tar"))
    doc_tars = sorted(str(p) for p in (tmp_path / "a").glob("documents-*.tar"))
    assert len(seg_tars) == math.ceil(len(want) / 2) and len(doc_tars) == 1
    got = list(wds.WebDataset(seg_tars, shardshuffle=False).decode())
    assert sorted(s["__key__"] for s in got) == sorted(want)  # every curated segment, once
    for sample in got:
        seg, meta = want[sample["__key__"]], sample["json"]
        assert (meta["text"], meta["speaker"], meta["language"]) == (
            seg["text"].strip(), seg["speaker"], seg["language"])
        assert (meta["start"], meta["end"]) == (seg["start"], seg["end"])
        audio, sr = sf.read(io.BytesIO(sample["flac"]))
        assert sr == 16000 and len(audio) / sr == pytest.approx(seg["end"] - seg["start"], abs=TOLERANCE_S)
    got = list(wds.WebDataset(doc_tars, shardshuffle=False).decode("pil"))
    assert sorted(s["__key__"] for s in got) == sorted(want_docs)  # every curated document, once
    for sample in got:
        doc, meta = want_docs[sample["__key__"]], sample["json"]
        assert meta["texts"] == doc["texts"] and any(doc["images"])
        assert [None if name is None else sample[name].size for name in meta["images"]] == doc["images"]
    again = _export(run_out, "webdataset", tmp_path / "a", shard_size=2)  # resumes: nothing to redo
    assert again["shards_skipped"] == again["shards"]
    _export(run_out, "webdataset", tmp_path / "b", shard_size=2)
    _same_bytes(tmp_path / "a", tmp_path / "b")


ROOT = Path(__file__).resolve().parents[1]
HF_VENV = ROOT / ".venv-hf"
HF_PYTHON = HF_VENV / "bin" / "python"


def _hf_python() -> Path:
    """.venv-hf's python (`make test` builds it first); made here when missing, skipped only if it
    cannot be made."""
    if not (HF_VENV / ".installed").exists():
        made = subprocess.run(["make", "-s", ".venv-hf/.installed"], cwd=ROOT, capture_output=True, text=True)
        if made.returncode or not HF_PYTHON.exists():
            last = (made.stderr or made.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.skip(f".venv-hf (datasets 5.2, tests/requirements-hf.txt) could not be created: {last[0]}")
    return HF_PYTHON


@pytest.mark.slow
def test_hf_export_loads_with_datasets_audio_and_images_decoded(run_out, tmp_path):
    python = _hf_python()
    first = _export(run_out, "hf", tmp_path / "a", shard_size=2)
    assert first["documents"] == 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"),
           "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run([str(python), str(ROOT / "tests" / "hf_read_back.py"), str(tmp_path / "a")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["version"] == "5.2.0"
    want, want_docs = _curated_segments(run_out), _curated_documents(run_out)
    assert sorted(r["segment_id"] for r in got["segments"]) == sorted(want)  # every curated segment, once
    for r in got["segments"]:
        seg = want[r["segment_id"]]
        assert (r["text"], r["speaker"], r["language"]) == (seg["text"].strip(), seg["speaker"], seg["language"])
        assert (r["start"], r["end"]) == (seg["start"], seg["end"]) and r["num_words"] > 0
        assert r["sample_rate"] == 16000
        assert r["samples"] / r["sample_rate"] == pytest.approx(seg["end"] - seg["start"], abs=TOLERANCE_S)
    assert sorted(d["document_id"] for d in got["documents"]) == sorted(want_docs)
    for d in got["documents"]:
        doc = want_docs[d["document_id"]]
        assert d["texts"] == doc["texts"]
        # decoded by datasets to PIL images of the stored size
        assert [None if im is None else tuple(im[1:]) for im in d["images"]] == doc["images"]
        assert all(im is None or im[0].startswith("PIL.") for im in d["images"])
    _export(run_out, "hf", tmp_path / "b", shard_size=2)
    _same_bytes(tmp_path / "a", tmp_path / "b")
