"""The command lines the DAG's tasks run: `mmcurate run`, `mmcurate corpus`, `mmcurate audit`.

The DAG holds no pipeline logic (TFX's rule): each task assembles the arguments of one public
entry point of mmcurate and runs it in a child process, whose exit status decides the task's
state. A child process keeps the models' memory and threads out of the Airflow worker, and lets
Airflow run from its own environment: `MMCURATE_BIN` names the `mmcurate` to call (default: the
one beside this Python, else `python -m mmcurate.pipelines.cli`).

Nothing here imports Airflow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("mmcurate.orchestration")

# The DAG's default `corpus_stages`: dedup, only when the run did not dedup already (no
# double work); rephrasing stays opt-in, as in `mmcurate run`
AUTO_CORPUS = "auto"
AUTO_CORPUS_STAGES = ("dedup",)

# Runners whose job is submitted by Airflow's BeamRunPythonPipelineOperator by default
# (launcher "auto"); every other runner runs through `mmcurate run` in the task itself.
OPERATOR_RUNNERS = ("DataflowRunner", "FlinkRunner")


def mmcurate_bin() -> list[str]:
    env = os.environ.get("MMCURATE_BIN", "").strip()
    if env:
        return shlex.split(env)
    beside = os.path.join(os.path.dirname(sys.executable), "mmcurate")
    if os.access(beside, os.X_OK):
        return [beside]
    return [sys.executable, "-m", "mmcurate.pipelines.cli"]


def beam_options_to_args(options: dict | None) -> list[str]:
    """Beam pipeline options as flags, by the rule Airflow's Beam provider uses (so both
    launchers see the same command line): True -> `--k`, False/None -> omitted, a list ->
    `--k=v` per item, a dict -> `--k=<json>`, anything else -> `--k=v`."""
    args: list[str] = []
    for key, value in (options or {}).items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(f"--{key}")
        elif isinstance(value, list):
            args.extend(f"--{key}={v}" for v in value)
        elif isinstance(value, dict):
            args.append(f"--{key}={json.dumps(value)}")
        else:
            args.append(f"--{key}={value}")
    return args


class PlanError(ValueError):
    """DAG params that would make a wrong command line; the message is one line."""


def _flag_key(name: str) -> str:
    """`--no-audit`, `no_audit`, `-o` -> one spelling, to compare a Beam option key with a flag."""
    return name.strip().lstrip("-").replace("_", "-")


def reserved_flags() -> dict[str, str]:
    """{key: flag} for every flag of mmcurate's own CLI (its argparse parser, every subcommand)
    and the operator launcher's `--mmcurate_input`: a Beam option with one of these names would
    be appended after the plan's own flag and win over it."""
    from mmcurate.orchestration.launch import INPUT_FLAG
    from mmcurate.pipelines.cli import own_flags

    return {_flag_key(f): f for f in sorted(own_flags() | {INPUT_FLAG})}


def check_params(beam_options: dict | None, sets: list[str] | None = None,
                 corpus_sets: list[str] | None = None, stages: str | None = None,
                 corpus_stages: str | None = None) -> None:
    """PlanError when a param would override the plan's own flags: a `beam_options` key naming
    one of mmcurate's flags (`output`, `config`, `set`, `stages`, ...) or `runner` (the DAG param
    `runner` also picks the launcher), a `sets` item or a stage that is a flag."""
    reserved = reserved_flags()
    problems = []
    for key in beam_options or {}:
        k = _flag_key(str(key))
        if k in reserved:
            problems.append(f"beam_options key {key!r} is mmcurate's own flag {reserved[k]} (set "
                            f"through the DAG params output_root, input, config, sets, stages)")
        elif k == "runner":
            problems.append(f"beam_options key {key!r}: use the DAG param runner (it also picks the "
                            f"launcher)")
    for param, items in (("sets", sets), ("corpus_sets", corpus_sets)):
        for item in items or []:
            if not isinstance(item, str) or item.lstrip().startswith("-"):
                problems.append(f"{param} item {item!r}: expected KEY=VALUE, not a flag")
    for param, value in (("stages", stages), ("corpus_stages", corpus_stages)):
        for name in (value or "").split(","):
            if name.strip() and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name.strip()):
                problems.append(f"{param} {value!r}: {name.strip()!r} is not a stage name")
                break
    if problems:
        raise PlanError("; ".join(problems))


def substitute(values: list[str], mapping: dict[str, str]) -> list[str]:
    """`{output}`, `{output_root}`, `{partition}`, `{earlier_outputs}` in --set values."""
    out = []
    for v in values:
        for key, repl in mapping.items():
            v = v.replace("{" + key + "}", repl)
        out.append(v)
    return out


