"""Long-form countermeasures (render.model.handoff): each off is the official hand-off bit for bit,
each on does what it documents. Tiny random-weight model at 64x64, 1 step, short clips."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from render.model.clip_loop import ChainRenderer, ShotConditioning, initial_chain_state
from render.model.components import S2VModels
from render.model.handoff import (
    FAR_CONTEXT_LATENTS,
    anchor_colour,
    anchor_identity,
    lab_to_rgb,
    rgb_to_lab,
    still_reference_latents,
)
from render.settings import RenderSettings

S = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9, start_from_ref=True)
OFF = dict(motion_handoff="pixels", colour_anchor=0.0, identity_anchor=0.0)


class SampleRecorder(ChainRenderer):
    """The real chain renderer, remembering each clip's sampled latents and motion latents."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.sampled: list[torch.Tensor] = []
        self.motion_in: list[torch.Tensor | None] = []

    def sample(self, shot, audio, pose, motion_latents, with_motion, segment, clip):
        self.motion_in.append(None if motion_latents is None else motion_latents.clone())
        out = super().sample(shot, audio, pose, motion_latents, with_motion, segment, clip)
        self.sampled.append(out.clone())
        return out


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return S2VModels(tiny_ckpt, device="cpu")


@pytest.fixture(scope="module")
def shot(pipe) -> ShotConditioning:
    g = torch.Generator().manual_seed(5)
    ref = (torch.rand(3, 1, 1, generator=g) * 0.8 - 0.4) + 0.3 * torch.rand(3, 64, 64, generator=g)
    with torch.inference_mode():
        ref_lat = pipe.vae.encode(ref[:, None]).float()[None]
    ctx = torch.randn(4, pipe.dit.cfg.text_dim, generator=g)
    audio = torch.randn(1, 25, pipe.dit.cfg.audio_dim, 64, generator=g) * 0.1
    return ShotConditioning(ctx, -ctx, ref_lat, ref, audio, 64, 64)


def chain(pipe, shot, settings: RenderSettings, clips: int = 3) -> tuple[list[torch.Tensor], SampleRecorder, list]:
    r = SampleRecorder(pipe.dit, pipe.vae, settings, "cpu", progress=False)
    state = initial_chain_state(settings, shot)
    frames, states = [], []
    for _ in range(clips):
        video, state = r.render_clip(shot, state)
        frames.append(video)
        states.append(state)
    return frames, r, states


def test_defaults_are_off_and_off_is_the_official_lazy_pixel_handoff(pipe, shot):
    assert all(getattr(RenderSettings(), k) == v for k, v in OFF.items())
    frames, r, states = chain(pipe, shot, S)
    off_frames, _, _ = chain(pipe, shot, dataclasses.replace(S, **OFF))
    assert all(torch.equal(a, b) for a, b in zip(frames, off_frames))
    # Official: the state carries pixels only; the next clip's motion latents are a fresh encode
    # of the last motion_frames decoded frames, made when that clip needs them.
    assert states[-1].motion_latents is None  # nothing made eagerly after a clip
    for clip in (1, 2):
        with torch.inference_mode():
            fresh = pipe.vae.encode(states[clip - 1].motion_pixels)[None].float()
        assert torch.equal(r.motion_in[clip], fresh)


def test_latent_handoff_takes_the_sampled_latents_and_a_one_frame_image_latent(pipe, shot):
    s = dataclasses.replace(S, motion_handoff="latents")
    frames, r, states = chain(pipe, shot, s)
    k = s.motion_latent_frames - 1
    for clip in (1, 2):
        handed = r.motion_in[clip][0]
        assert torch.equal(handed[:, 1:], r.sampled[clip - 1][:, -k:])  # no decode -> encode round trip
        with torch.inference_mode():
            first = pipe.vae.encode(states[clip - 1].motion_pixels[:, :1]).float()
        assert torch.equal(handed[:, :1], first)
    # The first clip is the official one; later clips see other motion latents.
    official, _, _ = chain(pipe, shot, S, clips=2)
    assert torch.equal(frames[0], official[0]) and not torch.equal(frames[1], official[1])


