"""Long-form countermeasures for the motion hand-off between the clips of a chain (all opt-in).

A long chain drifts because every clip is conditioned on the previous clip's output: errors
compound. Three settings (``render.settings.RenderSettings``) act on what a clip hands to the
next one; each is off by default, and off leaves the official hand-off bit for bit unchanged.

``motion_handoff="latents"`` - no lossy pixel round trip. Officially the next clip's motion
latents are a fresh VAE encode of the last ``motion_frames`` (1 + 4k) decoded frames. A fresh
causal encode splits those frames into one image latent (the first frame alone) and k latents of
4 frames each; the last k latents of the sampled clip cover exactly the same 4-frame groups. So
the hand-off takes the image latent from a one-frame encode and the other k straight from the
sampled latents, skipping decode -> clamp -> encode for them. For a chunk-local VAE (no past
temporal taps: a latent depends on its own 4 frames only) this is what a perfect round trip
would give; for a VAE with temporal taps a fresh encode sees only the window's frames as past
while the sampled latents were made in the stream of the whole chain, so it is an approximation.

``colour_anchor=s`` - each clip's frames get their per-channel CIE Lab mean and standard
deviation moved a fraction ``s`` toward the reference image's, one transform for the whole clip
(no flicker inside a clip). The corrected frames are the output and the motion buffer, so colour
drift cannot accumulate through the chain. With ``motion_handoff="latents"`` too, the sampled
latents carry the uncorrected colours: the latent difference the correction makes (an encode of
the window with and without it) is added to them.

``identity_anchor=w`` - the oldest motion latents (the ones the DiT sees 4x compressed, the far
context) are blended a fraction ``w`` toward the latents of the still reference picture. The
newest latents, which carry the motion the next clip continues, are left alone.
"""

from __future__ import annotations

import torch

from render.model.dit.model import FRAMEPACK_BUCKETS
from render.model.vae import WanVAE
from render.model.vae.model import FRAMES_PER_LATENT
from render.settings import RenderSettings

# Motion latents the identity anchor blends: the oldest FramePack group (4x compressed).
FAR_CONTEXT_LATENTS = FRAMEPACK_BUCKETS[-1]


def changes_motion_latents(settings: RenderSettings) -> bool:
    """Whether a countermeasure makes the next clip's motion latents (:func:`next_motion_latents`)
    instead of the official plain encode of the motion pixels."""
    return settings.motion_handoff != "pixels" or settings.identity_anchor > 0


# --- colour ---------------------------------------------------------------------------------------

_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_DELTA = 6.0 / 29.0


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels first [3, ...] -> CIE Lab [3, ...] (float64)."""
    c = rgb.double().clamp(0, 1)
    lin = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,j...->i...", _RGB_TO_XYZ, lin) / _WHITE_D65.view(3, *[1] * (c.dim() - 1))
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab [3, ...] -> sRGB [3, ...] in [0, 1] (float64, clipped to the gamut)."""
    fy = (lab[0] + 16) / 116
    f = torch.stack([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29)) * _WHITE_D65.view(3, *[1] * (f.dim() - 1))
    lin = torch.einsum("ij,j...->i...", torch.linalg.inv(_RGB_TO_XYZ), xyz).clamp(0, 1)
    return torch.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)


def anchor_colour(frames: torch.Tensor, ref_pixels: torch.Tensor, strength: float,
                  chunk_frames: int = 8) -> torch.Tensor:
    """``frames`` [3, T, H, W] in [-1, 1] with their per-channel Lab mean/std moved ``strength``
    (0..1) of the way to those of ``ref_pixels`` [3, H, W] in [-1, 1]; same shape and dtype.

    Two passes over ``chunk_frames`` frames at a time (statistics, then the transform), so a
    480p clip never has more than a few frames in float64 Lab at once."""
    if strength <= 0:
        return frames
    count, total, squares = 0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for i in range(0, frames.shape[1], chunk_frames):
        lab = rgb_to_lab((frames[:, i:i + chunk_frames] + 1) / 2).flatten(1)
        count, total, squares = count + lab.shape[1], total + lab.sum(1), squares + (lab * lab).sum(1)
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    ref = rgb_to_lab((ref_pixels + 1) / 2).flatten(1)
    ref_mean, ref_std = ref.mean(1), ref.std(1).clamp_min(1e-3)
    scale = (std + strength * (ref_std - std)) / std
    new_mean = mean + strength * (ref_mean - mean)
    out = torch.empty_like(frames)
    shape = (3, 1, 1, 1)
    for i in range(0, frames.shape[1], chunk_frames):
        lab = rgb_to_lab((frames[:, i:i + chunk_frames] + 1) / 2)
        moved = (lab - mean.view(shape)) * scale.view(shape) + new_mean.view(shape)
        out[:, i:i + chunk_frames] = (lab_to_rgb(moved) * 2 - 1).to(frames.dtype)
    return out


