"""Shot records derived from the ledger: results.parquet rows, state counts, the stitch task
(publish, then measure the shot's quality curves into ``shots/<id>/``: see ``record_shot_qa``)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.ledger import RunDir
from manifests import ResultRow, Shot, write_results
from manifests.validate import InvalidRow
from render.media.atomic import atomic_write_json, read_json

log = logging.getLogger(__name__)

# Quality of a published shot, in its ledger folder: the summary the results rows, status and
# report read (small), the full curves, the plot and the contact sheet.
QA_SUMMARY_FILE = "qa.json"
QA_CURVES_FILE = "qa-curves.json"
QA_PLOT_FILE = "qa.png"
QA_SHEET_FILE = "seams.png"


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def shot_state(run: RunDir, shot_id: str) -> str:
    if run.is_published(shot_id):
        return "done"
    state = run.read_status(shot_id).state
    return state if state in ("failed", "running") else "pending"


def result_row(run: RunDir, shot: Shot, run_id: str | None = None, rendering: bool = True) -> ResultRow:
    """``rendering``: a run is rendering now; when not, a shot the ledger lists as running was
    interrupted (``s2v status``'s word; a rerun resumes it)."""
    status = run.read_status(shot.shot_id)
    plan = run.read_plan(shot.shot_id)
    published = run.read_published(shot.shot_id) if run.is_published(shot.shot_id) else None
    state = "done" if published else (status.state if status.state in ("failed", "running") else "pending")
    if state == "running" and not rendering:
        state = "interrupted"
    log = run.latest_attempt_log(shot.shot_id)
    failed = state == "failed"
    row = ResultRow(
        shot_id=shot.shot_id, status=state, attempts=status.attempts,
        # a pending shot's error: why the last run left it unrendered (not a failure; a rerun renders it)
        error=status.error if failed else status.pending_reason if state == "pending" else None,
        output=None if failed else str(shot.output),
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
        qa = read_shot_qa(run, shot.shot_id, published)
        if qa is not None and "error" in qa:
            row.qa_error = str(qa["error"])
        elif qa is not None:
            summary = qa.get("summary") or {}
            row.qa_worst_seam_ratio, row.qa_max_colour_drift = summary.get("worst_seam_ratio"), summary.get(
                "max_colour_drift")
            row.qa_min_face_similarity, row.qa_lipsync = summary.get("min_face_similarity"), summary.get("lipsync")
            row.qa_flags = list(summary.get("flags") or [])
    elif state == "failed":
        row.finished_at = _utc(status.finished_at)
    return row


def read_shot_qa(run: RunDir, shot_id: str, published: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The shot's QA summary (``record_shot_qa``) when it was measured on the published file
    (same sha256); None when missing, unreadable or of an earlier render."""
    published = published if published is not None else run.read_published(shot_id)
    try:
        qa = read_json(run.shot_dir(shot_id) / QA_SUMMARY_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(qa, dict) or not published or qa.get("sha256") != published.get("sha256"):
        return None
    return qa


# The lip-sync measure reads the tiny demo model's mouth colour (render.quality.lipsync). Models
# at least this wide (the release's DiT is 5120) draw real faces, where a burgundy shirt or
# lipstick would give a meaningless score and a false flag: their shots are not measured.
LIPSYNC_MAX_DIT_DIM = 1024


def measures_lipsync(ckpt: str | Path) -> bool:
    """Whether shots of the checkpoint ``ckpt`` get a lip-sync score (a tiny demo-sized DiT)."""
    from render.model.checkpoint import DiTConfig

    try:
        return DiTConfig.from_json(Path(ckpt) / "config.json").dim < LIPSYNC_MAX_DIT_DIM
    except Exception:  # QA never fails a shot; an unreadable config was reported when loading
        return False


def record_shot_qa(run: RunDir, shot: Shot, plan: Any, published: dict[str, Any],
                   official_frame_drop: bool = False, lipsync: bool = True) -> dict[str, Any]:
    """Measure a just-published shot's quality curves (render.quality.curves) into its ledger
    folder: qa-curves.json, qa.png, seams.png, then the summary qa.json. Never raises: a shot
    whose measurement fails stays published; the error is logged and recorded in qa.json (and
    the results row's ``qa_error``). Cost: one decode of the output at a reduced size.
    ``lipsync``: measure it (``measures_lipsync`` of the run's checkpoint)."""
    from render.quality.curves import plan_curves
    from render.quality.plots import QaFiles, write_qa_files

    folder = run.shot_dir(shot.shot_id)
    t0 = time.time()
    record: dict[str, Any] = {"sha256": published["sha256"], "output": published["output"]}
    try:
        curves = plan_curves(published["output"], plan, shot.image, shot.audio if lipsync else None,
                             official_frame_drop=official_frame_drop)
        write_qa_files(curves, QaFiles(folder / QA_CURVES_FILE, folder / QA_PLOT_FILE, folder / QA_SHEET_FILE))
        record.update(summary=curves.summary(), plot=QA_PLOT_FILE, sheet=QA_SHEET_FILE, curves=QA_CURVES_FILE)
    except Exception as exc:  # QA must never fail a published shot
        log.warning("quality curves of shot %s (%s) failed: %s: %s", shot.shot_id, published["output"],
                    type(exc).__name__, exc)
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["seconds"] = round(time.time() - t0, 3)
    try:
        atomic_write_json(folder / QA_SUMMARY_FILE, record)
    except Exception as exc:
        log.warning("shot %s: QA summary not written: %s", shot.shot_id, exc)
    return record


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


def write_run_results(run: RunDir, shots: Sequence[Shot], rendering: bool = False) -> None:
    """Rewrite results.parquet from the ledger; ``rendering``: written by a run that is rendering
    now (see ``result_row``)."""
    run_id = (run.read_run() or {}).get("run_id")
    rows = [result_row(run, s, run_id, rendering) for s in shots]
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
    run_settings = RunSettings.from_dict(settings)
    render_settings = run_settings.render_settings(shot)
    t0 = time.time()
    published = stitch_shot(shot, shot_plan, render_settings, run.work_dir(shot.shot_id))
    record = {**asdict(published), "published_at": time.time(), "stitch_seconds": time.time() - t0}
    atomic_write_json(run.published_file(shot.shot_id), record)
    if not keep_work:  # the intermediates are only needed until the shot is published
        shutil.rmtree(run.work_dir(shot.shot_id), ignore_errors=True)
    record_shot_qa(run, shot, shot_plan, record, render_settings.drops_first_frames,
                   lipsync=measures_lipsync(run_settings.ckpt))
    return record