@pytest.mark.parametrize("change", [dict(motion_handoff="latents"), dict(identity_anchor=0.5, motion_frames=25)])
def test_countermeasure_latents_are_made_when_the_next_clip_needs_them(pipe, shot, monkeypatch, change):
    encodes = []
    real = type(pipe.vae).encode
    monkeypatch.setattr(type(pipe.vae), "encode", lambda self, x: encodes.append(1) or real(self, x))
    clips = 3
    _, _, states = chain(pipe, shot, dataclasses.replace(S, **change), clips=clips)
    during = len(encodes)
    # Nothing was encoded for a clip 4 that the chain never renders ...
    assert states[-1].motion_latents is None and states[-1].pending is not None
    states[-1].ensure_motion_latents(pipe.vae)
    per_handoff = len(encodes) - during
    # ... and each hand-off inside the chain was made exactly once (+ clip 0's plain encode of
    # its start buffer: start_from_ref).
    assert per_handoff > 0 and during == 1 + (clips - 1) * per_handoff
    assert states[-1].pending is None and states[-1].motion_latents is not None


def test_latent_handoff_needs_clips_that_cover_the_motion_window():
    with pytest.raises(ValueError, match="motion_handoff"):
        RenderSettings(infer_frames=8, motion_frames=13, motion_handoff="latents")
    with pytest.raises(ValueError, match="motion_handoff"):
        RenderSettings(motion_handoff="bytes")
    with pytest.raises(ValueError, match="colour_anchor"):
        RenderSettings(colour_anchor=1.5)
    with pytest.raises(ValueError, match="identity_anchor"):
        RenderSettings(identity_anchor=-0.1)


def _lab_mean(frames: torch.Tensor) -> torch.Tensor:
    return rgb_to_lab((frames + 1) / 2).flatten(1).mean(1)


def test_lab_round_trip():
    rgb = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb.double(), atol=1e-6)


def test_colour_anchor_removes_an_injected_colour_offset():
    g = torch.Generator().manual_seed(2)
    ref = torch.rand(3, 32, 32, generator=g) * 0.8 - 0.4
    frames = (ref[:, None] + torch.tensor([0.25, -0.1, -0.2])[:, None, None, None]
              + 0.02 * torch.randn(3, 6, 32, 32, generator=g)).clamp(-1, 1)
    before = float((_lab_mean(frames) - _lab_mean(ref[:, None])).norm())
    half = float((_lab_mean(anchor_colour(frames, ref, 0.5)) - _lab_mean(ref[:, None])).norm())
    full = float((_lab_mean(anchor_colour(frames, ref, 1.0)) - _lab_mean(ref[:, None])).norm())
    assert before > 10 and full < 0.5 and 0.35 * before < half < 0.65 * before
    assert anchor_colour(frames, ref, 0.0) is frames
    # Chunking the passes over the frames changes nothing.
    assert torch.allclose(anchor_colour(frames, ref, 0.7, chunk_frames=4), anchor_colour(frames, ref, 0.7, 100),
                          atol=1e-6)


def test_colour_anchor_in_the_chain_holds_each_clip_at_the_reference_colour(pipe, shot):
    frames, _, states = chain(pipe, shot, dataclasses.replace(S, colour_anchor=1.0))
    official, _, _ = chain(pipe, shot, S)
    ref_lab = _lab_mean(shot.ref_pixels[:, None])
    anchored = [float((_lab_mean(f) - ref_lab).norm()) for f in frames]
    drift = [float((_lab_mean(f) - ref_lab).norm()) for f in official]
    assert max(anchored) < 1.0 < min(drift)
    # The corrected frames are what the next clip continues from.
    assert torch.equal(states[0].motion_pixels, frames[0][:, -S.motion_frames:])


