"""Segment rendering with persisted state: resume identity, conditioning of later segments,
sequential = official chain, state validation. Tiny model at 64x64, 1 step, short clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from render.model.clip_loop import ChainRenderer, clip_seed, initial_chain_state
from render.model.components import S2VModels
from render.settings import RenderSettings
from render.shot.condition import condition_segment, feature_window
from render.shot.plan import SegmentOptions, plan_segments, plan_shot
from render.shot.segment import (
    STATE_FILE,
    SegmentStateError,
    clip_file,
    read_record,
    render_segment,
    segment_dir,
    segment_frames_digest,
)
from tests.render.segment_helpers import FakeRenderer, fake_shot
from tinymodel.demo_assets import cartoon_face, speech_like_audio, write_wav

S = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9)


class RecordingRenderer(ChainRenderer):
    """The real chain renderer, remembering each clip's frames and whether it used motion."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.clips: list[tuple[int, int, bool, torch.Tensor]] = []

    def render_clip(self, shot, state, segment=0, audio_offset=None):
        frames, nxt = super().render_clip(shot, state, segment, audio_offset)
        self.clips.append((segment, state.next_clip, self.clip_uses_motion(state.next_clip, segment), frames))
        return frames, nxt


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return S2VModels(tiny_ckpt, device="cpu")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("segmedia")
    return write_wav(d / "speech.wav", speech_like_audio(4.0, seed=3)), cartoon_face(d / "face.png", (160, 160))


@pytest.fixture(scope="module")
def plan2(media):
    from render.media.audio import decode_audio

    plan = plan_segments(decode_audio(media[0]).samples, S, mode="parallel", target_seconds=2.0,
                         overlap_seconds=0.5)
    assert len(plan.segments) == 2
    return plan


def _renderer(pipe):
    return RecordingRenderer(pipe.dit, pipe.vae, S, "cpu", progress=False)


def test_resume_after_a_crash_gives_identical_frames(pipe, media, plan2, tmp_path):
    audio, image = media
    shot = condition_segment(pipe, plan2.with_geometry(64, 64), 0, audio, image, "a face talks", S)
    whole = _renderer(pipe)
    d_full = render_segment(whole, shot, plan2, 0, S, tmp_path / "full")
    n = plan2.segments[0].num_clips
    assert n == 3

    class Crash(Exception):
        pass

    def crash_after_first(seg, clip, clips):
        if clip == 0:
            raise Crash

    first = _renderer(pipe)
    with pytest.raises(Crash):
        render_segment(first, shot, plan2, 0, S, tmp_path / "half", on_clip=crash_after_first)
    half = segment_dir(tmp_path / "half", 0)
    assert (half / STATE_FILE).is_file() and read_record(half) is None
    state = torch.load(half / STATE_FILE, weights_only=True)
    assert state["next_clip"] == 1 and state["clips"][0]["seed"] == clip_seed(S.seed, 0, 0)
    resumed = _renderer(pipe)
    d_res = render_segment(resumed, shot, plan2, 0, S, tmp_path / "half")
    assert [c[1] for c in resumed.clips] == list(range(1, n))  # clip 0 was not rendered again
    for (_, _, _, a), (_, _, _, b) in zip(whole.clips[1:], resumed.clips):
        assert torch.equal(a, b)
    assert segment_frames_digest(d_res) == segment_frames_digest(d_full)
    rec_full, rec_res = read_record(d_full), read_record(d_res)
    assert [c["sha256"] for c in rec_full["clips"]] == [c["sha256"] for c in rec_res["clips"]]
    assert not (d_res / STATE_FILE).exists()
    # A finished segment is not rendered again.
    again = _renderer(pipe)
    assert render_segment(again, shot, plan2, 0, S, tmp_path / "half") == d_res and again.clips == []


def test_later_segment_starts_reference_only_at_its_own_audio(pipe, media, plan2, tmp_path):
    audio, image = media
    seg = plan2.segments[1]
    shot = condition_segment(pipe, plan2.with_geometry(64, 64), 1, audio, image, "a face talks", S)
    f0, nf, s0, ns = feature_window(plan2, 1)
    assert shot.audio_start_frame == f0 and f0 % S.fps == 0 and f0 <= seg.start_frame
    assert shot.audio_frames.shape[-1] == nf >= seg.start_frame + seg.num_clips * S.infer_frames - f0
    r = _renderer(pipe)
    d = render_segment(r, shot, plan2, 1, S, tmp_path)
    uses_motion = [m for _, _, m, _ in r.clips]
    assert uses_motion == [False] + [True] * (seg.num_clips - 1)
    rec = read_record(d)
    assert [c["seed"] for c in rec["clips"]] == [clip_seed(S.seed, 1, c) for c in range(seg.num_clips)]
    assert [c["audio_offset"] for c in rec["clips"]] == [seg.start_frame + c * S.infer_frames
                                                        for c in range(seg.num_clips)]
    assert rec["frames"] == seg.num_frames == sum(c["frames"] for c in rec["clips"])


