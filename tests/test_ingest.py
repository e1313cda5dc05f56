"""Ingest over local inputs: files, folders, globs, manifests, and every ledger reason they can hit."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import equal_to

from mmcurate.pipelines.config import IngestConfig
from mmcurate.schemas.records import to_table
from mmcurate.transforms.ingest import escape_uri

from ingest_harness import run_ingest, sha, write_wav


def by_reason(rejected):
    out: dict[str, list] = {}
    for r in rejected:
        out.setdefault(r.reason, []).append(r)
    return out


def test_files_folders_globs_and_duplicates(tmp_path):
    a = write_wav(tmp_path / "lib" / "one.wav", 220)
    (tmp_path / "lib" / "copy.wav").write_bytes(a)  # same bytes, smaller name: it is kept
    big = os.urandom(2 * (1 << 20) + 12345)  # > 2 read chunks: hashing must stream all of it
    (tmp_path / "lib" / "sub").mkdir()
    (tmp_path / "lib" / "sub" / "long.MP3").write_bytes(big)  # extension match ignores case
    (tmp_path / "lib" / "notes.txt").write_text("not media")
    c = write_wav(tmp_path / "globbed" / "x.flac", 440)  # not really FLAC: ingest does not decode
    write_wav(tmp_path / "globbed" / "y.wav", 550)  # not matched by the glob
    gz = gzip.compress(b"pretend audio" * 100)
    (tmp_path / "named.mp3.gz").write_bytes(gz)  # named explicitly: attempted, hashed raw (not gunzipped)

    lib = tmp_path / "lib"
    expected = [
        (str(lib / "copy.wav"), "file", sha(a), len(a)),
        (str(lib / "sub" / "long.MP3"), "file", sha(big), len(big)),
        (str(tmp_path / "globbed" / "x.flac"), "file", sha(c), len(c)),
        (str(tmp_path / "named.mp3.gz"), "file", sha(gz), len(gz)),
    ]
    inputs = [lib, str(tmp_path / "globbed" / "*.flac"), tmp_path / "named.mp3.gz"]
    media, rejected, counters = run_ingest(inputs, media_check=equal_to(expected))

    assert counters["ingest.inputs"] == 6
    for m in media:
        assert m.source_id == m.sha256[:20]
        assert os.path.isabs(m.media_uri) and Path(m.media_uri).read_bytes()[:4] == Path(m.uri).read_bytes()[:4]
        assert m.metadata == {}
    reasons = by_reason(rejected)
    assert sorted(reasons) == ["duplicate", "unsupported_extension"]
    (dup,) = reasons["duplicate"]
    assert dup.uri == str(lib / "one.wav") and dup.source_id == sha(a)[:20]
    assert str(lib / "copy.wav") in dup.detail
    (txt,) = reasons["unsupported_extension"]
    assert txt.uri == str(lib / "notes.txt") and ".txt" in txt.detail

    # deterministic: the same inputs give the same media and the same rejection ids
    media2, rejected2, _ = run_ingest(list(reversed(inputs)))
    assert sorted(media2, key=lambda m: m.uri) == sorted(media, key=lambda m: m.uri)
    assert sorted(r.rejection_id for r in rejected2) == sorted(r.rejection_id for r in rejected)


def test_manifests_with_metadata_and_relative_paths(tmp_path):
    m = tmp_path / "manifests"
    w1 = write_wav(m / "audio" / "ep1.wav", 300)
    w2 = write_wav(m / "audio" / "ep2.wav", 310)
    w3 = write_wav(tmp_path / "elsewhere" / "ep3.wav", 320)
    w4 = write_wav(m / "audio" / "ep4.wav", 330)
    w5 = write_wav(m / "audio" / "ep5.wav", 340)
    lines = [
        json.dumps({"uri": "audio/ep1.wav", "title": "Episode 1", "series": "Show", "num_speakers": 2,
                    "language": "en", "explicit": False, "tags": ["a", "b"], "rating": 4.5}),
        "",
        json.dumps({"uri": str(tmp_path / "elsewhere" / "ep3.wav"), "license": "CC-BY-4.0", "episode": 3}),
        json.dumps({"uri": "audio/missing.wav", "title": "gone"}),
        json.dumps({"title": "no uri here"}),
        "{not json",
    ]
    (m / "list.jsonl").write_text("\n".join(lines) + "\n")
    with open(m / "list.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["uri", "title", "min_speakers", "max_speakers", "language"])
        wr.writerow(["audio/ep2.wav", "Episode, two", "1", "3", ""])
    pq.write_table(
        pa.table({"uri": ["audio/ep4.wav", "audio/ep5.wav"], "num_speakers": [1, None], "series": ["P", "P"]}),
        m / "list.parquet",
    )
    (m / "nouri.csv").write_text("path,title\naudio/ep1.wav,x\n")

    manifests = [m / "list.jsonl", m / "list.csv", m / "list.parquet", m / "nouri.csv"]
    media, rejected, counters = run_ingest(manifests)

    got = {Path(x.uri).name: x for x in media}
    assert sorted(got) == ["ep1.wav", "ep2.wav", "ep3.wav", "ep4.wav", "ep5.wav"]
    assert all(x.ingested_via == "manifest" for x in media)
    assert got["ep1.wav"].uri == str(m / "audio" / "ep1.wav")  # relative to the manifest's folder
    assert got["ep1.wav"].sha256 == sha(w1) and got["ep1.wav"].bytes == len(w1)
    assert got["ep1.wav"].metadata == {
        "title": "Episode 1", "series": "Show", "num_speakers": "2", "language": "en", "explicit": "false",
        "rating": "4.5",
    }
    assert got["ep2.wav"].sha256 == sha(w2)
    assert got["ep2.wav"].metadata == {"title": "Episode, two", "min_speakers": "1", "max_speakers": "3"}
    assert got["ep3.wav"].sha256 == sha(w3) and got["ep3.wav"].metadata == {"license": "CC-BY-4.0", "episode": "3"}
    assert got["ep4.wav"].sha256 == sha(w4) and got["ep4.wav"].metadata == {"num_speakers": "1", "series": "P"}
    assert got["ep5.wav"].sha256 == sha(w5) and got["ep5.wav"].metadata == {"series": "P"}

    reasons = by_reason(rejected)
    assert sorted(reasons) == ["bad_manifest", "not_found"]
    (nf,) = reasons["not_found"]
    assert nf.uri == str(m / "audio" / "missing.wav")
    bad = sorted(r.detail for r in reasons["bad_manifest"])
    assert len(bad) == 3
    assert any("no 'uri' value" in d and "row 5" in d for d in bad)
    assert any("not JSON" in d and "row 6" in d for d in bad)
    assert any("nouri.csv" in d and "no 'uri' column" in d for d in bad)
    assert counters["ingest.inputs"] == 9


def test_bad_inputs_go_to_the_ledger(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "big.wav").write_bytes(b"x" * 64)
    (tmp_path / "ok.wav").write_bytes(b"y" * 16)
    fd = os.open(os.fsencode(tmp_path) + b"/bad\xff.wav", os.O_CREAT | os.O_WRONLY)
    os.write(fd, b"z" * 8)
    os.close(fd)
    cfg = IngestConfig(max_bytes=32)
    inputs = [
        tmp_path / "does-not-exist.mp3",
        tmp_path / "empty.wav",
        tmp_path / "big.wav",
        tmp_path / "ok.wav",
        str(tmp_path / "nomatch" / "*.wav"),
    ]
    media, rejected, _ = run_ingest(inputs, cfg)
    assert [m.uri for m in media] == [str(tmp_path / "ok.wav")]
    got = {(r.reason, r.uri) for r in rejected}
    assert got == {
        ("not_found", str(tmp_path / "does-not-exist.mp3")),
        ("empty_file", str(tmp_path / "empty.wav")),
        ("too_large", str(tmp_path / "big.wav")),
        ("not_found", str(tmp_path / "nomatch" / "*.wav")),
    }
    (tl,) = [r for r in rejected if r.reason == "too_large"]
    assert "64 bytes" in tl.detail and "32" in tl.detail

    # a folder holding a file whose name is not UTF-8: ledger row with an escaped, storable uri
    media, rejected, _ = run_ingest([tmp_path], cfg)
    bad = [r for r in rejected if r.reason == "invalid_path"]
    assert len(bad) == 1 and bad[0].uri == str(tmp_path) + "/bad\\xff.wav"
    bad[0].uri.encode("utf-8")  # valid text
    pq.write_table(to_table("rejected", rejected), tmp_path / "rejected.parquet")  # Parquet can hold it
    assert pq.read_table(tmp_path / "rejected.parquet").num_rows == len(rejected)
    assert escape_uri(os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xff.wav")) == bad[0].uri


def test_real_media_files_are_hashed(media):
    jfk = media / "speech" / "jfk.mp3"
    m, r, _ = run_ingest([jfk, media / "speech" / "jfk.wav"])
    assert not r
    got = {x.uri: x for x in m}
    assert got[str(jfk)].sha256 == sha(jfk.read_bytes()) and got[str(jfk)].bytes == jfk.stat().st_size


def test_output_inside_an_input_folder_is_not_ingested_again(tmp_path, caplog):
    """`--output lib/out` with input `lib`: the second run lists what the first one did, not
    its shards, manifest and downloads (inputs stayed 1 -> 5 -> 8 before)."""
    lib = tmp_path / "lib"
    write_wav(lib / "talk.wav", 230)
    out = lib / "out"
    media1, rejected1, counters1 = run_ingest([lib], exclude=[out, out / "_downloads"])
    assert [m.uri for m in media1] == [str(lib / "talk.wav")] and not rejected1
    # what a run leaves in its output: shards, a manifest, downloaded media
    (out / "sources").mkdir(parents=True)
    pq.write_table(to_table("rejected", rejected1), out / "sources" / "part-00000.parquet")
    (out / "manifest.json").write_text("{}")
    write_wav(out / "_downloads" / "0123abcd.wav", 240)
    with caplog.at_level("INFO", logger="mmcurate.ingest"):
        media2, rejected2, counters2 = run_ingest([lib], exclude=[out, out / "_downloads"])
    assert counters2["ingest.inputs"] == counters1["ingest.inputs"] == 1
    assert media2 == media1 and not rejected2
    said = [r.getMessage() for r in caplog.records if "not reading" in r.getMessage()]
    assert said == [f"not reading {out} as input: this run writes its output there"]
    # a glob over the input folder skips it too; the output folder named as input is a ledger row
    media3, rejected3, _ = run_ingest([str(lib / "**"), out], exclude=[out])
    assert [m.uri for m in media3] == [str(lib / "talk.wav")]
    assert [(r.reason, r.uri) for r in rejected3] == [("not_found", str(out))]
    assert "where this run writes its output" in rejected3[0].detail


def test_symlinked_subfolders_are_followed_once(tmp_path):
    lib = tmp_path / "lib"
    a = write_wav(lib / "a.wav", 250)
    shared = tmp_path / "shared"
    b = write_wav(shared / "b.wav", 260)
    c = write_wav(shared / "deeper" / "c.wav", 270)
    (lib / "linked").symlink_to(shared, target_is_directory=True)  # a plain symlinked subfolder
    media, rejected, counters = run_ingest([lib])
    assert sorted((m.uri, m.sha256) for m in media) == sorted([
        (str(lib / "a.wav"), sha(a)),
        (str(lib / "linked" / "b.wav"), sha(b)),
        (str(lib / "linked" / "deeper" / "c.wav"), sha(c)),
    ])
    assert not rejected and counters["ingest.inputs"] == 3


def test_symlink_loops_end_as_ledger_rows(tmp_path):
    lib = tmp_path / "lib"
    a = write_wav(lib / "a.wav", 280)
    write_wav(lib / "sub" / "s.wav", 290)
    (lib / "sub" / "up").symlink_to(lib, target_is_directory=True)  # a loop: back to an ancestor
    (lib / "again").symlink_to(lib / "sub", target_is_directory=True)  # a second name for sub
    (lib / "x.wav").symlink_to(lib / "y.wav")  # file links that point at each other
    (lib / "y.wav").symlink_to(lib / "x.wav")
    media, rejected, _ = run_ingest([lib])
    # "again" sorts before "sub": sub's files are listed under the first name that reaches them
    assert sorted(m.uri for m in media) == [str(lib / "a.wav"), str(lib / "again" / "s.wav")]
    got = sorted((r.reason, r.uri) for r in rejected)
    assert got == [
        ("duplicate", str(lib / "sub")),
        ("unreadable", str(lib / "again" / "up")),
        ("unreadable", str(lib / "x.wav")),
        ("unreadable", str(lib / "y.wav")),
    ]
    loop = next(r for r in rejected if r.uri == str(lib / "again" / "up"))
    assert "symlink loop" in loop.detail and str(lib) in loop.detail
    assert sha(a) == next(m.sha256 for m in media if m.uri == str(lib / "a.wav"))


EVIL = "\x1b]0;evil\x07 a\nINFO fake"  # an OSC that retitles the terminal, and a forged log line


def _log_is_clean(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text
    assert not [line for line in text.splitlines() if line.startswith("INFO fake")]


def test_names_with_control_characters_are_escaped_in_log_lines(tmp_path, caplog):
    lib = tmp_path / "lib"
    tone = write_wav(lib / f"ep{EVIL}.wav", 300)
    feed = tmp_path / f"feed{EVIL}.xml"  # not well-formed: its recovery is a log line naming it
    write_wav(tmp_path / "b.wav", 310)
    feed.write_text("<rss><channel><title>T&nbsp;</title><item><guid>g</guid>"
                    "<enclosure url='b.wav'/></item></channel></rss>")
    out = lib / f"out{EVIL}"
    write_wav(out / "_downloads" / "x.wav", 320)
    with caplog.at_level("INFO"):
        media, rejected, _ = run_ingest([lib, feed], exclude=[out])
    assert not rejected
    assert sorted(m.uri for m in media) == sorted([str(lib / f"ep{EVIL}.wav"), str(tmp_path / "b.wav")])
    assert next(m.sha256 for m in media if "ep" in m.uri) == sha(tone)  # stored exactly as named
    said = caplog.text
    assert "feed\\x1b]0;evil\\x07 a\\nINFO fake.xml is malformed but was recovered" in said
    assert "not reading " + str(lib) + "/out\\x1b]0;evil\\x07 a\\nINFO fake as input" in said
    _log_is_clean(said)
    from mmcurate.quality.audit import format_table

    shown = format_table(pa.table({"uri": [f"ep{EVIL}.wav"]}))  # `mmcurate audit --sql` output
    assert "ep\\x1b]0;evil\\x07 a\\nINFO fake.wav" in shown
    _log_is_clean(shown)


@pytest.mark.slow  # two runs with the real VAD model (~15 s)
def test_a_run_logs_and_prints_control_character_names_escaped(tmp_path, caplog, media):
    """The whole run (ingest + VAD, the per-source log lines) and `audit --sql` output: no raw
    ESC/BEL, no forged line; the sources table holds the exact name. The run's output lies
    inside its input folder: a second run has the same inputs (1 -> 5 -> 8 before)."""
    from mmcurate.pipelines import curate
    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.quality import audit

    lib = tmp_path / "lib"
    lib.mkdir()
    name = lib / f"talk{EVIL}.wav"
    name.write_bytes((media / "speech" / "LDC93S1.wav").read_bytes())
    out = lib / "out"
    with caplog.at_level("INFO"):
        first = curate.run([str(lib)], str(out), CurateConfig(stages=("vad",)))
    assert "talk\\x1b]0;evil\\x07 a\\nINFO fake.wav" in caplog.text
    _log_is_clean(caplog.text)
    assert first["stage_counts"]["ingest.inputs"] == 1
    second = curate.run([str(lib)], str(out), CurateConfig(stages=("vad",)))
    assert second["stage_counts"]["ingest.inputs"] == 1 and second["stage_counts"].get("ingest.rejected", 0) == 0
    tbl = audit.query(str(out), "SELECT uri FROM sources")
    assert tbl.column("uri").to_pylist() == [str(name)]
    shown = audit.format_table(audit.query(str(out), "SELECT regexp_replace(uri, '.*/', '') AS name FROM sources"))
    assert "talk\\x1b]0;evil\\x07 a\\nINFO fake.wav" in shown
    _log_is_clean(shown)
