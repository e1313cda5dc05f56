"""The Airflow DAG (mmcurate.orchestration): it imports, its shape, the partition convention and
command lines, and one partition end to end on real media: the README's `airflow dags test`
recipe as written with the default gates passing, a re-triggered partition (`dag.test()`)
leaving one generation of shards, and a planted violation failing the run with the check's name.

Airflow runs from a temporary AIRFLOW_HOME with a SQLite metadata DB (set before Airflow is
imported); nothing touches the network."""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "orchestration" / "dags"
MEDIA = ROOT.parent / "shared" / "media"

_HOME = tempfile.mkdtemp(prefix="mmcurate-airflow-")
atexit.register(shutil.rmtree, _HOME, True)
os.environ.update({
    "AIRFLOW_HOME": _HOME,
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
})

from mmcurate.orchestration import commands, partitions  # noqa: E402  (no Airflow import)

EXPECTED_EDGES = {
    "plan": {"choose_launcher", "curate", "curate_beam", "corpus", "audit_gate"},
    "choose_launcher": {"curate", "curate_beam"},
    "curate": {"corpus"},
    "curate_beam": {"corpus"},
    "corpus": {"audit_gate"},
    "audit_gate": set(),
}


@pytest.fixture(scope="module")
def airflow_db():
    from airflow.utils import db

    db.initdb()
    return _HOME


# ------------------------------------------------------------------ the DAG file and its shape

