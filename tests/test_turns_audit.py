"""The `turns` table in the audit: RTTM export, DER in DuckDB SQL (checked against
pyannote.metrics, tests/der_reference.py), the CLI's `audit --rttm / --der`, and the summary
figures."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import der_reference as der_mod

from mmcurate.quality import audit
from mmcurate.schemas.records import SourceRecord, TurnRow, to_table

RUN = "run-turns-0001"
MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
SAMPLE_WAV = MEDIA / "diarization" / "sample.wav"
SAMPLE_RTTM = MEDIA / "diarization" / "sample.rttm"

KEYS = ("der", "missed_s", "false_alarm_s", "confusion_s", "total_s")
SCORER_KEYS = ("der", "missed", "false_alarm", "confusion", "total")


# --------------------------------------------------------------------------- helpers


def _source(sid: str, uri: str, duration_s: float = 30.0) -> SourceRecord:
    return SourceRecord(
        source_id=sid, sha256=sid * 4, uri=uri, media_uri=uri, ingested_via="file",
        media_kind="audio", container="wav", audio_codec="pcm_s16le", video_codec=None,
        duration_s=duration_s, sample_rate=16000, channels=1, bytes=1000, speech_s=duration_s / 2,
        speech_ratio=0.5, metadata={}, run_id=RUN,
    )


def _overlapped(turns: list[tuple[float, float, str]]) -> list[bool]:
    """True where another speaker's turn intersects the turn (positive-length intersection)."""
    return [
        any(o[2] != t[2] and max(o[0], t[0]) < min(o[1], t[1]) for o in turns)
        for t in turns
    ]


def turn_rows(sid: str, turns: list[tuple[float, float, str]], model: str = "test-diarizer") -> list[TurnRow]:
    """TurnRow rows as the speech stage writes them: by start, speakers f"{sid}-spk{k}"."""
    ts = sorted(turns, key=lambda t: (t[0], t[1]))
    ids: dict[str, int] = {}
    labelled = [(s, e, f"{sid}-spk{ids.setdefault(lab, len(ids))}") for s, e, lab in ts]
    return [
        TurnRow(turn_id=f"{sid}-turn-{n:05d}", source_id=sid, speaker=lab, start=float(s), end=float(e),
                overlapped=ov, diarization_model=model, run_id=RUN)
        for n, ((s, e, lab), ov) in enumerate(zip(labelled, _overlapped(labelled)))
    ]


def _write(out: Path, table: str, records: list, part: int = 0) -> None:
    d = out / table
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table(table, records), d / f"part-{part:04d}-0000.parquet")


def _write_ref(path: Path, turns: list[tuple[float, float, str]], file_id: str = "ref") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(
        f"SPEAKER {file_id} 1 {s!r} {e - s!r} <NA> <NA> {lab} <NA> <NA>\n" for s, e, lab in turns
    ))
    return path


def _hyp_of(rows: list[TurnRow]) -> list[tuple[float, float, str]]:
    return [(r.start, r.end, r.speaker) for r in rows]


def _check_agrees(tmp_path: Path, ref: list, hyp: list, collar: float = 0.0, sid: str = "src1") -> dict:
    """der_from_turns (SQL over the parquet turns + RTTM in DuckDB) == pyannote.metrics."""
    out = tmp_path / f"out-{sid}"
    rows = turn_rows(sid, hyp)
    _write(out, "turns", rows)
    rttm = _write_ref(tmp_path / f"ref-{sid}.rttm", ref)
    got = audit.der_from_turns(str(out), sid, rttm, collar=collar)
    want = der_mod.der(der_mod.read_rttm(rttm), _hyp_of(rows), collar=collar)
    for k, wk in zip(KEYS, SCORER_KEYS):
        assert got[k] == pytest.approx(want[wk], abs=1e-6), (k, got, want)
    assert got["num_ref_speakers"] == len({lab for s, e, lab in ref if e > s})
    assert got["num_hyp_speakers"] == len({r.speaker for r in rows if r.end > r.start})
    return got


# --------------------------------------------------------------------------- DER: hand-made cases


