"""Segment planner: cuts at pauses, exact frame coverage, determinism, serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from render.settings import RenderSettings
from render.shot.plan import (
    PlanError,
    SegmentSpec,
    ShotPlan,
    frame_energy_db,
    plan_segments,
    plan_segments_from_chunks,
    plan_shot_audio,
)
from tests.render.segment_helpers import long_speech
from tinymodel.demo_assets import write_wav

S = RenderSettings()


@pytest.fixture(scope="module")
def speech_15min():
    return long_speech(15 * 60, seed=1)


def _check_coverage(plan: ShotPlan, duration_s: float) -> None:
    assert plan.total_frames == math.ceil(duration_s * plan.fps - 1e-6)
    assert plan.segments[0].start_frame == 0 and plan.segments[-1].end_frame == plan.total_frames
    for a, b in zip(plan.segments, plan.segments[1:]):
        assert b.start_frame == a.end_frame - b.overlap_before
    for s in plan.segments:
        assert (s.num_clips - 1) * plan.infer_frames < s.num_frames <= s.num_clips * plan.infer_frames


@pytest.mark.parametrize("minutes", [2, 10, 15])
def test_parallel_plan_cuts_in_pauses_and_covers_every_frame(minutes, speech_15min):
    samples, pauses = speech_15min
    samples = samples[: minutes * 60 * 16000]
    plan = plan_segments(samples, S, mode="parallel", target_seconds=30, overlap_seconds=0.5)
    _check_coverage(plan, minutes * 60)
    assert len(plan.segments) == round(minutes * 60 / 30)
    energy = frame_energy_db(samples, S.fps)
    speech_level = np.percentile(energy, 90)
    for s in plan.segments[1:]:
        assert s.overlap_before == 8
        window = energy[s.start_frame: s.start_frame + s.overlap_before]
        # The whole crossfade lies in silence (this generator's pauses are digital silence) ...
        assert window.max() < speech_level - 60, (s, window)
        # ... and within one of the pauses between sentences or words.
        t0, t1 = s.start_frame / S.fps, (s.start_frame + s.overlap_before) / S.fps
        assert any(p0 - 0.07 <= t0 and t1 <= p1 + 0.07 for p0, p1 in pauses) or window.max() <= -99
        assert s.cut_energy_db is not None and s.cut_energy_db < speech_level - 60
    lengths = [s.num_frames / S.fps for s in plan.segments]
    assert max(lengths) < 30 * 1.6 and min(lengths) > 30 * 0.5


def test_cut_moves_off_a_loud_ideal_position():
    """Continuous tone with one silent gap near (not at) the balanced cut: the cut takes the gap."""
    rate, secs = 16000, 120
    t = np.arange(secs * rate) / rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    x[int(63.0 * rate): int(64.2 * rate)] = 0.0  # the only pause, 3 s after the ideal 60 s
    plan = plan_segments(x, S, mode="parallel", target_seconds=60, overlap_seconds=0.5)
    assert len(plan.segments) == 2
    start = plan.segments[1].start_frame
    assert 63.0 * 16 <= start and start + 8 <= 64.2 * 16
    # Without any pause the cut stays near the balanced position.
    y = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    p2 = plan_segments(y, S, mode="parallel", target_seconds=60, overlap_seconds=0.5)
    assert abs(p2.segments[1].start_frame - 60 * 16) <= 15 * 16


def test_deterministic_from_samples_chunks_and_file(tmp_path, speech_15min):
    samples = speech_15min[0][: 150 * 16000]
    a = plan_segments(samples, S, mode="parallel", target_seconds=25).to_json()
    assert plan_segments(samples.copy(), S, mode="parallel", target_seconds=25).to_json() == a
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.integers(0, samples.size, 40))
    chunks = np.split(samples, cuts)
    assert plan_segments_from_chunks(iter(chunks), S, mode="parallel", target_seconds=25).to_json() == a
    wav = write_wav(tmp_path / "a.wav", samples)
    from render.media.audio import decode_audio

    decoded = decode_audio(wav).samples
    assert plan_shot_audio(wav, S, mode="parallel", target_seconds=25).to_json() == \
        plan_segments(decoded, S, mode="parallel", target_seconds=25).to_json()


@pytest.mark.parametrize("seconds", [0.5, 3.0, 5.0, 10.0, 10.01, 59.9])
def test_sequential_is_one_segment_with_the_official_clip_count(seconds):
    x = np.zeros(int(round(seconds * 16000)), np.float32)
    for settings in (S, RenderSettings(official_frame_drop=True)):
        plan = plan_segments(x, settings, mode="sequential")
        assert plan.mode == "sequential" and len(plan.segments) == 1
        # The official count int(A/150) + 1 less its extra silent clip at whole clip lengths.
        frames = math.ceil(seconds * 16 - 1e-6)
        first = 77 if settings.official_frame_drop else 80
        assert plan.total_frames == frames
        assert plan.segments[0].num_clips == 1 + max(0, math.ceil((frames - first) / 80))


def test_auto_mode_splits_only_long_shots(speech_15min):
    x = speech_15min[0]
    assert plan_segments(x[: 50 * 16000], S).mode == "sequential"
    assert plan_segments(x[: 50 * 16000], S, min_parallel_seconds=40, target_seconds=20).mode == "parallel"
    long = plan_segments(x[: 300 * 16000], S)
    assert long.mode == "parallel" and len(long.segments) == 10
    # A parallel request on audio shorter than one target stays one segment.
    short = plan_segments(x[: 20 * 16000], S, mode="parallel", target_seconds=30)
    assert len(short.segments) == 1


def test_json_round_trip_and_errors_name_the_field(speech_15min):
    plan = plan_segments(speech_15min[0][: 200 * 16000], S, mode="parallel", target_seconds=40)
    assert ShotPlan.from_json(plan.to_json()) == plan
    assert SegmentSpec.from_dict(plan.segments[2].to_dict()) == plan.segments[2]
    d = json.loads(plan.to_json())
    d["segments"][1]["start_frame"] += 1
    with pytest.raises(PlanError, match="segment 1: start_frame"):
        ShotPlan.from_dict(d)
    d = json.loads(plan.to_json())
    d["segments"][0]["num_clips"] = "3"
    with pytest.raises(PlanError, match="num_clips='3'"):
        ShotPlan.from_dict(d)
    d = json.loads(plan.to_json())
    d["segments"][-1]["num_frames"] += 5
    with pytest.raises(PlanError, match="total_frames"):
        ShotPlan.from_dict(d)
    with pytest.raises(PlanError, match="version"):
        ShotPlan.from_dict({**json.loads(plan.to_json()), "version": 99})
    with pytest.raises(PlanError, match="not valid JSON"):
        ShotPlan.from_json("{")


def test_bad_options_are_rejected():
    x = np.zeros(16000 * 200, np.float32)
    with pytest.raises(PlanError, match="segment mode 'fast'"):
        plan_segments(x, S, mode="fast")
    with pytest.raises(PlanError, match="target_seconds=0"):
        plan_segments(x, S, mode="parallel", target_seconds=0)
    with pytest.raises(PlanError, match="official_frame_drop"):
        plan_segments(x, RenderSettings(official_frame_drop=True), mode="parallel")
    with pytest.raises(PlanError, match="mono samples"):
        plan_segments(np.zeros((2, 100), np.float32), S)