def test_dagbag_imports_without_errors(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert list(bag.dags) == ["mmcurate_curate"]
    dag = bag.dags["mmcurate_curate"]
    assert dag.schedule == "@daily"
    assert {"partition", "input", "inputs_root", "output_root", "runner", "beam_options",
            "launcher", "corpus_stages", "gates"} <= set(dag.params)
    # dedup only when the run did not; rephrasing opt-in, as in `mmcurate run`
    assert dag.params["corpus_stages"] == "auto"


def test_task_graph_shape(airflow_db):
    from airflow.sdk import TriggerRule

    from mmcurate.orchestration.dag import build_dag

    dag = build_dag(retries=3)
    assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == EXPECTED_EDGES
    tasks = {t.task_id: t for t in dag.tasks}
    # one curate branch is always skipped: the corpus job runs after whichever ran,
    # and the gate runs after a skipped corpus job but never after a failed one
    assert tasks["corpus"].trigger_rule == TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    assert tasks["audit_gate"].trigger_rule == TriggerRule.NONE_FAILED
    # a failed gate is a verdict, never retried (`_fail_on`); a crashed audit is retried
    assert tasks["audit_gate"].retries == 3
    assert tasks["curate"].retries == 3


# ------------------------------------------------------------------ partitions and command lines

def test_partition_convention(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    (inputs / "2026-11-21").mkdir(parents=True)
    (inputs / "2026-11-22.jsonl").write_text('{"uri": "x.wav"}\n')
    (inputs / "2026-11-22").mkdir()  # the manifest wins over a directory of the same name
    p = partitions.resolve("2026-11-22", str(outputs), str(inputs))
    assert (p.input, p.output) == (str(inputs / "2026-11-22.jsonl"), str(outputs / "2026-11-22"))
    assert partitions.resolve("2026-11-21", str(outputs), str(inputs)).input == str(inputs / "2026-11-21")
    explicit = partitions.resolve("2026-11-23", str(outputs), None, str(inputs / "2026-11-22.jsonl"))
    assert explicit.output == str(outputs / "2026-11-23")
    with pytest.raises(FileNotFoundError, match=r"2026-11-24\.jsonl.*2026-11-24\.csv"):
        partitions.resolve("2026-11-24", str(outputs), str(inputs))
    for bad in ("../etc", "a/b", "", ".hidden", "2026-11-22\n", "2026-11-22\r", "a\x00b", "a\tb"):
        with pytest.raises(ValueError, match="partition"):
            partitions.resolve(bad, str(outputs), str(inputs))
    # earlier partitions: committed outputs that sort before this one
    for name in ("2026-11-20", "2026-11-21", "2026-11-23"):
        (outputs / name).mkdir(parents=True)
    (outputs / "2026-11-20" / "manifest.json").write_text("{}")
    (outputs / "2026-11-23" / "manifest.json").write_text("{}")
    assert partitions.earlier_outputs(str(outputs), "2026-11-22") == [str(outputs / "2026-11-20")]


def test_plan_command_lines():
    p = commands.make_plan("2026-11-22", "/in/2026-11-22.jsonl", "/out/2026-11-22",
                           stages="vad,speech", sets=["asr.model=whisper-tiny.en",
                                                      "x.y={output_root}/idx"],
                           beam_options={"direct_running_mode": "multi_processing",
                                         "direct_num_workers": 2, "save_main_session": True,
                                         "nothing": None},
                           corpus_stages=" rephrase , dedup", gates="/g.yaml", output_root="/out",
                           dedup_index_dir="{output_root}/_dedup_index")
    assert p.launcher == "task"
    assert p.run_argv == ["run", "/in/2026-11-22.jsonl", "--output", "/out/2026-11-22",
                          "--stages", "vad,speech", "--set", "dedup.index_dir=/out/_dedup_index",
                          "--set", "dedup.partition=2026-11-22", "--set", "asr.model=whisper-tiny.en",
                          "--set", "x.y=/out/idx", "--no-audit", "--runner=DirectRunner",
                          "--direct_running_mode=multi_processing", "--direct_num_workers=2",
                          "--save_main_session"]
    assert p.corpus_argv == ["corpus", "/out/2026-11-22", "--stages", "rephrase,dedup",
                             "--set", "dedup.index_dir=/out/_dedup_index",
                             "--set", "dedup.partition=2026-11-22", "--no-audit",
                             "--runner=DirectRunner", "--direct_running_mode=multi_processing",
                             "--direct_num_workers=2", "--save_main_session"]
    assert p.audit_argv == ["audit", "/out/2026-11-22", "--check", "/g.yaml", "--json"]
    auto = commands.make_plan("p", "i", "o", corpus_stages="auto")
    assert auto.corpus_auto and auto.corpus_argv[:4] == ["corpus", "o", "--stages", "dedup"]
    assert not p.corpus_auto
    ran = lambda *stages: {"config": json.dumps({"stages": list(stages)})}  # noqa: E731
    assert commands.corpus_todo(auto.corpus_argv, ran("vad", "speech", "dedup")) == []
    assert commands.corpus_todo(auto.corpus_argv, ran("vad", "speech")) == ["dedup"]
    assert commands.make_plan("p", "i", "o", corpus_stages="").corpus_argv is None
    assert commands.make_plan("p", "i", "o", corpus_stages=None).corpus_argv is None
    df = commands.make_plan("2026-11-22", "gs://b/in.jsonl", "gs://b/out/2026-11-22",
                            runner="DataflowRunner", beam_options={"project": "p"})
    assert df.launcher == "beam_operator"
    assert df.pipeline_options == {"mmcurate_input": "gs://b/in.jsonl", "output": "gs://b/out/2026-11-22",
                                   "no-audit": True, "project": "p"}
    assert df.dataflow_config["job_name"] == "mmcurate-2026-11-22"
    assert commands.make_plan("p", "i", "o", runner="FlinkRunner", launcher="task").launcher == "task"
    assert Path(commands.make_plan("p", "i", "o").audit_argv[3]).is_file()  # packaged default gates
    with pytest.raises(ValueError, match="launcher"):
        commands.make_plan("p", "i", "o", launcher="ssh")


def test_operator_launcher_hands_the_cli_its_input(monkeypatch):
    """The operator's py_file turns `--mmcurate_input=` back into `mmcurate run INPUT`, with the
    flags as the operator formats them (its own rule, reused by both launchers)."""
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

    from mmcurate.orchestration import launch
    from mmcurate.pipelines import cli

    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    opts = commands.make_plan("d", "/in/d.jsonl", "/out/d", stages="vad",
                              beam_options={"project": "p", "direct_num_workers": 2}).pipeline_options
    assert beam_options_to_args(opts) == commands.beam_options_to_args(opts)
    assert launch.main(beam_options_to_args(opts)) == 0
    argv = seen[0]
    assert argv[:2] == ["run", "/in/d.jsonl"]
    mine, beam = cli.split_beam_args(argv, cli._parser())
    assert mine == ["run", "/in/d.jsonl", "--output=/out/d", "--no-audit", "--stages=vad"]
    assert beam == ["--project=p", "--direct_num_workers=2"]


# ------------------------------------------------------------------ dag.test() end to end

GATES_PLANTED = """\
checks:
  - name: the output is consistent
    metric: problems
    op: "=="
    value: []
  - name: a planted violation (one input can never make 1000 sources)
    sql: SELECT count(*) FROM sources
    op: ">="
    value: 1000
"""

README = ROOT / "README.md"
RECIPE_HEADING = "**Run one partition locally, without a scheduler.**"
# the scratch paths of the README's recipe, swapped for the test's own
RECIPE_PATHS = ("/tmp/mmcurate-airflow", "/tmp/mmcurate-incoming", "/tmp/mmcurate-curated")


def readme_recipe() -> str:
    """The bash block that follows RECIPE_HEADING in README.md, as written there."""
    text = README.read_text()
    after = text[text.index(RECIPE_HEADING):]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


def _states(dr) -> dict:
    return {ti.task_id: str(ti.state).rsplit(".", 1)[-1].lower() for ti in dr.get_task_instances()}


def _committed(out: Path) -> tuple[dict, set]:
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = {str(p.relative_to(out)) for p in out.glob("*/*.parquet")}
    return manifest, on_disk


@pytest.mark.slow
def test_dag_end_to_end_readme_recipe_retrigger_and_planted_violation(airflow_db, tmp_path, capfd):
    """A partition of one 11 s file (jfk.wav), all defaults (stages, gates, corpus_stages), run
    by the README's recipe as written (`airflow db migrate`, `dags reserialize`, `dags list`,
    `dags test`, in a child process with its own Airflow home): curate -> corpus (skipped: the
    run deduplicated already) -> the default gates pass. The same partition triggered again
    replaces its output (one generation of shards, same ids). A gate file that cannot pass fails
    the run, and the task's error names the failed check."""
    import subprocess

    from mmcurate.orchestration.dag import build_dag

    home, inputs, outputs = tmp_path / "airflow", tmp_path / "incoming", tmp_path / "curated"
    recipe = readme_recipe()
    for placeholder, mine in zip(RECIPE_PATHS, (home, inputs, outputs)):
        assert placeholder in recipe, placeholder
        recipe = recipe.replace(placeholder, str(mine))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}  # the recipe's own
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", recipe], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-6000:]
    assert "mmcurate_curate" in r.stdout  # `dags list` after `reserialize`
    assert "corpus_stages auto: the run ran dedup itself" in log, log[-6000:]
    assert re.search(r"Marking run <DagRun mmcurate_curate @ 2026-11-20[^>]*> successful", log), log[-6000:]
    assert log.count("PASS  ") >= 8 and "FAIL  " not in log, log[-6000:]
    out = outputs / "2026-11-20"
    first, files_first = _committed(out)
    assert first["tables"]["sources"] == 1
    assert files_first == set(first["shards"])
    ids_first = _ids(out)

    # the same partition again, in this process (a re-trigger, as a retry would): one generation
    conf = {"inputs_root": str(inputs), "output_root": str(outputs)}
    day = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    dag = build_dag(retries=0)
    dr = dag.test(logical_date=day, run_conf=conf)
    states = _states(dr)
    assert states == {"plan": "success", "choose_launcher": "success", "curate": "success",
                      "curate_beam": "skipped", "corpus": "skipped", "audit_gate": "success"}, states
    second, files_second = _committed(out)
    assert second["run_id"] == first["run_id"]
    assert files_second == set(second["shards"]), sorted(files_second - set(second["shards"]))
    assert set(second["shards"]) == set(first["shards"])
    assert second["tables"] == first["tables"]
    assert _ids(out) == ids_first

    # a planted violation: the gate (on the committed output; curate marked done) fails the run
    (tmp_path / "planted.yaml").write_text(GATES_PLANTED)
    capfd.readouterr()
    dr = dag.test(logical_date=day, run_conf={**conf, "gates": str(tmp_path / "planted.yaml")},
                  mark_success_pattern="^curate$")
    states = _states(dr)
    assert states["audit_gate"] == "failed", states
    assert str(dr.state).endswith("failed")
    captured = capfd.readouterr()
    task_log = captured.out + captured.err
    assert ("AirflowFailException: mmcurate audit --check exited 1: 1 of 2 check(s) failed: "
            "'a planted violation (one input can never make 1000 sources)' (measured 1, want >= 1000)"
            in task_log), task_log[-6000:]


def _ids(out: Path) -> dict:
    import pyarrow.parquet as pq

    from mmcurate.quality.db import committed_shards
    from mmcurate.transforms.sink import ID_COLUMN

    ids = {}
    for table, paths in committed_shards(str(out))[0].items():
        col = ID_COLUMN.get(table)
        if col:
            ids[table] = sorted(v for p in paths for v in pq.read_table(p, columns=[col]).column(col).to_pylist())
    return ids


# ------------------------------------------------------------------ params that would override the plan


@pytest.mark.parametrize("params,expect", [
    ({"beam_options": {"output": "/elsewhere"}}, "beam_options key 'output' is mmcurate's own flag --output"),
    ({"beam_options": {"set": ["asr.model=x"]}}, "own flag --set"),
    ({"beam_options": {"stages": "vad"}}, "own flag --stages"),
    ({"beam_options": {"config": "/c.toml"}}, "own flag --config"),
    ({"beam_options": {"mmcurate_input": "/other.jsonl"}}, "own flag --mmcurate_input"),
    ({"beam_options": {"no_audit": False, "allow-empty": True}}, "own flag --no-audit"),
    ({"beam_options": {"help": True}}, "own flag --help"),
    ({"beam_options": {"runner": "FlinkRunner"}}, "use the DAG param runner"),
    ({"sets": ["--output=/elsewhere"]}, "sets item '--output=/elsewhere': expected KEY=VALUE"),
    ({"corpus_sets": ["-o", "/x"]}, "corpus_sets item '-o'"),
    ({"stages": "vad --output=/elsewhere"}, "'vad --output=/elsewhere' is not a stage name"),
])
def test_params_cannot_override_the_plans_own_flags(params, expect):
    with pytest.raises(commands.PlanError, match="^[^\\n]*$") as e:
        commands.make_plan("2026-11-22", "/in/d.jsonl", "/out/2026-11-22", **params)
    assert expect in str(e.value)


def test_reserved_flags_come_from_the_cli_parser(monkeypatch):
    from mmcurate.pipelines import cli

    reserved = commands.reserved_flags()
    assert {"output", "config", "set", "stages", "mmcurate-input", "no-audit", "allow-empty", "sql",
            "check", "verbose", "o", "c"} <= set(reserved)
    real = cli._parser

    def with_a_new_flag():  # a flag added to the CLI is reserved without touching the DAG
        parser = real()
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        sub.choices["run"].add_argument("--brand-new")
        return parser

    monkeypatch.setattr(cli, "_parser", with_a_new_flag)
    with pytest.raises(commands.PlanError, match="own flag --brand-new"):
        commands.make_plan("d", "i", "o", beam_options={"brand_new": 1})


def test_plan_refuses_bad_params_with_one_line_and_no_retry(airflow_db, tmp_path):
    from mmcurate.orchestration.dag import build_dag

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "2026-11-20.jsonl").write_text("{}\n")
    conf = {"inputs_root": str(tmp_path / "in"), "output_root": str(tmp_path / "out"),
            "corpus_stages": "", "beam_options": {"output": str(tmp_path / "elsewhere")}}
    dr = build_dag(retries=2).test(logical_date=dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc),
                                   run_conf=conf)
    states = _states(dr)
    assert states["plan"] == "failed", states  # failed, not up_for_retry
    assert states["curate"] != "success" and not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------ exit codes and retries


