"""Shot records derived from the ledger: results.parquet rows, state counts, the stitch task."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.ledger import RunDir
from manifests import ResultRow, Shot, write_results
from manifests.validate import InvalidRow
from render.media.atomic import atomic_write_json


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def shot_state(run: RunDir, shot_id: str) -> str:
    if run.is_published(shot_id):
        return "done"
    state = run.read_status(shot_id).state
    return state if state in ("failed", "running") else "pending"


def result_row(run: RunDir, shot: Shot, run_id: str | None = None) -> ResultRow:
    status = run.read_status(shot.shot_id)
    plan = run.read_plan(shot.shot_id)
    published = run.read_published(shot.shot_id) if run.is_published(shot.shot_id) else None
    state = "done" if published else (status.state if status.state in ("failed", "running") else "pending")
    log = run.latest_attempt_log(shot.shot_id)
    failed = state == "failed"
    row = ResultRow(
        shot_id=shot.shot_id, status=state, attempts=status.attempts,
        error=status.error if failed else None, output=None if failed else str(shot.output),
        resolved_seed=shot.seed, started_at=_utc(status.started_at),
        # rank-seconds of segment attempts, only when the ranks held GPUs (null on CPU runs)
        gpu_seconds=round(status.gpu_seconds, 3) if status.device == "gpu" else None,
        segments_total=len(plan["segments"]) if plan else None,
        segments_done=len(run.committed_segments(shot.shot_id)) if plan else None,
        manifest_row=shot.row, run_id=run_id,
        width=plan.get("width") if plan else None, height=plan.get("height") if plan else None,
        log_path=str(log) if log is not None and log.is_file() else None,
        failure_stage=(status.failure_stage or "render") if failed else None,
        failure_type=status.failure_type if failed else None,
    )
    if published:
        row.sha256, row.frames, row.fps = published["sha256"], published["frames"], published["fps"]
        row.duration_s = published["duration_s"]
        row.finished_at = _utc(published["published_at"])
        if status.started_at is not None:
            row.wall_s = max(0.0, published["published_at"] - status.started_at)
    elif state == "failed":
        row.finished_at = _utc(status.finished_at)
    return row


def invalid_result_row(invalid: InvalidRow, run_id: str | None) -> ResultRow:
    """A manifest row refused by validation: a failed shot that never ran."""
    errors = [p for p in invalid.problems if p.is_error]
    return ResultRow(
        shot_id=invalid.label, status="failed", attempts=0,
        error="invalid manifest row: " + "; ".join(f"{p.column or '-'}: {p.message} ({p.rule})" for p in errors),
        manifest_row=invalid.row, run_id=run_id, failure_stage="validation",
        failure_type=errors[0].rule if errors else None,
        validation_errors=[{"column": p.column, "rule": p.rule, "message": p.message, "value": p.value or None}
                           for p in errors],
    )


def save_start_rows(run: RunDir, invalid: Sequence[InvalidRow], passthrough: pa.Table | None) -> None:
    """Record this start's invalid rows and pass-through columns for every results write."""
    from manifests.atomic import atomic_write_table

    if invalid:
        atomic_write_json(run.invalid_file, [{"row": r.row, "shot_id": r.shot_id,
                                              "problems": [asdict(p) for p in r.problems]} for r in invalid])
    else:
        run.invalid_file.unlink(missing_ok=True)
    if passthrough is not None and passthrough.num_columns:
        table = passthrough.append_column("manifest_row", pa.array(range(passthrough.num_rows), pa.int64()))
        atomic_write_table(table, run.passthrough_file)
    else:
        run.passthrough_file.unlink(missing_ok=True)


def load_invalid_rows(run: RunDir) -> list[InvalidRow]:
    from manifests.problems import Problem

    if not run.invalid_file.is_file():
        return []
    return [InvalidRow(r["row"], r["shot_id"], [Problem(**p) for p in r["problems"]])
            for r in json.loads(run.invalid_file.read_text())]


def _passthrough_for(run: RunDir, rows: Sequence[ResultRow]) -> pa.Table | None:
    """The pass-through columns aligned with ``rows`` (by manifest row; null where unknown)."""
    if not run.passthrough_file.is_file():
        return None
    table = pq.read_table(run.passthrough_file)
    position = {r: i for i, r in enumerate(table.column("manifest_row").to_pylist())}
    indices = pa.array([position.get(r.manifest_row) for r in rows], pa.int64())
    return table.drop_columns(["manifest_row"]).take(indices)


def write_run_results(run: RunDir, shots: Sequence[Shot]) -> None:
    run_id = (run.read_run() or {}).get("run_id")
    rows = [result_row(run, s, run_id) for s in shots]
    rows += [invalid_result_row(r, run_id) for r in load_invalid_rows(run)]
    rows.sort(key=lambda r: (r.manifest_row is None, r.manifest_row or 0))
    write_results(rows, run.results_file, extra=_passthrough_for(run, rows))


def state_counts(run: RunDir, shots: Sequence[Shot]) -> Counter[str]:
    return Counter(shot_state(run, s.shot_id) for s in shots)


def stitch_and_record(run_dir: str, shot: Shot, plan: dict[str, Any], settings: dict[str, Any],
                      keep_work: bool = False) -> dict[str, Any]:
    """Runs as a Ray task outside the render groups: encode + mux + verify + publish the shot,
    then write its ``published.json`` (before the driver hears of it, so a driver crash right
    after publication does not lose it)."""
    from cluster.settings import RunSettings
    from cluster.shot_work import stitch_shot
    from render.shot.plan import ShotPlan

    run = RunDir(run_dir)
    shot_plan = ShotPlan.from_dict(plan)
    render_settings = RunSettings.from_dict(settings).render_settings(shot)
    t0 = time.time()
    published = stitch_shot(shot, shot_plan, render_settings, run.work_dir(shot.shot_id))
    record = {**asdict(published), "published_at": time.time(), "stitch_seconds": time.time() - t0}
    atomic_write_json(run.published_file(shot.shot_id), record)
    if not keep_work:  # the intermediates are only needed until the shot is published
        shutil.rmtree(run.work_dir(shot.shot_id), ignore_errors=True)
    return record
