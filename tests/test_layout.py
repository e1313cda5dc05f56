"""The package's shape: one `mmcurate` namespace, layers that only point down, and a stage
registry that every derived list agrees with."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("pipelines", "transforms", "schemas", "quality", "orchestration")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("folder", ["transforms", "schemas", "quality"])
def test_lower_layers_never_import_pipelines(folder):
    """pipelines/ composes and wires the stages; nothing below it may import it."""
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in sorted((ROOT / folder).glob("*.py"))
           for m in _imports(p)
           if m == "mmcurate.pipelines" or m.startswith("mmcurate.pipelines.")
           or m.split(".")[0] in FOLDERS]  # a bare top-level `pipelines`/`schemas`... import
    assert bad == []


def test_schemas_import_nothing_above_them():
    bad = [f"{p.name}: {m}" for p in sorted((ROOT / "schemas").glob("*.py")) for m in _imports(p)
           if m.startswith("mmcurate.") and not m.startswith("mmcurate.schemas")]
    assert bad == []


@pytest.mark.slow  # seconds (a fresh process or a real model): out of the fast tier
def test_installed_as_one_namespace(tmp_path):
    """From outside the repository, only mmcurate.<folder> is importable: PyPI has unrelated
    top-level packages named schemas, transforms, pipelines and orchestration."""
    code = (
        "import importlib, json\n"
        "import mmcurate.transforms.speech, mmcurate.pipelines.cli\n"
        f"leaked = [m for m in {list(FOLDERS)!r} if importlib.util.find_spec(m) is not None]\n"
        "print(json.dumps({'leaked': leaked, 'file': mmcurate.transforms.speech.__file__}))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["leaked"] == []
    assert Path(got["file"]).resolve() == (ROOT / "transforms" / "speech.py").resolve()


def test_stage_registry_agrees_with_tables_and_wiring():
    from mmcurate.pipelines.stages import REGISTRY
    from mmcurate.schemas import stages
    from mmcurate.schemas.tables import SOURCE_LEVEL_STAGES, TABLES

    assert list(REGISTRY) == [s.name for s in stages.STAGES]
    produced = [t for s in stages.STAGES for t in s.produces]
    assert sorted(produced + ["rejected"]) == sorted(TABLES)  # each table has one producer
    assert SOURCE_LEVEL_STAGES == ("ingest", "decode", "vad")
    assert [s.name for s in stages.resolve(["vad"])] == ["ingest", "vad"]
    with pytest.raises(ValueError, match="add vad to --stages"):
        stages.resolve(["speech"])
    with pytest.raises(ValueError, match="unknown stage"):
        stages.resolve(["vad", "dedupe"])


def test_cli_help_lists_every_stage_and_its_tables():
    from mmcurate.pipelines.cli import _parser
    from mmcurate.schemas.stages import STAGES

    run = next(a for a in _parser()._actions if a.dest == "command").choices["run"]
    text = run.format_help()
    for s in STAGES:
        assert s.name in text and all(t in text for t in s.produces)


def test_read_tables_gives_back_what_was_written(tmp_path):
    """Corpus-level jobs read an earlier output's committed tables as typed records."""
    from mmcurate.schemas import Rejection, Segment, SpeechRegion, Word
    from mmcurate.quality.db import committed_shards
    from mmcurate.transforms.read import ReadTables
    from mmcurate.transforms.sink import OutputConfig, WriteTables

    regions = [SpeechRegion(f"s-vad-{i:05d}", "s", i * 1.0, i + 0.5, "r") for i in range(5)]
    segs = [Segment(f"s-seg-{i:05d}", "s", 0.0, 1.0, "s-spk0", f"hello {i}", "en", 0.9,
                    [Word("hello", 0.0, 0.4, 0.9), Word(str(i), 0.5, 1.0, None)], -0.2, 0.01, 1.1,
                    "m", "v", None, "file.wav#t=0,1", None, "r") for i in range(3)]
    rej = [Rejection.make(stage="vad", reason="no_speech", detail="d", uri="u", run_id="r")]
    out = tmp_path / "out"
    with beam.Pipeline() as p:
        tables = {"speech_regions": p | "R" >> beam.Create(regions),
                  "segments": p | "S" >> beam.Create(segs),
                  "rejected": p | "X" >> beam.Create(rej)}
        _ = tables | WriteTables(str(out), "r", OutputConfig(buckets=2), lambda w: {"run_id": "r", **w})
    # a foreign file beside the committed shards is not read
    (out / "segments" / "part-9999-0000.parquet").write_bytes(b"not parquet")
    assert set(committed_shards(str(out))[0]) == {"speech_regions", "segments", "rejected"}

    from apache_beam.testing.util import assert_that, equal_to

    with beam.Pipeline() as p:
        read = p | ReadTables(str(out), ["speech_regions", "segments"])
        assert_that(read["speech_regions"], equal_to(regions), label="Regions")
        assert_that(read["segments"], equal_to(segs), label="Segments")
    assert committed_shards(str(tmp_path)) == (None, "manifest.json missing: the run did not finish "
                                                      "(or this is not an mmcurate output)")
    with pytest.raises(FileNotFoundError, match="manifest.json"), beam.Pipeline() as p:
        p | ReadTables(str(tmp_path), ["segments"])


def test_removed_senko_backend_is_refused_at_start_up(tmp_path, capsys):
    """`diarization.backend = "senko"` (a backend that no longer exists): exit code 2 and one
    line naming the valid backends, before any work."""
    from mmcurate.pipelines import cli

    wav = ROOT.parent / "shared" / "media" / "speech" / "jfk.wav"
    rc = cli.main(["run", str(wav), "-o", str(tmp_path / "out"), "--no-audit",
                   "--set", "diarization.backend=senko"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "diarization.backend: 'senko' is not one of ['embedded', 'pyannote', 'none']" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing ran
