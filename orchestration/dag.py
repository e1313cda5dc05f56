"""The Airflow DAG (Airflow 3, `airflow.sdk`): one input partition per run, curated, corpus
jobs, then the audit gate.

    plan ─> choose_launcher ─┬─> curate       (mmcurate run, in the task: DirectRunner, Portable, ...)
                             └─> curate_beam  (BeamRunPythonPipelineOperator: Dataflow, Flink)
                                     └─> corpus (mmcurate corpus OUT --stages ...) ─> audit_gate

- `plan` turns the run's params and logical date into the partition (see `partitions`), its
  output directory and the three command lines; everything downstream only executes them.
- `curate` runs `mmcurate run PARTITION_INPUT --output OUTPUT_ROOT/<partition> ...` in a child
  process; `curate_beam` submits the same command line through the Beam provider's operator
  (needs `apache-airflow-providers-google` installed, even for Flink: provider 6.3.1 builds
  its Dataflow configuration for every runner). Which one runs: param `launcher` (`auto`:
  the operator for DataflowRunner and FlinkRunner, the task for everything else).
- `corpus` runs the corpus-level jobs over the partition's output (dedup against earlier
  partitions, rephrasing); by default (`corpus_stages` "auto") only dedup, and only when the run
  did not dedup itself; it is skipped when `corpus_stages` is empty.
- `audit_gate` runs `mmcurate audit OUTPUT --check GATES`; a failing check (exit 1) or a
  malformed gate file (exit 2) fails the task, and so the run, without retries; the task's
  error names the failed checks with their measured and wanted values.
- Retries follow mmcurate's exit status: 1 (a verdict on the data) and 2 (arguments, config,
  usage) fail a task for good, 3 (a crash: a full disk, a lost worker, a race) and a process
  killed by a signal are retried. `plan` refuses params that would override the command line's
  own flags (a `beam_options` key `output`, `set`, `stages`, ...) with one line, no retry.

A partition is always written to the same directory, and a run commits by replacing that
directory's manifest in one atomic step: a retried task or a re-triggered partition replaces
the previous generation of shards, never adds to it. The DAG holds no pipeline logic.
"""

from __future__ import annotations

import datetime as dt
import os
import sys

from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task

from mmcurate.orchestration import commands, partitions

DAG_ID = "mmcurate_curate"


def _env_list(name: str) -> list[str]:
    return [v for v in os.environ.get(name, "").split() if v]


def default_params() -> dict:
    """The DAG's params; deployment defaults come from MMCURATE_* environment variables."""
    env = os.environ.get
    return {
        "partition": Param(None, type=["null", "string"],
                           description="partition name; default: the run's logical date (YYYY-MM-DD)"),
        "input": Param(env("MMCURATE_INPUT") or None, type=["null", "string"],
                       description="explicit input (manifest or directory); default: the partition "
                                   "convention under inputs_root"),
        "inputs_root": Param(env("MMCURATE_INPUTS_ROOT") or None, type=["null", "string"],
                             description="where partitions arrive: <root>/<partition>.jsonl|.csv|"
                                         ".parquet or <root>/<partition>/"),
        "output_root": Param(env("MMCURATE_OUTPUT_ROOT", ""), type="string",
                             description="outputs go to <output_root>/<partition>/"),
        "stages": Param(env("MMCURATE_STAGES") or None, type=["null", "string"],
                        description="mmcurate run --stages (default: the config's stages)"),
        "config": Param(env("MMCURATE_CONFIG") or None, type=["null", "string"],
                        description="mmcurate run --config FILE (TOML/YAML/JSON)"),
        "sets": Param(_env_list("MMCURATE_SETS"), type="array",
                      description="--set KEY=VALUE overrides ({partition}, {output}, "
                                  "{output_root}, {earlier_outputs} are substituted)"),
        "runner": Param(env("MMCURATE_RUNNER", "DirectRunner"), type="string",
                        description="Beam runner (DirectRunner, PortableRunner, DataflowRunner, "
                                    "FlinkRunner, ...)"),
        "beam_options": Param({}, type="object",
                              description="further Beam pipeline options, e.g. "
                                          '{"direct_running_mode": "multi_processing", '
                                          '"direct_num_workers": 2} or Dataflow\'s project, region, '
                                          "temp_location, sdk_container_image, ..."),
        "launcher": Param(env("MMCURATE_LAUNCHER", "auto"), enum=["auto", "task", "beam_operator"],
                          description="auto: BeamRunPythonPipelineOperator for DataflowRunner/"
                                      "FlinkRunner, `mmcurate run` in the task otherwise"),
        "dataflow": Param({}, type="object",
                          description="the operator's dataflow_config (project_id, location, "
                                      "job_name, ...) for DataflowRunner"),
        "corpus_stages": Param(env("MMCURATE_CORPUS_STAGES", commands.AUTO_CORPUS), type=["null", "string"],
                               description="mmcurate corpus --stages; auto (the default): dedup when "
                                           "the run did not dedup, else nothing; empty: the corpus "
                                           "task skips"),
        "corpus_sets": Param(_env_list("MMCURATE_CORPUS_SETS"), type="array",
                             description="--set overrides for the corpus jobs (same substitutions)"),
        "dedup_index_dir": Param(env("MMCURATE_DEDUP_INDEX_DIR", "{output_root}/_dedup_index"),
                                 type=["null", "string"],
                                 description="dedup's cross-run index (dedup.index_dir); with "
                                             "dedup.partition = the partition, a run dedups against "
                                             "the partitions before it; empty: no cross-run dedup"),
        "gates": Param(env("MMCURATE_GATES") or None, type=["null", "string"],
                       description="gate file for mmcurate audit --check (default: the packaged "
                                   "quality/gates/default.yaml)"),
    }


