"""Shot records derived from the ledger: results.parquet rows, state counts, the stitch task."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from cluster.ledger import RunDir
from manifests import ResultRow, Shot, write_results
from render.media.atomic import atomic_write_json


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def shot_state(run: RunDir, shot_id: str) -> str:
    if run.is_published(shot_id):
        return "done"
    state = run.read_status(shot_id).state
    return state if state in ("failed", "running") else "pending"


def result_row(run: RunDir, shot: Shot) -> ResultRow:
    status = run.read_status(shot.shot_id)
    plan = run.read_plan(shot.shot_id)
    published = run.read_published(shot.shot_id) if run.is_published(shot.shot_id) else None
    state = "done" if published else (status.state if status.state in ("failed", "running") else "pending")
    row = ResultRow(
        shot_id=shot.shot_id, status=state, attempts=status.attempts,
        error=status.error if state == "failed" else None, output=str(shot.output),
        resolved_seed=shot.seed, started_at=_utc(status.started_at), gpu_seconds=round(status.gpu_seconds, 3),
        segments_total=len(plan["segments"]) if plan else None,
        segments_done=len(run.committed_segments(shot.shot_id)) if plan else None,
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


def write_run_results(run: RunDir, shots: Sequence[Shot]) -> None:
    write_results([result_row(run, s) for s in shots], run.results_file)


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
