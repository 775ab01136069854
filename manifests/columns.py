"""Reading a manifest file and checking its columns (names and Arrow types).

Parquet columns have one type each, so a wrong type is reported once per column (row None).
The only per-cell type problems come from float columns used for integer fields, which pandas
produces whenever an integer column holds a null: integral floats are accepted, others are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.problems import Problem, short_repr
from manifests.schema import (
    BOOL,
    COLUMN_BY_NAME,
    COLUMNS,
    FLOAT,
    INT,
    PASSTHROUGH_PREFIX,
    PATH,
    REQUIRED_COLUMNS,
    STRING,
    is_passthrough_column,
)

#: placeholder for a cell whose value failed its type check (already reported).
INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "<invalid>"})()

_EXPECTED = {
    STRING: "a string column",
    PATH: "a string column (file path)",
    INT: "an integer column (any width)",
    FLOAT: "a float or integer column",
    BOOL: "a boolean column",
}


def load_table(path: Path) -> tuple[pa.Table | None, list[Problem]]:
    """Read the Parquet file; on failure return one problem naming the file."""

    def fail(rule: str, message: str) -> tuple[None, list[Problem]]:
        return None, [Problem(None, None, None, short_repr(str(path)), rule, message)]

    if not path.exists():
        return fail("not-found", f"manifest file {path} does not exist")
    if not path.is_file():
        return fail("not-a-file", f"manifest {path} is not a regular file (a Parquet file is expected)")
    try:
        return pq.ParquetFile(path).read(), []
    except pa.ArrowException as exc:
        return fail("not-parquet", f"{path} is not a readable Parquet file: {exc}")
    except OSError as exc:
        return fail("unreadable", f"cannot read manifest {path}: {exc}")


def _is_string_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _type_fits(kind: str, t: pa.DataType) -> bool:
    if pa.types.is_null(t):  # an all-null column; nulls are judged per row
        return True
    if kind in (STRING, PATH):
        return _is_string_type(t)
    if kind == BOOL:
        return pa.types.is_boolean(t)
    # INT accepts floats too (integral values only, checked per cell); FLOAT accepts ints.
    return pa.types.is_integer(t) or pa.types.is_floating(t)


@dataclass
class ColumnData:
    num_rows: int
    values: dict[str, list[Any]] = field(default_factory=dict)  # usable known columns only
    present: set[str] = field(default_factory=set)  # known columns present, usable or not
    shot_ids: list[str | None] = field(default_factory=list)  # for labelling problems
    passthrough: list[str] = field(default_factory=list)  # user columns (x_ prefix), in file order


def check_columns(table: pa.Table) -> tuple[ColumnData, list[Problem]]:
    problems: list[Problem] = []
    data = ColumnData(num_rows=table.num_rows)
    seen: set[str] = set()
    for index, name in enumerate(table.column_names):
        if name in seen:
            problems.append(
                Problem(None, None, name, "", "duplicate-column", f"column {name!r} appears more than once")
            )
            data.values.pop(name, None)
            continue
        seen.add(name)
        spec = COLUMN_BY_NAME.get(name)
        if spec is None and is_passthrough_column(name):
            data.passthrough.append(name)
            continue
        if spec is None:
            known = ", ".join(c.name for c in COLUMNS)
            problems.append(
                Problem(
                    None,
                    None,
                    name,
                    "",
                    "unknown-column",
                    f"unknown column {name!r}; known columns: {known}. A column of your own must be named "
                    f"with the {PASSTHROUGH_PREFIX!r} prefix (e.g. '{PASSTHROUGH_PREFIX}{name}'): it is then "
                    "copied unchanged into results.parquet",
                )
            )
            continue
        data.present.add(name)
        column = table.column(index)
        arrow_type = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if not _type_fits(spec.kind, arrow_type):
            problems.append(
                Problem(
                    None,
                    None,
                    name,
                    str(column.type),
                    "type",
                    f"column {name!r} has type {column.type}; expected {_EXPECTED[spec.kind]}",
                )
            )
            continue
        data.values[name] = column.to_pylist()  # dictionary arrays decode here
    for name in REQUIRED_COLUMNS:
        if name not in seen:
            problems.append(
                Problem(None, None, name, "", "missing-column", f"required column {name!r} is missing")
            )
    ids = data.values.get("shot_id")
    data.shot_ids = [v if isinstance(v, str) else None for v in ids] if ids else [None] * table.num_rows
    _coerce_numbers(data, problems)
    return data, problems


def _coerce_numbers(data: ColumnData, problems: list[Problem]) -> None:
    """Ints for float fields become floats; integral floats for int fields become ints."""
    for name, values in data.values.items():
        kind = COLUMN_BY_NAME[name].kind
        for row, v in enumerate(values):
            if v is None:
                continue
            if kind == FLOAT and isinstance(v, int):
                values[row] = float(v)
            elif kind == INT and isinstance(v, float):
                if math.isfinite(v) and v.is_integer():
                    values[row] = int(v)
                else:
                    values[row] = INVALID
                    problems.append(
                        Problem(
                            row, data.shot_ids[row], name, short_repr(v), "type", f"{name} must be an integer"
                        )
                    )
