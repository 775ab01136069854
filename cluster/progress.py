"""Clip-level progress of a run, kept in the run directory (the source of truth for `s2v run`'s
progress display and `s2v status`).

Rank 0 of the group rendering a segment writes ``shots/<shot_id>/progress-<index>.json`` after
every clip it commits (``SegmentProgress``). A segment with a commit record counts all its clips,
one without counts what its progress file says, so a reader needs nothing but the plan, the
commit records and these files. The files go with the shot's other work (``RunDir.discard_shot``,
``--restart``).

The estimates: a shot's seconds per clip are the mean wall time of the clips the last attempt of
each of its segments rendered (sampling, decode and write); the time left is the clips left times
that, divided by the segments rendering at once (the busy render groups).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from render.media.atomic import atomic_write_json, read_json

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "progress-"


@dataclass(frozen=True)
class SegmentProgress:
    """What the writer rank records after each committed clip of a segment."""

    index: int
    clips_done: int  # clips of the segment committed so far (resumed ones included)
    clips: int  # clips of the segment (its plan)
    seconds_per_step: float | None  # sampling seconds per step of the last clip
    seconds_per_clip: float | None  # mean wall seconds of the clips this attempt rendered
    at: float  # when it was written (epoch seconds)
    attempt: int = 0
    group: str = ""

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> SegmentProgress:
        def number(key: str) -> float | None:
            value = d.get(key)
            return float(value) if isinstance(value, (int, float)) and value > 0 else None

        return SegmentProgress(int(d["index"]), int(d["clips_done"]), int(d["clips"]), number("seconds_per_step"),
                               number("seconds_per_clip"), float(d.get("at", 0.0)), int(d.get("attempt", 0)),
                               str(d.get("group", "")))


def progress_file(shot_dir: Path, index: int) -> Path:
    return shot_dir / f"{PROGRESS_PREFIX}{index}.json"


def write_segment_progress(shot_dir: Path, progress: SegmentProgress) -> None:
    atomic_write_json(progress_file(shot_dir, progress.index), asdict(progress))


def read_segment_progress(shot_dir: Path) -> dict[int, SegmentProgress]:
    """Segment index -> its latest progress record (unreadable files are skipped: they are advice)."""
    out: dict[int, SegmentProgress] = {}
    if not shot_dir.is_dir():
        return out
    for p in shot_dir.glob(f"{PROGRESS_PREFIX}*.json"):
        try:
            rec = SegmentProgress.from_dict(read_json(p) or {})
        except (KeyError, TypeError, ValueError):
            continue
        out[rec.index] = rec
    return out


class SegmentProgressWriter:
    """The writer rank's side: times each clip of one segment attempt and records the progress.

    A failed write is logged and ignored: progress is for display, the render must not stop for it."""

    def __init__(self, shot_dir: Path, index: int, clips: int, attempt: int, group: str):
        self.shot_dir, self.index, self.clips, self.attempt, self.group = shot_dir, index, clips, attempt, group
        self.started = time.time()
        self.rendered = 0

    def clip_done(self, clip: int, seconds_per_step: float | None) -> None:
        self.rendered += 1
        now = time.time()
        rec = SegmentProgress(self.index, min(clip + 1, self.clips), self.clips, seconds_per_step,
                              (now - self.started) / self.rendered, now, self.attempt, self.group)
        try:
            write_segment_progress(self.shot_dir, rec)
        except OSError as exc:
            log.warning("progress of segment %d not recorded (%s); rendering goes on", self.index, exc)


@dataclass(frozen=True)
class ShotProgress:
    clips_done: int
    clips_total: int
    seconds_per_step: float | None  # of the most recently written progress record
    seconds_per_clip: float | None  # mean over the shot's segments that recorded one
    updated_at: float | None  # latest progress record

    @property
    def remaining(self) -> int:
        return max(0, self.clips_total - self.clips_done)


def segment_clips(plan: Any) -> dict[int, int]:
    """Segment index -> clips, from a ``ShotPlan`` or its dict (``plan.json``, also the older
    layout that nests it in ``plan_json``); empty for a plan without clip counts (nothing to show,
    rather than a status that fails)."""
    if not isinstance(plan, Mapping):
        return {s.index: s.num_clips for s in plan.segments}
    if isinstance(plan.get("plan_json"), str):
        try:
            plan = json.loads(plan["plan_json"])
        except ValueError:
            return {}
    try:
        return {int(s["index"]): int(s["num_clips"]) for s in plan.get("segments") or []}
    except (KeyError, TypeError, ValueError):
        return {}


def shot_progress(clips: Mapping[int, int], committed: Iterable[int], records: Mapping[int, SegmentProgress],
                  finished: bool = False) -> ShotProgress:
    """Clips done of a shot whose segments have ``clips``; ``finished``: published (all done)."""
    committed = set(committed)
    done = 0
    for index, n in clips.items():
        if finished or index in committed:
            done += n
        elif index in records:
            done += min(max(0, records[index].clips_done), n)
    timed = [r for r in records.values() if r.index in clips]
    per_clip = [r.seconds_per_clip for r in timed if r.seconds_per_clip]
    latest = max(timed, key=lambda r: r.at, default=None)
    return ShotProgress(done, sum(clips.values()), latest.seconds_per_step if latest else None,
                        sum(per_clip) / len(per_clip) if per_clip else None, latest.at if latest else None)


def eta_seconds(remaining_clips: int, seconds_per_clip: float | None, parallel: int = 1) -> float | None:
    """Seconds left for ``remaining_clips`` rendered ``parallel`` at a time; None while unmeasured."""
    if remaining_clips <= 0:
        return 0.0
    if not seconds_per_clip:
        return None
    return remaining_clips * seconds_per_clip / max(1, parallel)


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (hours unbounded), ``?`` when unknown."""
    if seconds is None:
        return "?"
    total = int(round(max(0.0, seconds)))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def format_step(seconds: float | None) -> str:
    """Seconds per step: ``3.1``, ``0.42`` below a second, ``?`` when unknown."""
    if not seconds:
        return "?"
    return f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2f}"


def progress_line(shots_done: int, shots_total: int, clips_done: int, clips_total: int,
                  seconds_per_step: float | None, eta: float | None) -> str:
    """``shots 2/5, clips 17/40, 3.1 s/step, ETA 0:04:12`` (``?`` for what is not measured yet)."""
    step = format_step(seconds_per_step)
    return (f"shots {shots_done}/{shots_total}, clips {clips_done}/{clips_total}, {step} s/step, "
            f"ETA {format_duration(eta)}")
