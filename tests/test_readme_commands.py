"""Every shell command in README.md, checked against the code without running a model or a
pipeline, so the README cannot drift from the CLI, the Makefile, the config, the gate files,
the scripts and the tests it names.

The commands are the lines of the README's ```bash / ```sh blocks, the `$ ` lines of its
```console blocks (and of plain blocks that show a prompt), and `mmcurate ...`, `make ...`,
`python ...` spans in backticks in the prose. For each one:

- `mmcurate ...` parses with the real argparse parser after the real Beam split
  (`cli.split_beam_args`); every Beam option is one Beam defines (`cli.unknown_beam_options`);
  `run`'s `--config`/`--set`/`--stages` load through the loader `--show-config` uses (a block's
  `run` command is run with `--show-config` appended), `corpus`'s `--stages`/`--set` through the
  corpus job's own checks; `audit --sql` queries run on an empty output (every table and column
  they name exists), `audit --check` files load as gate files; a documented error output is
  the output the command gives;
- `make X VAR=...`: X is a Makefile target and VAR a Makefile variable;
- `python -m MODULE` / `python SCRIPT.py`: the module is importable, the script exists, and every
  flag given is one its argparse defines (read from its source, nothing is started);
- every repository path and shared-media path a command names exists;
- the PortableRunner recipe of "Runners" uses the modules, flags and PATH that
  tests/test_runners.py runs it with;
- anything else (gcloud, docker, pip, an Airflow scheduler) must be in ALLOWED, with the
  reason it cannot be checked here, so a new command the test cannot check fails it.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmcurate.pipelines import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MEDIA_ROOT = ROOT.parent / "shared"

# Programs that are shell plumbing around the checked commands: their paths are still checked.
PLUMBING = {"export", "mkdir", "echo", "grep", "sleep", "kill"}
# Commands that cannot be checked offline here, by program and leading words, with the reason.
ALLOWED = {
    ("airflow", "dags", "trigger"): "needs a running Airflow scheduler and metadata DB of a deployment",
    ("airflow", "dags", "test"): "named in prose; the recipe under \"Run one partition locally\" runs it "
                                 "(tests/test_orchestration.py)",
    ("pip", "install"): "installs GPU wheels into a worker image (needs a CUDA wheel index)",
    ("docker", "build"): "builds the GPU worker image (no container registry or daemon here)",
}
# Prose that quotes a message, not a command (whitespace-normalised).
QUOTED_MESSAGES = {
    "mmcurate audit --check exited 1: 1 of 2 check(s) failed: 'at least 3 minutes of VAD speech' "
    "(measured 0.0022, want >= 0.05)": "the error a failed gate raises in the DAG's audit_gate task",
}
# Repository folders whose paths a command may name (outputs such as out/ are not checked).
REPO_DIRS = ("pipelines", "transforms", "schemas", "quality", "orchestration", "tests", "bench",
             "requirements")
PATH_RE = re.compile(r"(?<![\w./-])(?:\$PWD/)?((?:\.\./shared/|(?:%s)/)[\w./-]*[\w/])" % "|".join(REPO_DIRS))
SEPARATORS = {"|", "||", "&&", ";", "&"}


@dataclass(frozen=True)
class Command:
    line: int  # README line the command starts on
    text: str  # as written, continuation lines joined
    inline: bool  # a span in backticks in the prose (may be a fragment: `mmcurate audit`)

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def _incomplete(text: str) -> bool:
    if text.endswith("\\"):
        return True
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: a multi-line --sql "..."
        return True
    return False


def _block_commands(body: str, first_line: int, prompt: bool) -> list[Command]:
    commands, pending, start = [], "", 0
    for i, line in enumerate(body.splitlines()):
        if pending:
            pending = pending[:-1] + " " + line.strip() if pending.endswith("\\") else pending + "\n" + line
        elif prompt and line.startswith("$ "):
            pending, start = line[2:], first_line + i
        elif not prompt and line.strip() and not line.lstrip().startswith("#"):
            pending, start = line.strip(), first_line + i
        else:
            continue
        if not _incomplete(pending):
            commands.append(Command(start, pending.strip(), False))
            pending = ""
    assert not pending, f"README.md:{start}: a command that never ends: {pending!r}"
    return commands


FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
INLINE = re.compile(r"`((?:\.venv/bin/)?(?:mmcurate|make|python|airflow|pip|docker|gcloud) [^`]+)`")


def readme_commands(text: str) -> list[Command]:
    commands = []
    for m in FENCE.finditer(text):
        lang, body = m.group(2), m.group(3)
        first = text.count("\n", 0, m.start(3)) + 1
        if lang in ("bash", "sh"):
            commands += _block_commands(body, first, prompt=False)
        elif lang == "console" or (lang == "" and re.search(r"^\$ ", body, re.M)):
            commands += _block_commands(body, first, prompt=True)
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keeps line numbers
    for m in INLINE.finditer(prose):
        commands.append(Command(prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()), True))
    return commands


def simple_commands(cmd: Command) -> list[list[str]]:
    """A command line cut at pipes, `&&`, `;` and `&`, without redirections and leading
    VAR=value assignments; each is an argv."""
    tokens = shlex.split(cmd.text, comments=True)
    out, cur = [], []
    for tok in tokens + [";"]:
        if tok in SEPARATORS:
            while cur and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cur[0], re.S):
                cur = cur[1:]
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(tok)
    for argv in out:  # `> FILE`: the redirection and its target
        while ">" in argv:
            i = argv.index(">")
            del argv[i : i + 2]
    return out


def _program(argv: list[str]) -> str:
    return argv[0].removeprefix(".venv/bin/")


# ------------------------------------------------------------------------------ the checks


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def commands(readme) -> list[Command]:
    found = readme_commands(readme)
    assert len(found) > 40, "the extraction lost the README's commands"
    return found


def _placeholder(tok: str) -> bool:
    return bool(re.fullmatch(r"<[^<>]+>|[A-Z][A-Z0-9_]*(\.[a-z]+)?", tok))


def _parse(argv: list[str], relaxed: bool) -> tuple[argparse.Namespace | None, list[str], list[str]]:
    """`mmcurate ARGV` as `cli.main` parses it: (args, own argv, Beam's argv). `relaxed` (a
    fragment in prose): required options and positionals may be left out."""
    parser = cli._parser()
    mine, beam = cli.split_beam_args(argv, parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((t for t in mine if t in sub.choices), None)
    subparser = sub.choices.get(command)
    if relaxed and subparser is not None:
        for action in subparser._actions:
            action.required = False
            if action.nargs == "+":
                action.nargs = "*"
        last = subparser._option_string_actions.get(mine[-1])
        if last is not None and last.nargs != 0:
            mine = mine[:-1]  # a flag named in prose without its value: `mmcurate run --stages`
    if subparser is not None:  # a placeholder value of an option with choices: `--format X`
        acts = subparser._option_string_actions
        for i, tok in enumerate(mine[:-1]):
            action = acts.get(tok)
            if action is not None and action.choices and _placeholder(mine[i + 1]):
                mine[i + 1] = next(iter(action.choices))
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(mine)
        except SystemExit as e:
            if e.code == 0 and {"--help", "-h", "--version"} & set(mine):
                return None, mine, beam  # printed the help or the version, as asked
            raise AssertionError(f"argparse refuses it: {err.getvalue().strip()}") from None
    repeated = cli.repeated_flags(mine, parser)
    assert not repeated, repeated
    return args, mine, beam


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _documented_output(readme: str, cmd: Command) -> list[str]:
    """The lines a console block shows after the command's `$ ` line, up to the next prompt."""
    lines = readme.splitlines()[cmd.line:]  # cmd.line is 1-based: this starts after it
    shown = []
    for line in lines:
        if line.startswith(("$ ", "```")):
            break
        shown.append(line)
    return shown


