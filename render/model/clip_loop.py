"""The chain of clips: sampling with CFG, decode, and the motion hand-off.

A *chain* is a run of consecutive clips in which each clip is conditioned on the last
``motion_frames`` decoded pixel frames of the one before. Everything a chain needs to continue
after a clip is in :class:`ChainState`, so a segment can be persisted after any finished clip and
resumed later with identical results.

Render groups (several ranks running one sequence-parallel DiT) pass a :class:`ChainSync`: one
rank, the writer, runs the VAE (decode, motion re-encode) and produces the frames; the others
only sample, and receive the motion latents from the writer when a clip needs them. This module
stays single-device code: the hook's implementation (collectives over a process group) is
``parallel.chain_sync.GroupChainSync``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, runtime_checkable

import torch
from tqdm import tqdm

from render.model.dit import S2VDiT
from render.model.fast import (
    GuidanceSchedule,
    condition_rows,
    make_step_cache,
    reuse_guidance,
    sampling_stats,
)
from render.model.handoff import anchor_colour, changes_motion_latents, next_motion_latents
from render.model.samplers import make_sampler
from render.model.vae import WanVAE
from render.settings import RenderSettings

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, int], None]  # (clip index, step index, steps)


@runtime_checkable
class ChainSync(Protocol):
    """How the ranks of a render group share the work that only one of them does.

    ``is_writer``: this rank runs the VAE, reads inputs and writes files; exactly one rank of a
    group is the writer. Every rank must make the same calls in the same order (they are
    collectives).
    """

    is_writer: bool

    def share(self, t: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """The writer's ``t`` (exactly ``shape`` and ``dtype``) on every rank, as a CPU tensor;
        the other ranks pass None."""
        ...

    def agree(self, t: torch.Tensor, what: str) -> None:
        """Return only if every rank passed an identical ``t``; raise naming the ranks that differ."""
        ...


# dtypes a shared tensor may have; its header carries the index into this tuple.
_SHARE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                 torch.int16, torch.int8, torch.uint8, torch.bool)
_SHARE_MAX_DIMS = 8


def share_tensor(sync: ChainSync, t: torch.Tensor | None) -> torch.Tensor | None:
    """The writer's ``t`` (any shape and dtype of ``_SHARE_DTYPES``, or None) on every rank (CPU).

    The other ranks do not know the shape in advance: a fixed-size header (present, dtype,
    ndim, sizes) goes first, then the bytes. Non-writers' ``t`` is ignored.
    """
    header = None
    if sync.is_writer:
        header = torch.zeros(3 + _SHARE_MAX_DIMS, dtype=torch.int64)
        if t is not None:
            if t.dim() > _SHARE_MAX_DIMS or t.dtype not in _SHARE_DTYPES:
                raise ValueError(f"cannot share a {t.dtype} tensor of {t.dim()} dims")
            header[:3] = torch.tensor([1, _SHARE_DTYPES.index(t.dtype), t.dim()])
            header[3:3 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    header = sync.share(header, (3 + _SHARE_MAX_DIMS,), torch.int64)
    present, code, ndim = (int(v) for v in header[:3])
    if not present:
        return None
    shape = tuple(int(v) for v in header[3:3 + ndim])
    dtype = _SHARE_DTYPES[code]
    nbytes = math.prod(shape) * dtype.itemsize
    if sync.is_writer:
        if nbytes:  # bytes travel as uint8: every backend supports it, bfloat16 included
            sync.share(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8), (nbytes,), torch.uint8)
        return t
    if not nbytes:
        return torch.empty(shape, dtype=dtype)
    return sync.share(None, (nbytes,), torch.uint8).view(dtype).reshape(shape)


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


_CONDITIONING_TENSORS = ("prompt_context", "negative_context", "ref_latents", "ref_pixels", "audio_frames",
                         "pose_latents")


def share_conditioning(sync: ChainSync, shot: ShotConditioning | None) -> ShotConditioning:
    """The writer's conditioning on every rank (the others pass None).

    Everything is made once, by the writer, and broadcast: the reference latent and pose
    latents need the VAE, the prompt embeddings the text encoder (or a file), the audio
    features wav2vec2 (or a file). A broadcast of these is tens of MB once per segment, and it
    keeps ranks > 0 free of the VAE, the encoders and every input file; nothing is recomputed
    per rank.
    """
    w = sync.is_writer
    ints = share_tensor(sync, torch.tensor([shot.height, shot.width, shot.audio_start_frame]) if w else None)
    got = {name: share_tensor(sync, getattr(shot, name) if w else None) for name in _CONDITIONING_TENSORS}
    if w:
        return shot
    height, width, audio_start = (int(v) for v in ints)
    return ShotConditioning(**got, height=height, width=width, audio_start_frame=audio_start)


@dataclass
class ChainState:
    """What the next clip of a chain needs: its index and the motion pixel buffer."""

    next_clip: int
    # [3, motion_frames, H, W] float32 in [-1, 1], CPU. None on the non-writer ranks of a render
    # group: they never decode, and get the motion latents from the writer (ChainSync).
    motion_pixels: torch.Tensor | None
    # VAE encoding of motion_pixels, filled lazily (the next clip needs it; persisting a small
    # latent instead of 73 float frames keeps segment checkpoints small).
    motion_latents: torch.Tensor | None = None
    # Makes motion_latents where a long-form countermeasure changes them (render.model.handoff);
    # called on first use like the plain encode, so a chain's last clip costs no VAE work.
    pending: Callable[[], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def ensure_motion_latents(self, vae: WanVAE) -> torch.Tensor:
        if self.motion_latents is None and self.pending is not None:
            with torch.inference_mode():
                self.motion_latents = self.pending()
            self.pending = None
        if self.motion_latents is None:
            if self.motion_pixels is None:
                raise ValueError("this chain state holds no motion pixels (a non-writer rank of a render "
                                 "group): its motion latents come from the writer rank")
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
    """Renders the clips of a chain on one device with a loaded DiT and VAE.

    ``sync``: the render group's hook (None on a single device). With it, only the writer rank
    needs ``vae``; the others pass None, sample the same clips and return no frames.
    """

    def __init__(self, dit: S2VDiT, vae: WanVAE | None, settings: RenderSettings, device: torch.device | str,
                 on_step: StepCallback | None = None, progress: bool = True, sync: ChainSync | None = None):
        self.sync = sync
        self.is_writer = sync is None or sync.is_writer
        if self.is_writer and vae is None:
            raise ValueError("the VAE is needed on a single device and on the writer rank of a render group")
        self.dit, self.vae, self.s = dit, vae, settings
        self.device = torch.device(device)
        self.on_step = on_step
        self.progress = progress
        self.fast_stats: list = []  # per sampled clip with a fast-mode setting on: render.model.fast.SamplingStats
        if vae is not None and settings.decode_context_latents is None and vae.chunk_local:
            log.info("VAE is chunk-local (all past temporal taps zero): motion clips decode 1 context "
                     "latent instead of %d, same pixels", settings.motion_latent_frames)

    def initial_state(self, shot: ShotConditioning, first_clip: int = 0) -> ChainState:
        """``initial_chain_state`` on the writer; a state without pixels on the other ranks."""
        if self.is_writer:
            return initial_chain_state(self.s, shot, first_clip)
        return ChainState(first_clip, None)

    def motion_latents(self, state: ChainState) -> torch.Tensor:
        """The motion latents of ``state`` (CPU). In a group the writer encodes them (when the
        state does not hold them yet) and broadcasts them, at the moment a clip needs them: the
        others then wait in the hand-off rather than in a DiT collective while the writer
        decodes, writes and commits the previous clip, and no rank encodes after a chain's last
        clip. Non-writers keep them in ``state`` too."""
        if self.sync is None:
            return state.ensure_motion_latents(self.vae)
        mine = state.ensure_motion_latents(self.vae) if self.is_writer else None
        state.motion_latents = share_tensor(self.sync, mine)
        return state.motion_latents

    def clip_uses_motion(self, clip: int, segment: int = 0) -> bool:
        # The official pipeline drops motion tokens for the very first clip of a shot. The first
        # clip of a later segment has no previous clip either: it is conditioned the same way
        # (reference only) and the stitcher blends the join (render/seams.py).
        return not (clip == 0 and not self.s.start_from_ref)

    def frames_kept(self, clip: int, segment: int = 0) -> int:
        if self.s.drops_first_frames and segment == 0 and clip == 0:
            return self.s.infer_frames - 3
        return self.s.infer_frames

    @torch.inference_mode()
    def render_clip(self, shot: ShotConditioning, state: ChainState, segment: int = 0,
                    audio_offset: int | None = None) -> tuple[torch.Tensor | None, ChainState]:
        """Render clip ``state.next_clip``; returns (frames [3, n, H, W] float32 CPU, next state).
        A non-writer rank of a group returns (None, a next state without pixels or latents).

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
            motion_latents = self.motion_latents(state).to(dev)

        latents = self.sample(shot, audio, pose, motion_latents, with_motion, segment, clip)
        if self.sync is not None:
            # Every rank sampled from the same inputs and the same noise, so the latents are
            # bit-identical; a rank that computed anything else (a fault, other weights, a
            # corrupted hand-off) is caught here, before anything of this clip is decoded or
            # written. The collective is also the group's per-clip liveness check.
            self.sync.agree(latents, f"segment {segment} clip {clip}: sampled latents")
            if not self.is_writer:
                return None, ChainState(clip + 1, None)

        if with_motion:
            # The official decode re-runs all motion latents only to warm the causal decoder's
            # caches before the new latents; decode_context_latents=k warms with the last k only
            # (output-changing option; None keeps the official full context).
            k = s.decode_context_latents
            if k is None and self.vae.chunk_local:
                k = 1  # the same pixels as the full context for a chunk-local VAE, 19x less decode
            context = motion_latents[0] if k is None else motion_latents[0][:, -k:]
            first = context
        else:
            first = shot.ref_latents[0].to(dev)
        video = self.vae.decode_tail(torch.cat([first, latents], dim=1).to(self.vae.dtype), s.infer_frames)
        keep = self.frames_kept(clip, segment)
        video = video[:, -keep:]
        decoded = video
        if s.colour_anchor > 0:  # long-form countermeasure (render.model.handoff), off by default
            video = anchor_colour(video, shot.ref_pixels, s.colour_anchor)
        buf = torch.cat([state.motion_pixels, video], dim=1)[:, -s.motion_frames:]
        nxt = ChainState(clip + 1, buf.contiguous())
        if changes_motion_latents(s):
            # Kept until the next clip asks: only what the hand-off reads (the latent hand-off takes
            # the last motion latents as sampled, and the frames as decoded when colour moved them).
            by_latents = s.motion_handoff == "latents"
            sampled = latents[:, -(s.motion_latent_frames - 1):].clone() if by_latents else None
            nxt.pending = partial(next_motion_latents, self.vae, s, sampled, nxt.motion_pixels, shot.ref_pixels,
                                  decoded if by_latents and video is not decoded else None)
        return video, nxt

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
        # Fast mode (all off by default): a step cache skips the DiT blocks on some steps, the
        # guidance schedule runs the unconditional branch on fewer steps (render.model.fast).
        cache = make_step_cache(s)
        schedule = GuidanceSchedule(s.steps, s.cfg_until, s.cfg_every)
        cond_only = conds[0] if not (guided and s.cfg_batch) else None
        last_difference = None
        uncond_forwards = 0

        def announce(i: int, rows: tuple[int, ...]) -> None:
            if cache is not None:
                cache.begin_step(i, rows)

        with cache.attached(dit) if cache is not None else nullcontext():
            for i in steps:
                t = sampler.timesteps[i].to(dev)
                with_uncond = guided and schedule.runs_uncond(i)
                if with_uncond and s.cfg_batch:
                    announce(i, (0, 1))
                    out = dit.denoise(latents[None].expand(2, -1, -1, -1, -1), t, conds[0])
                    cond_v, uncond_v = out[0], out[1]
                elif with_uncond:
                    announce(i, (0,))
                    cond_v = dit.denoise(latents, t, conds[0])
                    announce(i, (1,))
                    uncond_v = dit.denoise(latents, t, conds[1])
                if with_uncond:
                    uncond_forwards += 1
                    pred = uncond_v + s.guidance * (cond_v - uncond_v)
                    if not schedule.is_exact:
                        last_difference = cond_v - uncond_v
                elif guided:  # the unconditional branch is skipped: reuse its last difference
                    if cond_only is None:
                        # A sharded DiT's condition holds only this rank's rows (cfg parallel):
                        # the conditional row alone is prepared anew there.
                        cond_only = (condition_rows(conds[0], slice(0, 1)) if dit.sharding is None
                                     else prep([shot.prompt_context], [audio]))
                    announce(i, (0,))
                    pred = reuse_guidance(dit.denoise(latents, t, cond_only), last_difference, s.guidance)
                else:
                    announce(i, (0,))
                    pred = dit.denoise(latents, t, conds[0])
                latents = sampler.step(pred, i, latents)
                if self.on_step is not None:
                    self.on_step(clip, i, s.steps)
        if cache is not None or not schedule.is_exact:
            self.fast_stats.append(sampling_stats(clip, s.steps, uncond_forwards, cache))
            log.info("clip %d: %s", clip, self.fast_stats[-1].summary())
        return latents
