"""Input partitions of a scheduled run: one partition per DAG run, one output directory each.

The convention (documented in README "Orchestration"):

    INPUTS_ROOT/<partition>.jsonl | .csv | .parquet    a manifest of that partition's media, or
    INPUTS_ROOT/<partition>/                           a directory of media (searched recursively)
    OUTPUT_ROOT/<partition>/                           its curated output (tables + manifest.json)

`<partition>` is the run's logical date (`YYYY-MM-DD`, Airflow's `ds`) unless the run names one.
The first existing candidate above wins, in that order. A run may instead name its input
explicitly (a manifest or directory anywhere); it is still written to OUTPUT_ROOT/<partition>/.
A partition is always the same output directory, so a retried or re-triggered run replaces
that directory's committed generation (the sink's manifest commit) instead of adding to it.

Nothing here imports Airflow: the DAG only calls these functions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from mmcurate.transforms.commit import join

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
# matched with fullmatch: `$` would also accept a trailing newline
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*")  # 2026-11-24, dt=2026-11-24, batch.7


@dataclass(frozen=True)
class Partition:
    name: str  # e.g. "2026-11-24"
    input: str  # the job's one INPUT: a manifest file or a directory
    output: str  # OUTPUT_ROOT/<name>


def _exists(path: str) -> bool:
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.exists(path)
    return os.path.exists(path)


def _abs(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def check_name(name: str) -> str:
    """A partition name is one path component (no slashes, no '..', no control characters)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"partition {name!r}: expected one path component of letters, digits "
                         "and . _ = - (e.g. 2026-11-24)")
    return name


def candidates(inputs_root: str, name: str) -> list[str]:
    """Where the convention looks for partition `name`'s input, in order."""
    return [join(inputs_root, name + s) for s in MANIFEST_SUFFIXES] + [join(inputs_root, name)]


def resolve(name: str, output_root: str, inputs_root: str | None = None,
            input_path: str | None = None) -> Partition:
    """The partition `name`: its input (explicit `input_path`, else the first existing
    candidate under `inputs_root`) and its output directory. FileNotFoundError naming every
    place looked at when there is no input."""
    check_name(name)
    if not output_root:
        raise ValueError("no output root: set the DAG param output_root (or MMCURATE_OUTPUT_ROOT)")
    if input_path:
        if not _exists(input_path):
            raise FileNotFoundError(f"partition {name}: input {input_path} does not exist")
        return Partition(name, _abs(input_path), _abs(join(output_root, name)))
    if not inputs_root:
        raise ValueError("no input: give the DAG param `input` or `inputs_root` "
                         "(or MMCURATE_INPUTS_ROOT)")
    looked = candidates(inputs_root, name)
    for path in looked:
        if _exists(path):
            return Partition(name, _abs(path), _abs(join(output_root, name)))
    raise FileNotFoundError(f"partition {name}: no input; looked for {', '.join(looked)}")


def earlier_outputs(output_root: str, name: str) -> list[str]:
    """Committed outputs (with a manifest.json) of partitions that sort before `name`, oldest
    first: what a corpus job dedups against (local roots; [] for object stores)."""
    if "://" in output_root or not os.path.isdir(output_root):
        return []
    found = []
    for entry in sorted(os.listdir(output_root)):
        if entry < name and _NAME.fullmatch(entry) and os.path.isfile(os.path.join(output_root, entry, "manifest.json")):
            found.append(os.path.abspath(os.path.join(output_root, entry)))
    return found