def _partition_name(params: dict, context) -> str:
    if params.get("partition"):
        return params["partition"]
    when = context.get("logical_date") or context["dag_run"].run_after
    return when.strftime("%Y-%m-%d")


def _fail_on(rc: int, what: str, stdout: str, why: str = "") -> None:
    """Nothing for exit 0; a failure without retries for 1 (a verdict on the data: nothing
    became a source, a gate failed) and 2 (arguments, config, a gate file), where a retry
    would give the same answer; a failure Airflow retries for anything else: 3 (a crash), a
    signal (a negative status), an interpreter that died. The message is `why` when given (the
    failed checks of a gate), else the command's last lines."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from mmcurate.pipelines.exit_codes import EXIT_OK, EXIT_USAGE, EXIT_VERDICT

    if rc == EXIT_OK:
        return
    tail = why or " | ".join(line for line in stdout.strip().splitlines()[-5:])
    msg = f"{what} exited {rc}: {tail}"
    if rc in (EXIT_VERDICT, EXIT_USAGE):
        raise AirflowFailException(msg)
    raise AirflowException(msg)


def _has_dedup() -> bool:
    """Whether the installed mmcurate has the dedup stage's config (its `--set dedup.*`)."""
    try:
        from mmcurate.pipelines.config import CurateConfig

        return hasattr(CurateConfig(), "dedup")
    except Exception:  # noqa: BLE001 - mmcurate in another environment (MMCURATE_BIN)
        return False


def google_provider_installed() -> bool:
    """BeamRunPythonPipelineOperator (apache-beam provider 6.3.1) refuses to be constructed
    without apache-airflow-providers-google, whatever the runner."""
    import importlib.util

    try:
        return importlib.util.find_spec("airflow.providers.google") is not None
    except ModuleNotFoundError:
        return False


def _beam_operator_task(p, python: str):
    """`curate_beam`: the Beam provider's operator when it can be built here, else a task that
    fails with the reason (the DAG's shape does not depend on the environment)."""
    if google_provider_installed():
        from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator

        from mmcurate.orchestration import launch

        return BeamRunPythonPipelineOperator(
            task_id="curate_beam",
            py_file=launch.__file__,
            runner=p["runner"],
            pipeline_options=p["pipeline_options"],
            dataflow_config=p["dataflow_config"],
            py_interpreter=python,
        )

    @task(task_id="curate_beam", retries=0)
    def curate_beam(runner: str) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            f"launcher beam_operator ({runner}) needs apache-airflow-providers-google in the "
            "Airflow environment (the Beam provider's BeamRunPythonPipelineOperator requires it "
            "for every runner); install it, or set the param launcher=task to run "
            "`mmcurate run --runner ...` in the task")

    return curate_beam(p["runner"])


