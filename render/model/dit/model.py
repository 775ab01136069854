"""The Wan2.2-S2V DiT (``WanModel_S2V`` weights), written for one device.

The forward is split in two so that everything constant over a clip's 2 x steps forwards is
computed once: :meth:`S2VDiT.prepare` turns the clip's conditions into an
:class:`S2VCondition`, and :meth:`S2VDiT.denoise` runs one forward for a noisy latent and a
timestep. ``model(...)`` accepts the official call's inputs and does both.

This is the only forward, also on several devices: ``parallel.parallelize_dit`` sets
:attr:`S2VDiT.sharding`, which runs the same single-device steps on each device's share of the
inputs and combines the outputs (see :class:`ForwardSharding`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.attention import AttentionFn
from render.model.checkpoint import DiTConfig
from render.model.dit.audio import AudioInjector, CausalAudioEncoder
from render.model.dit.layers import Head, S2VBlock, linear, sinusoidal_embedding
from render.model.dit.rope import rope_cos_sin, token_segments

FRAMEPACK_BUCKETS = (1, 2, 16)  # newest..oldest motion latents per FramePack projection


@dataclass
class S2VCondition:
    """Per-clip inputs of the DiT forward, computed once by :meth:`S2VDiT.prepare`."""

    grid: tuple[int, int, int]  # latent frames F, token rows, token cols of the noisy latents
    latent_hw: tuple[int, int]
    noisy_bias: torch.Tensor  # [B, N, D] cond_encoder(pose) + segment embedding 0
    extra_tokens: torch.Tensor  # [B, L - N, D] reference (+ motion) tokens incl. segment embedding
    context: torch.Tensor  # [B, text_len, D] embedded text
    audio_tokens: torch.Tensor  # [B, F, n+1, D]
    audio_global: torch.Tensor  # [B, F, 1, D]
    rope_cos: torch.Tensor  # [L, head_dim/2] float32
    rope_sin: torch.Tensor
    e0_zero: torch.Tensor  # [B, 6, D] time projection of t = 0 (reference/motion tokens)
    context_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None)

    @property
    def num_noisy(self) -> int:
        f, gh, gw = self.grid
        return f * gh * gw

    @property
    def seq_len(self) -> int:
        return self.num_noisy + self.extra_tokens.shape[1]


class ForwardSharding(Protocol):
    """How several devices share this model's forward (``parallel/dit.py`` implements it).

    The model's own single-device steps are handed in: the sharding decides what each device
    passes to them and how the results are combined, so there is no second forward to keep in
    step with this one. On one device :attr:`S2VDiT.sharding` is None and nothing is called.
    """

    def prepare(self, prepare: Callable[..., S2VCondition], *args: Any) -> Any:
        """Run ``prepare(*args)`` (the arguments of :meth:`S2VDiT.prepare`, positional) and
        return this device's condition."""

    def denoise(self, denoise: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], x: torch.Tensor,
                t: torch.Tensor, cond: Any) -> torch.Tensor:
        """Run ``denoise`` on this device's share of x [B, C, F, h, w], t [B] and ``cond``
        (what :meth:`prepare` returned); return the whole prediction."""

    def self_attention(self, local: AttentionFn) -> AttentionFn:
        """The self-attention function to install when :meth:`S2VDiT.set_attention` is given
        ``local`` (which then computes this device's part)."""