@dataclass
class Plan:
    """Everything one DAG run executes, decided once from the run's params."""

    partition: str
    input: str
    output: str
    runner: str
    launcher: str  # "task" | "beam_operator"
    run_argv: list[str]
    corpus_argv: list[str] | None  # None: no corpus stage selected (the task skips)
    audit_argv: list[str]
    pipeline_options: dict  # for BeamRunPythonPipelineOperator (launcher beam_operator)
    dataflow_config: dict = field(default_factory=dict)
    earlier_outputs: list[str] = field(default_factory=list)
    # corpus_stages "auto": the corpus task runs only the stages the run did not (`corpus_todo`)
    corpus_auto: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def make_plan(partition: str, input_path: str, output: str, *, stages: str | None = None,
              config: str | None = None, sets: list[str] | None = None,
              runner: str = "DirectRunner", beam_options: dict | None = None,
              launcher: str = "auto", corpus_stages: str | None = "",
              corpus_sets: list[str] | None = None, gates: str | None = None,
              earlier: list[str] | None = None, output_root: str = "",
              dataflow: dict | None = None, dedup_index_dir: str | None = None) -> Plan:
    if launcher not in ("auto", "task", "beam_operator"):
        raise ValueError(f"launcher {launcher!r}: expected auto, task or beam_operator")
    check_params(beam_options, sets, corpus_sets, stages, corpus_stages)
    if launcher == "auto":
        launcher = "beam_operator" if runner in OPERATOR_RUNNERS else "task"
    earlier = list(earlier or [])
    mapping = {"output": output, "output_root": output_root, "partition": partition,
               "earlier_outputs": json.dumps(earlier)}
    common: list[str] = []
    if config:
        common += ["--config", config]
    # dedup against earlier partitions (in `run` and in the corpus job): the persisted index
    # and this partition's name, so only partitions that sort before it count
    dedup_sets = []
    if dedup_index_dir:
        dedup_sets = [f"dedup.index_dir={substitute([dedup_index_dir], mapping)[0]}",
                      f"dedup.partition={partition}"]
    sets = dedup_sets + list(sets or [])
    corpus_sets = dedup_sets + list(corpus_sets or [])
    beam_args = [f"--runner={runner}", *beam_options_to_args(beam_options)]
    run_argv = ["run", input_path, "--output", output, *common]
    if stages:
        run_argv += ["--stages", stages]
    for s in substitute(sets, mapping):
        run_argv += ["--set", s]
    run_argv += ["--no-audit", *beam_args]
    corpus_argv = None
    auto = (corpus_stages or "").strip() == AUTO_CORPUS
    chosen = list(AUTO_CORPUS_STAGES) if auto else \
        [s.strip() for s in (corpus_stages or "").split(",") if s.strip()]
    if chosen:
        corpus_argv = ["corpus", output, "--stages", ",".join(chosen), *common]
        for s in substitute(corpus_sets, mapping):
            corpus_argv += ["--set", s]
        corpus_argv += ["--no-audit", *beam_args]
    audit_argv = ["audit", output, "--check", gates or default_gates(), "--json"]
    # the operator's command line: launch.py turns `--mmcurate_input` back into the INPUT
    pipeline_options: dict = {"mmcurate_input": input_path, "output": output, "no-audit": True}
    if config:
        pipeline_options["config"] = config
    if stages:
        pipeline_options["stages"] = stages
    if sets:
        pipeline_options["set"] = substitute(sets, mapping)
    pipeline_options.update(beam_options or {})
    dataflow = dict(dataflow or {})
    dataflow.setdefault("job_name", f"mmcurate-{partition}".lower().replace("_", "-").replace(".", "-"))
    return Plan(partition, input_path, output, runner, launcher, run_argv, corpus_argv, audit_argv,
                pipeline_options, dataflow, earlier, corpus_auto=auto)


def corpus_todo(corpus_argv: list[str], run_manifest: dict) -> list[str]:
    """corpus_stages "auto": the corpus stages of `corpus_argv` the committed run (its manifest)
    did not run itself; [] when it ran them all (the corpus task then skips)."""
    stages = corpus_argv[corpus_argv.index("--stages") + 1].split(",")
    config = run_manifest.get("config") or "{}"
    done = set((json.loads(config) if isinstance(config, str) else config).get("stages") or [])
    return [s for s in stages if s not in done]


def default_gates() -> str:
    """The example gate file shipped with mmcurate.quality (`quality/gates/default.yaml`)."""
    from importlib.resources import files

    return str(files("mmcurate.quality") / "gates" / "default.yaml")


def run_logged(args: list[str], emit: Callable[[str], None] | None = None,
               env: dict | None = None) -> tuple[int, str]:
    """Run `mmcurate ARGS...`; every output line goes to `emit` (the task log) as it comes.
    Returns (exit status, stdout). The child is terminated if the task is interrupted."""
    argv = [*mmcurate_bin(), *args]
    emit = emit or log.info
    emit("$ " + shlex.join(argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, bufsize=1)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            emit(line.rstrip("\n"))
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # the task was killed or timed out: do not leave the job behind
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rc, "".join(lines)


def failed_checks(outcomes: list[dict]) -> str:
    """The failed checks of `mmcurate audit --check --json`'s outcomes as one line (what a
    failed gate task says), "" when none failed."""
    failed = [o for o in outcomes if not o.get("passed")]
    if not failed:
        return ""
    parts = [f"{o['name']!r} (measured {o.get('measured')!r}, want {o.get('op')} {o.get('value')!r})"
             for o in failed]
    return f"{len(failed)} of {len(outcomes)} check(s) failed: " + "; ".join(parts)


def gate_outcomes(stdout: str) -> list[dict] | None:
    """The `--json` outcomes printed by `mmcurate audit --check --json` (None if absent)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("["):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None
