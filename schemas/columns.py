"""Arrow columns derived from the record dataclasses that declare them.

A table's columns are declared once, as the fields of its record class (mmcurate.schemas.records):
name, order, Python type and meaning. `schema_of(Record)` turns them into the table's Arrow
schema by these rules:

    str -> string        float -> float64      int -> int64       bool -> bool_
    bytes -> binary      list[X] -> list_(X)   dict[str, V] -> map_(string, V)
    a dataclass -> struct of its fields (the same rules)
    X | None -> nullable; any other annotation -> not null

A field says otherwise with `column(...)` as its dataclass default: another Arrow type
(`column(pa.int32())`), other nullability (`column(nullable=True)`), or the Hugging Face
`datasets` feature of a media column (`column(HF_AUDIO, hf="Audio")`). A schema with such a
column carries the `datasets` Features as its "huggingface" metadata (`hf_schema`).

This module imports nothing of mmcurate: records.py and tables.py both build on it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any

import pyarrow as pa

# Media as Hugging Face `datasets` stores them (its Image and Audio features): encoded file bytes
# plus a file name. The two are the same Arrow type; the features metadata tells them apart.
HF_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
HF_AUDIO = HF_IMAGE

_SCALARS = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_(),
            bytes: pa.binary()}
_ARROW, _NULLABLE, _HF = "arrow", "nullable", "hf"


def column(arrow: pa.DataType | None = None, *, nullable: bool | None = None, hf: str | None = None,
           **field_kwargs: Any) -> Any:
    """A dataclass field whose column differs from the rules: `arrow` its Arrow type, `nullable`
    its nullability, `hf` ("Image" | "Audio") the `datasets` feature of its `HF_IMAGE` /
    `HF_AUDIO` values (or list of them). `field_kwargs` go to `dataclasses.field` (default=...)."""
    meta = {}
    if arrow is not None:
        meta[_ARROW] = arrow
    if nullable is not None:
        meta[_NULLABLE] = nullable
    if hf is not None:
        meta[_HF] = hf
    return dataclasses.field(metadata=meta, **field_kwargs)


def _optional(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether it allowed None)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != len(typing.get_args(annotation)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return annotation, False


def arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type of a Python annotation (None allowed or not: that is the field's)."""
    annotation, _ = _optional(annotation)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        return pa.list_(arrow_type(args[0]))
    if origin is dict and len(args) == 2 and args[0] is str:
        return pa.map_(pa.string(), arrow_type(args[1]))
    if dataclasses.is_dataclass(annotation):
        return struct_of(annotation)
    raise TypeError(f"no Arrow type for {annotation!r}: declare it with column(arrow=...)")


def fields_of(cls: type) -> list[pa.Field]:
    """The Arrow fields of a record dataclass's fields, in their order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        annotation, optional = _optional(hints[f.name])
        arrow = f.metadata.get(_ARROW) or arrow_type(annotation)
        out.append(pa.field(f.name, arrow, nullable=f.metadata.get(_NULLABLE, optional)))
    return out


@functools.cache
def struct_of(cls: type) -> pa.StructType:
    """The Arrow struct of a dataclass (a nested value, e.g. a word of a segment)."""
    return pa.struct(fields_of(cls))


@functools.cache
def schema_of(cls: type) -> pa.Schema:
    """The Arrow schema of a record's table: its fields as columns, in order; with the
    `datasets` Features metadata when a column is a Hugging Face media column."""
    fields = fields_of(cls)
    media = {f.name: f.metadata[_HF] for f in dataclasses.fields(cls) if _HF in f.metadata}
    return hf_schema(fields, media) if media else pa.schema(fields)


def hf_features(fields: list[pa.Field], media: dict[str, str]) -> dict:
    """The `datasets` Features (as its JSON) for these columns, `media` naming the columns (or
    list columns) of `HF_IMAGE`/`HF_AUDIO` structs and their feature ("Image" | "Audio"), so
    `load_dataset("parquet", ...)` decodes them to PIL images / audio arrays without a cast."""
    def feature(t: pa.DataType, kind: str | None):
        if kind and t == HF_IMAGE:
            return {"_type": kind}
        if pa.types.is_list(t):
            return [feature(t.value_type, kind)]
        if pa.types.is_struct(t):
            return {f.name: feature(f.type, None) for f in t}
        dtype = {pa.string(): "string", pa.float64(): "float64", pa.int32(): "int32",
                 pa.int64(): "int64", pa.binary(): "binary", pa.bool_(): "bool"}[t]
        return {"dtype": dtype, "_type": "Value"}

    return {f.name: feature(f.type, media.get(f.name)) for f in fields}


def hf_schema(fields: list[pa.Field], media: dict[str, str]) -> pa.Schema:
    """A schema of these fields carrying their `datasets` Features as "huggingface" metadata."""
    return pa.schema(fields, metadata={"huggingface": json.dumps(
        {"info": {"features": hf_features(fields, media)}})})
