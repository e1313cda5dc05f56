"""The CLI describes itself: `--version`, `mmcurate config`, `run --show-config`, help texts and
the README synopsis generated from / checked against the code, and audit recipes that run as
printed. No model is loaded and no pipeline runs."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from mmcurate.pipelines import cli, config_doc
from mmcurate.pipelines.config import CurateConfig
from mmcurate.schemas.params import Rule
from mmcurate.schemas.stages import DEFAULT_STAGES, STAGES, selectable

README = Path(__file__).resolve().parents[1] / "README.md"


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = f.type if not isinstance(f.type, str) else type(getattr(cls(), f.name))
        out += _leaf_keys(tp, key) if dataclasses.is_dataclass(tp) else [key]
    return out


# ------------------------------------------------------------------------------ --version


def test_version_prints_code_version_commit_and_model_pins(capsys, monkeypatch):
    from mmcurate.transforms import embed, models, rephrase_backends

    def no_model(*a, **k):
        raise AssertionError("--version must not locate, hash or load a model")

    for mod, name in ((models, "whisper_model_dir"), (models, "file_sha256"), (embed, "verify"),
                      (rephrase_backends, "verified_path")):
        monkeypatch.setattr(mod, name, no_model)
    monkeypatch.delenv("MMCURATE_CODE_VERSION", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    from importlib.metadata import version

    assert first.startswith(f"mmcurate {version('mmcurate')}")
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=README.parent,
                          capture_output=True, text=True).stdout.strip()
    if head:  # a git checkout: the commit is part of the version, as in run ids
        assert first == f"mmcurate {version('mmcurate')}+g{head}"
    for m in models.EMBEDDED.values():
        assert re.search(rf"{re.escape(m.name)}\s+{m.sha256[:12]}\s", out), m.name
    assert embed.SHA256["model.safetensors"][:12] in out
    for m in rephrase_backends.EMBEDDED.values():
        assert m.sha256[:12] in out


def test_version_is_the_run_ids_code_version(monkeypatch, capsys):
    monkeypatch.setenv("MMCURATE_CODE_VERSION", "9.9.9+gfeedbeef")
    from mmcurate.pipelines import curate

    assert curate.code_version() == "9.9.9+gfeedbeef"  # the run id's version, same function
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.splitlines()[0] == "mmcurate 9.9.9+gfeedbeef"


# ------------------------------------------------------------------------------ mmcurate config


def test_config_lists_every_key_with_type_default_rule_and_meaning(capsys):
    docs = config_doc.keys()
    assert [d.key for d in docs] == _leaf_keys(CurateConfig)
    assert len(docs) > 150
    by_key = {d.key: d for d in docs}
    vad = by_key["vad.threshold"]
    assert (vad.type, vad.default, vad.section) == ("float", 0.5, "vad")
    assert vad.allowed.startswith("[0, 1]")
    assert vad.meaning.startswith("silero-vad's own defaults")  # the comment above the field
    backend = by_key["asr.backend"]
    assert backend.allowed == "faster-whisper | whisperx"
    assert backend.meaning == "faster-whisper (embedded) | whisperx (production)"  # trailing comment
    assert by_key["asr.language"].type == "str | null"
    assert by_key["stages"].default == list(DEFAULT_STAGES)
    assert by_key["dedup.methods"].type == "list[str]"
    for d in docs:  # one line each, never empty
        assert d.meaning and "\n" not in d.meaning and len(d.meaning) <= config_doc.MEANING_WIDTH
        assert d.defined_in.startswith("mmcurate.")

    assert cli.main(["config"]) == 0
    text = capsys.readouterr().out
    listed = [line.split()[0] for line in text.splitlines()[1:] if line and not line.startswith(("[", "("))]
    assert listed == [d.key for d in docs]


def test_config_section_filter_json_and_unknown_section(capsys):
    assert cli.main(["config", "asr", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["key"].startswith("asr.") for r in rows)
    assert {"key", "type", "default", "allowed", "meaning"} <= set(rows[0])
    assert cli.main(["config", "vad.threshold", "--json"]) == 0
    assert [r["key"] for r in json.loads(capsys.readouterr().out)] == ["vad.threshold"]
    assert cli.main(["config", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "asr" in err and err.count("\n") == 1


@dataclass
class _Documented:
    plain: int = 1  # a trailing comment. A second sentence is left out.
    # the block above, e.g. over two
    # lines (with a. dot in brackets). Not this.
    above: float = 0.5
    bare: str = "x"
    # group. The heading joins the first sentence.
    grouped: bool = True
    # ... but only below the other one: the leading dots are no sentence
    dots: float | None = None
    # whisperx only
    both: str | None = None  # the trailing comment wins
    RULES: ClassVar[dict] = {"plain": Rule(ge=1, le=8, why="a count"), "above": Rule(gt=0),
                             "bare": Rule(choices=("x", "y")), "both": Rule(check=lambda v: None)}


def test_meanings_come_from_the_source_comments():
    docs = {d.key: d for d in config_doc.keys(_Documented)}
    assert docs["plain"].meaning == "a trailing comment."
    assert docs["above"].meaning == "the block above, e.g. over two lines (with a. dot in brackets)."
    assert docs["bare"].meaning == "-"
    assert docs["grouped"].meaning == "group: The heading joins the first sentence."
    assert docs["dots"].meaning.startswith("... but only below the other one")
    assert docs["both"].meaning == "the trailing comment wins"
    assert docs["plain"].allowed == "[1, 8] (a count)"
    assert docs["above"].allowed == "> 0"
    assert docs["bare"].allowed == "x | y"
    assert docs["both"].allowed == "checked"
    assert config_doc.first_sentence("word " * 40).endswith("...")
    assert len(config_doc.first_sentence("word " * 40)) <= config_doc.MEANING_WIDTH


# ------------------------------------------------------------------------------ --show-config


def test_show_config_prints_the_effective_config_and_runs_nothing(tmp_path, capsys):
    media = tmp_path / "a.wav"
    media.write_bytes(b"RIFF")
    conf = tmp_path / "run.toml"
    conf.write_text('[vad]\nthreshold = 0.3\n[asr]\nbeam_size = 2\n')
    out = tmp_path / "out"
    rc = cli.main(["run", str(media), "-o", str(out), "--config", str(conf), "--set", "asr.beam_size=1",
                   "--set", "quality.languages=[\"en\"]", "--stages", "vad,speech", "--show-config"])
    assert rc == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["vad"]["threshold"] == 0.3  # --config
    assert cfg["asr"]["beam_size"] == 1  # --set beats --config
    assert cfg["quality"]["languages"] == ["en"]
    assert cfg["stages"] == ["vad", "speech"]
    assert cfg["output"]["buckets"] == dataclasses.asdict(CurateConfig())["output"]["buckets"]  # a default
    assert json.loads(CurateConfig.from_dict(cfg).to_json()) == cfg  # usable as a --config file
    assert not out.exists()  # nothing ran, the output was not even probed


def test_show_config_with_a_bad_value_says_so_and_exits_2(tmp_path, capsys):
    media = tmp_path / "a.wav"
    media.write_bytes(b"RIFF")
    rc = cli.main(["run", str(media), "-o", str(tmp_path / "out"), "--set", "vad.threshold=2",
                   "--show-config"])
    assert rc == 2
    assert "vad.threshold" in capsys.readouterr().err


# ------------------------------------------------------------------------------ help and README


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_run_help_names_the_stages_and_the_real_default(capsys):
    text = " ".join(_help(["run", "--help"], capsys).split())  # argparse wraps lines
    assert "default: all" not in text
    assert f"(default: {','.join(DEFAULT_STAGES)};" in text
    assert "rephrase" not in DEFAULT_STAGES and "rephrase (opt-in)" in text
    for s in STAGES:
        assert f" {s.name} " in text or f" {s.name} (" in text, s.name
    assert CurateConfig().stages == DEFAULT_STAGES
    assert DEFAULT_STAGES == tuple(s for s in selectable() if s != "rephrase")


def _synopsis() -> dict[str, str]:
    """The README's synopsis block ("## The CLI"): {command: its lines joined}."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## The CLI\n", 1)[1]
    block = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    commands: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line.startswith("mmcurate "):
            word = line.split()[1]
            current = word if not word.startswith("[") else ""  # "" : the top-level options
            commands[current] = commands.get(current, "") + " " + line
        elif line.strip() and current is not None:
            commands[current] += " " + line
    return commands


