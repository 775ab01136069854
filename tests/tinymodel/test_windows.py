"""The DiT's training windows against the renderer's clip hand-off, and the long-chain metrics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from render.model.clip_loop import ChainRenderer, ChainState, ShotConditioning
from render.model.vae import load_vae
from render.settings import RenderSettings
from tinymodel.export import SHIPPED_DIR
from tinymodel.faces import motion_for_audio, random_character, reference_frame, render_character, to_uint8
from tinymodel.windows import (
    CLIP_FRAMES,
    HANDOFF_LEAD,
    MOTION_FRAMES,
    MOTION_LATENTS,
    clip_audio_frames,
    renderer_handoff_latents,
)

SIZE = 64  # the VAE is convolutional: 64 px keeps the test quick


class _GivenLatents(ChainRenderer):
    """The renderer with its denoising loop replaced: every clip 'samples' the given latents."""

    def __init__(self, *args, latents: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.latents, self.seen = latents, []

    def sample(self, shot, audio, pose, motion_latents, with_motion, segment, clip):
        self.seen.append((audio.clone(), None if motion_latents is None else motion_latents.clone()))
        return self.latents


@pytest.fixture(scope="module")
def video():
    vae = load_vae(SHIPPED_DIR / "Wan2.1_VAE.pth", device="cpu")
    assert vae.chunk_local
    rng = np.random.default_rng(5)
    ch = random_character(rng)
    frames_n = HANDOFF_LEAD + MOTION_FRAMES + CLIP_FRAMES + 4
    audio = np.abs(np.sin(np.arange(frames_n * 1000) / 900.0)).astype(np.float32) * 0.3
    mo = motion_for_audio(ch, audio, 16000, frames_n, rng)
    frames = render_character(ch, mo, SIZE, SIZE).permute(1, 0, 2, 3) * 2 - 1  # [3, T, H, W]
    return SimpleNamespace(vae=vae, frames=frames, ref=reference_frame(ch, SIZE, SIZE) * 2 - 1)


def _render_two_clips(video, start: int):
    """Clip 0 'samples' the ground truth's latents of frames start-7..start+72; returns the
    motion latents and audio the renderer gives clip 1, and the audio features used."""
    vae, frames = video.vae, video.frames
    prev = vae.encode(frames[:, start - HANDOFF_LEAD:start + MOTION_FRAMES])[:, 1:]
    feats = torch.arange(frames.shape[1], dtype=torch.float32).view(1, 1, 1, -1).expand(1, 25, 2, -1)
    shot_start = start - (CLIP_FRAMES - MOTION_FRAMES)  # the video frame clip 0 begins at
    shot = ShotConditioning(torch.zeros(4, 8), torch.zeros(4, 8), vae.encode(video.ref[:, None])[None], video.ref,
                            feats[..., shot_start:shot_start + 2 * CLIP_FRAMES], SIZE, SIZE)
    settings = RenderSettings(size=f"{SIZE}*{SIZE}", steps=1)
    renderer = _GivenLatents(None, vae, settings, "cpu", progress=False, latents=prev)
    _, state = renderer.render_clip(shot, ChainState(0, torch.zeros(3, settings.motion_frames, SIZE, SIZE)))
    renderer.render_clip(shot, state)
    audio, motion = renderer.seen[1]
    return motion[0], audio, feats


@torch.inference_mode()
def test_renderer_windows_equal_the_renderers_hand_off(video):
    """The training window's motion latents (--handoff renderer) are exactly what the renderer
    conditions the next clip on, and its audio is that clip's audio; shifting the window by a
    frame either way (an off-by-one in the recipe) breaks the equality."""
    start = 12
    motion, audio, feats = _render_two_clips(video, start)
    window = video.frames[:, start - HANDOFF_LEAD:start + MOTION_FRAMES]
    ours = renderer_handoff_latents(video.vae, window)
    assert ours.shape == motion.shape == (16, MOTION_LATENTS, SIZE // 8, SIZE // 8)
    assert torch.allclose(ours, motion, atol=1e-4), float((ours - motion).abs().max())
    for d in (-1, 1):
        shifted = renderer_handoff_latents(video.vae, video.frames[:, start + d - HANDOFF_LEAD:start + d + MOTION_FRAMES])
        assert (shifted - motion).abs().max() > 0.05
    assert torch.equal(audio, feats[..., clip_audio_frames(start)])


@torch.inference_mode()
def test_ground_truth_windows_differ_from_the_hand_off_by_a_vae_round_trip(video):
    """The original recipe (motion frames encoded from the ground truth) is not what the renderer
    hands on: it skips the decode. That gap is what --handoff renderer closes."""
    start = 12
    motion, _, _ = _render_two_clips(video, start)
    ground_truth = video.vae.encode(video.frames[:, start:start + MOTION_FRAMES])
    rel = float((ground_truth - motion).pow(2).mean().sqrt() / motion.std())
    assert rel > 0.05, rel


@torch.inference_mode()
def test_handoff_window_latents_of_the_training_data(video):
    """build_data's windows: 19 hand-off latents then the 20 latents of the clip after them."""
    from tinymodel.windows import handoff_window_latents, motion_window_starts

    start = 10
    win = video.frames[:, start - HANDOFF_LEAD:start + MOTION_FRAMES + CLIP_FRAMES][None]
    lat = handoff_window_latents(video.vae, win, 0.0, 0.0, torch.Generator().manual_seed(0))[0]
    assert lat.shape[1] == MOTION_LATENTS + CLIP_FRAMES // 4
    motion, _, _ = _render_two_clips(video, start)
    assert torch.allclose(lat[:, :MOTION_LATENTS], motion, atol=1e-4)
    clip = video.vae.encode(video.frames[:, start + MOTION_FRAMES - 1:start + MOTION_FRAMES + CLIP_FRAMES])[:, 1:]
    assert torch.allclose(lat[:, MOTION_LATENTS:], clip, atol=1e-4)
    # Perturbed hand-offs differ from the clean one, the clip latents do not.
    noisy = handoff_window_latents(video.vae, win, 0.5, 0.1, torch.Generator().manual_seed(0))[0]
    assert (noisy[:, :MOTION_LATENTS] - lat[:, :MOTION_LATENTS]).abs().mean() > 0.01
    assert torch.allclose(noisy[:, MOTION_LATENTS:], lat[:, MOTION_LATENTS:])
    starts = np.concatenate([motion_window_starts(np.random.default_rng(i), 241, "renderer") for i in range(50)])
    assert starts.min() >= HANDOFF_LEAD and starts.max() + MOTION_FRAMES + CLIP_FRAMES <= 241


