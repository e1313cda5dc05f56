"""A stage added as one module (README, "How to add a stage"): the README's own module and
commands, run as written, and what the rest of the code derives from the module alone.

The module is loaded when the stage list is, so every check runs in a child process with
MMCURATE_STAGE_MODULES set; this process's stage list stays the built-in one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VENV_BIN = Path(sys.executable).parent
HEADING = "## How to add a stage"


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(HEADING + "\n")
    return text[start:text.index("\n## ", start + 1)]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), flags=re.S)


def _env(tmp: Path, modules: str = "region_stats") -> dict:
    env = dict(os.environ, PYTHONPATH=str(tmp), MMCURATE_STAGE_MODULES=modules,
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("MMCURATE_TEST_TIER", None)
    return env


def _python(tmp: Path, code: str, modules: str = "region_stats") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp, env=_env(tmp, modules),
                          capture_output=True, text=True, timeout=120)


def _mmcurate(tmp: Path, *args: str, modules: str = "region_stats") -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "mmcurate"), *args], cwd=tmp, env=_env(tmp, modules),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    (python,) = _blocks("python")
    (tmp_path / "region_stats.py").write_text(python, encoding="utf-8")
    return tmp_path


def test_everything_is_derived_from_the_module(module_dir):
    r = _python(module_dir, """
        import dataclasses, json
        from mmcurate.schemas.stages import BY_NAME, DEFAULT_STAGES, STAGE_MODULE_PROBLEMS, resolve
        from mmcurate.schemas.tables import TABLES
        from mmcurate.pipelines.config import CurateConfig
        from mmcurate.pipelines.stages import REGISTRY
        cfg = CurateConfig.from_dict({"stages": ["vad", "region_stats"], "region_stats": {"min_region_s": 2}})
        print(json.dumps({
            "problems": STAGE_MODULE_PROBLEMS,
            "module": BY_NAME["region_stats"].module,
            "default": "region_stats" in DEFAULT_STAGES,
            "resolved": [s.name for s in resolve(cfg.stages)],
            "tables": list(TABLES)[-2:],
            "columns": TABLES["region_stats"].names,
            "section": dataclasses.asdict(cfg)["region_stats"],
            "built": REGISTRY["region_stats"].build.__module__,
        }))
    """)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == {"problems": [], "module": "region_stats", "default": False,
                   "resolved": ["ingest", "vad", "region_stats"],
                   "tables": ["region_stats", "rejected"],
                   "columns": ["source_id", "regions", "longest_s", "run_id"],
                   "section": {"min_region_s": 2.0}, "built": "region_stats"}


def test_help_and_config_show_the_stage(module_dir):
    r = _mmcurate(module_dir, "run", "--help")
    assert r.returncode == 0, r.stderr
    assert re.search(r"region_stats \(opt-in\) +count each source's speech regions", r.stdout), r.stdout
    r = _mmcurate(module_dir, "config", "region_stats")
    assert r.returncode == 0, r.stderr
    assert "region_stats.min_region_s" in r.stdout and "not counted" in r.stdout, r.stdout
    r = _mmcurate(module_dir, "run", "in", "--output", "out", "--set", "region_stats.min_region_s=abc")
    assert r.returncode == 2 and "region_stats.min_region_s" in r.stderr, r.stderr


def _module(source: str):
    import types

    mod = types.ModuleType("m")
    exec(textwrap.dedent(source), mod.__dict__)  # noqa: S102 - the test's own module text
    return mod


_SPEC = "from mmcurate.schemas.stages import StageSpec\n" \
        "STAGE = StageSpec(name='{name}', summary='s', requires=('sources',), produces={produces},\n" \
        "                  streams=(), config={config}, ledger=('x',), source_level=False)\n"


@pytest.mark.parametrize("source, why", [
    ("X = 1\n", "it has no STAGE = StageSpec(...)"),
    (_SPEC.format(name="vad", produces=(), config=()) + "def build(ctx, s): return {}\n",
     "a stage named 'vad' exists already"),
    (_SPEC.format(name="x", produces=(), config=()), "it has no build(ctx, streams) function"),
    (_SPEC.format(name="x", produces=("t",), config=()) + "def build(ctx, s): return {}\n",
     "its stage produces 't' but RECORDS declares no record for it"),
    (_SPEC.format(name="x", produces=("t",), config=()) + "def build(ctx, s): return {}\n"
     "from mmcurate.schemas.records import SourceRecord\nRECORDS = {'sources': SourceRecord, 't': SourceRecord}\n",
     "RECORDS redeclares table(s) ['sources']"),
    (_SPEC.format(name="x", produces=(), config=("x",)) + "def build(ctx, s): return {}\n",
     "its stage reads config section(s) ['x'] that CONFIG does not declare"),
    (_SPEC.format(name="x", produces=(), config=("vad",)) + "def build(ctx, s): return {}\nCONFIG = {'vad': int}\n",
     "CONFIG redeclares config section(s) ['vad']"),
])
def test_what_makes_a_module_unfit_is_named(source, why):
    from mmcurate.schemas import stages

    mod = _module(source)
    assert stages._stage_module_problem(mod, getattr(mod, "STAGE", None), {s.name for s in stages.STAGES}) == why


def test_a_module_that_cannot_be_added_stops_every_command_in_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("X = 1\n", encoding="utf-8")
    for modules, why in (("missing", "stage module 'missing' (MMCURATE_STAGE_MODULES): cannot import it: "
                                     "ModuleNotFoundError"),
                         ("broken", "stage module 'broken' (MMCURATE_STAGE_MODULES): it has no STAGE")):
        for argv in (["run", "in", "--output", "out"], ["audit", str(tmp_path)])[: 2 if modules == "broken" else 1]:
            r = _mmcurate(tmp_path, *argv, modules=modules)
            assert r.returncode == 2, (modules, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and why in lines[0], (modules, r.stderr)
    assert not (tmp_path / "out").exists()


def test_the_built_in_sections_are_the_configs_fields():
    """The stage modules' loader refuses a section name CurateConfig already has."""
    import dataclasses

    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.schemas import stages

    fields = [f.name for f in dataclasses.fields(CurateConfig) if f.name != "stages"]
    assert fields == list(stages._BUILTIN_SECTIONS)


