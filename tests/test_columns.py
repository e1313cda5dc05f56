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

from mmcurate.schemas.columns import arrow_type, column, schema_of
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


def test_every_record_field_is_a_column_and_every_column_a_field():
    """The schemas are derived from the records, so this holds by construction; it says so for
    a reader, and fails if a table is ever declared apart from its record again."""
    from mmcurate.schemas.records import RECORDS, to_table

    assert set(RECORDS) == set(TABLES)
    for name, cls in RECORDS.items():
        assert [f.name for f in dataclasses.fields(cls)] == TABLES[name].names, name
        assert to_table(name, []).schema.equals(TABLES[name], check_metadata=True), name


def test_nested_structs_are_their_records():
    from mmcurate.schemas import tables
    from mmcurate.schemas.records import DnsmosWindow, Word

    assert [f.name for f in tables.WORD] == [f.name for f in dataclasses.fields(Word)]
    assert [f.name for f in tables.DNSMOS_WINDOW] == [f.name for f in dataclasses.fields(DnsmosWindow)]


@dataclasses.dataclass(frozen=True)
class _Inner:
    a: str


@dataclasses.dataclass(frozen=True)
class _Rec:
    s: str
    f: float | None
    i: int
    b: bool
    raw: bytes | None
    n32: int = column(pa.int32())
    m: dict[str, str] = column(nullable=True, default_factory=dict)
    inner: list[_Inner] | None = None


def test_column_rules():

    schema = schema_of(_Rec)
    assert schema == pa.schema([
        pa.field("s", pa.string(), nullable=False),
        pa.field("f", pa.float64()),
        pa.field("i", pa.int64(), nullable=False),
        pa.field("b", pa.bool_(), nullable=False),
        pa.field("raw", pa.binary()),
        pa.field("n32", pa.int32(), nullable=False),
        pa.field("m", pa.map_(pa.string(), pa.string())),
        pa.field("inner", pa.list_(pa.struct([pa.field("a", pa.string(), nullable=False)]))),
    ])
    assert schema.metadata is None
    with pytest.raises(TypeError, match="no Arrow type"):
        arrow_type(dict)
