"""The run directory: the durable ledger of a run (durable state lives outside Ray: a
killed cluster loses nothing the directory holds).

Layout (every file written by temp + fsync + rename; a reader never sees a partial one)::

    run.json                         run id, settings, start times, removed rows, prompt environment
    manifest.parquet                 the normalised manifest of the latest start (absolute paths,
                                     resolved seeds)
    input_hashes.json                sha256 of input files by (path, size, mtime, inode): a cache
    lease.lock, lease.json           the lease (cluster.lease)
    prompts/<sha256>.pt              umT5 embedding of one unique prompt
    shots/<shot_id>/key.json         the shot's key (cluster.fingerprint.ShotKey): what the work
                                     below was made from; work of two keys is never mixed
    shots/<shot_id>/plan.json        the shot's plan (render.shot.plan.ShotPlan: geometry, segments)
    shots/<shot_id>/features-<i>.pt  wav2vec features of segment i's audio window
    shots/<shot_id>/status.json      state, attempts, failures (written by the driver)
    shots/<shot_id>/progress-<i>.json  clips of segment i committed so far, seconds per step and
                                     per clip (written by the group's writer rank after each clip;
                                     cluster.progress)
    shots/<shot_id>/published.json   written right after the final MP4 was published
    shots/<shot_id>/qa.json, qa-curves.json, qa.png, seams.png
                                     the published shot's quality curves, plot and seam sheet
                                     (render.quality.curves; cluster.results.record_shot_qa)
    segments/<shot_id>/<index>.json  commit record of a finished segment (after its media fsync)
    work/<shot_id>/segment_NNNN/     a segment's intermediate (render.shot.segment: per-clip
                                     commits); removed once the shot is published
    logs/<shot_id>/<attempt>.log     one log per attempt; logs/driver.log the driver's own
    groups/<name>.json               render group formations (node, actor pids)
    results.parquet                  manifests.results, rewritten as shots finish
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manifests import Shot, write_manifest
from manifests.results import FAILURE_STAGES
from render.media.atomic import atomic_write_json, read_json

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.parquet"
RESULTS_FILE = "results.parquet"
HASHES_FILE = "input_hashes.json"
# Everything a --restart removes (the lease files and logs/ stay; old logs move aside).
_STATE_DIRS = ("prompts", "shots", "segments", "work", "groups")

SHOT_STATES = ("pending", "running", "done", "failed")


@dataclass
class Failure:
    attempt: int
    kind: str  # "error" (raised by the render code) or "infrastructure" (a rank or group died)
    signature: str  # what "the same way" means: exception type + first line of its message
    message: str
    at: float
    group: str | None = None
    node: str | None = None


@dataclass
class ShotStatus:
    state: str = "pending"
    attempts: int = 0
    failures: list[Failure] = field(default_factory=list)
    error: str | None = None  # set when failed
    started_at: float | None = None
    finished_at: float | None = None
    gpu_seconds: float = 0.0  # rank-seconds spent in segment attempts (successful or not)
    failure_stage: str | None = None  # set when failed: one of manifests.results.FAILURE_STAGES
    failure_type: str | None = None  # set when failed: exception class (or reason) of the failure
    device: str | None = None  # "gpu" or "cpu": what the ranks of its last attempt ran on
    # Why the last run left this shot pending without a fair try (no render group could be
    # started: cluster busy, placement timeouts, every node excluded). Not a failure: the next run
    # renders it. Cleared when it is dispatched again.
    pending_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def retried(self) -> ShotStatus:
        """The status of a failed shot given new attempts: pending, its failures forgotten,
        attempt numbers going on (its plan and committed segments stay in the run directory)."""
        return ShotStatus(attempts=self.attempts)

    def check(self, shot_id: str) -> None:
        """Refuse a status that results.parquet could not record. Checked where a status is
        written, so a bad value fails the one call that made it (naming the shot) instead of
        every later write of the results file, at the end of a run and on every rerun."""
        if self.state not in SHOT_STATES:
            raise ValueError(f"shot {shot_id}: state {self.state!r} is not one of {', '.join(SHOT_STATES)}")
        if self.failure_stage is not None and self.failure_stage not in FAILURE_STAGES:
            raise ValueError(f"shot {shot_id}: failure stage {self.failure_stage!r} is not one of "
                             f"{', '.join(FAILURE_STAGES)} (manifests.results.FAILURE_STAGES)")

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ShotStatus:
        failures = [Failure(**f) for f in d.get("failures", [])]
        return ShotStatus(d.get("state", "pending"), int(d.get("attempts", 0)), failures, d.get("error"),
                          d.get("started_at"), d.get("finished_at"), float(d.get("gpu_seconds", 0.0)),
                          d.get("failure_stage"), d.get("failure_type"), d.get("device"), d.get("pending_reason"))


def prompt_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).absolute()

    # --- paths -------------------------------------------------------------------------------

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def invalid_file(self) -> Path:
        """Rows of the manifest refused by validation at the last start (failed shots)."""
        return self.path / "invalid_rows.json"

    @property
    def passthrough_file(self) -> Path:
        """The manifest's pass-through (x_) columns plus ``manifest_row``, from the last start."""
        return self.path / "passthrough.parquet"

    def latest_attempt_log(self, shot_id: str) -> Path | None:
        n = self.next_attempt(shot_id) - 1
        return self.attempt_log(shot_id, n) if n > 0 else None

    @property
    def driver_log(self) -> Path:
        return self.path / "logs" / "driver.log"

    @property
    def hashes_file(self) -> Path:
        return self.path / HASHES_FILE

    def shot_dir(self, shot_id: str) -> Path:
        return self.path / "shots" / shot_id

    def key_file(self, shot_id: str) -> Path:
        return self.shot_dir(shot_id) / "key.json"

    def plan_file(self, shot_id: str) -> Path:
        return self.shot_dir(shot_id) / "plan.json"

    def features_file(self, shot_id: str, index: int) -> Path:
        return self.shot_dir(shot_id) / f"features-{index}.pt"

    def status_file(self, shot_id: str) -> Path:
        return self.shot_dir(shot_id) / "status.json"

    def published_file(self, shot_id: str) -> Path:
        return self.shot_dir(shot_id) / "published.json"

    def prompt_file(self, text: str) -> Path:
        return self.path / "prompts" / f"{prompt_key(text)}.pt"

    def segment_record(self, shot_id: str, index: int) -> Path:
        return self.path / "segments" / shot_id / f"{index}.json"

    def work_dir(self, shot_id: str) -> Path:
        return self.path / "work" / shot_id

    def attempt_log(self, shot_id: str, attempt: int) -> Path:
        return self.path / "logs" / shot_id / f"{attempt}.log"

    def group_record(self, name: str) -> Path:
        return self.path / "groups" / f"{name}.json"

    # --- run record --------------------------------------------------------------------------

    def read_run(self) -> dict[str, Any] | None:
        return read_json(self.run_file)

    def write_run(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.run_file, record)

    def write_manifest(self, shots: Sequence[Shot]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_manifest(list(shots), self.manifest_file)

    def reset(self) -> None:
        """Start over (``--restart``): drop all state but the lease; keep old logs aside."""
        for name in _STATE_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)
        for name in (RUN_FILE, RESULTS_FILE, MANIFEST_FILE):
            (self.path / name).unlink(missing_ok=True)
        logs = self.path / "logs"
        if logs.is_dir() and any(p.name != "previous" for p in logs.iterdir()):
            aside = logs / "previous" / time.strftime("%Y%m%dT%H%M%S")
            aside.mkdir(parents=True, exist_ok=True)
            for p in list(logs.iterdir()):
                if p.name != "previous":
                    os.replace(p, aside / p.name)

    # --- per shot ----------------------------------------------------------------------------

    def read_status(self, shot_id: str) -> ShotStatus:
        raw = read_json(self.status_file(shot_id))
        return ShotStatus.from_dict(raw) if isinstance(raw, dict) else ShotStatus()

    def write_status(self, shot_id: str, status: ShotStatus) -> None:
        status.check(shot_id)
        atomic_write_json(self.status_file(shot_id), status.to_dict())

    def read_key(self, shot_id: str) -> dict[str, Any] | None:
        return read_json(self.key_file(shot_id))

    def write_key(self, shot_id: str, key: dict[str, Any]) -> None:
        atomic_write_json(self.key_file(shot_id), key)

    def has_work(self, shot_id: str) -> bool:
        """Anything of the shot in the ledger (plan, features, status, commits, intermediates)."""
        return any(p.exists() for p in (self.shot_dir(shot_id), self.path / "segments" / shot_id,
                                          self.work_dir(shot_id)))

    def discard_shot(self, shot_id: str) -> None:
        """Drop every piece of the shot's work (its inputs or frame settings changed, or a
        re-render was asked for). The key file goes with it and is written again by the caller
        afterwards, so a crash in between leaves a shot without a key, which is discarded again.
        The published output file and the attempt logs stay (attempt numbers go on)."""
        shutil.rmtree(self.shot_dir(shot_id), ignore_errors=True)
        shutil.rmtree(self.path / "segments" / shot_id, ignore_errors=True)
        shutil.rmtree(self.work_dir(shot_id), ignore_errors=True)

    def unpublish(self, shot_id: str) -> None:
        """Forget the publication (the encode settings changed): the committed segments are
        stitched again; the old output file stays until the new one replaces it atomically."""
        self.published_file(shot_id).unlink(missing_ok=True)
        status = self.read_status(shot_id)
        if status.state == "done":
            status.state, status.finished_at = "pending", None
            self.write_status(shot_id, status)

    def retry(self, shot_id: str) -> None:
        """Give a failed shot new attempts (its row was edited; ``ShotStatus.retried``)."""
        status = self.read_status(shot_id)
        if status.state == "failed":
            self.write_status(shot_id, status.retried())

    def read_plan(self, shot_id: str) -> dict[str, Any] | None:
        return read_json(self.plan_file(shot_id))

    def write_plan(self, shot_id: str, plan: dict[str, Any]) -> None:
        atomic_write_json(self.plan_file(shot_id), plan)

    def read_published(self, shot_id: str) -> dict[str, Any] | None:
        return read_json(self.published_file(shot_id))

    def is_published(self, shot_id: str) -> bool:
        """Published and the file still there with the recorded size (a file without a record,
        or a record without its file, is not done)."""
        rec = self.read_published(shot_id)
        if not rec:
            return False
        try:
            return os.path.getsize(rec["output"]) == rec["bytes"]
        except (OSError, KeyError, TypeError):
            return False

    def committed_segments(self, shot_id: str) -> dict[int, dict[str, Any]]:
        d = self.path / "segments" / shot_id
        out: dict[int, dict[str, Any]] = {}
        if d.is_dir():
            for p in d.glob("*.json"):
                if p.stem.isdigit():
                    rec = read_json(p)
                    if isinstance(rec, dict):
                        out[int(p.stem)] = rec
        return out

    def next_attempt(self, shot_id: str) -> int:
        """Attempt numbers continue across driver restarts (from the logs that exist)."""
        d = self.path / "logs" / shot_id
        used = [int(p.name.split(".")[0]) for p in d.glob("*.log") if p.name.split(".")[0].isdigit()] \
            if d.is_dir() else []
        return max(used, default=0) + 1
