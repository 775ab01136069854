"""Training windows of the tiny DiT made the way the renderer hands a clip to the next one.

At render time (``render.model.clip_loop.ChainRenderer.render_clip``) clip c+1 is conditioned on
the last 73 *decoded* frames of clip c, re-encoded by the VAE. Clip c's 80 frames come from its
20 sampled latents of 4 frames each, so the 73 handed frames are frames 7..79 of clip c: the
first of them is the last frame of a 4-frame chunk, the other 72 are 18 whole chunks, aligned
with the 4-frame chunks of the re-encoded motion latents (latent 0 holds one frame, latent k
frames 4k-3..4k).

The original recipe encoded the motion frames straight from the generator's ground truth: the
DiT never saw decoded (blurred, colour-shifted) motion frames, let alone its own sampling errors,
and at render time each clip's small errors are handed on and grow (exposure bias). Here a
window starting at video frame s (motion frames s..s+72, clip s+73..s+152) gets its motion
latents through the same path as the renderer's: the 80 frames s-7..s+72 are encoded as a clip
(20 latents), optionally perturbed like a sampler's output, decoded, and their last 73 frames
re-encoded. With a chunk-local VAE this equals the renderer's hand-off exactly when the clip
latents are the ground truth's (tests/tinymodel/test_windows.py checks it against the renderer).
"""

from __future__ import annotations

import numpy as np
import torch

from render.model.vae.wrapper import WanVAE

MOTION_FRAMES, MOTION_LATENTS, CLIP_FRAMES, CLIP_LATENTS = 73, 19, 80, 20
# Frames before a window's motion frames that a hand-off needs: the previous clip starts 7 frames
# earlier, plus the single-frame first chunk of the encode that keeps the 4-frame chunks aligned.
HANDOFF_LEAD = CLIP_FRAMES - MOTION_FRAMES + 1  # 8


def clip_audio_frames(motion_start: int) -> slice:
    """Video frames of the audio that conditions a window whose motion frames start at
    ``motion_start``: those of the clip after the motion frames (the renderer gives clip c the
    audio of its own 80 frames)."""
    return slice(motion_start + MOTION_FRAMES, motion_start + MOTION_FRAMES + CLIP_FRAMES)


def renderer_handoff_latents(vae: WanVAE, frames: torch.Tensor, latent_noise: torch.Tensor | float = 0.0,
                             colour: torch.Tensor | None = None,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """Motion latents [.., 16, 19, h, w] as the renderer hands them on, from the 81 frames
    [.., 3, 81, H, W] that end with a window's last motion frame (frames s-8..s+72).

    latent_noise: std (per window [B] or one number) of Gaussian noise added to the previous
    clip's normalised latents before decoding - a stand-in for the sampler's errors.
    colour: [B, 3, 2] per-window (gain, offset) per RGB channel applied to the decoded pixels - a
    stand-in for the colour drift a chain hands on.
    """
    batched = frames.dim() == 5
    x = frames if batched else frames[None]
    if x.shape[2] != HANDOFF_LEAD + MOTION_FRAMES:
        raise ValueError(f"expected {HANDOFF_LEAD + MOTION_FRAMES} frames (a window's motion frames and the "
                         f"{HANDOFF_LEAD} before them), got {x.shape[2]}")
    z = vae.encode(x)  # [B, 16, 21, h, w]: latent 0 = frame s-8 alone, 1..20 = the previous clip's chunks
    clip = z[:, :, 1:]
    noise = torch.as_tensor(latent_noise, dtype=clip.dtype, device=clip.device)
    if noise.numel() > 1 or float(noise.max()) > 0:
        eps = torch.randn(clip.shape, generator=generator, device=clip.device, dtype=clip.dtype)
        clip = clip + noise.reshape(-1, 1, 1, 1, 1) * eps
    # The renderer decodes a clip after one context latent and keeps the last 80 frames; with a
    # chunk-local VAE the context changes none of them.
    video = vae.decode(torch.cat([z[:, :, :1], clip], dim=2))[:, :, -CLIP_FRAMES:]
    handed = video[:, :, -MOTION_FRAMES:]
    if colour is not None:
        gain, offset = colour[..., 0], colour[..., 1]
        handed = (handed * gain.view(-1, 3, 1, 1, 1) + offset.view(-1, 3, 1, 1, 1)).clamp(-1, 1)
    out = vae.encode(handed)
    return out if batched else out[0]


def random_handoff_perturbation(batch: int, latent_noise: float, colour: float, generator: torch.Generator,
                                device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-window noise std in [0, latent_noise) and, if ``colour`` > 0, per-channel colour
    (gain in 1 +- colour, offset in +- colour, in [-1, 1] pixel units)."""
    noise = torch.rand(batch, generator=generator, device=device) * latent_noise
    if colour <= 0:
        return noise, None
    jitter = (torch.rand(batch, 3, 2, generator=generator, device=device) * 2 - 1) * colour
    jitter[..., 0] += 1
    return noise, jitter


def motion_window_starts(rng: np.random.Generator, video_frames: int, handoff: str) -> np.ndarray:
    """Video frames where a generated video's 3 motion windows start (their motion frames).
    ``renderer`` hand-offs need HANDOFF_LEAD frames before that (the previous clip)."""
    last = video_frames - MOTION_FRAMES - CLIP_FRAMES + 1
    if handoff == "renderer":
        return HANDOFF_LEAD + rng.choice(last - HANDOFF_LEAD, 3, replace=False)
    return rng.choice(last, 3, replace=False)


def handoff_window_latents(vae: WanVAE, windows: torch.Tensor, latent_noise: float, colour: float,
                           generator: torch.Generator) -> torch.Tensor:
    """[B, 16, 39, h, w] training latents of windows [B, 3, 8 + 153, H, W]: 19 motion latents as
    the renderer hands them on (the previous clip decoded, perturbed by up to ``latent_noise`` /
    ``colour``, re-encoded) and the 20 latents of the clip that follows them."""
    target = vae.encode(windows[:, :, HANDOFF_LEAD + MOTION_FRAMES - 1:])[:, :, 1:]  # 1 + 80 frames -> 20
    noise, jitter = random_handoff_perturbation(len(windows), latent_noise, colour, generator, windows.device)
    motion = renderer_handoff_latents(vae, windows[:, :, :HANDOFF_LEAD + MOTION_FRAMES], noise, jitter, generator)
    return torch.cat([motion, target], dim=2)