def test_identity_anchor_blends_only_the_far_context_toward_a_still_reference(pipe, shot):
    z = torch.randn(16, 19, 8, 8)
    with torch.inference_mode():
        still = still_reference_latents(pipe.vae, shot.ref_pixels, 19)
    assert torch.equal(anchor_identity(z, still, 0.0), z)
    full = anchor_identity(z, still, 1.0)
    assert torch.equal(full[:, :FAR_CONTEXT_LATENTS], still[:, :FAR_CONTEXT_LATENTS])
    assert torch.equal(full[:, FAR_CONTEXT_LATENTS:], z[:, FAR_CONTEXT_LATENTS:])
    # The first latent of a still window is the reference's own image latent.
    assert torch.allclose(still[:, 0], shot.ref_latents[0, :, 0], atol=1e-5)


@pytest.mark.parametrize("m, far", [(19, (0, 16)), (9, (0, 6)), (25, (6, 22)), (3, (0, 0))])
def test_identity_anchor_blends_what_the_far_framepack_group_sees(m, far):
    """Other motion lengths than the release's 19 latents: the DiT sees the last 19 (zeros in front
    when fewer), the oldest 16 of them in its 4x group; only those are blended."""
    z, still = torch.randn(16, m, 4, 4), torch.randn(16, m, 4, 4)
    full = anchor_identity(z, still, 1.0)
    lo, hi = far
    assert torch.equal(full[:, lo:hi], still[:, lo:hi])
    assert torch.equal(full[:, :lo], z[:, :lo]) and torch.equal(full[:, hi:], z[:, hi:])


def test_identity_anchor_in_the_chain_moves_the_handed_latents_toward_the_reference(pipe, shot):
    # 25 motion frames = 7 latents, the oldest 4 of them in the DiT's far FramePack group (with the
    # suite's usual 9 frames = 3 latents all are newer, and the anchor leaves them alone)
    s = dataclasses.replace(S, identity_anchor=0.5, motion_frames=25)
    _, r, states = chain(pipe, shot, s, clips=2)
    with torch.inference_mode():
        still = still_reference_latents(pipe.vae, shot.ref_pixels, s.motion_latent_frames)
        fresh = pipe.vae.encode(states[0].motion_pixels).float()
    assert torch.allclose(r.motion_in[1][0], anchor_identity(fresh, still, 0.5), atol=1e-6)
    assert not torch.allclose(r.motion_in[1][0], fresh, atol=1e-3)


class FrameRecorder(ChainRenderer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.frames: list[torch.Tensor] = []

    def render_clip(self, shot, state, segment=0, audio_offset=None):
        video, nxt = super().render_clip(shot, state, segment, audio_offset)
        self.frames.append(video)
        return video, nxt


def test_a_segment_resumed_after_a_crash_continues_the_countermeasures_identically(pipe, shot, tmp_path):
    from render.shot.plan import SegmentSpec, ShotPlan
    from render.shot.segment import render_segment

    s = dataclasses.replace(S, motion_handoff="latents", colour_anchor=1.0, identity_anchor=0.5)
    plan = ShotPlan("sequential", s.fps, 48, 3.0, (SegmentSpec(0, 0, 48, 0, 3),), infer_frames=s.infer_frames)
    whole = FrameRecorder(pipe.dit, pipe.vae, s, "cpu", progress=False)
    render_segment(whole, shot, plan, 0, s, tmp_path / "whole")

    class Crash(Exception):
        pass

    def crash_after_first(seg, clip, clips):
        if clip == 0:
            raise Crash

    with pytest.raises(Crash):
        render_segment(FrameRecorder(pipe.dit, pipe.vae, s, "cpu", progress=False), shot, plan, 0, s,
                       tmp_path / "half", on_clip=crash_after_first)
    resumed = FrameRecorder(pipe.dit, pipe.vae, s, "cpu", progress=False)
    render_segment(resumed, shot, plan, 0, s, tmp_path / "half")
    assert len(resumed.frames) == 2  # clips 1 and 2, from the persisted (countermeasured) state
    assert all(torch.equal(a, b) for a, b in zip(whole.frames[1:], resumed.frames))