def _prod_toml(readme: str, tmp: Path) -> Path:
    """The README's example `prod.toml`, its /models directories made under tmp (a deployment
    has them; the config checks that they exist)."""
    body = readme.split("Example `prod.toml`:", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    models = tmp / "models"
    for d in re.findall(r'"/models/([^"]+)"', body):
        (models / d).mkdir(parents=True, exist_ok=True)
    path = tmp / "prod.toml"
    path.write_text(body.replace('"/models/', f'"{models}/'))
    return path


class Checker:
    def __init__(self, readme: str, tmp: Path):
        self.readme, self.tmp = readme, tmp
        self.empty_output = tmp / "empty-output"  # the audit's views over no shards: every table, no rows
        self.empty_output.mkdir()

    # ---------------------------------------------------------------- mmcurate
    def mmcurate(self, cmd: Command, argv: list[str]) -> None:
        assert cmd.inline or "..." not in argv, "`...` in a block: write the command out"
        argv = [a for a in argv if a != "..."]
        args, _, beam = _parse(argv, relaxed=cmd.inline)
        assert not cli.unknown_beam_options(beam), cli.unknown_beam_options(beam)
        command = getattr(args, "command", None)
        if command == "run":
            self.run(cmd, args, argv)
        elif command == "corpus":
            self.corpus(args)
        elif command == "audit":
            self.audit(cmd, args)
        elif command == "config":
            from mmcurate.pipelines import config_doc

            assert config_doc.select(config_doc.keys(), args.section), args.section

    def run(self, cmd: Command, args: argparse.Namespace, argv: list[str]) -> None:
        if args.config == "prod.toml":  # the README's example config
            args.config = str(_prod_toml(self.readme, self.tmp))
            argv = [args.config if a == "prod.toml" else a for a in argv]
        if cmd.inline:  # a fragment: the config loader alone (`run` needs INPUT and --output)
            if args.config or args.set or args.stages:
                cli._load_config(args)
            return
        shown = _documented_output(self.readme, cmd)
        rc, out, err = _main(argv + ["--show-config"])
        if shown and shown[0].startswith("mmcurate: "):  # a documented refusal: the same lines
            assert (rc, err.splitlines()) == (cli.EXIT_USAGE, shown), err
        else:
            assert rc == 0, err
            json.loads(out)

    def corpus(self, args: argparse.Namespace) -> None:
        from mmcurate.pipelines import corpus
        from mmcurate.pipelines.config import CurateConfig

        corpus.resolve_corpus([s.strip() for s in (args.stages or "").split(",") if s.strip()])
        CurateConfig.from_dict(cli._apply_sets({}, args.set))

    def audit(self, cmd: Command, args: argparse.Namespace) -> None:
        from mmcurate.quality import audit, gates

        if args.sql and "..." not in re.sub(r"'[^']*'", "", args.sql):  # `SELECT ... FROM` in prose
            audit.query(str(self.empty_output), args.sql)  # names only real tables and columns
        if args.check and "/" in args.check:  # a repository file (`gates.yaml` is the reader's own)
            checks = gates.load(str(ROOT / args.check))
            shown = "\n".join(_documented_output(self.readme, cmd)) if not cmd.inline else ""
            m = re.search(r"^(\d+) passed, (\d+) failed \((.+)\)$", shown, re.M)
            if m:  # the documented verdict line counts the file's checks
                assert int(m[1]) + int(m[2]) == len(checks) and m[3] == args.check, (m[0], len(checks))
            for name in re.findall(r"^(?:PASS|FAIL)  (.+?): ", shown, re.M):
                assert name in {c.name for c in checks}, name

    # ---------------------------------------------------------------- make, python
    @staticmethod
    def make(argv: list[str]) -> None:
        makefile = (ROOT / "Makefile").read_text()
        targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
        variables = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*[?:]?=", makefile, re.M))
        for tok in argv[1:]:
            if "=" in tok:
                assert tok.split("=", 1)[0] in variables, f"make: no variable {tok.split('=', 1)[0]}"
            else:
                assert tok in targets, f"make: no target {tok!r}"

    @staticmethod
    def python(argv: list[str]) -> None:
        if argv[1] == "-m":
            spec = importlib.util.find_spec(argv[2])
            assert spec is not None and spec.origin, f"no module {argv[2]}"
            source, rest = Path(spec.origin), argv[3:]
        else:
            source, rest = ROOT / argv[1], argv[2:]
            assert source.is_file(), f"no script {argv[1]}"
        flags = {t.split("=", 1)[0] for t in rest if t.startswith("-")}
        missing = flags - argparse_flags(source)
        assert not missing, f"{source.name} defines no {sorted(missing)}"


def argparse_flags(source: Path) -> set[str]:
    """The option strings of every `add_argument` call in a Python file (read, not run)."""
    flags = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant)
                      and isinstance(a.value, str) and a.value.startswith("-")}
    return flags


