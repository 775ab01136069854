"""Seam blend and metrics: weights, Lab colour, the report on joins that are good, bad and blended."""

from __future__ import annotations

import numpy as np
import pytest

from render.quality.seams import crossfade_weight, frame_change, match_colour, rgb_to_lab, seam_report
from render.settings import RenderSettings
from render.shot.plan import SegmentSpec, ShotPlan, plan_shot_audio
from render.shot.segment import render_segment
from render.shot.stitch import blended_frames
from tests.render.segment_helpers import FakeRenderer, fake_shot, long_speech
from tinymodel.demo_assets import write_wav

S = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9)


class TintedRenderer(FakeRenderer):
    """Later segments come out brighter: a colour jump at every join unless it is blended."""

    def render_clip(self, shot, state, segment=0, audio_offset=None):
        frames, nxt = super().render_clip(shot, state, segment, audio_offset)
        return (frames + 0.25 * segment).clamp(-1, 1), nxt


def test_crossfade_weights():
    for n in (1, 2, 8, 16):
        w = [crossfade_weight(j, n) for j in range(n)]
        assert all(0 < x < 1 for x in w) and w == sorted(w)
        assert np.allclose(w, [1 - x for x in reversed(w)])  # symmetric: both sides fade alike


def test_lab_of_known_colours():
    px = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [128, 128, 128]]], np.uint8)
    lab = rgb_to_lab(px)[0]
    assert np.allclose(lab[0], [100, 0, 0], atol=0.02)
    assert np.allclose(lab[1], [0, 0, 0], atol=1e-6)
    assert np.allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)
    assert abs(lab[3, 0] - 53.59) < 0.05 and np.abs(lab[3, 1:]).max() < 0.01


def test_match_colour_moves_statistics_and_fades_out():
    rng = np.random.default_rng(0)
    tail = [rng.integers(90, 110, (8, 8, 3)).astype(np.uint8) for _ in range(4)]
    head = [(t.astype(np.float32) + 40).astype(np.uint8) for t in tail]
    out = match_colour(head, tail)
    assert abs(out[0].mean() - np.mean(tail)) < abs(head[0].mean() - np.mean(tail)) / 2
    assert np.allclose(out[-1], head[-1])  # no correction left at the end of the overlap


def _render(tmp, audio, overlap_s, renderer_cls, colour=False):
    plan = plan_shot_audio(audio, S, "parallel", 2.0, overlap_s)
    r, shot = renderer_cls(S), fake_shot(S)
    paths = [render_segment(r, shot, plan, i, S, tmp / f"w{overlap_s}") for i in range(len(plan.segments))]
    return plan, list(blended_frames(plan, paths, colour=colour))


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("seams") / "a.wav", long_speech(6.3, seed=4)[0])


def test_report_flags_a_hard_colour_cut_and_the_crossfade_spreads_it(tmp_path, speech):
    plan0, frames0 = _render(tmp_path, speech, 0.0, TintedRenderer)
    plan8, frames8 = _render(tmp_path, speech, 0.5, TintedRenderer)
    planc, framesc = _render(tmp_path / "c", speech, 0.5, TintedRenderer, colour=True)
    hard = seam_report(frames0, plan0)
    soft = seam_report(frames8, plan8)
    matched = seam_report(framesc, planc)
    assert len(hard["joins"]) == len(soft["joins"]) == 2
    p95 = hard["inside"]["p95"]
    for j in hard["joins"]:
        assert j["value"] > 2 * p95 and j["overlap"] == 0
    for jh, js, jc in zip(hard["joins"], soft["joins"], matched["joins"]):
        assert js["value"] < jh["value"] / 2 and js["overlap"] == 8
        assert jc["value"] <= js["value"] * 1.1
    # Clip boundaries inside a chain are reported apart from joins and from the inside pairs.
    assert hard["clip_boundaries"] and all(b["frame"] % 16 in (0, plan0.segments[1].start_frame % 16)
                                           for b in hard["clip_boundaries"][:2])
    assert soft["inside"]["pairs"] + len(soft["clip_boundaries"]) + sum(j["overlap"] + 1 for j in soft["joins"]) \
        == len(frames8) - 1


def test_report_colour_drift_per_segment_against_reference(tmp_path, speech):
    plan, frames = _render(tmp_path, speech, 0.5, TintedRenderer)
    grey = np.full((64, 64, 3), 128, np.uint8)
    rep = seam_report(frames, plan, grey)
    segs = rep["colour"]["segments"]
    assert len(segs) == 3 and rep["colour"]["reference"]["mean"][0] == pytest.approx(53.59, abs=0.05)
    lightness = [s["mean"][0] for s in segs]
    assert lightness[0] < lightness[1] < lightness[2]  # the tint of later segments is measured
    assert all(len(s["mean_minus_ref"]) == 3 for s in segs)
    assert {c["segment"] for c in rep["colour"]["clips"]} == {0, 1, 2}


def test_frame_change_and_single_segment_report():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 10, np.uint8)
    assert frame_change(a, b) == 10.0 and frame_change(b, a) == 10.0
    plan = ShotPlan("sequential", 16, 40, 2.5, (SegmentSpec(0, 0, 40, 0, 3),), infer_frames=16)
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(40)]
    rep = seam_report(frames, plan)
    assert rep["joins"] == [] and rep["inside"]["p50"] == 1.0 and rep["inside"]["p99"] == 1.0
    assert [b["frame"] for b in rep["clip_boundaries"]] == [16, 32]