class FramePacker(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_dim, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(in_dim, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(in_dim, dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion_latents: torch.Tensor) -> torch.Tensor:
        """[B, C, T, h, w] -> tokens [B, n1 + n2 + n4, D] in the order 1x, 2x, 4x."""
        total = sum(FRAMEPACK_BUCKETS)
        b, c, t, h, w = motion_latents.shape
        m = motion_latents[:, :, -total:]
        if m.shape[2] < total:  # fewer motion latents than the buckets hold: zeros in front
            m = torch.cat([m.new_zeros(b, c, total - m.shape[2], h, w), m], dim=2)
        oldest, middle, newest = m.split(FRAMEPACK_BUCKETS[::-1], dim=2)
        out = []
        for conv, lat in ((self.proj, newest), (self.proj_2x, middle), (self.proj_4x, oldest)):
            out.append(conv(lat.to(conv.weight.dtype)).flatten(2).transpose(1, 2).float())
        return torch.cat(out, dim=1)


class S2VDiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, p = cfg.dim, cfg.patch_size
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=p, stride=p)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(
            [S2VBlock(d, cfg.ffn_dim, cfg.num_heads, cfg.eps) for _ in range(cfg.num_layers)]
        )
        self.head = Head(d, cfg.out_dim, p, cfg.eps)
        self.cond_encoder = nn.Conv3d(cfg.cond_dim, d, kernel_size=p, stride=p)
        self.casual_audio_encoder = CausalAudioEncoder(cfg.audio_dim, d, cfg.num_audio_token)
        self.audio_injector = AudioInjector(d, cfg.num_heads, len(cfg.audio_inject_layers), cfg.eps)
        self.trainable_cond_mask = nn.Embedding(3, d)
        self.frame_packer = FramePacker(cfg.in_dim, d)
        # block index -> injector index (injector k follows block audio_inject_layers[k])
        self.injector_of_block = {b: k for k, b in enumerate(cfg.audio_inject_layers)}
        # Multi-device execution of prepare/denoise/set_attention; None runs on this device alone.
        self.sharding: ForwardSharding | None = None

    # -- attention hooks -------------------------------------------------------------------
    def set_attention(self, self_attn: AttentionFn | None = None, cross_attn: AttentionFn | None = None,
                      audio_attn: AttentionFn | None = None) -> None:
        """Replace the attention function of every self/cross/audio attention module."""
        if self_attn is not None and self.sharding is not None:
            self_attn = self.sharding.self_attention(self_attn)
        for blk in self.blocks:
            if self_attn is not None:
                blk.self_attn.attn_fn = self_attn
            if cross_attn is not None:
                blk.cross_attn.attn_fn = cross_attn
        if audio_attn is not None:
            self.audio_injector.set_attention(audio_attn)

    # -- embeddings ------------------------------------------------------------------------
    def _patchify(self, conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
        return conv(x.to(conv.weight.dtype)).flatten(2).transpose(1, 2).float()

    def time_embeddings(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] -> (e [B, D], e0 [B, 6, D]) in float32."""
        emb = sinusoidal_embedding(t.reshape(-1), self.cfg.freq_dim)
        e = linear(self.time_embedding[2], F.silu(linear(self.time_embedding[0], emb).float())).float()
        e0 = linear(self.time_projection[1], F.silu(e)).float().unflatten(1, (6, -1))
        return e, e0

    def embed_text(self, context: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Unpadded T5 outputs ([L_i, 4096] each, or a padded [B, L, 4096]) -> [B, text_len, D]."""
        tl = self.cfg.text_len
        if isinstance(context, torch.Tensor) and context.dim() == 2:
            context = [context]
        rows = []
        for c in context:
            c = c[:tl]
            rows.append(torch.cat([c, c.new_zeros(tl - c.shape[0], c.shape[1])]) if c.shape[0] < tl else c)
        ctx = torch.stack(rows).float()
        h = F.gelu(linear(self.text_embedding[0], ctx).float(), approximate="tanh")
        return linear(self.text_embedding[2], h).float()

    # -- per-clip preparation --------------------------------------------------------------
    def prepare(
        self,
        latent_shape: Sequence[int],
        context: torch.Tensor | Sequence[torch.Tensor],
        ref_latents: torch.Tensor,
        motion_latents: torch.Tensor | None,
        cond_states: torch.Tensor | None,
        audio_input: torch.Tensor,
        motion_frames: Sequence[int] = (73, 19),
        drop_motion_frames: bool = False,
        cache_context_kv: bool = False,
    ) -> S2VCondition:
        """Everything of a forward that does not depend on the noisy latent or the timestep.

        latent_shape: (C, F, h, w) of the noisy latent. Batched inputs ([B, ...]) give a batch of
        conditions (e.g. conditional and unconditional together for CFG as one batch).
        """
        args = (latent_shape, context, ref_latents, motion_latents, cond_states, audio_input, motion_frames,
                drop_motion_frames, cache_context_kv)
        if self.sharding is not None:
            return self.sharding.prepare(self._prepare, *args)
        return self._prepare(*args)

    def _prepare(self, latent_shape, context, ref_latents, motion_latents, cond_states, audio_input, motion_frames,
                 drop_motion_frames, cache_context_kv) -> S2VCondition:
        """:meth:`prepare` on this device, for all of its inputs."""
        _, f, h, w = latent_shape[-4:]
        pt, ph, pw = self.cfg.patch_size
        gf, gh, gw = f // pt, h // ph, w // pw
        dev = self.patch_embedding.weight.device
        ref_latents = _batched(ref_latents, 5).to(dev)
        b = ref_latents.shape[0]
        if cond_states is None:
            cond_states = torch.zeros(b, self.cfg.cond_dim, f, h, w, device=dev)
        noisy_bias = self._patchify(self.cond_encoder, _batched(cond_states, 5).to(dev))
        mask_w = self.trainable_cond_mask.weight.float()
        noisy_bias = noisy_bias + mask_w[0]
        extra = [self._patchify(self.patch_embedding, ref_latents) + mask_w[1]]
        with_motion = not drop_motion_frames
        if with_motion:
            if motion_latents is None:
                raise ValueError("motion_latents is required unless drop_motion_frames=True")
            extra.append(self.frame_packer(_batched(motion_latents, 5).to(dev)) + mask_w[2])
        extra_tokens = torch.cat(extra, dim=1)
        if isinstance(context, torch.Tensor) and context.dim() == 3 and context.shape[0] != b:
            raise ValueError(f"context batch {context.shape[0]} != reference batch {b}")
        ctx = self.embed_text(context).to(dev)
        audio_tokens, audio_global = self.casual_audio_encoder(
            _batched(audio_input, 4).to(dev), int(motion_frames[0]), int(motion_frames[1])
        )
        if audio_tokens.shape[1] != gf:
            raise ValueError(
                f"audio_input covers {audio_tokens.shape[1]} latent frames after the causal encoder, "
                f"the noisy latent has {gf}: audio_input must have 4 * F = {4 * gf} video frames"
            )
        cos, sin = rope_cos_sin(token_segments(gf, gh, gw, with_motion, h, w), self.cfg.head_dim, dev)
        _, e0_zero = self.time_embeddings(torch.zeros(b, device=dev))
        cond = S2VCondition(
            grid=(gf, gh, gw), latent_hw=(h, w), noisy_bias=noisy_bias, extra_tokens=extra_tokens,
            context=ctx, audio_tokens=audio_tokens, audio_global=audio_global,
            rope_cos=cos, rope_sin=sin, e0_zero=e0_zero,
        )
        if cache_context_kv:
            cond.context_kv = [blk.cross_attn.project_context(ctx) for blk in self.blocks]
        return cond

    # -- one forward -----------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: S2VCondition) -> torch.Tensor:
        """Flow prediction for noisy latents x [B, C, F, h, w] (or [C, F, h, w]) at timestep t."""
        squeeze = x.dim() == 4
        x = _batched(x, 5)
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        t = t.expand(x.shape[0]) if t.numel() == 1 else t
        if self.sharding is not None:
            out = self.sharding.denoise(self._denoise, x, t, cond)
        else:
            out = self._denoise(x, t, cond)
        return out[0] if squeeze else out

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, cond: S2VCondition) -> torch.Tensor:
        """x [B, C, F, h, w], t [B] -> [B, C, F, h, w]."""
        b = x.shape[0]
        tokens = self._patchify(self.patch_embedding, x) + cond.noisy_bias
        h = torch.cat([tokens, cond.extra_tokens.expand(b, -1, -1)], dim=1)
        e, e0 = self.time_embeddings(t)
        e0 = torch.stack([e0, cond.e0_zero.expand(b, -1, -1)], dim=1)  # [B, 2, 6, D]
        h = self.run_blocks(h, e0, cond)
        out = self.head(h[:, : cond.num_noisy], e)
        return self.unpatchify(out, cond.grid)

    def run_blocks(self, h: torch.Tensor, e0: torch.Tensor, cond: S2VCondition) -> torch.Tensor:
        n = cond.num_noisy
        for i, blk in enumerate(self.blocks):
            kv = cond.context_kv[i] if cond.context_kv is not None else None
            h = blk(h, e0, n, cond.rope_cos, cond.rope_sin, context=cond.context, context_kv=kv)
            k = self.injector_of_block.get(i)
            if k is not None:
                res = self.audio_injector(k, h[:, :n], cond.audio_tokens, cond.audio_global)
                h = torch.cat([h[:, :n] + res, h[:, n:]], dim=1)
        return h

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, N, prod(patch) * C] -> [B, C, F*pt, gh*ph, gw*pw]; channel fastest inside a patch."""
        gf, gh, gw = grid
        pt, ph, pw = self.cfg.patch_size
        c = self.cfg.out_dim
        out = out.reshape(out.shape[0], gf, gh, gw, pt, ph, pw, c)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(out.shape[0], c, gf * pt, gh * ph, gw * pw)

    # -- the official call -----------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        t: torch.Tensor,
        context: torch.Tensor | Sequence[torch.Tensor],
        ref_latents: torch.Tensor,
        motion_latents: torch.Tensor | None,
        cond_states: torch.Tensor | None,
        audio_input: torch.Tensor,
        motion_frames: Sequence[int] = (73, 19),
        drop_motion_frames: bool = False,
        seq_len: int | None = None,  # accepted for call compatibility; the model does not need it
    ) -> torch.Tensor:
        """Official-call compatible forward: returns the float32 flow prediction [C, F, h, w]."""
        if isinstance(x, (list, tuple)):
            if len(x) != 1:
                raise ValueError("x as a list must hold exactly one latent [C, F, h, w]")
            x = x[0]
        cond = self.prepare(x.shape, context, ref_latents, motion_latents, cond_states, audio_input,
                            motion_frames, drop_motion_frames)
        return self.denoise(x, t, cond)


def _batched(x: torch.Tensor, ndim: int) -> torch.Tensor:
    return x if x.dim() == ndim else x.unsqueeze(0)
