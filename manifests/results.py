"""results.parquet: one row per shot of a run, written atomically.

A published output without a record here does not count as done, so this file is rewritten
whole through temp file + fsync + rename; a reader never sees a partial table.
Timestamps are timezone-aware UTC; naive datetimes are refused because their zone is unknowable.

Columns a pipeline joins on: ``manifest_row`` (0-based row of the manifest), ``run_id``,
``width``/``height`` (planned output geometry), ``log_path`` (latest attempt log),
``failure_stage``/``failure_type`` and, for rows refused by validation, ``validation_errors``.
Quality of a published shot (render/quality/curves.py; null when not measured): ``qa_worst_seam_ratio``,
``qa_max_colour_drift`` (ΔE76), ``qa_min_face_similarity``, ``qa_lipsync``, ``qa_flags`` (one
"kind: detail" string per exceeded threshold: flagged, not failed) and ``qa_error`` (why the
measurement failed; the shot itself stays done).
``write_results(..., extra=table)`` appends the manifest's pass-through (``x_``) columns unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.atomic import atomic_write_table

#: ``interrupted``: was rendering when its run stopped (signal, crash, lost lease); a rerun resumes it.
STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed", "skipped", "interrupted")
#: where a failed shot failed (``failure_stage``); ``output``: its output folder could not be
#: created or written, checked before anything of the shot renders.
FAILURE_STAGES: tuple[str, ...] = ("validation", "output", "planning", "preparation", "render", "stitch")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_UTC_TS = pa.timestamp("us", tz="UTC")
VALIDATION_ERROR_TYPE = pa.struct(
    [
        pa.field("column", pa.string()),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("value", pa.string()),
    ]
)
_VALIDATION_ERROR_KEYS = ("column", "rule", "message", "value")

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("shot_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("output", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("frames", pa.int64()),
        pa.field("fps", pa.float64()),
        pa.field("resolved_seed", pa.int64()),
        pa.field("started_at", _UTC_TS),
        pa.field("finished_at", _UTC_TS),
        pa.field("wall_s", pa.float64()),
        pa.field("gpu_seconds", pa.float64()),
        pa.field("segments_total", pa.int32()),
        pa.field("segments_done", pa.int32()),
        pa.field("manifest_row", pa.int64()),
        pa.field("run_id", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("log_path", pa.string()),
        pa.field("failure_stage", pa.string()),
        pa.field("failure_type", pa.string()),
        pa.field("validation_errors", pa.list_(VALIDATION_ERROR_TYPE)),
        pa.field("qa_worst_seam_ratio", pa.float64()),
        pa.field("qa_max_colour_drift", pa.float64()),
        pa.field("qa_min_face_similarity", pa.float64()),
        pa.field("qa_lipsync", pa.float64()),
        pa.field("qa_flags", pa.list_(pa.string())),
        pa.field("qa_error", pa.string()),
    ]
)
#: columns added after the first release: a results file written before them reads them as null.
_LATER_COLUMNS = ("manifest_row", "run_id", "width", "height", "log_path", "failure_stage", "failure_type",
                  "validation_errors", "qa_worst_seam_ratio", "qa_max_colour_drift", "qa_min_face_similarity",
                  "qa_lipsync", "qa_flags", "qa_error")
_QA_NUMBERS = ("qa_worst_seam_ratio", "qa_max_colour_drift", "qa_min_face_similarity", "qa_lipsync")


class ResultsError(ValueError):
    """A results row or file does not match the results schema (message names row and column)."""


@dataclass
class ResultRow:
    shot_id: str
    status: str = "pending"
    attempts: int = 0
    error: str | None = None
    output: str | None = None
    sha256: str | None = None
    duration_s: float | None = None
    frames: int | None = None
    fps: float | None = None
    resolved_seed: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    wall_s: float | None = None
    gpu_seconds: float | None = None
    segments_total: int | None = None
    segments_done: int | None = None
    manifest_row: int | None = None
    run_id: str | None = None
    width: int | None = None
    height: int | None = None
    log_path: str | None = None
    failure_stage: str | None = None
    failure_type: str | None = None
    validation_errors: list[dict[str, Any]] | None = None
    qa_worst_seam_ratio: float | None = None
    qa_max_colour_drift: float | None = None
    qa_min_face_similarity: float | None = None
    qa_lipsync: float | None = None
    qa_flags: list[str] | None = None
    qa_error: str | None = None


_FIELD_NAMES = tuple(f.name for f in fields(ResultRow))
assert _FIELD_NAMES == tuple(RESULTS_SCHEMA.names), "ResultRow and RESULTS_SCHEMA must list the same columns"


def _normalise(index: int, row: ResultRow | Mapping[str, Any]) -> dict[str, Any]:
    values = asdict(row) if isinstance(row, ResultRow) else dict(row)

    def bad(column: str, expected: str) -> ResultsError:
        return ResultsError(
            f"results row {index} (shot_id {values.get('shot_id')!r}), column {column!r}: "
            f"got {values.get(column)!r}; expected {expected}"
        )

    unknown = sorted(set(values) - set(_FIELD_NAMES))
    if unknown:
        raise ResultsError(
            f"results row {index}: unknown column(s) {unknown}; known: {', '.join(_FIELD_NAMES)}"
        )
    out = {name: values.get(name) for name in _FIELD_NAMES}
    out["attempts"] = 0 if out["attempts"] is None else out["attempts"]
    if not isinstance(out["shot_id"], str) or not out["shot_id"]:
        raise bad("shot_id", "a non-empty string")
    if out["status"] not in STATUSES:
        raise bad("status", "one of " + ", ".join(STATUSES))
    for column in ("attempts", "frames", "resolved_seed", "segments_total", "segments_done", "manifest_row",
                   "width", "height"):
        v = out[column]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise bad(column, "a non-negative integer")
    for column in ("duration_s", "fps", "wall_s", "gpu_seconds"):
        v = out[column]
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0
        ):
            raise bad(column, "a finite non-negative number")
    if out["sha256"] is not None and not (
        isinstance(out["sha256"], str) and _SHA256_RE.fullmatch(out["sha256"])
    ):
        raise bad("sha256", "64 lowercase hex digits")
    for column in ("output", "log_path"):
        if out[column] is not None:
            out[column] = str(out[column])
    for column in _QA_NUMBERS:  # correlations may be negative
        v = out[column]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
            raise bad(column, "a finite number")
    flags = out["qa_flags"]
    if flags is not None:
        if not isinstance(flags, list | tuple) or not all(isinstance(f, str) for f in flags):
            raise bad("qa_flags", "a list of strings")
        out["qa_flags"] = list(flags)
    for column in ("run_id", "failure_type", "qa_error"):
        if out[column] is not None and not isinstance(out[column], str):
            raise bad(column, "a string")
    if out["failure_stage"] is not None and out["failure_stage"] not in FAILURE_STAGES:
        raise bad("failure_stage", "one of " + ", ".join(FAILURE_STAGES))
    if out["status"] != "failed" and (out["failure_stage"] is not None or out["failure_type"] is not None):
        raise bad("failure_stage", "null unless status is 'failed'")
    errors = out["validation_errors"]
    if errors is not None:
        if not isinstance(errors, list | tuple) or not all(
            isinstance(e, Mapping) and set(e) <= set(_VALIDATION_ERROR_KEYS) and e.get("rule") and e.get("message")
            for e in errors
        ):
            raise bad("validation_errors", "a list of {column, rule, message, value} with rule and message set")
        out["validation_errors"] = [{k: e.get(k) for k in _VALIDATION_ERROR_KEYS} for e in errors]
    for column in ("started_at", "finished_at"):
        v = out[column]
        if v is not None:
            if not isinstance(v, datetime) or v.tzinfo is None or v.utcoffset() is None:
                raise bad(column, "a timezone-aware datetime")
            out[column] = v.astimezone(UTC)
    total, done = out["segments_total"], out["segments_done"]
    if total is not None and done is not None and done > total:
        raise bad("segments_done", f"at most segments_total ({total})")
    return out


def results_table(rows: Iterable[ResultRow | Mapping[str, Any]]) -> pa.Table:
    normal = [_normalise(i, r) for i, r in enumerate(rows)]
    seen: dict[str, int] = {}
    for i, r in enumerate(normal):
        if r["shot_id"] in seen:
            raise ResultsError(
                f"results row {i}: shot_id {r['shot_id']!r} already recorded in row {seen[r['shot_id']]}"
            )
        seen[r["shot_id"]] = i
    return pa.Table.from_pylist(normal, schema=RESULTS_SCHEMA)


def write_results(
    rows: Iterable[ResultRow | Mapping[str, Any]], path: str | Path, *, extra: pa.Table | None = None
) -> Path:
    """Validate ``rows`` and write them atomically (temp + fsync + rename) to ``path``.

    ``extra``: further columns, one row per results row in the same order (the manifest's
    pass-through ``x_`` columns), appended with their names and types unchanged."""
    table = results_table(rows)
    if extra is not None and extra.num_columns:
        if extra.num_rows != table.num_rows:
            raise ResultsError(f"extra columns have {extra.num_rows} rows; the results have {table.num_rows}")
        clash = sorted(set(extra.column_names) & set(table.column_names))
        if clash:
            raise ResultsError(f"extra column(s) {clash} clash with results columns")
        for name in extra.column_names:
            table = table.append_column(extra.schema.field(name), extra.column(name))
    return atomic_write_table(table, Path(path))


def read_results(path: str | Path) -> list[ResultRow]:
    """Read a results file; timestamps come back as timezone-aware UTC datetimes.

    Pass-through (``x_``) columns are not part of ``ResultRow``: read them with ``pyarrow``."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ResultsError(f"cannot read results file {path}: {exc}") from exc
    for name in _LATER_COLUMNS:  # a file from before these columns: they read as null
        if name not in table.column_names:
            spec = RESULTS_SCHEMA.field(name)
            table = table.append_column(spec, pa.nulls(table.num_rows, spec.type))
    missing = [n for n in _FIELD_NAMES if n not in table.column_names]
    if missing:
        raise ResultsError(f"results file {path} lacks column(s) {', '.join(missing)}")
    try:
        table = table.select(list(_FIELD_NAMES)).cast(RESULTS_SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise ResultsError(f"results file {path} does not match the results schema: {exc}") from exc
    rows = []
    for record in table.to_pylist():
        for column in ("started_at", "finished_at"):
            if record[column] is not None:
                record[column] = record[column].astimezone(UTC)
        rows.append(ResultRow(**record))
    return rows