def test_chain_metrics_tell_a_character_from_a_blur():
    """Ground-truth frames keep both eyes and the mouth with little colour drift and no seam;
    heavily blurred frames lose the eyes."""
    import torch.nn.functional as F

    from tinymodel.chain_eval import chain_metrics

    rng = np.random.default_rng(9_000_001)
    ch = random_character(rng)
    n = 2 * CLIP_FRAMES
    audio = (np.random.default_rng(0).normal(0, 0.1, n * 1000) * (np.arange(n * 1000) % 16000 < 9000)).astype(np.float32)
    mo = motion_for_audio(ch, audio, 16000, n, rng)
    frames = to_uint8(render_character(ch, mo, 128, 128))
    ref = to_uint8(reference_frame(ch)[None])[0]
    m = chain_metrics(frames, ref, ch, audio)
    assert min(min(v) for v in m["features_kept"].values()) >= 0.85, m["features_kept"]
    assert m["colour_drift_max"] < 3 and m["seams"]["boundary_max_over_p95"] < 1.5
    blurred = F.avg_pool2d(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), 9, 1, 4, count_include_pad=False)
    m = chain_metrics(blurred.permute(0, 2, 3, 1).round().byte().numpy(), ref, ch, audio)
    assert max(m["features_kept"]["left_eye"] + m["features_kept"]["right_eye"]) < 0.2