def test_der_overlap(tmp_path: Path) -> None:
    ref = [(0.0, 10.0, "A"), (5.0, 15.0, "B")]
    hyp = [(0.0, 6.0, "x"), (4.0, 15.0, "y")]
    r = _check_agrees(tmp_path, ref, hyp)
    # ref speech 20 s; [0,4]: 1 ref A / hyp x ok; [4,5]: ref A, hyp x+y -> FA 1;
    # [5,6]: A+B vs x+y ok; [6,10]: A+B vs y -> missed 4; [10,15]: B vs y ok
    assert r["total_s"] == pytest.approx(20.0)
    assert r["false_alarm_s"] == pytest.approx(1.0)
    assert r["missed_s"] == pytest.approx(4.0)
    assert r["confusion_s"] == pytest.approx(0.0)
    assert r["der"] == pytest.approx(5.0 / 20.0)
    assert r["mapping"] == {"src1-spk0": "A", "src1-spk1": "B"}


def test_der_missed_speech(tmp_path: Path) -> None:
    r = _check_agrees(tmp_path, [(0.0, 10.0, "A"), (12.0, 20.0, "B")], [(0.0, 10.0, "x")])
    assert (r["missed_s"], r["false_alarm_s"], r["confusion_s"]) == pytest.approx((8.0, 0.0, 0.0))
    assert r["der"] == pytest.approx(8.0 / 18.0)
    assert r["num_ref_speakers"] == 2 and r["num_hyp_speakers"] == 1


def test_der_false_alarm(tmp_path: Path) -> None:
    r = _check_agrees(tmp_path, [(2.0, 8.0, "A")], [(0.0, 10.0, "x"), (20.0, 22.0, "y")])
    assert (r["missed_s"], r["false_alarm_s"], r["confusion_s"]) == pytest.approx((0.0, 6.0, 0.0))
    assert r["der"] == pytest.approx(1.0)


def test_der_more_hyp_than_ref_speakers(tmp_path: Path) -> None:
    ref = [(0.0, 10.0, "A"), (10.0, 20.0, "B")]
    hyp = [(0.0, 5.0, "x"), (5.0, 10.0, "y"), (10.0, 20.0, "z"), (15.0, 18.0, "w")]
    r = _check_agrees(tmp_path, ref, hyp)
    # x->A (5 s) and z->B (10 s) mapped; y's 5 s is confusion, w's 3 s false alarm
    assert r["confusion_s"] == pytest.approx(5.0)
    assert r["false_alarm_s"] == pytest.approx(3.0)
    assert r["num_hyp_speakers"] == 4 and len(r["mapping"]) == 2
    assert r["der"] == pytest.approx(8.0 / 20.0)


def test_der_more_ref_than_hyp_speakers(tmp_path: Path) -> None:
    ref = [(0.0, 4.0, "A"), (4.0, 8.0, "B"), (8.0, 9.0, "C"), (8.5, 12.0, "A")]
    _check_agrees(tmp_path, ref, [(0.0, 12.0, "x")])


def test_der_speaker_overlapping_itself_counts_once(tmp_path: Path) -> None:
    ref = [(0.0, 10.0, "A"), (5.0, 12.0, "A"), (12.0, 15.0, "B")]
    hyp = [(0.0, 8.0, "x"), (6.0, 12.0, "x"), (11.0, 15.0, "y"), (11.5, 12.5, "y")]
    r = _check_agrees(tmp_path, ref, hyp)
    assert r["total_s"] == pytest.approx(15.0)  # A's [5, 10] is not counted twice
    assert r["false_alarm_s"] == pytest.approx(1.0)  # [11, 12]: x and y on A
    assert r["missed_s"] == pytest.approx(0.0) and r["confusion_s"] == pytest.approx(0.0)


@pytest.mark.parametrize("collar", [0.25, 0.5])
def test_der_collar_matches_scorer(tmp_path: Path, collar: float) -> None:
    ref = [(0.1, 10.0, "A"), (5.0, 15.0, "B"), (16.0, 17.2, "A")]
    hyp = [(0.0, 6.3, "x"), (4.0, 15.2, "y"), (15.9, 17.0, "x"), (20.0, 21.0, "z")]
    r = _check_agrees(tmp_path, ref, hyp, collar=collar)
    assert r["total_s"] < 10.0 + 10.0 + 1.2  # the collar removed reference time


def test_der_empty_sides(tmp_path: Path) -> None:
    # no turns for the source: everything missed
    out = tmp_path / "out"
    _write(out, "turns", turn_rows("other", [(0.0, 1.0, "x")]))
    rttm = _write_ref(tmp_path / "ref.rttm", [(0.0, 4.0, "A"), (2.0, 6.0, "B")])
    r = audit.der_from_turns(str(out), "src1", rttm)
    assert r["der"] == pytest.approx(1.0) and r["missed_s"] == pytest.approx(8.0)
    assert r["num_hyp_speakers"] == 0 and r["mapping"] == {}
    # empty reference, no hypothesis either: 0; with hypothesis: inf, like the scorer
    empty = tmp_path / "empty.rttm"
    empty.write_text("")
    assert audit.der_from_turns(str(out), "src1", empty)["der"] == 0.0
    assert audit.der_from_turns(str(out), "other", empty)["der"] == der_mod.der([], [(0.0, 1.0, "x")])["der"]