# --- motion latents -------------------------------------------------------------------------------


def _encode(vae: WanVAE, frames: torch.Tensor) -> torch.Tensor:
    """Latents [16, 1 + k, h, w] (float32, CPU) of pixel frames [3, 1 + 4k, H, W] - exactly how
    ``ChainState.ensure_motion_latents`` encodes the motion buffer."""
    return vae.encode(frames.to(vae.device, vae.dtype)).float().cpu()


def latents_from_sampled(vae: WanVAE, sampled: torch.Tensor, motion_pixels: torch.Tensor,
                         uncorrected_tail: torch.Tensor | None = None) -> torch.Tensor:
    """Motion latents [16, 1 + k, h, w] for ``motion_pixels`` [3, 1 + 4k, H, W] whose last 4k
    frames are the decoded frames of ``sampled``'s last k latents: the first (image) latent from a
    one-frame encode, the other k from ``sampled``.

    ``uncorrected_tail``: when the buffer's last 4k frames were colour-corrected after decoding,
    these frames as decoded; the latent difference the correction makes is added (the sampled
    latents carry the uncorrected colours).
    """
    k = (motion_pixels.shape[1] - 1) // FRAMES_PER_LATENT
    if sampled.shape[1] < k:
        raise ValueError(f"latent hand-off: the clip has {sampled.shape[1]} latents, the motion window needs {k}")
    first = _encode(vae, motion_pixels[:, :1])
    tail = sampled[:, sampled.shape[1] - k:].float().cpu()
    if uncorrected_tail is not None:
        lead = motion_pixels[:, :1]
        corrected = _encode(vae, motion_pixels)[:, 1:]
        as_decoded = _encode(vae, torch.cat([lead, uncorrected_tail[:, -FRAMES_PER_LATENT * k:]], dim=1))[:, 1:]
        tail = tail + (corrected - as_decoded)
    return torch.cat([first, tail], dim=1)


def still_reference_latents(vae: WanVAE, ref_pixels: torch.Tensor, count: int) -> torch.Tensor:
    """Latents [16, count, h, w] of a motion window in which the reference picture stands still:
    the image latent first, then the latent of 4 identical reference frames."""
    still = _encode(vae, ref_pixels[:, None].expand(-1, 1 + FRAMES_PER_LATENT, -1, -1))
    return torch.cat([still[:, :1], still[:, 1:].expand(-1, count - 1, -1, -1)], dim=1)[:, :count]


def far_context_slice(m: int) -> slice:
    """The positions among ``m`` motion latents that the DiT's 4x-compressed FramePack group sees:
    it takes the last ``sum(FRAMEPACK_BUCKETS)`` (zeros in front when fewer) and the oldest
    ``FAR_CONTEXT_LATENTS`` of those; the newer ones drive the motion and latents before the window
    are never seen."""
    newer = sum(FRAMEPACK_BUCKETS) - FAR_CONTEXT_LATENTS
    return slice(max(0, m - sum(FRAMEPACK_BUCKETS)), max(0, m - newer))


def anchor_identity(motion_latents: torch.Tensor, still_ref: torch.Tensor, weight: float) -> torch.Tensor:
    """``motion_latents`` [16, M, h, w] with the latents of the far FramePack group
    (:func:`far_context_slice`) blended ``weight`` toward ``still_ref`` (the same positions of a
    still reference window)."""
    far = far_context_slice(motion_latents.shape[1])
    out = motion_latents.clone()
    out[:, far] = torch.lerp(motion_latents[:, far], still_ref[:, far].to(motion_latents), weight)
    return out


def next_motion_latents(vae: WanVAE, settings: RenderSettings, sampled: torch.Tensor | None,
                        motion_pixels: torch.Tensor, ref_pixels: torch.Tensor,
                        uncorrected_tail: torch.Tensor | None) -> torch.Tensor:
    """The motion latents [1, 16, M, h, w] (float32, CPU) the next clip is conditioned on, with the
    countermeasures of ``settings`` applied (only called when ``changes_motion_latents``).
    ``sampled``: the clip's sampled latents (at least the last M - 1), for the latent hand-off."""
    if settings.motion_handoff == "latents":
        assert sampled is not None, "the latent hand-off needs the sampled latents"
        z = latents_from_sampled(vae, sampled, motion_pixels, uncorrected_tail)
    else:
        z = _encode(vae, motion_pixels)
    if settings.identity_anchor > 0:
        z = anchor_identity(z, still_reference_latents(vae, ref_pixels, z.shape[1]), settings.identity_anchor)
    return z[None]
