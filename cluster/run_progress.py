"""`s2v run`'s live progress: shots and clips done of the whole run with an ETA, as a tqdm bar on
a terminal, as periodic log lines otherwise (a cron job's log, ``logs/driver.log``)::

    shots 2/5, clips 17/40, 3.1 s/step, ETA 0:04:12

The numbers come from the run directory (``cluster.progress``), read by the engine's loop.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from cluster.ledger import RunDir
from cluster.progress import (
    ShotProgress,
    eta_seconds,
    format_duration,
    format_step,
    progress_line,
    read_segment_progress,
    segment_clips,
    shot_progress,
)

log = logging.getLogger("cluster.progress")

DEFAULT_INTERVAL_S = 30.0


@dataclass(frozen=True)
class RunProgress:
    shots_done: int  # published or failed: nothing more will be rendered of them
    shots_total: int
    clips_done: int
    clips_total: int
    seconds_per_step: float | None
    eta_s: float | None

    def line(self) -> str:
        return progress_line(self.shots_done, self.shots_total, self.clips_done, self.clips_total,
                             self.seconds_per_step, self.eta_s)


class ClipTally:
    """Clips done of every shot of a run. A shot is read again only while it renders (and once
    when it becomes terminal), so a large manifest of pending shots costs nothing per refresh."""

    def __init__(self, run: RunDir, plans: Mapping[str, Any]):
        self.run = run
        self.plans = plans  # the engine's ShotPlans (shots published or failed before the start have none)
        self._cache: dict[str, tuple[str, ShotProgress]] = {}
        self._clips: dict[str, dict[int, int]] = {}
        # The latest measured, carried over moments when no shot renders (between dispatches).
        self._seconds_per_clip: float | None = None
        self._seconds_per_step: float | None = None

    def _segment_clips(self, sid: str) -> dict[int, int]:
        if sid not in self._clips:
            plan = self.plans.get(sid) or self.run.read_plan(sid)
            self._clips[sid] = segment_clips(plan) if plan else {}
        return self._clips[sid]

    def shot(self, sid: str, state: str) -> ShotProgress:
        cached = self._cache.get(sid)
        if cached is not None and cached[0] == state and state != "running":
            return cached[1]
        clips = self._segment_clips(sid)
        progress = shot_progress(clips, self.run.committed_segments(sid), read_segment_progress(self.run.shot_dir(sid)),
                                 finished=state == "done")
        self._cache[sid] = (state, progress)
        return progress

    def snapshot(self, states: Mapping[str, str], busy_groups: int) -> RunProgress:
        shots = {sid: self.shot(sid, state) for sid, state in states.items()}
        live = [shots[sid] for sid, state in states.items() if state == "running"]
        measured = [p.seconds_per_clip for p in live if p.seconds_per_clip]
        if measured:
            self._seconds_per_clip = sum(measured) / len(measured)
        latest = max((p for p in live if p.updated_at), key=lambda p: p.updated_at or 0.0, default=None)
        if latest is not None and latest.seconds_per_step:
            self._seconds_per_step = latest.seconds_per_step
        remaining = sum(p.remaining for sid, p in shots.items() if states[sid] not in ("done", "failed"))
        return RunProgress(sum(1 for s in states.values() if s in ("done", "failed")), len(states),
                           sum(p.clips_done for p in shots.values()), sum(p.clips_total for p in shots.values()),
                           self._seconds_per_step,
                           eta_seconds(remaining, self._seconds_per_clip, busy_groups))


class ProgressDisplay:
    """A tqdm bar over the run's clips when ``stream`` is a terminal; otherwise an INFO log line
    (logger ``cluster.progress``) at most every ``interval_s`` seconds, when something moved."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                 bar: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.use_bar = _isatty(self.stream) if bar is None else bar
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._last_line_at = 0.0
        self._last_logged: RunProgress | None = None
        self._latest: RunProgress | None = None

    def update(self, progress: RunProgress) -> None:
        self._latest = progress
        if self.use_bar:
            self._update_bar(progress)
            return
        now = time.time()
        moved = self._last_logged is None or (progress.shots_done, progress.clips_done) != (
            self._last_logged.shots_done, self._last_logged.clips_done)
        if moved and now - self._last_line_at >= self.interval_s:
            self._log(progress, now)

    def close(self) -> None:
        """The final state: the bar completes, or a last line if the last one logged is behind."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None
        if not self.use_bar and self._latest is not None and self._latest != self._last_logged:
            self._log(self._latest, time.time())

    def _log(self, progress: RunProgress, now: float) -> None:
        log.info("%s", progress.line())
        self._last_logged, self._last_line_at = progress, now

    def _update_bar(self, progress: RunProgress) -> None:
        if self._bar is None:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # Log lines (group formed, shot published) print above the bar instead of through it.
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm())
            self._bar = tqdm(total=progress.clips_total, initial=progress.clips_done, file=self.stream, unit="clip",
                             dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        bar = self._bar
        bar.total = progress.clips_total
        bar.n = progress.clips_done
        bar.set_description_str(f"shots {progress.shots_done}/{progress.shots_total}", refresh=False)
        bar.set_postfix_str(f"clips {progress.clips_done}/{progress.clips_total}, "
                            f"{format_step(progress.seconds_per_step)} s/step, "
                            f"ETA {format_duration(progress.eta_s)}", refresh=False)
        bar.refresh()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or foreign stream: no bar
        return False


def shot_states(order: Sequence[str], status: Mapping[str, Any]) -> dict[str, str]:
    """shot id -> state, from the engine's ``ShotStatus`` objects (shots not loaded: pending)."""
    return {sid: (status[sid].state if sid in status else "pending") for sid in order}
