"""``s2v status --run-dir DIR [--watch SECONDS] [--json]``: a table of a run, read from the run
directory alone (works while the run is live, after it ended, and without Ray)."""

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


@dataclass
class ShotLine:
    shot_id: str
    state: str
    segments: str  # "done/total"
    attempts: int
    output: str
    error: str


@dataclass
class RunReport:
    run_dir: str
    run_id: str | None
    live: bool
    holder: str | None
    counts: dict[str, int]
    shots: list[ShotLine] = field(default_factory=list)


def collect(run_dir: str | Path) -> RunReport:
    from cluster.results import load_invalid_rows, shot_state

    run = RunDir(run_dir)
    record = run.read_run()
    if record is None or not run.manifest_file.is_file():
        raise FileNotFoundError(f"{run.path} is not a run directory (no run.json / manifest.parquet); "
                                "start a run with `s2v run MANIFEST --run-dir DIR`")
    lease = read_lease(run.path)
    live = lease_is_live(lease)
    table = pq.read_table(run.manifest_file, columns=["shot_id", "output"]).to_pylist()
    lines = []
    for row in table:
        sid = row["shot_id"]
        state = shot_state(run, sid)
        if state == "running" and not live:
            state = "interrupted"  # the run that was rendering it is gone; a rerun resumes it
        status = run.read_status(sid)
        plan = run.read_plan(sid)
        total = len(plan["segments"]) if plan else None
        done = len(run.committed_segments(sid))
        error = status.error if state == "failed" else (status.failures[-1].message if status.failures else "")
        lines.append(ShotLine(sid, state, f"{done}/{total if total is not None else '?'}", status.attempts,
                              row["output"], (error or "").replace("\n", " ")))
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
    return RunReport(str(run.path), record.get("run_id"), live, lease.describe() if lease else None, counts, lines)


def format_report(report: RunReport, error_width: int = 70) -> str:
    head = (f"run {report.run_id} in {report.run_dir}: "
            + ("LIVE (" + (report.holder or "") + ")" if report.live else "not running")
            + " | " + ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items())))
    cols = ("shot_id", "state", "segments", "attempts", "error / last failure")
    rows = [(s.shot_id, s.state, s.segments, str(s.attempts), s.error[:error_width]) for s in report.shots]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [head, fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    out.extend(fmt.format(*r) for r in rows)
    return "\n".join(line.rstrip() for line in out)


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