def test_one_segment_plan_is_the_official_chain(pipe, media, tmp_path):
    from render.media.audio import decode_audio

    audio, image = media
    s = RenderSettings(size="64*64", steps=1, infer_frames=32, motion_frames=9)
    decoded = decode_audio(audio)
    plan = plan_segments(decoded.samples, s, mode="sequential")
    shot = condition_segment(pipe, plan.with_geometry(64, 64), 0, audio, image, "a face talks", s)
    # The features of a one-segment plan are those of the whole decoded audio.
    ref_frames = pipe.audio_frames(decoded.samples, plan.num_clips * s.infer_frames, s.fps)
    assert torch.equal(shot.audio_frames, ref_frames) and shot.audio_start_frame == 0
    ref_shot = shot
    r = RecordingRenderer(pipe.dit, pipe.vae, s, "cpu", progress=False)
    render_segment(r, shot, plan, 0, s, tmp_path)
    chain = ChainRenderer(pipe.dit, pipe.vae, s, "cpu", progress=False)
    st = initial_chain_state(s, ref_shot)
    for _, _, _, frames in r.clips:
        expected, st = chain.render_clip(ref_shot, st)
        assert torch.equal(frames, expected)


def test_changed_inputs_refuse_to_resume_unless_restart(tmp_path):
    from render.shot.plan import SegmentSpec, ShotPlan

    plan = ShotPlan("parallel", 16, 100, 100 / 16, (SegmentSpec(0, 0, 54, 0, 4), SegmentSpec(1, 50, 50, 4, 4)),
                       infer_frames=16)
    s = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9)
    shot = fake_shot(s)

    def stop(seg, clip, clips):
        if clip == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_segment(FakeRenderer(s), shot, plan, 1, s, tmp_path, on_clip=stop)
    other = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9, seed=7)
    with pytest.raises(SegmentStateError, match="different inputs"):
        render_segment(FakeRenderer(other), shot, plan, 1, other, tmp_path)
    d = render_segment(FakeRenderer(other), shot, plan, 1, other, tmp_path, restart=True)
    assert read_record(d)["clips"][0]["seed"] == clip_seed(7, 1, 0)
    # A committed clip file that changed afterwards is detected on resume.
    with pytest.raises(KeyboardInterrupt):
        render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path, on_clip=stop)
    clip_file(segment_dir(tmp_path, 0), 0).write_bytes(b"garbage")
    with pytest.raises(SegmentStateError, match="changed"):
        render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path)
    with pytest.raises(ValueError, match="does not match settings"):
        render_segment(FakeRenderer(s), shot, plan, 0, RenderSettings(size="64*64", infer_frames=32), tmp_path)


def test_inputs_key_resumes_despite_rounding_in_the_conditioning(tmp_path):
    """A resume whose encoders round differently (another thread count or card) continues the
    segment when the caller names its sources (inputs_key); the tensor fingerprint refuses it."""
    import dataclasses

    from render.shot.plan import SegmentSpec, ShotPlan

    plan = ShotPlan("parallel", 16, 100, 100 / 16, (SegmentSpec(0, 0, 54, 0, 4), SegmentSpec(1, 50, 50, 4, 4)),
                    infer_frames=16)
    s = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9)
    shot = fake_shot(s)
    rounded = dataclasses.replace(shot, ref_latents=shot.ref_latents + 1e-6,
                                  prompt_context=shot.prompt_context * (1 + 1e-6))

    def stop(seg, clip, clips):
        if clip == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # stopped after clip 1: its state is on disk
        render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / "a", on_clip=stop, inputs_key="k1")
    with pytest.raises(SegmentStateError, match="different inputs"):
        render_segment(FakeRenderer(s), rounded, plan, 0, s, tmp_path / "a")
    with pytest.raises(SegmentStateError, match="different inputs"):  # other sources: refused
        render_segment(FakeRenderer(s), rounded, plan, 0, s, tmp_path / "a", inputs_key="k2")
    seen: list[int] = []
    d = render_segment(FakeRenderer(s), rounded, plan, 0, s, tmp_path / "a", inputs_key="k1",
                       on_clip=lambda seg, clip, clips: seen.append(clip))
    assert seen == [2, 3] and len(read_record(d)["clips"]) == 4  # resumed, not restarted
    # A finished segment is found finished under the key, whatever the conditioning's rounding.
    seen.clear()
    assert render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / "a", inputs_key="k1",
                          on_clip=lambda seg, clip, clips: seen.append(clip)) == d and seen == []
    # Work committed without a key (older run folders) is accepted by a caller that passes one.
    with pytest.raises(KeyboardInterrupt):
        render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / "b", on_clip=stop)
    seen.clear()
    render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / "b", inputs_key="k1",
                   on_clip=lambda seg, clip, clips: seen.append(clip))
    assert seen == [2, 3]