def _recipe_block(readme: str, heading: str) -> tuple[int, int]:
    """The README lines of the first bash block after `heading`."""
    assert heading in readme, f"README.md has no recipe under {heading!r}"
    start = readme.index(heading)
    m = re.compile(r"^```bash\n(.*?)^```", re.S | re.M).search(readme, start)
    return readme.count("\n", 0, m.start(1)) + 1, readme.count("\n", 0, m.end(1)) + 1


def _constant(path: Path, name: str) -> str:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} has no {name}")


def test_every_readme_command_is_checked_and_matches(readme, commands, tmp_path):
    checker = Checker(readme, tmp_path)
    # the Airflow recipe is run as written, in a child process, by tests/test_orchestration.py
    airflow_recipe = _recipe_block(readme, _constant(ROOT / "tests" / "test_orchestration.py", "RECIPE_HEADING"))
    # and so is the stage-module recipe, with its module, by tests/test_stage_modules.py
    stage_recipe = _recipe_block(readme, _constant(ROOT / "tests" / "test_stage_modules.py", "HEADING"))
    failures, checked = [], 0
    for cmd in commands:
        if " ".join(cmd.text.split()) in QUOTED_MESSAGES or stage_recipe[0] <= cmd.line < stage_recipe[1]:
            continue
        for argv in simple_commands(cmd):
            program = _program(argv)
            try:
                for path in PATH_RE.findall(" ".join(argv)):
                    where = ROOT / path
                    if path.startswith("../shared/") and not MEDIA_ROOT.is_dir():
                        continue  # no shared media on this machine: tests/conftest.py skips its users
                    assert where.exists(), f"no such path: {path}"
                if program == "mmcurate":
                    checker.mmcurate(cmd, argv[1:])
                elif program == "make":
                    checker.make(argv)
                elif program == "python":
                    checker.python(argv)
                elif program == "airflow" and airflow_recipe[0] <= cmd.line < airflow_recipe[1]:
                    pass
                elif program not in PLUMBING:
                    words = (program, *argv[1:])
                    key = next((k for k in ALLOWED if words[: len(k)] == k), None)
                    assert key, "a command this test cannot check: check it here, or add it to ALLOWED with why"
                    continue
                checked += 1
            except Exception as e:  # noqa: BLE001 - a refusal of the code is the drift reported
                failures.append(f"{cmd}\n    {' '.join(str(e).split())[:400]}")
    assert not failures, "README commands that drifted from the code:\n" + "\n".join(failures)
    assert checked > 40