def _flags(parser) -> set[str]:
    return {max(a.option_strings, key=len) for a in parser._actions
            if a.option_strings and "--help" not in a.option_strings}


def test_readme_synopsis_names_every_flag_of_every_command():
    parser = cli._parser()
    subparsers = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    synopsis = _synopsis()
    assert set(subparsers.choices) <= set(synopsis), "a command missing from the README synopsis"
    for command, sub in [("", parser)] + list(subparsers.choices.items()):
        named = set(re.findall(r"--[a-z][a-z0-9-]*", synopsis[command]))
        missing = _flags(sub) - named
        assert not missing, f"README synopsis of `mmcurate {command}` lacks {sorted(missing)}"
        assert not named - _flags(sub), f"README names flags `mmcurate {command}` does not have"
    assert f"--stages {','.join(DEFAULT_STAGES)}]" in synopsis["run"]


# ------------------------------------------------------------------------------ audit recipes


def _dedup_output(out: Path) -> None:
    """Two sources, the second a copy of the first: one sha256 cluster of two."""
    from test_audit import SOURCES, _manifest, _write

    from mmcurate.schemas.records import DedupCluster, DedupSignature

    a, b = SOURCES[0].source_id, SOURCES[1].source_id
    cluster = "dc-0001"
    _write(out, "sources", SOURCES[:2])
    _write(out, "dedup_signatures", [
        DedupSignature(f"{sid}-sig", f"source:{sid}", "source", "sha256", sid, f"in/{sid}", b"\0" * 32,
                       60.0, 1.0, 1000, 60.0, "p0", "run-test-0001") for sid in (a, b)])
    _write(out, "dedup_clusters", [
        DedupCluster(f"{cluster}-{sid}", f"source:{sid}", "source", sid, cluster, f"source:{a}", None,
                     sid == a, "sha256", 1.0, "run-test-0001") for sid in (a, b)])
    _manifest(out, {"sources": 2, "dedup_signatures": 2, "dedup_clusters": 2})


def test_audit_sql_recipes_run_as_printed(tmp_path, capsys):
    out = tmp_path / "out [it's]"  # a space, brackets and a quote: the recipe quotes them
    _dedup_output(out)
    cli.main(["audit", str(out)])
    printed = capsys.readouterr().out
    recipes = [line.strip() for line in printed.splitlines() if "--sql" in line]
    assert recipes, printed
    for recipe in recipes:
        argv = shlex.split(recipe)  # what a shell makes of the pasted line
        assert argv[:2] == ["mmcurate", "audit"] and argv[2] == str(out) and argv[3] == "--sql"
        assert cli.main(argv[1:] + ["--json"]) == 0, recipe
        rows = json.loads(capsys.readouterr().out)
        assert {r["item_id"] for r in rows} == {"source:aaaa", "source:bbbb"}