@pytest.mark.slow  # silero VAD over the shared speech
def test_the_readme_section_runs_as_written(module_dir):
    """The README's commands, in a directory laid out as the repository's root is."""
    work = module_dir / "repo"
    work.mkdir()
    (module_dir / "region_stats.py").rename(work / "region_stats.py")
    os.symlink(VENV_BIN.parent, work / ".venv")
    os.symlink(SHARED, module_dir / "shared")
    (script,) = _blocks("bash")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work,
                       env={k: v for k, v in _env(work).items() if k != "MMCURATE_STAGE_MODULES"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    out = work / "out" / "regions"
    import duckdb

    from mmcurate.quality.db import committed_shards

    listed, _ = committed_shards(str(out))
    q = lambda t: f"read_parquet({[str(f) for f in listed[t]]})"  # noqa: E731
    con = duckdb.connect()
    sources = con.execute(f"SELECT count(*) FROM {q('sources')}").fetchone()[0]
    assert sources >= 3
    # each row counts the source's regions of 2.6 s or more (the README's setting), as the
    # speech_regions table has them
    wrong = con.execute(f"""
        SELECT count(*) FROM {q('region_stats')} s FULL JOIN (
            SELECT source_id, count(*) FILTER (WHERE "end" - start >= 2.6) AS n,
                   coalesce(max("end" - start) FILTER (WHERE "end" - start >= 2.6), 0) AS longest
            FROM {q('speech_regions')} GROUP BY source_id) r USING (source_id)
        WHERE s.regions IS DISTINCT FROM r.n OR abs(s.longest_s - r.longest) > 0.001""").fetchone()[0]
    assert wrong == 0
    rows = con.execute(f"SELECT count(*), count(*) FILTER (WHERE regions = 0) FROM {q('region_stats')}").fetchone()
    assert rows[0] == sources
    assert 0 < rows[1] < sources  # LDC93S1 has a 2.7 s region, jfk none over 2.5 s: both paths
    ledger = con.execute(f"SELECT count(*) FROM {q('rejected')} WHERE stage = 'region_stats' "
                         f"AND reason = 'no_long_region'").fetchone()[0]
    assert ledger == rows[1]
    assert "region_stats" in r.stdout  # the --sql listing
