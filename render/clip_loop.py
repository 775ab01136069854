"""The chain of clips: sampling with CFG, decode, and the motion hand-off (SPEC §3.6–3.7).

A *chain* is a run of consecutive clips in which each clip is conditioned on the last
``motion_frames`` decoded pixel frames of the one before. Everything a chain needs to continue
after a clip is in :class:`ChainState`, so a segment can be persisted after any finished clip and
resumed later with identical results.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .config import RenderSettings
from .dit import S2VDiT
from .samplers import make_sampler
from .vae import WanVAE

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, int], None]  # (clip index, step index, steps)


@dataclass
class ShotConditioning:
    """Per-shot inputs shared by all clips (kept on the CPU between clips)."""

    prompt_context: torch.Tensor  # [L, text_dim] unpadded T5 output of the prompt
    negative_context: torch.Tensor  # [L', text_dim] of the negative prompt
    ref_latents: torch.Tensor  # [1, 16, 1, h, w]
    ref_pixels: torch.Tensor  # [3, H, W] in [-1, 1] (used by start_from_ref)
    audio_frames: torch.Tensor  # [1, 25, C, V] bucketed wav2vec features, one per video frame
    height: int
    width: int
    pose_latents: torch.Tensor | None = None  # [1, 16, clips * F, h, w] or None (zeros)
    # Shot video frame that audio_frames[..., 0] belongs to: 0 for a whole shot, the start of
    # its audio window for a segment of a long shot (its features cover only that window).
    audio_start_frame: int = 0

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8


@dataclass
class ChainState:
    """What the next clip of a chain needs: its index and the motion pixel buffer."""

    next_clip: int
    motion_pixels: torch.Tensor  # [3, motion_frames, H, W] float32 in [-1, 1], CPU
    # VAE encoding of motion_pixels, filled lazily (the next clip needs it; persisting a small
    # latent instead of 73 float frames keeps segment checkpoints small).
    motion_latents: torch.Tensor | None = None

    def ensure_motion_latents(self, vae: WanVAE) -> torch.Tensor:
        if self.motion_latents is None:
            pix = self.motion_pixels.to(vae.device, vae.dtype)
            self.motion_latents = vae.encode(pix)[None].float().cpu()
        return self.motion_latents


def clip_seed(seed: int, segment: int, clip: int) -> int:
    """Seed of a clip's initial noise: the official ``seed + clip`` for the first segment, a
    hash of (seed, segment, clip) for later segments (so segments never share noise)."""
    if segment == 0:
        return (seed + clip) % 2**64
    digest = hashlib.sha256(f"s2v-noise:{seed}:{segment}:{clip}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def clip_noise(settings: RenderSettings, shape: tuple[int, ...], segment: int, clip: int,
               device: torch.device) -> torch.Tensor:
    """The clip's initial noise, drawn whole (never per shard) so every degree of parallelism
    and every platform sees the same tensor."""
    seed = clip_seed(settings.seed, segment, clip)
    if settings.noise == "official-cuda":
        if device.type != "cuda":
            raise ValueError("noise='official-cuda' needs a CUDA device")
        g = torch.Generator(device=device).manual_seed(seed)
        return torch.randn(shape, dtype=torch.bfloat16, device=device, generator=g).float()
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.float32, generator=g).to(device)


def initial_chain_state(settings: RenderSettings, shot: ShotConditioning, first_clip: int = 0) -> ChainState:
    """Start of a chain: a mid-grey (zero) motion buffer; with start_from_ref its last 6 frames
    are the reference image (official)."""
    buf = torch.zeros(3, settings.motion_frames, shot.height, shot.width)
    if settings.start_from_ref:
        buf[:, -6:] = shot.ref_pixels[:, None]
    return ChainState(first_clip, buf)


class ChainRenderer:
    """Renders the clips of a chain on one device with a loaded DiT and VAE."""

    def __init__(self, dit: S2VDiT, vae: WanVAE, settings: RenderSettings, device: torch.device | str,
                 on_step: StepCallback | None = None, progress: bool = True):
        settings.validate()
        self.dit, self.vae, self.s = dit, vae, settings
        self.device = torch.device(device)
        self.on_step = on_step
        self.progress = progress

    def clip_uses_motion(self, clip: int, segment: int = 0) -> bool:
        # The official pipeline drops motion tokens for the very first clip of a shot. The first
        # clip of a later segment has no previous clip either: it is conditioned the same way
        # (reference only) and the stitcher blends the join (render/seams.py).
        return not (clip == 0 and not self.s.start_from_ref)

    def frames_kept(self, clip: int, segment: int = 0) -> int:
        if self.s.official_frame_drop and segment == 0 and not self.clip_uses_motion(clip, segment):
            return self.s.infer_frames - 3
        return self.s.infer_frames

    @torch.inference_mode()
    def render_clip(self, shot: ShotConditioning, state: ChainState, segment: int = 0,
                    audio_offset: int | None = None) -> tuple[torch.Tensor, ChainState]:
        """Render clip ``state.next_clip``; returns (frames [3, n, H, W] float32 CPU, next state).

        audio_offset: first video frame of this clip in ``shot.audio_frames`` (default: clip *
        infer_frames, i.e. a chain that starts at the beginning of the shot's audio).
        """
        s, dev = self.s, self.device
        clip = state.next_clip
        h, w = shot.latent_hw
        f = s.latent_frames
        start = (clip * s.infer_frames if audio_offset is None else audio_offset) - shot.audio_start_frame
        if start < 0:
            raise ValueError(f"clip audio starts at shot frame {start + shot.audio_start_frame}, before this "
                             f"conditioning's audio window (starts at frame {shot.audio_start_frame})")
        audio = shot.audio_frames[..., start: start + s.infer_frames]
        if audio.shape[-1] < s.infer_frames:  # past the end of the audio: silence, as official
            audio = torch.cat([audio, audio.new_zeros(*audio.shape[:-1], s.infer_frames - audio.shape[-1])], -1)
        pose = None
        if shot.pose_latents is not None:
            pose = shot.pose_latents[:, :, clip * f:(clip + 1) * f]
        with_motion = self.clip_uses_motion(clip, segment)
        motion_latents = None
        if with_motion:
            motion_latents = state.ensure_motion_latents(self.vae).to(dev)

        latents = self.sample(shot, audio, pose, motion_latents, with_motion, segment, clip)

        if with_motion:
            # The official decode re-runs all motion latents only to warm the causal decoder's
            # caches before the new latents; decode_context_latents=k warms with the last k only
            # (output-changing option; None keeps the official full context).
            k = s.decode_context_latents
            context = motion_latents[0] if k is None else motion_latents[0][:, -k:]
            video = self.vae.decode(torch.cat([context, latents], dim=1).to(self.vae.dtype))
        else:
            video = self.vae.decode(torch.cat([shot.ref_latents[0].to(dev), latents], dim=1).to(self.vae.dtype))
        video = video[:, -s.infer_frames:].float().cpu()
        keep = self.frames_kept(clip, segment)
        video = video[:, -keep:]
        buf = torch.cat([state.motion_pixels, video], dim=1)[:, -s.motion_frames:]
        return video, ChainState(clip + 1, buf.contiguous())

    def sample(self, shot: ShotConditioning, audio: torch.Tensor, pose: torch.Tensor | None,
               motion_latents: torch.Tensor | None, with_motion: bool, segment: int, clip: int) -> torch.Tensor:
        s, dev, dit = self.s, self.device, self.dit
        h, w = shot.latent_hw
        shape = (dit.cfg.in_dim, s.latent_frames, h, w)
        latents = clip_noise(s, shape, segment, clip, dev)
        guided = s.guidance > 1.0
        common = dict(motion_frames=(s.motion_frames, s.motion_latent_frames), drop_motion_frames=not with_motion)

        def prep(contexts, audios):
            b = len(contexts)
            return dit.prepare(
                shape, [c.to(dev) for c in contexts], shot.ref_latents.to(dev).expand(b, -1, -1, -1, -1),
                None if motion_latents is None else motion_latents.expand(b, -1, -1, -1, -1),
                None if pose is None else pose.to(dev).expand(b, -1, -1, -1, -1),
                torch.cat(audios).to(dev), cache_context_kv=True, **common,
            )

        audio = audio.to(dev)
        if guided and s.cfg_batch:
            conds = [prep([shot.prompt_context, shot.negative_context], [audio, 0.0 * audio])]
        elif guided:
            conds = [prep([shot.prompt_context], [audio]), prep([shot.negative_context], [0.0 * audio])]
        else:
            conds = [prep([shot.prompt_context], [audio])]

        sampler = make_sampler(s.sampler, steps=s.steps, shift=s.shift)
        steps = tqdm(range(s.steps), desc=f"clip {clip}", leave=False, disable=not self.progress)
        for i in steps:
            t = sampler.timesteps[i].to(dev)
            if guided and s.cfg_batch:
                out = dit.denoise(latents[None].expand(2, -1, -1, -1, -1), t, conds[0])
                cond_v, uncond_v = out[0], out[1]
            elif guided:
                cond_v, uncond_v = dit.denoise(latents, t, conds[0]), dit.denoise(latents, t, conds[1])
            if guided:
                pred = uncond_v + s.guidance * (cond_v - uncond_v)
            else:
                pred = dit.denoise(latents, t, conds[0])
            latents = sampler.step(pred, i, latents)
            if self.on_step is not None:
                self.on_step(clip, i, s.steps)
        return latents