# Flags of other programs, or no flag at all, that the prose names in backticks.
OTHER_FLAGS = {
    "--direct_num_worker": "the misspelt flag of the unknown-option example",
    "--conf": "airflow dags trigger / test",
    "--key": "`--key=value`, the form the Beam operator passes options in",
    "--no-nanny": "dask worker",
    "--no-deps": "pip install",
    "--port": "local_job_service_main (checked with the recipe)",
    "--service_port": "worker_pool_main (checked with the recipe)",
}


def test_flags_named_in_the_prose_exist(readme):
    """A flag in backticks in the prose (`--direct_running_mode=in_memory`, `--dask_scheduler_file
    F`) is mmcurate's, Beam's, the DAG launcher's, the bench script's named in the same backticks
    (`bench/bench_costs.py --workers 2`), or another program's listed in OTHER_FLAGS."""
    from mmcurate.orchestration.launch import INPUT_FLAG

    cli.unknown_beam_options(["--dask_client_address=x"])  # registers Beam's Dask options
    known = set(cli._beam_option_parser()._option_string_actions) | cli.own_flags() | {INPUT_FLAG}
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), readme)
    unknown = []
    for m in re.finditer(r"`([^`]+)`", prose):
        bench = re.search(r"bench/(\w+\.py)", m.group(1))
        bench_src = (ROOT / "bench" / bench.group(1)).read_text() if bench else ""
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(1)):
            if flag not in known and flag not in OTHER_FLAGS and f'"{flag}"' not in bench_src:
                unknown.append(f"README.md:{prose.count(chr(10), 0, m.start()) + 1}: {flag} in `{m.group(1)}`")
    assert not unknown, "flags no program here defines:\n" + "\n".join(unknown)


