from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manifests.results import RESULTS_SCHEMA, STATUSES, ResultRow, ResultsError, read_results, write_results
from render.media import atomic


def _rows() -> list[ResultRow]:
    cet = timezone(timedelta(hours=1))
    return [
        ResultRow(
            shot_id="shot0",
            status="done",
            attempts=1,
            output="/runs/r1/shot0.mp4",
            sha256="ab" * 32,
            duration_s=4.8125,
            frames=77,
            fps=16.0,
            resolved_seed=2**32 - 1,
            started_at=datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
            finished_at=datetime(2025, 1, 2, 4, 4, 6, tzinfo=cet),  # stored as 03:04:06 UTC
            wall_s=1.5,
            gpu_seconds=12.0,
            segments_total=2,
            segments_done=2,
        ),
        ResultRow(
            shot_id="shot1",
            status="failed",
            attempts=2,
            error="CUDA OOM in group 3",
            segments_total=3,
            segments_done=1,
        ),
        ResultRow(shot_id="shot2"),  # pending, everything else unknown
    ]


def test_round_trip(tmp_path: Path):
    path = write_results(_rows(), tmp_path / "results.parquet")
    back = read_results(path)
    assert len(back) == 3
    assert back[1] == _rows()[1] and back[2] == _rows()[2]
    first = back[0]
    assert first.started_at == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert first.finished_at == datetime(2025, 1, 2, 3, 4, 6, tzinfo=UTC)
    assert first.finished_at.utcoffset() == timedelta(0)
    assert (first.resolved_seed, first.frames, first.sha256) == (2**32 - 1, 77, "ab" * 32)
    assert pq.read_schema(path).equals(RESULTS_SCHEMA, check_metadata=False)
    assert str(pq.read_schema(path).field("started_at").type) == "timestamp[us, tz=UTC]"


def test_mappings_are_accepted(tmp_path: Path):
    write_results([{"shot_id": "a", "status": "running", "attempts": 1}], tmp_path / "r.parquet")
    (row,) = read_results(tmp_path / "r.parquet")
    assert (row.shot_id, row.status, row.attempts, row.error) == ("a", "running", 1, None)
    write_results([], tmp_path / "empty.parquet")
    assert read_results(tmp_path / "empty.parquet") == []


def test_atomic_write_leaves_no_temp_files(tmp_path: Path):
    path = tmp_path / "results.parquet"
    for _ in range(3):
        write_results(_rows(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch):
    path = write_results(_rows()[:1], tmp_path / "results.parquet")
    before = path.read_bytes()

    def broken_write(table, where, **kwargs):
        where.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("manifests.atomic.pq.write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_results(_rows(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]


def test_fsync_and_rename_are_used(tmp_path: Path, monkeypatch):
    calls: list[str] = []
    real_fsync, real_replace = atomic.os.fsync, atomic.os.replace

    def fsync(fd):
        calls.append("fsync")
        real_fsync(fd)

    def replace(src, dst):
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    write_results(_rows(), tmp_path / "r.parquet")
    assert calls[:2] == ["fsync", "replace"]  # file data is durable before it becomes visible


@pytest.mark.parametrize(
    "override,column",
    [
        ({"status": "finished"}, "status"),
        ({"shot_id": ""}, "shot_id"),
        ({"attempts": -1}, "attempts"),
        ({"frames": 2.5}, "frames"),
        ({"fps": float("nan")}, "fps"),
        ({"sha256": "XYZ"}, "sha256"),
        ({"started_at": datetime(2025, 1, 1)}, "started_at"),  # naive: zone unknowable
        ({"segments_total": 1, "segments_done": 2}, "segments_done"),
    ],
)
def test_invalid_rows_are_refused_with_column(tmp_path: Path, override, column):
    with pytest.raises(ResultsError, match=column):
        write_results([{"shot_id": "a", "status": "done"} | override], tmp_path / "r.parquet")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_and_unknown_are_refused(tmp_path: Path):
    with pytest.raises(ResultsError, match="already recorded"):
        write_results([ResultRow("a"), ResultRow("a")], tmp_path / "r.parquet")
    with pytest.raises(ResultsError, match="unknown column"):
        write_results([{"shot_id": "a", "bogus": 1}], tmp_path / "r.parquet")


def test_read_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ResultsError, match="missing.parquet"):
        read_results(tmp_path / "missing.parquet")
    pq.write_table(RESULTS_SCHEMA.empty_table().drop_columns(["sha256"]), tmp_path / "old.parquet")
    with pytest.raises(ResultsError, match="sha256"):
        read_results(tmp_path / "old.parquet")


def test_statuses():
    assert STATUSES == ("pending", "running", "done", "failed", "skipped", "interrupted")


def test_a_shot_whose_output_folder_is_unwritable_is_recorded_with_stage_output(tmp_path: Path):
    row = ResultRow("a", status="failed", error="output directory not writable: /ro: Read-only file system (EROFS)",
                    failure_stage="output", failure_type="OSError")
    assert read_results(write_results([row], tmp_path / "r.parquet")) == [row]


def test_a_refused_value_names_the_shot_and_the_column(tmp_path: Path):
    rows = [ResultRow("fine"), ResultRow("shot7", status="failed", failure_stage="somewhere")]
    with pytest.raises(ResultsError, match=r"row 1 \(shot_id 'shot7'\), column 'failure_stage'.*one of validation"):
        write_results(rows, tmp_path / "r.parquet")
    assert list(tmp_path.iterdir()) == []