@pytest.mark.parametrize("seed", range(8))
def test_der_random_turns_match_scorer(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)

    def turns(n_spk: int, n: int) -> list:
        out = []
        for _ in range(n):
            s = round(rng.uniform(0, 60), 3)
            out.append((s, round(s + rng.uniform(0.05, 8), 3), f"s{rng.randrange(n_spk)}"))
        return out

    ref, hyp = turns(rng.randint(1, 4), 25), turns(rng.randint(1, 6), 30)
    _check_agrees(tmp_path, ref, hyp, collar=0.0, sid=f"r{seed}-0.0")
    # With a collar, a reference speaker's overlapping turns are merged first: der_sql puts the
    # collar around every turn's boundaries as written, pyannote.metrics around the merged
    # speech (they differ only for a reference where a speaker overlaps themself)
    merged = [(s.start, s.end, lab) for s, _, lab in der_mod.annotation(ref).itertracks(yield_label=True)]
    _check_agrees(tmp_path, merged, hyp, collar=0.25, sid=f"r{seed}-0.25")


def test_der_brute_force_mapping_matches_hungarian() -> None:
    pytest.importorskip("scipy")
    from mmcurate.quality import der_sql

    rng = random.Random(3)
    for nr, nh in ((3, 5), (5, 3), (4, 4), (1, 6)):
        cooc = [[rng.choice([0.0, rng.uniform(0, 10)]) for _ in range(nh)] for _ in range(nr)]
        hung = sum(cooc[r][c] for r, c in der_sql._assign(cooc))
        import builtins

        real_import = builtins.__import__

        def no_scipy(name, *a, **k):
            if name.startswith("scipy"):
                raise ImportError(name)
            return real_import(name, *a, **k)

        builtins.__import__ = no_scipy
        try:
            brute = sum(cooc[r][c] for r, c in der_sql._assign(cooc))
        finally:
            builtins.__import__ = real_import
        assert brute == pytest.approx(hung)