def test_stage_lists_named_in_the_prose_are_valid(readme):
    """`--stages vad,speech,video` in the prose is a list `run` accepts (known stages, each with
    its prerequisites); `mmcurate corpus` lists are checked with the commands."""
    from mmcurate.pipelines.config import ConfigError, CurateConfig

    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), readme)
    lists = re.findall(r"`--stages ([\w,]+)`", prose)
    assert len(lists) >= 5
    bad = []
    for stages in lists:
        try:
            CurateConfig.from_dict({"stages": stages.split(",")})
        except ConfigError as e:
            bad.append(f"--stages {stages}: {e.problems}")
    assert not bad, bad


def test_extraction_finds_each_kind_of_command():
    text = """
```bash
make test PYTEST_ARGS="tests/test_asr.py"  # one file
.venv/bin/mmcurate audit out/demo --sql "
  SELECT 1"
mmcurate run a \\
  --output b
```

```console
$ mmcurate audit out --json | python -m json.tool
{"not": "a command"}
```

```
$ mmcurate run media/ -o out --stages vad,foo
mmcurate: bad config (nothing was run):
```

```python
import not_a_command
```

Prose: `mmcurate config asr` and `mmcurate run ...
--show-config`, not `mmcurate`.
"""
    got = [(c.line, c.text, c.inline) for c in readme_commands(text)]
    assert got == [
        (3, 'make test PYTEST_ARGS="tests/test_asr.py"  # one file', False),
        (4, '.venv/bin/mmcurate audit out/demo --sql "\n  SELECT 1"', False),
        (6, "mmcurate run a  --output b", False),
        (11, "mmcurate audit out --json | python -m json.tool", False),
        (16, "mmcurate run media/ -o out --stages vad,foo", False),
        (24, "mmcurate config asr", True),
        (24, "mmcurate run ... --show-config", True),
    ]
    assert simple_commands(Command(1, "mkdir -p $IN && echo x > $IN/a.jsonl", False)) == [
        ["mkdir", "-p", "$IN"], ["echo", "x"]]
    assert simple_commands(Command(1, "A=1 B=2", False)) == []


