"""Custom Ray metrics of a run (``ray.util.metrics``), shown by the Ray dashboard / Prometheus.

Ray exports them with a ``ray_`` prefix (counters also get ``_total``) on each node's metrics
export port, about 8 s after they are set. Every metric carries a ``run`` tag (the run id) so
several runs on one cluster stay apart.

=============================  =======  ==========================================================
name                           kind     meaning
=============================  =======  ==========================================================
s2v_shots{state}               gauge    shots by state: pending, running, done, failed
s2v_segments_done              counter  segments committed
s2v_segments_failed            counter  segment attempts that failed
s2v_queue_depth                gauge    segments waiting for a group
s2v_groups_ready               gauge    render groups formed and healthy
s2v_group_restarts{group}      counter  group teardowns + re-formations after a failure
s2v_seconds_per_step{group}    gauge    seconds per sampling step of the group's last clip
s2v_frames_per_second{group}   gauge    video frames per wall second of the group's last clip
s2v_clips_done{group}          counter  clips committed (by each group's writer rank)
s2v_shot_wall_seconds          histo.   wall seconds of each published shot, from its first
                                        dispatch to its publication (buckets SHOT_SECONDS_BUCKETS)
=============================  =======  ==========================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

SHOT_STATES = ("pending", "running", "done", "failed")
# A shot of the 14B model takes minutes (a few clips on a big group) to hours (minutes of audio
# on one GPU); the low buckets keep small test and draft shots apart.
SHOT_SECONDS_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
                        28800.0, 86400.0)


class RunMetrics:
    """Driver-side metrics. Created after Ray is connected."""

    def __init__(self, run_id: str):
        from ray.util.metrics import Counter, Gauge, Histogram

        self.tags = {"run": run_id}
        self.shots = Gauge("s2v_shots", description="Shots of the run by state", tag_keys=("run", "state"))
        self.segments_done = Counter("s2v_segments_done", description="Segments committed", tag_keys=("run",))
        self.segments_failed = Counter("s2v_segments_failed", description="Segment attempts that failed",
                                       tag_keys=("run",))
        self.queue_depth = Gauge("s2v_queue_depth", description="Segments waiting for a render group",
                                 tag_keys=("run",))
        self.groups_ready = Gauge("s2v_groups_ready", description="Render groups formed and healthy",
                                  tag_keys=("run",))
        self.group_restarts = Counter("s2v_group_restarts", description="Render group re-formations after a failure",
                                      tag_keys=("run", "group"))
        self.shot_wall_seconds = Histogram("s2v_shot_wall_seconds",
                                           description="Wall seconds of a shot, first dispatch to publication",
                                           boundaries=list(SHOT_SECONDS_BUCKETS), tag_keys=("run",))
        self._last: dict[str, float] = {}
        self._alive_until = 0.0

    def set_shots(self, counts: Mapping[str, int]) -> None:
        for state in SHOT_STATES:
            self.shots.set(counts.get(state, 0), tags={**self.tags, "state": state})

    def set_queue(self, depth: int, groups_ready: int) -> None:
        self.queue_depth.set(depth, tags=self.tags)
        self.groups_ready.set(groups_ready, tags=self.tags)

    def segment_done(self) -> None:
        self.segments_done.inc(1, tags=self.tags)

    def segment_failed(self) -> None:
        self.segments_failed.inc(1, tags=self.tags)

    def group_restarted(self, group: str) -> None:
        self.group_restarts.inc(1, tags={**self.tags, "group": group})

    def shot_published(self, wall_seconds: float) -> None:
        self.shot_wall_seconds.observe(max(0.0, wall_seconds), tags=self.tags)


#: How often a rank records its gauges again between clips. Ray exports gauges through
#: OpenTelemetry, which reports a gauge only if it was recorded since the last export: measured on
#: an H100 run, s2v_seconds_per_step vanished from the metrics endpoint ~25 s after a clip ended
#: (a 720p clip at 40 steps takes ~17 minutes, so the dashboard would show nothing most of the time).
GAUGE_REFRESH_S = 5.0


class RankMetrics:
    """Metrics set inside a rank actor (rank 0 of each group reports). The last clip's gauges are
    recorded again every ``refresh_s`` by a daemon thread, so they stay on the dashboard while the
    next clip samples."""

    def __init__(self, run_id: str, group: str, refresh_s: float = GAUGE_REFRESH_S):
        import threading

        from ray.util.metrics import Counter, Gauge

        self.refresh_s = refresh_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.tags = {"run": run_id, "group": group}
        self.clips_done = Counter("s2v_clips_done", description="Clips committed", tag_keys=("run", "group"))
        self.seconds_per_step = Gauge("s2v_seconds_per_step", description="Seconds per sampling step (last clip)",
                                      tag_keys=("run", "group"))
        self.frames_per_second = Gauge("s2v_frames_per_second",
                                       description="Video frames per wall second (last clip)",
                                       tag_keys=("run", "group"))

    def clip_done(self, steps: int, clip_seconds: float, step_seconds: float, frames: int) -> None:
        self.clips_done.inc(1, tags=self.tags)
        with self._lock:
            if steps:
                self._last["seconds_per_step"] = step_seconds / steps
            if clip_seconds > 0:
                self._last["frames_per_second"] = frames / clip_seconds
            # A rank that stops committing clips (hung, idle between shots) must not look busy:
            # its gauges are kept alive for twice its last clip (at least a minute), then dropped.
            self._alive_until = time.monotonic() + max(60.0, 2.0 * clip_seconds)
            self._record()
        if self._thread is None and self.refresh_s > 0:
            import threading

            self._thread = threading.Thread(target=self._keep_alive, name="s2v-rank-gauges", daemon=True)
            self._thread.start()

    def refresh(self) -> None:
        """Record the last clip's gauges again (the same values), while the rank is committing clips."""
        with self._lock:  # under the lock: a clip finishing meanwhile cannot be overwritten by older values
            if time.monotonic() <= self._alive_until:
                self._record()

    def _record(self) -> None:
        for name, value in self._last.items():
            getattr(self, name).set(value, tags=self.tags)

    def close(self) -> None:
        self._stop.set()

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - metrics must never take a rank down
                log.debug("rank gauge refresh failed", exc_info=True)