def _fail_on_kind(rc: int) -> str:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from mmcurate.orchestration.dag import _fail_on

    try:
        _fail_on(rc, "mmcurate run", "last line\n")
    except AirflowFailException:
        return "fail"
    except AirflowException:
        return "retry"
    return "ok"


def test_a_failed_gate_names_its_checks_in_the_tasks_error():
    """The task's exception (what Airflow's UI and alerts show) names every failed check with
    its measured and wanted values, not the tail of a JSON blob."""
    from airflow.sdk.exceptions import AirflowFailException

    from mmcurate.orchestration.dag import _fail_on

    outcomes = [{"name": "the output is consistent", "passed": True, "measured": [], "op": "==", "value": []},
                {"name": "at least 3 minutes of VAD speech", "passed": False, "measured": 0.0022,
                 "op": ">=", "value": 0.05}]
    stdout = "PASS ...\n" + json.dumps(outcomes * 40) + "\n"  # a long --json line
    why = commands.failed_checks(outcomes)
    assert why == ("1 of 2 check(s) failed: 'at least 3 minutes of VAD speech' (measured 0.0022, "
                   "want >= 0.05)")
    with pytest.raises(AirflowFailException) as e:
        _fail_on(1, "mmcurate audit --check", stdout, why)
    assert str(e.value) == f"mmcurate audit --check exited 1: {why}"
    assert commands.failed_checks(outcomes[:1]) == ""


