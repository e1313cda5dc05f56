"""The table schemas stay what they were when they were declared by hand.

tests/data/table_schemas/ holds every table's Arrow schema as it was declared in
schemas/tables.py before the schemas were derived from the record dataclasses: `<table>.arrow`
is `schema.serialize()` (compared exactly: names, order, types, nullability, field and schema
metadata), `<table>.txt` the same schema as text (for a reviewer, and a readable diff when the
comparison fails). A column change is meant to change these files: regenerate them with

    .venv/bin/python -c 'import sys; sys.path.insert(0, "tests"); import test_columns as t; t.freeze()'

and review the .txt diff.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pytest

from mmcurate.schemas.tables import TABLES

FROZEN = Path(__file__).parent / "data" / "table_schemas"


def _text(schema: pa.Schema) -> str:
    return schema.to_string(show_schema_metadata=True, truncate_metadata=False,
                            element_size_limit=1_000_000) + "\n"


def freeze() -> None:
    """Write the frozen copies from the current schemas."""
    FROZEN.mkdir(parents=True, exist_ok=True)
    for name, schema in TABLES.items():
        (FROZEN / f"{name}.arrow").write_bytes(schema.serialize().to_pybytes())
        (FROZEN / f"{name}.txt").write_text(_text(schema))


def test_every_table_has_a_frozen_schema():
    assert sorted(p.stem for p in FROZEN.glob("*.arrow")) == sorted(TABLES)
    assert sorted(p.stem for p in FROZEN.glob("*.txt")) == sorted(TABLES)


@pytest.mark.parametrize("name", list(TABLES))
def test_schema_is_the_frozen_one(name):
    frozen = pa.ipc.read_schema(pa.py_buffer((FROZEN / f"{name}.arrow").read_bytes()))
    derived = TABLES[name]
    assert _text(derived) == (FROZEN / f"{name}.txt").read_text()
    assert derived.equals(frozen, check_metadata=True)
    # nested fields too (Schema.equals compares them, this says which one differs)
    for got, want in zip(derived, frozen):
        assert got.equals(want, check_metadata=True), (got, want)
