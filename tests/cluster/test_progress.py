"""Live progress without Ray: the line format and ETA arithmetic, the writer rank's progress
files, `s2v status` over a hand-made run directory, the driver's display, the new metrics."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import pytest

from cluster.lease import Lease
from cluster.ledger import RunDir, ShotStatus
from cluster.progress import (
    SegmentProgress,
    SegmentProgressWriter,
    eta_seconds,
    format_duration,
    progress_line,
    read_segment_progress,
    segment_clips,
    shot_progress,
    write_segment_progress,
)
from cluster.run_progress import ClipTally, ProgressDisplay, RunProgress
from cluster.status import collect, format_report, status_dict
from manifests import Shot
from render.media.atomic import atomic_write_json


def test_duration_and_line_format():
    assert format_duration(252) == "0:04:12"
    assert format_duration(3 * 3600 + 61.4) == "3:01:01"
    assert format_duration(30 * 3600) == "30:00:00"  # hours are not wrapped into days
    assert format_duration(None) == "?"
    assert progress_line(2, 5, 17, 40, 3.14, 252) == "shots 2/5, clips 17/40, 3.1 s/step, ETA 0:04:12"
    assert progress_line(0, 5, 0, 40, None, None) == "shots 0/5, clips 0/40, ? s/step, ETA ?"
    assert progress_line(0, 1, 0, 1, 0.042, 5) == "shots 0/1, clips 0/1, 0.04 s/step, ETA 0:00:05"


def test_eta_arithmetic():
    assert eta_seconds(23, 10.0) == 230.0
    assert eta_seconds(23, 10.0, parallel=2) == 115.0
    assert eta_seconds(23, 10.0, parallel=0) == 230.0  # no group busy at this instant: not a division by 0
    assert eta_seconds(0, None) == 0.0  # nothing left: done, measured or not
    assert eta_seconds(5, None) is None  # nothing measured yet


def _record(index: int, done: int, clips: int, per_clip: float | None = 10.0, at: float = 0.0,
            per_step: float | None = 2.5) -> SegmentProgress:
    return SegmentProgress(index, done, clips, per_step, per_clip, at or time.time())


def test_shot_progress_counts_commits_and_progress_files():
    clips = {0: 4, 1: 3, 2: 5}
    records = {1: _record(1, 2, 3, per_clip=8.0, at=1.0, per_step=2.0),
               2: _record(2, 9, 5, per_clip=12.0, at=2.0, per_step=3.0)}
    p = shot_progress(clips, committed=[0], records=records)
    # segment 0 committed (4), segment 1 from its file (2), segment 2 capped at its plan (5)
    assert (p.clips_done, p.clips_total, p.remaining) == (11, 12, 1)
    assert p.seconds_per_clip == 10.0 and p.seconds_per_step == 3.0 and p.updated_at == 2.0
    assert shot_progress(clips, [], {}, finished=True).clips_done == 12
    fresh = shot_progress(clips, [], {})
    assert (fresh.clips_done, fresh.seconds_per_clip, fresh.seconds_per_step) == (0, None, None)


def test_writer_records_each_clip(tmp_path):
    writer = SegmentProgressWriter(tmp_path / "shot", index=1, clips=3, attempt=2, group="g0.1")
    writer.clip_done(1, 0.5)  # resumed at clip 1: clip 0 was committed by an earlier attempt
    recs = read_segment_progress(tmp_path / "shot")
    assert list(recs) == [1]
    r = recs[1]
    assert (r.clips_done, r.clips, r.attempt, r.group, r.seconds_per_step) == (2, 3, 2, "g0.1", 0.5)
    assert r.seconds_per_clip is not None and r.seconds_per_clip >= 0
    (tmp_path / "shot" / "progress-7.json").write_text("{not json")  # an unreadable file is skipped
    assert list(read_segment_progress(tmp_path / "shot")) == [1]


def test_writer_failure_does_not_stop_the_render(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    writer = SegmentProgressWriter(blocker / "shot", index=0, clips=2, attempt=1, group="g0")
    with caplog.at_level(logging.WARNING):
        writer.clip_done(0, 1.0)
    assert "not recorded" in caplog.text


def test_segment_clips_from_plan_dict_and_object():
    from render.shot.plan import SegmentSpec, ShotPlan

    plan = ShotPlan("sequential", 16, 40, 2.5, (SegmentSpec(0, 0, 40, 0, 3),), 16, 64, 64)
    assert segment_clips(plan) == segment_clips(plan.to_dict()) == {0: 3}
    assert segment_clips(_plan_dict([3, 2])) == {0: 3, 1: 2}
    assert segment_clips({"plan_json": json.dumps(_plan_dict([2])), "height": 64, "width": 64}) == {0: 2}
    assert segment_clips({"segments": [{"index": 0}]}) == {}  # no clip counts: nothing to show


# --- a hand-made run directory -------------------------------------------------------------------

def _plan_dict(clips: list[int], infer_frames: int = 16) -> dict:
    """The parts of a plan.json the status reads (segments and their clips)."""
    segments, start = [], 0
    for i, n in enumerate(clips):
        frames = n * infer_frames
        segments.append({"index": i, "start_frame": start, "num_frames": frames, "overlap_before": 0,
                         "num_clips": n})
        start += frames
    return {"fps": 16, "infer_frames": infer_frames, "height": 64, "width": 64, "num_frames": start,
            "duration_s": start / 16, "mode": "parallel" if len(clips) > 1 else "sequential", "segments": segments}


def _run_dir(tmp_path: Path, plans: dict[str, list[int]]) -> RunDir:
    run = RunDir(tmp_path / "run")
    shots = [Shot(shot_id=sid, audio=tmp_path / "a.wav", image=tmp_path / "a.png", prompt="p",
                  output=tmp_path / "out" / f"{sid}.mp4", seed=1) for sid in plans]
    run.write_manifest(shots)
    run.write_run({"run_id": "r1", "created_at": time.time() - 100, "starts": [time.time() - 50]})
    for sid, clips in plans.items():
        atomic_write_json(run.plan_file(sid), _plan_dict(clips))
    return run


def _commit(run: RunDir, sid: str, index: int) -> None:
    atomic_write_json(run.segment_record(sid, index), {"shot_id": sid, "index": index})


def _publish(run: RunDir, sid: str) -> None:
    out = Path(run.path.parent / "out" / f"{sid}.mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"x" * 10)
    atomic_write_json(run.published_file(sid), {"output": str(out), "bytes": 10})


def test_status_mid_run_shows_partial_clips_and_an_eta(tmp_path):
    now = time.time()
    run = _run_dir(tmp_path, {"a": [2], "b": [3, 2], "c": [4]})
    _publish(run, "a")
    run.write_status("a", ShotStatus(state="done", attempts=1, started_at=now - 40, finished_at=now - 20))
    run.write_status("b", ShotStatus(state="running", attempts=1, started_at=now - 15))
    _commit(run, "b", 0)
    write_segment_progress(run.shot_dir("b"), _record(1, 1, 2, per_clip=10.0, per_step=2.5, at=now - 1))
    with Lease(run.path):  # a live run holds the lease
        report = collect(run.path)
    lines = {s.shot_id: s for s in report.shots}
    assert report.live and (report.clips_done, report.clips_total) == (2 + 4, 2 + 5 + 4)
    assert (lines["a"].clips_done, lines["a"].eta_s) == (2, 0.0) and lines["a"].elapsed_s == pytest.approx(20)
    assert (lines["b"].clips_done, lines["b"].clips_total) == (4, 5)
    assert lines["b"].eta_s == pytest.approx(10.0) and lines["b"].elapsed_s >= 15
    assert (lines["c"].clips_done, lines["c"].elapsed_s) == (0, None)
    assert lines["c"].eta_s == pytest.approx(40.0)  # the run's seconds per clip until it has its own
    # 1 + 4 clips left at 10 s each, one segment rendering
    assert report.eta_s == pytest.approx(50.0) and report.seconds_per_step == 2.5
    assert report.elapsed_s == pytest.approx(50, abs=5)  # from the latest start
    text = format_report(report)
    assert "clips 6/11" in text and "2.5 s/step" in text and "ETA 0:00:50" in text
    b_row = next(r for r in text.splitlines() if r.startswith("b "))
    assert "4/5" in b_row and "0:00:10" in b_row


def test_status_eta_divides_by_segments_rendering_at_once(tmp_path):
    now = time.time()
    run = _run_dir(tmp_path, {"b": [3, 3]})
    run.write_status("b", ShotStatus(state="running", attempts=2, started_at=now - 15))
    write_segment_progress(run.shot_dir("b"), _record(0, 1, 3, per_clip=10.0, at=now - 1))
    write_segment_progress(run.shot_dir("b"), _record(1, 1, 3, per_clip=10.0, at=now - 2))
    with Lease(run.path):
        report = collect(run.path)
    assert report.clips_done == 2 and report.eta_s == pytest.approx(4 * 10.0 / 2)


def test_status_after_the_run_has_no_eta_to_wait_for(tmp_path):
    now = time.time()
    run = _run_dir(tmp_path, {"a": [2], "b": [1]})
    for sid, (start, end) in {"a": (now - 40, now - 20), "b": (now - 30, now - 5)}.items():
        _publish(run, sid)
        run.write_status(sid, ShotStatus(state="done", attempts=1, started_at=start, finished_at=end))
    record = run.read_run()
    run.write_run({**record, "starts": [*record["starts"], now - 1]})  # a later start that found nothing to do
    report = json.loads(json.dumps(status_dict(run.path)))  # what `s2v status --json` prints
    assert not report["live"] and report["clips_done"] == report["clips_total"] == 3
    # from the start that rendered (50 s ago) to the last shot's end (5 s ago)
    assert report["eta_s"] == 0.0 and report["elapsed_s"] == pytest.approx(45, abs=1)
    assert all(s["eta_s"] == 0.0 and s["elapsed_s"] > 0 for s in report["shots"])


def test_status_of_an_interrupted_run_gives_no_eta(tmp_path):
    run = _run_dir(tmp_path, {"a": [2]})
    run.write_status("a", ShotStatus(state="running", attempts=1, started_at=time.time() - 9))
    write_segment_progress(run.shot_dir("a"), _record(0, 1, 2))
    report = collect(run.path)  # no lease: nobody renders it now
    assert report.shots[0].state == "interrupted" and report.shots[0].clips_done == 1
    assert report.eta_s is None and report.shots[0].eta_s is None


# --- the driver's tally and display --------------------------------------------------------------

def test_clip_tally_rereads_only_running_shots(tmp_path):
    now = time.time()
    run = _run_dir(tmp_path, {"a": [2], "b": [4]})
    tally = ClipTally(run, {})
    states = {"a": "done", "b": "running"}
    write_segment_progress(run.shot_dir("b"), _record(0, 1, 4, per_clip=6.0, per_step=1.5, at=now))
    snap = tally.snapshot(states, busy_groups=1)
    assert snap == RunProgress(1, 2, 3, 6, 1.5, 18.0)
    write_segment_progress(run.shot_dir("b"), _record(0, 3, 4, per_clip=6.0, per_step=1.5, at=now + 1))
    assert tally.snapshot(states, busy_groups=1).clips_done == 5
    idle = tally.snapshot({"a": "done", "b": "pending"}, busy_groups=0)  # between two dispatches
    assert (idle.seconds_per_step, idle.eta_s) == (1.5, 6.0)  # the last measures are kept
    assert tally.snapshot({"a": "done", "b": "failed"}, busy_groups=1).eta_s == 0.0  # nothing left to render


def test_display_without_a_terminal_logs_lines_at_the_interval(caplog):
    display = ProgressDisplay(stream=io.StringIO(), interval_s=3600)
    assert not display.use_bar  # a StringIO is no terminal
    with caplog.at_level(logging.INFO, logger="cluster.progress"):
        display.update(RunProgress(0, 2, 1, 10, 2.0, 90))
        display.update(RunProgress(0, 2, 2, 10, 2.0, 80))  # inside the interval: not logged
        display.update(RunProgress(2, 2, 10, 10, 2.0, 0))
        display.close()  # the final state is always logged
    lines = [r.getMessage() for r in caplog.records if r.name == "cluster.progress"]
    assert lines == ["shots 0/2, clips 1/10, 2.0 s/step, ETA 0:01:30", "shots 2/2, clips 10/10, 2.0 s/step, ETA 0:00:00"]


def test_display_with_a_zero_interval_logs_every_change(caplog):
    display = ProgressDisplay(stream=io.StringIO(), interval_s=0)
    with caplog.at_level(logging.INFO, logger="cluster.progress"):
        for done in (1, 1, 2):
            display.update(RunProgress(0, 1, done, 2, None, None))
        display.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "cluster.progress"]
    assert lines == ["shots 0/1, clips 1/2, ? s/step, ETA ?", "shots 0/1, clips 2/2, ? s/step, ETA ?"]


def test_display_on_a_terminal_draws_a_bar(caplog):
    stream = io.StringIO()
    display = ProgressDisplay(stream=stream, bar=True)
    with caplog.at_level(logging.INFO, logger="cluster.progress"):
        display.update(RunProgress(1, 3, 17, 40, 3.1, 252))
        display.close()
    out = stream.getvalue()
    assert "shots 1/3" in out and "clips 17/40, 3.1 s/step, ETA 0:04:12" in out and "42%" in out
    assert not [r for r in caplog.records if r.name == "cluster.progress"]  # the bar replaces the lines


# --- metrics ---------------------------------------------------------------------------------------

class _FakeMetric:
    made: dict[str, _FakeMetric] = {}

    def __init__(self, name: str, description: str = "", boundaries: list[float] | None = None,
                 tag_keys: tuple[str, ...] | None = None):
        self.name, self.boundaries, self.tag_keys, self.values = name, boundaries, tag_keys, []
        _FakeMetric.made[name] = self

    def set(self, value: float, tags: dict | None = None) -> None:
        self.values.append(("set", value, tags))

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        self.values.append(("inc", value, tags))

    def observe(self, value: float, tags: dict | None = None) -> None:
        self.values.append(("observe", value, tags))


@pytest.fixture
def fake_metrics(monkeypatch):
    import ray.util.metrics as ray_metrics

    class Counter(_FakeMetric):
        kind = "counter"

    class Gauge(_FakeMetric):
        kind = "gauge"

    class Histogram(_FakeMetric):
        kind = "histogram"

    _FakeMetric.made = {}
    for cls in (Counter, Gauge, Histogram):
        monkeypatch.setattr(ray_metrics, cls.__name__, cls)
    return _FakeMetric.made


def test_metrics_register_the_clip_counter_and_shot_histogram(fake_metrics):
    from cluster.metrics import SHOT_SECONDS_BUCKETS, RankMetrics, RunMetrics

    run_metrics = RunMetrics("r1")
    rank_metrics = RankMetrics("r1", "g0.1")
    existing = {"s2v_shots", "s2v_segments_done", "s2v_segments_failed", "s2v_queue_depth", "s2v_groups_ready",
                "s2v_group_restarts", "s2v_seconds_per_step", "s2v_frames_per_second"}
    assert existing | {"s2v_clips_done", "s2v_shot_wall_seconds"} == set(fake_metrics)
    histogram = fake_metrics["s2v_shot_wall_seconds"]
    assert histogram.kind == "histogram" and histogram.boundaries == sorted(SHOT_SECONDS_BUCKETS)
    assert fake_metrics["s2v_clips_done"].kind == "counter"
    assert fake_metrics["s2v_clips_done"].tag_keys == ("run", "group")
    rank_metrics.clip_done(steps=4, clip_seconds=8.0, step_seconds=6.0, frames=16)
    rank_metrics.clip_done(steps=4, clip_seconds=8.0, step_seconds=6.0, frames=16)
    run_metrics.shot_published(125.0)
    assert fake_metrics["s2v_clips_done"].values == [("inc", 1, {"run": "r1", "group": "g0.1"})] * 2
    assert histogram.values == [("observe", 125.0, {"run": "r1"})]
    assert fake_metrics["s2v_seconds_per_step"].values[-1] == ("set", 1.5, {"run": "r1", "group": "g0.1"})
