"""``s2v status --run-dir DIR [--watch SECONDS] [--json]``: a table of a run, read from the run
directory alone (works while the run is live, after it ended, and without Ray).

Clips done come from the commit records and the writer ranks' progress files (cluster.progress).
Elapsed: a shot's, from its first dispatch to its publication or failure (to now while it
renders); the run's, from the latest start to now while live, else from the start that rendered
the last shot to end to that end. ETA: a shot's, its clips left at its own seconds per clip (the
run's mean before it has one); the run's, all clips left at the mean seconds per clip of the shots
rendering, divided by the segments rendering at once. 0 when finished, None when not running or
not yet measured. QA: a published shot's quality flags (cluster.results.record_shot_qa); a
flagged shot is done, its flags are listed under the table.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cluster.lease import lease_is_live, read_lease
from cluster.ledger import RunDir
from cluster.progress import (
    SegmentProgress,
    ShotProgress,
    eta_seconds,
    format_duration,
    format_step,
    read_segment_progress,
    segment_clips,
    shot_progress,
)

# A progress record older than this (beyond its own clip time) is not a segment rendering now.
_IN_FLIGHT_GRACE_S = 60.0
_TERMINAL = ("done", "failed", "removed")


@dataclass
class ShotLine:
    shot_id: str
    state: str
    segments: str  # "done/total"
    attempts: int
    output: str
    error: str
    clips_done: int | None = None
    clips_total: int | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    seconds_per_step: float | None = None
    qa: str = ""  # published shots: "ok", "flagged", "error" (not measured: "")
    qa_flags: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    run_dir: str
    run_id: str | None
    live: bool
    holder: str | None
    counts: dict[str, int]
    shots: list[ShotLine] = field(default_factory=list)
    clips_done: int = 0
    clips_total: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None
    seconds_per_step: float | None = None


def collect(run_dir: str | Path) -> RunReport:
    from cluster.results import load_invalid_rows, read_shot_qa, shot_state

    run = RunDir(run_dir)
    record = run.read_run()
    if record is None or not run.manifest_file.is_file():
        raise FileNotFoundError(f"{run.path} is not a run directory (no run.json / manifest.parquet); "
                                "start a run with `s2v run MANIFEST --run-dir DIR`")
    lease = read_lease(run.path)
    live = lease_is_live(lease)
    table = pq.read_table(run.manifest_file, columns=["shot_id", "output"]).to_pylist()
    now = time.time()
    lines = []
    progress: dict[str, ShotProgress] = {}
    in_flight = 0
    spans: list[tuple[float, float]] = []  # (first dispatch, end) of the shots that ended
    for row in table:
        sid = row["shot_id"]
        state = shot_state(run, sid)
        if state == "running" and not live:
            state = "interrupted"  # the run that was rendering it is gone; a rerun resumes it
        status = run.read_status(sid)
        plan = run.read_plan(sid)
        total = len(plan["segments"]) if plan else None
        committed = run.committed_segments(sid)
        done = len(committed)
        error = (status.error if state == "failed" else status.pending_reason if state == "pending" and
                 status.pending_reason else status.failures[-1].message if status.failures else "")
        line = ShotLine(sid, state, f"{done}/{total if total is not None else '?'}", status.attempts,
                        row["output"], (error or "").replace("\n", " "))
        clips = segment_clips(plan) if plan else {}
        if clips:
            records = read_segment_progress(run.shot_dir(sid))
            shot = progress[sid] = shot_progress(clips, committed, records, finished=state == "done")
            line.clips_done, line.clips_total, line.seconds_per_step = (shot.clips_done, shot.clips_total,
                                                                        shot.seconds_per_step)
            if live and state == "running":
                in_flight += _segments_in_flight(records, committed, now)
        line.elapsed_s = _shot_elapsed(state, status.started_at, status.finished_at, live, now)
        qa = read_shot_qa(run, sid) if state == "done" else None
        if qa is not None:
            line.qa_flags = list((qa.get("summary") or {}).get("flags") or [])
            line.qa = "error" if "error" in qa else "flagged" if line.qa_flags else "ok"
        if state in ("done", "failed") and status.started_at is not None and status.finished_at is not None:
            spans.append((status.started_at, status.finished_at))
        lines.append(line)
    # Rows refused by validation at the latest start: failed shots that never ran.
    for invalid in load_invalid_rows(run):
        message = "; ".join(f"{p.column or '-'}: {p.rule}" for p in invalid.problems if p.is_error)
        lines.append(ShotLine(invalid.label, "failed", "-", 0, "", f"invalid manifest row {invalid.row}: {message}"))
    # Rows gone from the manifest: reported, never deleted (their output and work stay on disk).
    for sid, info in sorted((record.get("removed") or {}).items()):
        lines.append(ShotLine(sid, "removed", "-", run.read_status(sid).attempts, str(info.get("output", "")),
                              "no longer in the manifest; output left on disk"
                              + ("" if info.get("published") else " (was not published)")))
    counts = dict(Counter(line.state for line in lines))
    report = RunReport(str(run.path), record.get("run_id"), live, lease.describe() if lease else None, counts, lines)
    _add_estimates(report, record, progress, in_flight, spans, now)
    return report


def _segments_in_flight(records: dict[int, SegmentProgress], committed: dict[int, Any], now: float) -> int:
    return sum(1 for r in records.values() if r.index not in committed and r.clips_done < r.clips
               and now - r.at <= 3 * (r.seconds_per_clip or 0.0) + _IN_FLIGHT_GRACE_S)


def _shot_elapsed(state: str, started: float | None, finished: float | None, live: bool, now: float) -> float | None:
    if started is None:
        return None
    if state in ("done", "failed") and finished is not None:
        return max(0.0, finished - started)
    if state == "running" and live:
        return max(0.0, now - started)
    return None


def _add_estimates(report: RunReport, record: dict[str, Any], progress: dict[str, ShotProgress], in_flight: int,
                   spans: list[tuple[float, float]], now: float) -> None:
    """Clip totals, elapsed and ETA of each shot and of the run (see the module's docstring)."""
    running = [progress[s.shot_id] for s in report.shots if s.state == "running" and s.shot_id in progress]
    measured = [p.seconds_per_clip for p in running if p.seconds_per_clip] or [
        p.seconds_per_clip for p in progress.values() if p.seconds_per_clip]
    run_per_clip = sum(measured) / len(measured) if measured else None
    finished = all(s.state in _TERMINAL for s in report.shots)
    remaining = 0
    for line in report.shots:
        shot = progress.get(line.shot_id)
        if line.state == "done":
            line.eta_s = 0.0
        elif shot is not None and line.state in ("running", "pending") and report.live:
            remaining += shot.remaining
            line.eta_s = eta_seconds(shot.remaining, shot.seconds_per_clip or run_per_clip)
    report.clips_done = sum(p.clips_done for p in progress.values())
    report.clips_total = sum(p.clips_total for p in progress.values())
    latest = max((p for p in running if p.updated_at), key=lambda p: p.updated_at or 0.0, default=None)
    report.seconds_per_step = latest.seconds_per_step if latest else None
    if finished:
        report.eta_s = 0.0
    elif report.live:
        report.eta_s = eta_seconds(remaining, run_per_clip, max(1, in_flight))
    starts = record.get("starts") or []
    if report.live and starts:
        report.elapsed_s = max(0.0, now - float(starts[-1]))
    elif spans:
        # The start that rendered the last shot to end (a later no-op start renders nothing),
        # else the first dispatch of the shots that ended.
        end = max(f for _, f in spans)
        began = max((float(s) for s in starts if float(s) <= end), default=min(s for s, _ in spans))
        report.elapsed_s = max(0.0, end - began)


def format_report(report: RunReport, error_width: int = 70) -> str:
    head = (f"run {report.run_id} in {report.run_dir}: "
            + ("LIVE (" + (report.holder or "") + ")" if report.live else "not running")
            + " | " + ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
            + f" | clips {report.clips_done}/{report.clips_total}, elapsed {format_duration(report.elapsed_s)}, "
            + (f"{format_step(report.seconds_per_step)} s/step, " if report.seconds_per_step else "")
            + f"ETA {format_duration(report.eta_s)}")
    cols = ("shot_id", "state", "segments", "clips", "elapsed", "eta", "attempts", "qa", "error / last failure")
    rows = [(s.shot_id, s.state, s.segments, _clips(s), _duration(s.elapsed_s), _duration(s.eta_s), str(s.attempts),
             s.qa.upper() if s.qa == "flagged" else s.qa or "-", s.error[:error_width]) for s in report.shots]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [head, fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    out.extend(fmt.format(*r) for r in rows)
    flagged = [s for s in report.shots if s.qa_flags]
    if flagged:  # flagged, not failed: the shots are done; these say where to look
        out.append(f"quality flags ({len(flagged)} shot(s); plots in RUN_DIR/shots/<id>/qa.png, seams.png):")
        out.extend(f"  {s.shot_id}: {flag}" for s in flagged for flag in s.qa_flags)
    return "\n".join(line.rstrip() for line in out)


def _clips(line: ShotLine) -> str:
    if line.clips_total is None:
        return "-" if line.segments == "-" else "?"
    return f"{line.clips_done}/{line.clips_total}"


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def main_status(run_dir: str, watch: float | None = None, as_json: bool = False) -> int:
    while True:
        try:
            report = collect(run_dir)
        except FileNotFoundError as exc:
            print(f"s2v status: {exc}", file=sys.stderr)
            return 2
        if as_json:
            text = json.dumps(asdict(report), indent=1)
        else:
            text = format_report(report)
        if watch:
            sys.stdout.write("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S ") + text + "\n")
            sys.stdout.flush()
            if set(report.counts) <= {"done", "failed", "removed"}:
                return 0
            time.sleep(watch)
            continue
        print(text)
        return 0


def status_dict(run_dir: str | Path) -> dict[str, Any]:
    return asdict(collect(run_dir))