def test_checker_catches_drift(readme, tmp_path):
    """The drifts this test exists for fail it: a flag, a config key or value, a stage, a
    make target, a gate file, a script flag, a SQL column."""
    checker = Checker(readme, tmp_path)

    def fails(text: str, inline: bool = False) -> None:
        cmd = Command(1, text, inline)
        with pytest.raises(Exception):  # noqa: B017 - an assertion, or the code's own refusal
            for argv in simple_commands(cmd):
                for path in PATH_RE.findall(" ".join(argv)):
                    assert (ROOT / path).exists(), path
                {"mmcurate": lambda: checker.mmcurate(cmd, argv[1:]), "make": lambda: checker.make(argv),
                 "python": lambda: checker.python(argv)}[_program(argv)]()

    fails("mmcurate run in -o out --no-such-flag")
    fails("mmcurate run in -o out --direct_num_worker=2")  # a Beam option misspelt
    fails("mmcurate run in -o out --set vad.no_such_key=1")
    fails("mmcurate run in -o out --set vad.threshold=2")
    fails("mmcurate run in -o out --stages vad,nope")
    fails("mmcurate corpus out --stages vad")
    fails("mmcurate corpus out --set dedup.nope=1", inline=True)
    fails("mmcurate export DIR --format parquet --to OUTDIR", inline=True)
    fails('mmcurate audit out --sql "SELECT no_such_column FROM segments"')
    fails("mmcurate audit out --check quality/gates/nope.yaml")
    fails("mmcurate config nosection")
    fails("make no-such-target")
    fails("make test NO_SUCH_VAR=1")
    fails("python bench/bench_costs.py --no-such-flag")
    fails("python -m apache_beam.runners.worker.worker_pool_main --port 1")
    fails("python -m no_such_module_here")


# ------------------------------------------------------------------------------ PortableRunner


def _portable_test_recipe() -> tuple[dict[str, set[str]], dict[str, str | None], bool]:
    """What tests/test_runners.py runs for PortableRunner, read from its source: {module: its
    flags}, mmcurate's Beam flags {flag: fixed value or None}, and whether the servers get the
    test's Python first on PATH."""
    tree = ast.parse((ROOT / "tests" / "test_runners.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
              and n.name == "test_portable_runner_job_service_and_external_workers")

    def flag(node) -> tuple[str, str | None]:
        if isinstance(node, ast.Constant):
            name, _, value = node.value.partition("=")
            return name, value
        first = node.values[0].value  # an f-string: f"--port={port}"
        return first.split("=", 1)[0], None

    servers, beam = {}, {}
    for call in ast.walk(fn):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "_server":
            module, *flags = call.args[0].elts
            servers[module.value] = {flag(f)[0] for f in flags}
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "_cli":
            beam.update(flag(a) for a in call.args[1:])
    server_fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_server")
    path_first = "PATH" in ast.unparse(server_fn) and "sys.executable" in ast.unparse(server_fn)
    return servers, beam, path_first


def test_readme_portable_runner_recipe_is_what_test_runners_runs(readme, commands):
    servers, beam, path_first = _portable_test_recipe()
    assert servers and beam.get("--runner") == "PortableRunner"
    first, last = _recipe_block(readme, "**PortableRunner, as tests/test_runners.py runs it.**")
    recipe = [c for c in commands if first <= c.line < last]
    documented, runs, env_path = {}, [], False
    for cmd in recipe:
        for argv in simple_commands(cmd):
            if argv[0] == "export" and any(re.fullmatch(r"PATH=\$PWD/\.venv/bin:\$PATH", a) for a in argv[1:]):
                env_path = True
            elif argv[0] == ".venv/bin/python" and argv[1] == "-m":
                documented[argv[2]] = dict(zip(argv[3::2], argv[4::2]))
            elif _program(argv) == "mmcurate":
                runs.append(argv)
    # the pool starts its SDK workers as `python` from PATH: the venv's, as the test makes it
    assert path_first and env_path, "the recipe must put .venv/bin first on PATH, as the test does"
    assert {m: set(f) for m, f in documented.items()} == servers
    assert len(runs) == 1
    _, _, given = _parse(runs[0][1:], relaxed=False)
    given = dict(zip(given[0::2], given[1::2]))
    assert set(given) == set(beam)
    for name, value in beam.items():
        if value is not None:
            assert given[name] == value, name
    # the run talks to the servers the recipe started
    job = documented["apache_beam.runners.portability.local_job_service_main"]["--port"]
    pool = documented["apache_beam.runners.worker.worker_pool_main"]["--service_port"]
    assert given["--job_endpoint"] == f"localhost:{job}"
    assert given["--environment_config"] == f"localhost:{pool}"