def test_only_crashes_are_retried():
    assert [_fail_on_kind(rc) for rc in (0, 1, 2, 3, -9, 137)] == ["ok", "fail", "fail", "retry", "retry", "retry"]


CRASHING_CLI = (
    "import sys; from mmcurate.pipelines import cli; from mmcurate.quality import audit; "
    "audit.summarize = lambda out: open('/proc/nonexistent/x'); sys.exit(cli.main(sys.argv[1:]))"
)


def test_a_crashing_command_is_retried_and_says_why_in_one_line(tmp_path, monkeypatch):
    """The CLI's uncaught exception (here a file that cannot be opened: a race, a full disk) is
    exit 3, one line naming the cause: the task is retried, not failed for good as a verdict."""
    import shlex
    import sys

    monkeypatch.setenv("MMCURATE_BIN", shlex.join([sys.executable, "-c", CRASHING_CLI]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the audit's crash log goes
    (tmp_path / "out").mkdir()
    rc, out = commands.run_logged(["audit", str(tmp_path / "out")], lambda line: None)
    assert rc == 3, out
    lines = [line for line in out.splitlines() if line.startswith("mmcurate:")]
    assert lines and lines[-1].startswith("mmcurate: crashed: FileNotFoundError: "), out
    assert "Traceback" not in out and len(list(tmp_path.glob("mmcurate-crash-*.log"))) == 1
    assert _fail_on_kind(rc) == "retry"


# ------------------------------------------------------------------ the manifest through Beam's FileSystems


from apache_beam.io.filesystem import FileSystem  # noqa: E402


class _MemoryFileSystem(FileSystem):
    """`mmtest://` paths held in a dict: an object store as Beam's FileSystems sees one."""

    FILES: dict[str, bytes] = {}

    @classmethod
    def scheme(cls):
        return "mmtest"

    def exists(self, path):
        return path in self.FILES

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        import io

        if path not in self.FILES:
            raise FileNotFoundError(path)
        return io.BytesIO(self.FILES[path])

    def _unused(self, *a, **k):
        raise NotImplementedError

    join = split = mkdirs = has_dirs = _list = create = copy = rename = size = last_updated = \
        checksum = delete = metadata = _unused


def test_the_curate_task_reads_a_remote_manifest_through_beam(monkeypatch):
    """A run into gs://... committed its manifest there; the task that launched it must read it
    back through Beam's FileSystems (the builtin open() cannot), as must the audit."""
    import shlex
    import sys

    from mmcurate.orchestration.dag import build_dag
    from mmcurate.quality import audit

    out = "mmtest://bucket/curated/2026-11-22"
    _MemoryFileSystem.FILES[out + "/manifest.json"] = json.dumps(
        {"run_id": "run-x", "tables": {"sources": 2}, "shards": [], "config": "{}"}).encode()
    monkeypatch.setenv("MMCURATE_BIN", shlex.join([sys.executable, "-c", "raise SystemExit(0)"]))
    curate = build_dag().get_task("curate").python_callable
    assert curate(["run", "in", "--output", out], out) == {"run_id": "run-x", "tables": {"sources": 2}}
    assert audit.load_manifest(out)["run_id"] == "run-x"
    assert audit.load_manifest("mmtest://bucket/curated/none") is None