def build_dag(dag_id: str = DAG_ID, schedule: str | None = "@daily",
              start_date: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
              retries: int | None = None) -> DAG:
    if retries is None:
        retries = int(os.environ.get("MMCURATE_TASK_RETRIES", "2"))
    python = os.environ.get("MMCURATE_PYTHON") or sys.executable
    with DAG(
        dag_id,
        schedule=schedule,
        start_date=start_date,
        catchup=False,
        max_active_runs=1,  # corpus jobs dedup against the partitions before this one
        params=default_params(),
        default_args={"retries": retries, "retry_delay": dt.timedelta(minutes=5)},
        tags=["mmcurate"],
        doc_md=__doc__,
    ) as dag:

        @task(multiple_outputs=True)
        def plan() -> dict:
            context = get_current_context()
            params = context["params"]
            name = _partition_name(params, context)
            try:
                part = partitions.resolve(name, params["output_root"], params.get("inputs_root"),
                                          params.get("input"))
                earlier = partitions.earlier_outputs(params["output_root"], name)
                p = commands.make_plan(
                    part.name, part.input, part.output, stages=params.get("stages"),
                    config=params.get("config"), sets=params.get("sets"), runner=params["runner"],
                    beam_options=params.get("beam_options"),
                    launcher=params.get("launcher", "auto"),
                    corpus_stages=params.get("corpus_stages"),
                    corpus_sets=params.get("corpus_sets"), gates=params.get("gates"),
                    earlier=earlier, output_root=params["output_root"],
                    dataflow=params.get("dataflow"),
                    dedup_index_dir=params.get("dedup_index_dir") if _has_dedup() else None)
            except ValueError as e:  # params that cannot make a right command line; a missing
                # input (FileNotFoundError) is retried: the partition may not have arrived yet
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"plan: {e}") from None
            print(f"partition {p.partition}: {p.input} -> {p.output} ({p.runner}, {p.launcher}); "
                  f"{len(earlier)} earlier partition(s)")
            return p.to_dict()

        @task.branch
        def choose_launcher(launcher: str) -> str:
            return "curate_beam" if launcher == "beam_operator" else "curate"

        @task
        def curate(run_argv: list[str], output: str) -> dict:
            rc, out = commands.run_logged(run_argv, print)
            _fail_on(rc, "mmcurate run", out)
            from mmcurate.transforms.read import read_manifest  # Beam FileSystems: gs://, s3://

            m = read_manifest(output)
            return {"run_id": m["run_id"], "tables": m["tables"]}

        @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        def corpus(corpus_argv: list[str] | None, output: str, auto: bool = False) -> None:
            from airflow.sdk.exceptions import AirflowSkipException

            if not corpus_argv:
                raise AirflowSkipException("no corpus stage selected (param corpus_stages is empty)")
            if auto:  # only what the run did not do itself
                from mmcurate.transforms.read import read_manifest

                todo = commands.corpus_todo(corpus_argv, read_manifest(output))
                if not todo:
                    raise AirflowSkipException("corpus_stages auto: the run ran "
                                               f"{','.join(commands.AUTO_CORPUS_STAGES)} itself")
                i = corpus_argv.index("--stages") + 1
                corpus_argv = [*corpus_argv[:i], ",".join(todo), *corpus_argv[i + 1:]]
            rc, out = commands.run_logged(corpus_argv, print)
            _fail_on(rc, "mmcurate corpus", out)

        @task(trigger_rule=TriggerRule.NONE_FAILED)
        def audit_gate(audit_argv: list[str]) -> list[dict]:
            rc, out = commands.run_logged(audit_argv, print)
            outcomes = commands.gate_outcomes(out) or []
            for o in outcomes:
                print(("PASS" if o["passed"] else "FAIL") + f"  {o['name']}: {o['measured']!r} "
                      f"(want {o['op']} {o['value']!r})")
            why = commands.failed_checks(outcomes) if rc == 1 else ""
            if why:
                print(why)
            _fail_on(rc, "mmcurate audit --check", out, why)
            return outcomes

        p = plan()
        branch = choose_launcher(p["launcher"])
        local = curate(p["run_argv"], p["output"])
        remote = _beam_operator_task(p, python)
        jobs = corpus(p["corpus_argv"], p["output"], p["corpus_auto"])
        branch >> [local, remote]
        [local, remote] >> jobs
        jobs >> audit_gate(p["audit_argv"])
    return dag
