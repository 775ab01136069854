"""Pass-through (x_) columns, the unknown-column hint, partial reads and the results columns a
pipeline joins on."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests import ManifestError, read_manifest, read_manifest_partial, validate_manifest
from manifests.results import RESULTS_SCHEMA, ResultRow, ResultsError, read_results, write_results
from manifests.schema import write_manifest
from tests.manifests.malformed_cases import make_media, rows


def test_x_prefixed_columns_are_not_errors_and_keep_their_type(tmp_path):
    make_media(tmp_path)
    table = pa.Table.from_pylist(rows(n=2)).append_column("x_take", pa.array([3, 7], pa.int16()))
    table = table.append_column("x_note", pa.array(["a", None], pa.string()))
    write_manifest(table, tmp_path / "m.parquet")
    report = validate_manifest(tmp_path / "m.parquet")
    assert report.ok and not report.problems, report.format_table()
    assert [s.shot_id for s in read_manifest(tmp_path / "m.parquet")] == ["shot0", "shot1"]
    partial = read_manifest_partial(tmp_path / "m.parquet")
    assert partial.passthrough.column_names == ["x_take", "x_note"]
    assert partial.passthrough.schema.field("x_take").type == pa.int16()
    assert partial.passthrough.column("x_take").to_pylist() == [3, 7]


@pytest.mark.parametrize("name", ["take", "x_", "X_take", "_x_take"])
def test_other_unknown_columns_stay_errors_with_a_hint_about_the_prefix(tmp_path, name):
    make_media(tmp_path)
    write_manifest(rows({name: "1"}, {name: "2"}), tmp_path / "m.parquet", strict=False)
    report = validate_manifest(tmp_path / "m.parquet")
    [problem] = report.errors
    assert (problem.row, problem.column, problem.rule) == (None, name, "unknown-column")
    assert "'x_'" in problem.message and f"x_{name}" in problem.message and "results.parquet" in problem.message
    with pytest.raises(ManifestError):  # manifest-level: partial reads refuse it too
        read_manifest_partial(tmp_path / "m.parquet")


def test_partial_read_sets_invalid_rows_aside(tmp_path):
    make_media(tmp_path)
    write_manifest(rows({}, {"audio": "gone.wav"}, {"steps": 0, "shot_id": "a b"}, n=4), tmp_path / "m.parquet")
    with pytest.raises(ManifestError):
        read_manifest(tmp_path / "m.parquet")
    partial = read_manifest_partial(tmp_path / "m.parquet")
    assert [(s.shot_id, s.row) for s in partial.shots] == [("shot0", 0), ("shot3", 3)]
    assert [(r.row, r.shot_id, r.label) for r in partial.invalid] == [(1, "shot1", "shot1"), (2, "a b", "a b")]
    assert [(p.column, p.rule) for p in partial.invalid[0].problems] == [("audio", "missing-file")]
    assert {(p.column, p.rule) for p in partial.invalid[1].problems} == {("shot_id", "bad-id"), ("steps", "range")}


def test_duplicate_shot_ids_still_refuse_a_partial_read(tmp_path):
    make_media(tmp_path)
    write_manifest(rows({}, {"shot_id": "shot0", "output": "out/other.mp4"}), tmp_path / "m.parquet")
    with pytest.raises(ManifestError) as info:
        read_manifest_partial(tmp_path / "m.parquet")
    assert any(p.rule == "duplicate-id" for p in info.value.problems)


def test_results_join_columns_round_trip_with_extra_columns(tmp_path):
    rows_ = [
        ResultRow(shot_id="s0", status="done", attempts=1, output="/o/s0.mp4", manifest_row=0, run_id="ab12",
                  width=64, height=48, log_path="/run/logs/s0/1.log", wall_s=2.0,
                  started_at=datetime(2025, 1, 1, tzinfo=UTC)),
        ResultRow(shot_id="s1", status="failed", manifest_row=1, run_id="ab12", failure_stage="validation",
                  failure_type="missing-file", error="invalid manifest row",
                  validation_errors=[{"column": "audio", "rule": "missing-file", "message": "no such file",
                                      "value": "'a.wav'"}]),
    ]
    extra = pa.table({"x_take": pa.array([1, 2], pa.int16())})
    path = write_results(rows_, tmp_path / "results.parquet", extra=extra)
    table = pq.read_table(path)
    for name in ("manifest_row", "run_id", "width", "height", "log_path", "failure_stage", "failure_type",
                 "validation_errors"):
        assert table.schema.field(name).type == RESULTS_SCHEMA.field(name).type
    assert table.schema.field("x_take").type == pa.int16() and table.column("x_take").to_pylist() == [1, 2]
    back = read_results(path)
    assert back[0].width == 64 and back[0].failure_stage is None and back[1].output is None
    assert back[1].validation_errors == rows_[1].validation_errors and back[1].failure_type == "missing-file"


def test_results_refuse_bad_failure_fields(tmp_path):
    with pytest.raises(ResultsError, match="failure_stage"):
        write_results([ResultRow(shot_id="s", status="failed", failure_stage="sampling")], tmp_path / "r.parquet")
    with pytest.raises(ResultsError, match="failure_stage"):
        write_results([ResultRow(shot_id="s", status="done", failure_stage="render")], tmp_path / "r.parquet")


def test_results_written_before_the_join_columns_still_read(tmp_path):
    old = pa.schema([f for f in RESULTS_SCHEMA if f.name not in ("manifest_row", "run_id", "width", "height",
                                                                  "log_path", "failure_stage", "failure_type",
                                                                  "validation_errors")])
    pq.write_table(pa.Table.from_pylist([{"shot_id": "s", "status": "done", "attempts": 1}], schema=old),
                   tmp_path / "r.parquet")
    [row] = read_results(tmp_path / "r.parquet")
    assert row.shot_id == "s" and row.manifest_row is None and row.validation_errors is None