def test_der_picks_file_id_of_multi_file_rttm(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write(out, "sources", [_source("src1", "/data/talk one.wav"), _source("src2", "/data/b.wav")])
    _write(out, "turns", turn_rows("src1", [(0.0, 5.0, "x")]) + turn_rows("src2", [(0.0, 5.0, "x")]))
    rttm = tmp_path / "all.rttm"
    rttm.write_text(
        "SPEAKER talk_one 1 0.0 4.0 <NA> <NA> A <NA> <NA>\n"
        "SPEAKER b 1 0.0 5.0 <NA> <NA> A <NA> <NA>\n"
    )
    assert audit.der_from_turns(str(out), "src1", rttm)["false_alarm_s"] == pytest.approx(1.0)
    assert audit.der_from_turns(str(out), "src2", rttm)["der"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        audit.der_from_turns(str(out), "zzz", rttm)


# --------------------------------------------------------------------------- RTTM export


@pytest.fixture
def run_out(tmp_path: Path) -> Path:
    """Two sources with turns (one with overlap and a self-overlap), one without."""
    out = tmp_path / "out"
    _write(out, "sources", [
        _source("aaaa", "in/podcast/ep1.wav"),
        _source("bbbb", "https://example.com/feed/ep2.mp3?token=1"),
        _source("cccc", "in/silence.wav"),
    ])
    _write(out, "turns", turn_rows("aaaa", [(5.0, 15.0, "B"), (0.0, 10.0, "A"), (8.0, 12.0, "A")]))
    _write(out, "turns", turn_rows("bbbb", [(0.25, 4.125, "A")]), part=1)
    return out


def test_write_rttm_round_trip(run_out: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO")
    rdir = tmp_path / "rttm"
    paths = audit.write_rttm(str(run_out), str(rdir))
    assert sorted(Path(p).name for p in paths) == ["aaaa.rttm", "bbbb.rttm"]
    assert not (rdir / "cccc.rttm").exists()
    assert "cccc" in caplog.text and "no turns" in caplog.text
    assert audit.sources_without_turns(str(run_out)) == ["cccc"]

    con = audit.connect(str(run_out))
    try:
        for sid in ("aaaa", "bbbb"):
            want = con.execute(
                'SELECT start, "end", speaker FROM turns WHERE source_id = ? ORDER BY start', [sid]
            ).fetchall()
            got = der_mod.read_rttm(rdir / f"{sid}.rttm", sort=False)
            assert [g[2] for g in got] == [w[2] for w in want]
            assert [g[:2] for g in got] == [pytest.approx(w[:2], abs=1e-6) for w in want]
            lines = (rdir / f"{sid}.rttm").read_text().splitlines()
            for line in lines:
                f = line.split()
                assert len(f) == 10 and f[0] == "SPEAKER" and f[1] == sid and f[2] == "1"
                assert f[5:7] == ["<NA>", "<NA>"] and f[8:] == ["<NA>", "<NA>"]
                assert len(f[3].split(".")[1]) == 3 and len(f[4].split(".")[1]) == 3
            starts = [float(x.split()[3]) for x in lines]
            assert starts == sorted(starts)
    finally:
        con.close()
    # the RTTM written scores exactly like the table it came from
    a = audit.der_from_turns(str(run_out), "aaaa", rdir / "aaaa.rttm")
    assert a["der"] == pytest.approx(0.0, abs=1e-9) and a["total_s"] == pytest.approx(22.0)


def test_write_rttm_by_basename(run_out: Path, tmp_path: Path) -> None:
    rdir = tmp_path / "rttm"
    paths = audit.write_rttm(str(run_out), str(rdir), name="basename")
    assert sorted(Path(p).name for p in paths) == ["ep1.rttm", "ep2.rttm"]
    assert {ln.split()[1] for ln in (rdir / "ep2.rttm").read_text().splitlines()} == {"ep2"}
    with pytest.raises(ValueError):
        audit.write_rttm(str(run_out), str(rdir), name="title")


def test_write_rttm_basename_collision(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write(out, "sources", [_source("s1", "a/x.wav"), _source("s2", "b/x.wav")])
    _write(out, "turns", turn_rows("s1", [(0.0, 1.0, "A")]) + turn_rows("s2", [(0.0, 1.0, "A")]))
    paths = audit.write_rttm(str(out), str(tmp_path / "r"), name="basename")
    assert sorted(Path(p).name for p in paths) == ["x-s1.rttm", "x-s2.rttm"]


# --------------------------------------------------------------------------- summary


def test_summary_turns_figures(run_out: Path) -> None:
    s = audit.summarize(str(run_out))
    t = s["turns"]
    assert t["turns"] == 4 and t["sources"] == 2
    assert t["speakers_per_source"] == {"min": 1, "mean": 1.5, "max": 2, "histogram": {"1": 1, "2": 1}}
    # aaaa: A = [0, 12] (self-overlap once), B = [5, 15] -> speech 15, overlap 7; bbbb: 3.875 s
    assert t["speech_s"] == pytest.approx(15.0 + 3.875)
    assert t["overlapped_s"] == pytest.approx(7.0)
    assert t["overlapped_speech_share"] == pytest.approx(7.0 / 18.875)
    assert t["overlapped_turns"] == 3
    # the existing figures are all still there
    for k in ("tables", "inputs", "invariant_ok", "hours_in", "speakers_per_source", "per_stage",
              "words_per_minute", "asr_scores", "manifest"):
        assert k in s
    assert s["tables"]["turns"] == 4
    assert json.loads(json.dumps(s)) == s
    text = audit.format_summary(s)
    assert "Turns (diarization)" in text
    assert f"{7.0 / 18.875 * 100:.1f}%" in text
    assert "1 / 1.50 / 2" in text


def test_summary_without_turns(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write(out, "sources", [_source("aaaa", "in/a.wav")])
    s = audit.summarize(str(out))
    assert s["turns"]["turns"] == 0 and s["turns"]["overlapped_speech_share"] is None
    assert s["turns"]["speakers_per_source"]["mean"] is None
    assert "Turns (diarization)" not in audit.format_summary(s)


# --------------------------------------------------------------------------- CLI


def test_cli_rttm(run_out: Path, tmp_path: Path, capsys) -> None:
    from mmcurate.pipelines.cli import main

    rdir = tmp_path / "cli-rttm"
    assert main(["audit", str(run_out), "--rttm", str(rdir)]) == 0
    out = capsys.readouterr().out
    assert f"wrote 2 RTTM files to {rdir}" in out and "1 source without turns" in out
    assert sorted(p.name for p in rdir.iterdir()) == ["aaaa.rttm", "bbbb.rttm"]

    rdir2 = tmp_path / "cli-rttm-base"
    assert main(["audit", str(run_out), "--rttm", str(rdir2), "--rttm-name", "basename", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert sorted(Path(p).name for p in j["rttm"]["files"]) == ["ep1.rttm", "ep2.rttm"]
    assert j["rttm"]["sources_without_turns"] == ["cccc"]


def test_cli_der_file_and_directory(run_out: Path, tmp_path: Path, capsys) -> None:
    from mmcurate.pipelines.cli import main

    ref_a = [(0.0, 11.0, "spkA"), (5.0, 15.0, "spkB")]
    ref_b = [(0.0, 5.0, "spkA")]
    refs = tmp_path / "refs"
    _write_ref(refs / "ep1.rttm", ref_a, file_id="ep1")
    _write_ref(refs / "ep2.rttm", ref_b, file_id="ep2")
    _write_ref(refs / "unrelated.rttm", ref_b, file_id="unrelated")

    con = audit.connect(str(run_out))
    hyp = {sid: con.execute('SELECT start, "end", speaker FROM turns WHERE source_id = ?', [sid]).fetchall()
           for sid in ("aaaa", "bbbb")}
    con.close()
    want_a = der_mod.der(ref_a, hyp["aaaa"])
    want_b = der_mod.der(ref_b, hyp["bbbb"])

    # a directory of RTTMs named after the media basenames
    assert main(["audit", str(run_out), "--der", str(refs)]) == 0
    out = capsys.readouterr().out
    line_a = next(ln for ln in out.splitlines() if ln.strip().startswith("ep1 (aaaa)"))
    assert f"{want_a['der'] * 100:.2f}%" in line_a and f"{want_a['missed']:.3f}" in line_a
    assert f"{want_a['false_alarm']:.3f}" in line_a and f"{want_a['confusion']:.3f}" in line_a
    assert line_a.split()[-1] == "2/2"
    line_b = next(ln for ln in out.splitlines() if ln.strip().startswith("ep2 (bbbb)"))
    assert f"{want_b['der'] * 100:.2f}%" in line_b and line_b.split()[-1] == "1/1"
    assert "overall DER" in out
    assert "1 sources without a reference: cccc" in out
    assert "unrelated.rttm#unrelated" in out

    # --json gives the same numbers
    assert main(["audit", str(run_out), "--der", str(refs), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)["der"]
    got = {r["source_id"]: r for r in j["sources"]}
    assert got["aaaa"]["der"] == pytest.approx(want_a["der"], abs=1e-6)
    assert got["bbbb"]["confusion_s"] == pytest.approx(want_b["confusion"], abs=1e-6)

    # one RTTM file naming the source's basename
    assert main(["audit", str(run_out), "--der", str(refs / "ep1.rttm"), "--collar", "0.25"]) == 0
    out = capsys.readouterr().out
    want_c = der_mod.der(ref_a, hyp["aaaa"], collar=0.25)
    assert "collar 0.25 s" in out and f"{want_c['der'] * 100:.2f}%" in out

    # nothing matches -> exit 1; a missing path -> exit 2
    assert main(["audit", str(run_out), "--der", str(refs / "unrelated.rttm")]) == 1
    assert "no source matched" in capsys.readouterr().out
    assert main(["audit", str(run_out), "--der", str(tmp_path / "nope.rttm")]) == 2


def test_cli_der_single_source_any_name(tmp_path: Path, capsys) -> None:
    """One diarized source + one reference file-id: matched whatever the names (sample.rttm's
    file-id is 'sample', the source id a hash)."""
    from mmcurate.pipelines.cli import main

    out = tmp_path / "out"
    _write(out, "sources", [_source("3f2a", "/media/recording.wav")])
    _write(out, "turns", turn_rows("3f2a", [(0.0, 5.0, "x")]))
    ref = _write_ref(tmp_path / "whatever.rttm", [(0.0, 4.0, "A")], file_id="sample")
    assert main(["audit", str(out), "--der", str(ref)]) == 0
    text = capsys.readouterr().out
    assert "recording (3f2a)" in text and "25.00%" in text


# --------------------------------------------------------------------------- real diarizer


@pytest.fixture(scope="module")
def sample_turns():
    pytest.importorskip("pyannote.audio")
    if not SAMPLE_WAV.is_file():
        pytest.skip("shared media not available")
    from mmcurate.transforms.decode import decode_audio
    from mmcurate.transforms.diarize import DiarizationConfig, load_diarizer

    audio = decode_audio(str(SAMPLE_WAV), 16000)
    return load_diarizer(DiarizationConfig()).diarize(audio, 16000)


@pytest.mark.slow
def test_real_diarizer_der_matches_scorer(sample_turns, tmp_path: Path, capsys) -> None:
    turns = sample_turns
    assert len({t.speaker for t in turns}) >= 2
    sid = "5a3c9e1f00d1e2b3"
    hyp = [(t.start, t.end, str(t.speaker)) for t in turns]
    rows = turn_rows(sid, hyp, model="embedded (pyannote segmentation-3.0 + CAM++)")
    assert any(r.overlapped for r in rows)  # the diarizer is overlap-aware; sample has overlap
    out = tmp_path / "out"
    _write(out, "sources", [_source(sid, str(SAMPLE_WAV))])
    _write(out, "turns", rows)

    ours = audit.der_from_turns(str(out), sid, SAMPLE_RTTM)
    ref = der_mod.read_rttm(SAMPLE_RTTM)
    theirs = der_mod.der(ref, [(t.start, t.end, f"{sid}-spk{t.speaker}") for t in turns])
    also = der_mod.der(ref, turns)  # the Turn objects themselves
    print(f"\n[sample.wav] der_from_turns DER {ours['der']:.6f} (missed {ours['missed_s']:.3f} s, "
          f"FA {ours['false_alarm_s']:.3f} s, confusion {ours['confusion_s']:.3f} s of {ours['total_s']:.3f} s; "
          f"{ours['num_ref_speakers']} ref / {ours['num_hyp_speakers']} hyp speakers, mapping {ours['mapping']})")
    print(f"[sample.wav] pyannote.metrics DER {theirs['der']:.6f} (missed {theirs['missed']:.3f} s, "
          f"FA {theirs['false_alarm']:.3f} s, confusion {theirs['confusion']:.3f} s of {theirs['total']:.3f} s)")
    for k, wk in zip(KEYS, SCORER_KEYS):
        assert ours[k] == pytest.approx(theirs[wk], abs=1e-6), k
        assert ours[k] == pytest.approx(also[wk], abs=1e-6), k
    assert ours["num_ref_speakers"] == 2

    # the whole audit path: RTTM export by basename, then `--der` on the reference file
    rdir = tmp_path / "rttm"
    (path,) = audit.write_rttm(str(out), str(rdir), name="basename")
    assert Path(path).name == "sample.rttm"
    via_file = der_mod.der(ref, der_mod.read_rttm(path))
    assert via_file["der"] == pytest.approx(theirs["der"], abs=1e-6)  # turns are at ms already
    from mmcurate.pipelines.cli import main

    capsys.readouterr()
    assert main(["audit", str(out), "--der", str(SAMPLE_RTTM.parent)]) == 0
    text = capsys.readouterr().out
    print(text)
    assert f"{theirs['der'] * 100:.2f}%" in text and "sample.rttm#sample" in text
    s = audit.summarize(str(out))["turns"]
    assert s["overlapped_s"] > 0 and 0 < s["overlapped_speech_share"] < 0.5


def test_summary_lists_sources_to_review_by_diarization_confidence(tmp_path: Path) -> None:
    """The per-source speaker-count confidence: min / mean over sources that have one, and the
    sources under the review level, least sure first; turns of older runs (no value) count in
    neither."""
    import dataclasses

    from mmcurate.quality.turns import REVIEW_BELOW

    out = tmp_path / "out"

    def rows(sid, confidence):
        return [dataclasses.replace(r, diarization_confidence=confidence)
                for r in turn_rows(sid, [(0.0, 2.0, "A"), (2.0, 4.0, "B")])]

    _write(out, "turns", rows("sure", 1.0) + rows("unsure", 0.1) + rows("shaky", 0.3) + rows("old", None))
    c = audit.summarize(str(out))["turns"]["confidence"]
    assert c["sources"] == 3 and c["min"] == pytest.approx(0.1) and c["mean"] == pytest.approx(1.4 / 3)
    assert c["review_below"] == REVIEW_BELOW
    assert c["review"] == [{"source_id": "unsure", "confidence": 0.1}, {"source_id": "shaky", "confidence": 0.3}]
    text = audit.format_summary(audit.summarize(str(out)))
    assert f"sources to review (confidence < {REVIEW_BELOW:g})" in text and "2: unsure, shaky" in text
    assert "speaker-count confidence min / mean" in text and "0.10 / 0.47" in text
