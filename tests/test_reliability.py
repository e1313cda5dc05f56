"""Nothing silently wrong: one test per case that used to go wrong (issue: Reliability).

Each case used to end in exit code 0 with a wrong or mixed output, a traceback, a hang or a
write outside the output; each must now end in one clear line (exit 2 for usage, config and
output-path problems, found before any work), a ledger row, or a consistent output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmcurate.pipelines import cli, curate
from mmcurate.pipelines.config import ConfigError, CurateConfig
from mmcurate.quality import audit

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
JFK = MEDIA / "speech" / "jfk.wav"
LDC = MEDIA / "speech" / "LDC93S1.wav"


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------ config, before any work


@pytest.mark.parametrize("sets,expect", [
    (["vad.threshold=abc"], "vad.threshold: expected a number, got 'abc'"),
    (["vad.threshold=5"], "vad.threshold: 5.0 must be <= 1"),
    (["ingest.max_bytes=-1"], "ingest.max_bytes: -1 must be > 0"),
    (["decode.sample_rate=-16000"], "decode.sample_rate: -16000 is not one of [16000]"),
    (["output.buckets=0"], "output.buckets: 0 must be >= 1"),
    (["asr.beam_size=true"], "asr.beam_size: expected an integer, got True"),
    (["vad"], "expected KEY=VALUE"),
])
def test_bad_config_values_exit_2_before_any_work(tmp_path, capsys, sets, expect):
    out = tmp_path / "out"
    argv = ["run", str(JFK), "-o", str(out), "--stages", "vad"]
    for s in sets:
        argv += ["--set", s]
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and expect in err, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing ran, nothing was created


def test_every_config_problem_is_listed_at_once(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"vad": {"threshold": "high", "min_speech_ms": -5},
                               "output": {"buckets": 0}, "stages": ["vad", "dedupe"]}))
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(tmp_path / "o"), "--config", str(cfg))
    assert rc == 2
    for expect in ("vad.threshold: expected a number, got 'high'", "vad.min_speech_ms: -5 must be >= 0",
                   "output.buckets: 0 must be >= 1", "unknown stage(s) ['dedupe']"):
        assert expect in err, err


@pytest.mark.parametrize("text,suffix,expect", [
    ("vad: [threshold\n", ".yaml", "not valid YAML"),
    ("[vad\nthreshold = 1\n", ".toml", "not valid TOML"),
    ("{\"vad\": ", ".json", "not valid JSON"),
    ("- 1\n- 2\n", ".yaml", "expected a mapping of sections"),
    ("x = 1\n", ".ini", "use a .toml, .yaml or .json file"),
])
def test_bad_config_files_are_one_line(tmp_path, capsys, text, suffix, expect):
    f = tmp_path / f"c{suffix}"
    f.write_text(text)
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(tmp_path / "o"), "--config", str(f))
    assert rc == 2 and expect in err and "Traceback" not in err, err


def test_config_types_hold_for_files_as_for_set():
    with pytest.raises(ConfigError, match="vad.threshold: expected a number"):
        CurateConfig.from_dict({"vad": {"threshold": "high"}})
    cfg = CurateConfig.from_dict({"ingest": {"max_bytes": 1e9}, "vad": {"threshold": 1}})
    assert cfg.ingest.max_bytes == 1_000_000_000 and isinstance(cfg.ingest.max_bytes, int)
    assert cfg.vad.threshold == 1.0 and isinstance(cfg.vad.threshold, float)


@pytest.mark.parametrize("args,expect", [
    (["--stages", "foo"], "unknown stage(s) ['foo']"),
    (["--stages", "speech"], "add vad to --stages"),
    (["--set", "asr.model=whisper-tiny"], "asr.model: ASR model 'whisper-tiny' is neither"),
])
def test_unknown_stages_and_models_exit_2(tmp_path, capsys, args, expect):
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(tmp_path / "o"), *args)
    assert rc == 2 and expect in err and "Traceback" not in err, err


def test_output_that_is_a_file_or_unwritable_exits_2_before_any_work(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(f), "--stages", "vad")
    assert rc == 2 and "exists and is not a directory" in err
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(f / "sub"), "--stages", "vad")
    assert rc == 2 and "cannot write there" in err and "Traceback" not in err


# ------------------------------------------------------------------ one output generation


def _fake_handlers(cfg):
    from test_speech_stage import fake_diarizer_factory, fake_transcriber_factory

    from mmcurate.transforms.asr import AsrModelHandler
    from mmcurate.transforms.diarize import DiarizationModelHandler

    return {"asr_handler": AsrModelHandler(cfg.asr, loader=fake_transcriber_factory),
            "diarization_handler": DiarizationModelHandler(cfg.diarization, loader=fake_diarizer_factory)}


@pytest.mark.slow  # seconds: out of the fast tier
def test_a_rerun_with_fewer_stages_leaves_no_stale_tables(tmp_path):
    out = tmp_path / "out"
    cfg = CurateConfig()
    m1 = curate.run([str(JFK), str(LDC)], str(out), cfg, overrides=_fake_handlers(cfg))
    assert m1["tables"]["sources"] == 2 and m1["tables"]["segments"] > 0
    assert (out / "segments").is_dir()
    m2 = curate.run([str(JFK)], str(out), CurateConfig(stages=("vad",)))
    assert m2["tables"]["sources"] == 1
    for t in ("segments", "transcripts", "turns"):
        assert not (out / t).exists(), f"stale {t} left beside the new sources"
    s = audit.summarize(str(out))
    assert s["problems"] == [] and s["tables"]["segments"] == 0 and s["tables"]["sources"] == 1


def test_a_run_killed_before_its_commit_leaves_the_previous_generation_consistent(tmp_path, monkeypatch, capsys):
    from mmcurate.transforms import sink

    out = tmp_path / "out"
    curate.run([str(JFK), str(LDC)], str(out), CurateConfig(stages=("vad",)))
    before = json.loads((out / "manifest.json").read_text())

    def killed(*a, **k):  # the process dies after its shards are in place, before the commit
        raise SystemExit("killed")

    monkeypatch.setattr(sink, "commit_manifest", killed)
    with pytest.raises(BaseException):
        curate.run([str(JFK)], str(out), CurateConfig(stages=("vad",)))  # another generation
    monkeypatch.undo()
    assert json.loads((out / "manifest.json").read_text()) == before
    # readers see exactly the committed generation; the audit names the leftovers, exit 1
    s = audit.summarize(str(out))
    assert s["tables"]["sources"] == 2
    assert any("not in the committed manifest" in p for p in s["problems"]), s["problems"]
    rc, stdout, err = _run(capsys, "audit", str(out))
    assert rc == 1 and "PROBLEMS" in stdout and "invariant OK" not in stdout
    # the next run finishes the job and cleans up
    curate.run([str(JFK)], str(out), CurateConfig(stages=("vad",)))
    assert audit.summarize(str(out))["problems"] == []


@pytest.mark.slow  # seconds (a fresh process or a real model): out of the fast tier
def test_audit_checks_manifest_shards_and_referential_integrity(tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    cfg = CurateConfig()
    curate.run([str(JFK)], str(out), cfg, overrides=_fake_handlers(cfg))
    assert _run(capsys, "audit", str(out))[0] == 0
    # a segment of no source
    seg = next((out / "segments").glob("part-*.parquet"))
    t = pq.read_table(seg)
    pq.write_table(t.set_column(t.schema.get_field_index("source_id"), "source_id",
                                [["nosuchsource"] * t.num_rows]), seg)
    rc, stdout, _ = _run(capsys, "audit", str(out))
    assert rc == 1 and "segments:" in stdout and "belong to no source" in stdout
    # a corrupt shard: one line, no traceback
    seg.write_bytes(b"PAR1 garbage")
    rc, stdout, err = _run(capsys, "audit", str(out))
    assert rc == 1 and "not readable Parquet" in stdout and "Traceback" not in err + stdout
    # a committed shard that disappeared
    seg.unlink()
    rc, stdout, _ = _run(capsys, "audit", str(out))
    assert rc == 1 and "is missing" in stdout
    # no manifest at all
    (out / "manifest.json").unlink()
    rc, stdout, _ = _run(capsys, "audit", str(out))
    assert rc == 1 and "manifest.json missing" in stdout


# ------------------------------------------------------------------ audit --sql is read-only


@pytest.fixture(scope="module")
def small_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sql") / "out"
    curate.run([str(JFK)], str(out), CurateConfig(stages=("vad",)))
    return out


@pytest.mark.parametrize("sql,expect", [
    ("COPY (SELECT 1) TO '{tmp}/pwned.csv'", "COPY statements are not allowed"),
    ("COPY sources TO '{out}/sources/part-9999-0000-x.parquet' (FORMAT parquet)", "COPY statements"),
    ("ATTACH '{tmp}/x.duckdb' AS x", "ATTACH statements are not allowed"),
    ("SELECT 1; CREATE TABLE t AS SELECT 1", "CREATE statements are not allowed"),
    ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
    ("SELECT * FROM read_parquet('{tmp}/*.parquet')", "file system operations are disabled"),
    ("INSTALL httpfs", "statements are not allowed"),
    ("LOAD httpfs", "statements are not allowed"),
    ("SET enable_external_access = true", "SET statements are not allowed"),
    ("SELEC count(*) FROM sources", "--sql does not parse"),
    ("SELECT nosuchcolumn FROM sources", "--sql failed"),
])
def test_audit_sql_reads_the_tables_and_nothing_else(small_out, tmp_path, capsys, sql, expect):
    before = {p: p.read_bytes() for p in small_out.rglob("*") if p.is_file()}
    rc, _, err = _run(capsys, "audit", str(small_out), "--sql", sql.format(tmp=tmp_path, out=small_out))
    assert rc == 2 and expect in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere
    assert {p: p.read_bytes() for p in small_out.rglob("*") if p.is_file()} == before


def test_audit_sql_still_answers_queries(small_out, capsys):
    rc, out, _ = _run(capsys, "audit", str(small_out), "--json", "--sql",
                      "SELECT count(*) AS n FROM sources JOIN speech_regions USING (source_id)")
    assert rc == 0 and json.loads(out)[0]["n"] > 0


# ------------------------------------------------------------------ inputs


def test_the_same_files_by_relative_or_absolute_path_get_the_same_uris(tmp_path, monkeypatch):
    media = tmp_path / "m"
    media.mkdir()
    shutil.copy(JFK, media / "jfk.wav")
    (media / "notes.txt").write_text("not media")
    monkeypatch.chdir(tmp_path)
    a = curate.run(["m"], str(tmp_path / "a"), CurateConfig(stages=("vad",)))
    b = curate.run([str(media)], str(tmp_path / "b"), CurateConfig(stages=("vad",)))
    rows = lambda d, t, c: sorted(audit.query(str(tmp_path / d), f"SELECT {c} FROM {t}").column(0).to_pylist())
    assert rows("a", "sources", "uri") == rows("b", "sources", "uri") == [str(media / "jfk.wav")]
    assert rows("a", "rejected", "rejection_id") == rows("b", "rejected", "rejection_id")
    assert a["inputs"] == b["inputs"] == [str(media)]


def test_an_unreadable_subdirectory_is_a_ledger_row(tmp_path, monkeypatch):
    import os

    media = tmp_path / "m"
    (media / "locked").mkdir(parents=True)
    shutil.copy(JFK, media / "jfk.wav")
    shutil.copy(LDC, media / "locked" / "ldc.wav")
    real_scandir = os.scandir

    def scandir(path="."):  # root ignores permissions: make the folder unreadable for os.walk
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    m = curate.run([str(media)], str(tmp_path / "o"), CurateConfig(stages=("vad",)))
    rej = audit.query(str(tmp_path / "o"), "SELECT stage, reason, uri, detail FROM rejected").to_pylist()
    assert [(r["stage"], r["reason"], r["uri"]) for r in rej] == [
        ("ingest", "unreadable", str(media / "locked"))]
    assert "Permission denied" in rej[0]["detail"]
    assert m["tables"]["sources"] == 1


def test_a_run_that_rejects_every_input_exits_1_with_a_summary(tmp_path, capsys):
    bad = tmp_path / "bad.mp3"
    bad.write_text("not audio at all")
    rc, _, err = _run(capsys, "run", str(bad), "-o", str(tmp_path / "o"), "--stages", "vad", "--no-audit")
    assert rc == 1 and "no input became a source" in err and "decode/not_media 1" in err, err
    rc, _, _ = _run(capsys, "run", str(bad), "-o", str(tmp_path / "o"), "--stages", "vad", "--no-audit",
                    "--allow-empty")
    assert rc == 0


# ------------------------------------------------------------------ truncated media


def _truncate(src: Path, dst: Path, frac: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


@pytest.mark.parametrize("policy", ["keep", "reject"])
def test_truncated_media_gets_a_ledger_row_with_the_seconds_lost(tmp_path, policy):
    mp4 = _truncate(MEDIA / "video" / "laion_talk.mp4", tmp_path / "talk10.mp4", 0.10)
    mp3 = _truncate(MEDIA / "speech" / "jfk.mp3", tmp_path / "jfk08.mp3", 0.08)
    whole = MEDIA / "speech" / "jfk.flac"  # intact: no row
    out = tmp_path / "o"
    cfg = CurateConfig.from_dict({"stages": ["vad"], "decode": {"truncated": policy}})
    curate.run([str(mp4), str(mp3), str(whole)], str(out), cfg)
    rows = {Path(r["uri"]).name: r for r in audit.query(
        str(out), "SELECT uri, stage, reason, duration_s, detail FROM rejected").to_pylist()}
    sources = set(audit.query(str(out), "SELECT uri FROM sources").column(0).to_pylist())
    assert "jfk.flac" not in rows and str(whole) in sources
    talk, jfk = rows["talk10.mp4"], rows["jfk08.mp3"]
    assert talk["duration_s"] == pytest.approx(122.67 - 8.52, abs=0.5)  # ~114 s lost
    assert jfk["duration_s"] == pytest.approx(11.0 - 0.69, abs=0.3)
    assert "declares 122.67 s" in talk["detail"]
    if policy == "keep":
        assert talk["reason"] == jfk["reason"] == "truncated_kept"
        assert {str(mp4), str(mp3)} <= sources  # the decodable part is kept, flagged
    else:
        assert talk["reason"] == jfk["reason"] == "truncated"
        assert not ({str(mp4), str(mp3)} & sources)
    s = audit.summarize(str(out))
    assert s["problems"] == [] and s["inputs"] == 3


# ------------------------------------------------------------------ exit codes: 0, 1, 2, 3


def test_help_documents_the_exit_codes(capsys):
    for argv in (["--help"], ["run", "--help"], ["audit", "--help"], ["corpus", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        out = capsys.readouterr().out
        assert e.value.code == 0 and "Exit status:" in out, argv
        assert "3  an unexpected error" in out and "2  arguments, config or environment" in out


def test_an_unexpected_error_is_one_line_exit_3_and_a_log_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def broken(_out):
        raise RuntimeError("a bug\nsecond line")

    monkeypatch.setattr(audit, "summarize", broken)
    rc, stdout, err = _run(capsys, "audit", str(out))
    assert rc == cli.EXIT_CRASH == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmcurate: crashed: RuntimeError: a bug (traceback: "), err
    log = Path(lines[0].rsplit("traceback: ", 1)[1].rstrip(")"))
    assert log.is_file() and "Traceback" in log.read_text() and "second line" in log.read_text()
    assert not (out / "_logs").exists()  # the audit writes nothing into the output
    log.unlink()


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device"),
    RuntimeError("OSError: [Errno 28] No space left on device [while running 'WriteTables/Write']"),
])
def test_a_full_disk_is_one_line_exit_3(tmp_path, capsys, monkeypatch, error):
    def full(*a, **k):
        raise error

    monkeypatch.setattr(curate, "run", full)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(out), "--stages", "vad", "--no-audit")
    lines = err.strip().splitlines()
    assert rc == 3 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mmcurate: no space left on device: ") and "free space" in lines[0]


def test_a_run_that_crashes_exits_3_with_its_traceback_under_the_output(tmp_path, capsys, monkeypatch):
    def lost(*a, **k):
        raise ConnectionResetError("worker lost")

    monkeypatch.setattr(curate, "run", lost)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(out), "--stages", "vad", "--no-audit")
    assert rc == 3 and "the run failed: ConnectionResetError: worker lost" in err and "Traceback" not in err
    logs = list((out / "_logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err and "ConnectionResetError" in logs[0].read_text()


# ------------------------------------------------------------------ arguments, before any work


@pytest.mark.parametrize("flag,expect", [
    ("--direct_num_worker=2", "did you mean --direct_num_workers?"),
    ("--ouput=/tmp/elsewhere", "did you mean --output?"),
    ("--no_such_beam_option", "unknown option --no_such_beam_option"),
])
def test_an_unknown_beam_option_exits_2_naming_it(tmp_path, capsys, flag, expect):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(out), "--stages", "vad", flag)
    assert rc == 2 and expect in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_documented_beam_options_are_known():
    assert cli.unknown_beam_options([
        "--runner=DataflowRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2",
        "--project", "p", "--region", "r", "--temp_location", "gs://b/t", "--staging_location=gs://b/s",
        "--sdk_container_image=img", "--sdk_location", "container", "--experiments", "use_runner_v2",
        "--machine_type", "g2-standard-8", "--max_num_workers", "20", "--dataflow_service_options", "x",
        "--job_endpoint=localhost:1", "--environment_type=EXTERNAL", "--environment_config=localhost:2",
        "--flink_master=h:8081", "--save_main_session", "--dask_client_address", "h:8786",
    ]) == []


def test_an_unusable_runner_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from urllib.error import URLError

    from apache_beam.runners.portability import prism_runner

    def offline(url, *a, **k):
        raise URLError("no network")

    # Prism's binary comes from GitHub releases at start-up: no network here, nothing cached
    monkeypatch.setattr(prism_runner, "urlopen", offline)
    monkeypatch.setattr(prism_runner.PrismJobServer, "BIN_CACHE", str(tmp_path / "prism-cache"))
    for runner, expect in (("PrismRunner", "Unable to fetch remote prism binary"),
                           ("NoSuchRunner", "Unexpected pipeline runner: NoSuchRunner"),
                           ("PortableRunner", "You must specify a --job_endpoint")):
        out = tmp_path / runner
        rc, _, err = _run(capsys, "run", str(JFK), "-o", str(out), "--stages", "vad", "--runner", runner)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and f"--runner {runner} cannot run here" in lines[0], err
        assert expect in lines[0] and not out.exists()


def test_a_portable_runner_with_nothing_listening_is_one_line_exit_2(tmp_path, capsys):
    """A job service or worker pool that is not running: one line naming the address, at once
    (Beam itself waits 300 s for the workers, then prints a gRPC traceback)."""
    import socket
    import time

    with socket.socket() as probe:  # a free loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for extra, flag in ((["--job_endpoint", f"localhost:{port}"], "--job_endpoint"),
                        (["--job_endpoint", "embed", "--environment_type", "EXTERNAL",
                          "--environment_config", f"localhost:{port}"], "--environment_config")):
        out = tmp_path / flag.strip("-")
        t0 = time.monotonic()
        rc, _, err = _run(capsys, "run", str(JFK), "-o", str(out), "--stages", "vad",
                          "--runner", "PortableRunner", *extra)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, err
        assert f"nothing answers at {flag} localhost:{port}" in lines[0], err
        assert time.monotonic() - t0 < 30 and not out.exists()


def test_no_existing_input_exits_2_before_any_pipeline(tmp_path, capsys):
    out = tmp_path / "out"
    missing = [str(tmp_path / "nope.wav"), str(tmp_path / "none" / "*.mp3")]
    rc, stdout, err = _run(capsys, "run", *missing, "-o", str(out), "--stages", "vad")
    assert rc == 2 and err.strip() == f"mmcurate: no input exists (nothing was run): {', '.join(missing)}", err
    assert not out.exists() and stdout == ""
    assert cli.missing_inputs([str(JFK), missing[0]]) == []  # one that exists: the run goes on


def test_an_own_flag_given_twice_exits_2(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(a), "--stages", "vad", "--output", str(b))
    assert rc == 2 and f"--output given 2 times (-o {a}, --output {b})" in err, err
    assert not a.exists() and not b.exists()
    rc, _, err = _run(capsys, "run", str(JFK), "-o", str(a), "--stages=vad", "--stages", "vad,speech")
    assert rc == 2 and "--stages given 2 times" in err
    assert cli.repeated_flags(["run", "x", "-o", "o", "--set", "a=1", "--set", "b=2"], cli._parser()) == []