def test_fake_renderer_segments_resume_identically_with_motion_tail(tmp_path):
    """infer_frames < motion_frames: the persisted pixel tail is part of the state."""
    from render.shot.plan import SegmentSpec, ShotPlan

    s = RenderSettings(size="64*64", steps=1, infer_frames=8, motion_frames=13)
    plan = ShotPlan("sequential", 16, 60, 60 / 16, (SegmentSpec(0, 0, 60, 0, 8),), infer_frames=8)
    shot = fake_shot(s)
    full = render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / "a")
    for crash_at in (0, 3, 6):
        def stop(seg, clip, clips, crash_at=crash_at):
            if clip == crash_at:
                raise RuntimeError("killed")

        with pytest.raises(RuntimeError):
            render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / f"b{crash_at}", on_clip=stop)
        st = torch.load(segment_dir(tmp_path / f"b{crash_at}", 0) / STATE_FILE, weights_only=True)
        assert st["motion_tail"].shape[1] == 5
        d = render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / f"b{crash_at}")
        assert segment_frames_digest(d) == segment_frames_digest(full)
    rec = json.loads((full / "segment.json").read_text())
    assert rec["frames"] == 60 and len(rec["clips"]) == 8 and rec["clips"][-1]["frames"] == 4
    assert np.all([c["audio_offset"] == 8 * i for i, c in enumerate(rec["clips"])])


def test_segment_options_modes_and_contradictions():
    assert SegmentOptions().plain_encode() and not SegmentOptions(output_fps=25).plain_encode()
    assert SegmentOptions(mode="auto").mode_for("pose.mp4") == "sequential"  # pose keeps one chain
    assert SegmentOptions(mode="parallel").mode_for(None) == "parallel"
    with pytest.raises(ValueError, match="pose video needs segment mode 'sequential'"):
        SegmentOptions(mode="parallel").mode_for("pose.mp4")
    with pytest.raises(ValueError, match="segment mode 'fast'"):
        SegmentOptions(mode="fast")
    with pytest.raises(ValueError, match="QA report"):
        SegmentOptions(qa_report="qa.json", output_fps=25)


def test_plan_shot_carries_geometry_and_reads_old_run_directories(media):
    audio, image = media
    plan = plan_shot(audio, image, S, SegmentOptions(mode="parallel", target_seconds=2.0))
    assert (plan.height, plan.width) == (64, 64) and len(plan.segments) == 2
    assert type(plan).from_json(plan.to_json()) == plan
    # A run directory's plan.json written before plans carried geometry ("shot layout").
    legacy = {"height": 64, "width": 64, "plan_json": json.dumps({**plan.to_dict(), "version": 1,
                                                                 "height": None, "width": None}),
              "segments": [{"index": s.index, "start_frame": s.start_frame, "num_frames": s.num_frames,
                            "num_clips": s.num_clips} for s in plan.segments]}
    assert type(plan).from_dict(legacy) == plan


def test_a_failing_commit_fence_stops_before_writing_and_the_segment_resumes(tmp_path):
    """``before_commit`` (the cluster's lease check) runs before every clip file, state and the
    record: raising there leaves the folder exactly as after the previous commit."""
    from render.shot.plan import SegmentSpec, ShotPlan

    s = RenderSettings(size="64*64", steps=1, infer_frames=8, motion_frames=13)
    plan = ShotPlan("sequential", 16, 40, 40 / 16, (SegmentSpec(0, 0, 40, 0, 5),), infer_frames=8)
    shot = fake_shot(s)
    full = render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / "a")
    calls = []

    def fence():
        calls.append(len(calls))
        if len(calls) == 4:  # clip 0 file, clip 0 state, clip 1 file, then: lease lost
            raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / "b", before_commit=fence)
    seg = segment_dir(tmp_path / "b", 0)
    assert clip_file(seg, 1).is_file() and not clip_file(seg, 2).exists()
    assert torch.load(seg / STATE_FILE, weights_only=True)["next_clip"] == 1  # clip 1's state not written
    assert read_record(seg) is None
    d = render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / "b")
    assert segment_frames_digest(d) == segment_frames_digest(full)
    calls.clear()
    render_segment(FakeRenderer(s), shot, plan, 0, s, tmp_path / "c", before_commit=lambda: calls.append(1))
    assert len(calls) == 5 + 4 + 1  # 5 clip files, 4 states (not after the last clip), 1 record
