"""The rank's gauges stay exported between clips (Ray's OpenTelemetry export drops a gauge that
was not recorded since the last export)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ray")


class _Recorder:
    def __init__(self, name, description="", tag_keys=()):
        self.name, self.sets = name, []

    def set(self, value, tags=None):
        self.sets.append((value, dict(tags or {})))

    def inc(self, value=1, tags=None):
        self.sets.append((value, dict(tags or {})))


def _metrics(monkeypatch, refresh_s):
    import ray.util.metrics as rum

    from cluster.metrics import RankMetrics

    monkeypatch.setattr(rum, "Gauge", _Recorder)
    monkeypatch.setattr(rum, "Counter", _Recorder)
    return RankMetrics("run1", "g0", refresh_s=refresh_s)


def test_gauges_are_recorded_again_between_clips(monkeypatch):
    m = _metrics(monkeypatch, refresh_s=0.05)
    try:
        assert m.seconds_per_step.sets == []  # nothing before the first clip
        m.clip_done(steps=4, clip_seconds=20.0, step_seconds=16.0, frames=80)
        time.sleep(0.4)
        sets = m.seconds_per_step.sets
        assert len(sets) >= 3, "the last clip's step time was not recorded again while the next clip ran"
        assert {v for v, _ in sets} == {4.0} and sets[0][1] == {"run": "run1", "group": "g0"}
        assert {v for v, _ in m.frames_per_second.sets} == {4.0}
        assert len(m.clips_done.sets) == 1  # the counter is not re-incremented
        m.clip_done(steps=4, clip_seconds=10.0, step_seconds=8.0, frames=80)
        time.sleep(0.2)
        assert m.seconds_per_step.sets[-1][0] == 2.0  # the new clip's value from then on
    finally:
        m.close()
    n = len(m.seconds_per_step.sets)
    time.sleep(0.2)
    assert len(m.seconds_per_step.sets) <= n + 1  # closed: the thread stops


def test_refresh_zero_records_once_per_clip(monkeypatch):
    m = _metrics(monkeypatch, refresh_s=0)
    m.clip_done(steps=2, clip_seconds=4.0, step_seconds=2.0, frames=8)
    time.sleep(0.1)
    assert m.seconds_per_step.sets == [(1.0, {"run": "run1", "group": "g0"})] and m._thread is None


def test_a_rank_that_stops_committing_clips_stops_reporting_its_speed(monkeypatch):
    from types import SimpleNamespace

    import cluster.metrics as metrics

    m = _metrics(monkeypatch, refresh_s=0)
    now = [1000.0]
    monkeypatch.setattr(metrics, "time", SimpleNamespace(monotonic=lambda: now[0]))
    m.clip_done(steps=4, clip_seconds=40.0, step_seconds=32.0, frames=80)  # alive for max(60, 80) s
    now[0] += 79.0
    m.refresh()
    assert len(m.seconds_per_step.sets) == 2
    now[0] += 2.0
    m.refresh()
    assert len(m.seconds_per_step.sets) == 2  # 81 s after a 40-s clip: no longer reported
