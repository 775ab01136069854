"""Sequence-, CFG- and weight-parallel S2V DiT: a built single-device model, transformed in place.

After :func:`parallelize_dit` every rank of the group calls ``dit.prepare(...)`` and
``dit.denoise(x, t, cond)`` exactly as on one device, with the same full inputs, and gets the
same full output. Inside:

* CFG parallel: a batch whose size the cfg degree divides (the clip loop's conditional +
  unconditional batch of 2) is split; cfg rank c computes batch slice c and the predictions
  are all-gathered at the end. Other batch sizes run whole on every cfg rank.
* Sequence parallel: each rank keeps its own latent frames, a share of the reference/motion
  tokens, their RoPE angles, modulation variants and audio tokens (see ``layout.py``).
  Self-attention is exact through Ulysses + ring (``attention.py``); text cross-attention,
  FFN, the per-frame audio injection and the output head run on local tokens only, with no
  communication. The per-rank predictions (whole frames) are gathered once at the end.
* Weight sharding (``dims.shard_weights``): see ``fsdp.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kernels.attention import AttentionFn
from render.dit.model import S2VCondition, S2VDiT

from .attention import SequenceParallelAttention, SequenceShardState
from .comm import all_gather_dim0, gather_frames
from .context import ParallelContext
from .layout import KeyPlan, ShardLayout
from .yunchang_engine import YunchangUlyssesAttention, resolve_engine

log = logging.getLogger(__name__)


@dataclass
class ShardedCondition:
    """What :meth:`ParallelS2VDiT.prepare` returns: this rank's share of an S2VCondition."""

    local: S2VCondition  # grid = (local frames, gh, gw); extra_tokens include the padding
    layout: ShardLayout
    key_plan: KeyPlan
    full_grid: tuple[int, int, int]
    batch: int  # batch size the caller passes to denoise
    cfg_split: bool  # True: this rank computes only batch slice ctx.cfg_rank
    sp_rank: int

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.full_grid

    @property
    def num_noisy(self) -> int:
        return self.layout.num_noisy

    @property
    def seq_len(self) -> int:
        return self.layout.seq_len


class ParallelS2VDiT(S2VDiT):
    """S2VDiT whose prepare/denoise shard the work over a :class:`ParallelContext`.

    Instances are made by :func:`parallelize_dit` (the class of a built model is swapped, as
    FSDP2 does), never constructed directly.
    """

    parallel_ctx: ParallelContext
    _sp_state: SequenceShardState
    _weights_sharded: bool

    # -- attention hooks -------------------------------------------------------------------
    def set_attention(self, self_attn: AttentionFn | None = None, cross_attn: AttentionFn | None = None,
                      audio_attn: AttentionFn | None = None) -> None:
        """As on one device; a self-attention function becomes the local kernel of the
        sequence-parallel attention instead of replacing it."""
        super().set_attention(None, cross_attn, audio_attn)
        if self_attn is not None:
            for blk in self.blocks:
                blk.self_attn.attn_fn.local_attn = self_attn

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
    ) -> ShardedCondition:
        ctx = self.parallel_ctx
        batch = ref_latents.shape[0] if ref_latents.dim() == 5 else 1
        cfg_split = ctx.dims.cfg > 1 and batch % ctx.dims.cfg == 0
        if ctx.dims.cfg > 1 and not cfg_split and not getattr(self, "_warned_cfg_batch", False):
            self._warned_cfg_batch = True
            log.warning("batch %d is not divisible by cfg=%d: every cfg rank computes the whole batch "
                        "(pass conditional and unconditional as one batch, RenderSettings.cfg_batch)",
                        batch, ctx.dims.cfg)
        if cfg_split:
            pick = _batch_slicer(batch, ctx.dims.cfg, ctx.cfg_rank)
            context = pick(context)
            ref_latents, motion_latents, cond_states, audio_input = (
                pick(t) for t in (ref_latents, motion_latents, cond_states, audio_input))
        full = super().prepare(latent_shape, context, ref_latents, motion_latents, cond_states, audio_input,
                               motion_frames, drop_motion_frames,
                               cache_context_kv=cache_context_kv and not self._weights_sharded)
        if cache_context_kv and self._weights_sharded:
            full.context_kv = [_with_unsharded(blk, lambda b: b.cross_attn.project_context(full.context))
                               for blk in self.blocks]
        gf, gh, gw = full.grid
        dims = ctx.dims
        layout = ShardLayout.make(gf, gh * gw, full.extra_tokens.shape[1], dims.sp)
        if gf < dims.sp:
            log.warning("%d latent frames over %d sequence-parallel ranks: %d ranks hold no frames",
                        gf, dims.sp, dims.sp - gf)
        me = layout.ranks[ctx.sp_rank]
        t = gh * gw
        pad = layout.local_len - me.num_valid
        b = full.extra_tokens.shape[0]
        extra = full.extra_tokens[:, me.extra_start: me.extra_end]
        extra = torch.cat([extra, extra.new_zeros(b, pad, extra.shape[-1])], dim=1)
        index = layout.token_index(ctx.sp_rank).to(full.rope_cos.device)
        cos = torch.cat([full.rope_cos.index_select(0, index), full.rope_cos.new_ones(pad, full.rope_cos.shape[1])])
        sin = torch.cat([full.rope_sin.index_select(0, index), full.rope_sin.new_zeros(pad, full.rope_sin.shape[1])])
        local = S2VCondition(
            grid=(me.frames, gh, gw), latent_hw=full.latent_hw,
            noisy_bias=full.noisy_bias[:, me.frame_start * t: me.frame_end * t].contiguous(),
            extra_tokens=extra.contiguous(), context=full.context,
            audio_tokens=full.audio_tokens[:, me.frame_start: me.frame_end].contiguous(),
            audio_global=full.audio_global[:, me.frame_start: me.frame_end].contiguous(),
            rope_cos=cos.contiguous(), rope_sin=sin.contiguous(), e0_zero=full.e0_zero,
            context_kv=full.context_kv,
        )
        plan = layout.key_plan(dims.ulysses, dims.ring).to(full.rope_cos.device)
        return ShardedCondition(local, layout, plan, full.grid, batch, cfg_split, ctx.sp_rank)

    # -- one forward -----------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: ShardedCondition) -> torch.Tensor:
        if not isinstance(cond, ShardedCondition):
            raise TypeError("a parallelized DiT needs the condition from its own prepare(), got "
                            f"{type(cond).__name__}")
        ctx = self.parallel_ctx
        squeeze = x.dim() == 4
        x = x if x.dim() == 5 else x.unsqueeze(0)
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        t = t.expand(b) if t.numel() == 1 else t
        if cond.cfg_split:
            if b != cond.batch:
                raise ValueError(f"denoise got a batch of {b}, but prepare() split a batch of {cond.batch} "
                                 "across the cfg ranks: call both with the same batch")
            pick = _batch_slicer(b, ctx.dims.cfg, ctx.cfg_rank)
            x, t = pick(x), pick(t)
        loc = cond.local
        me = cond.layout.ranks[cond.sp_rank]
        pt = self.cfg.patch_size[0]
        bl = x.shape[0]
        dim = self.cfg.dim
        if me.frames > 0:
            tokens = self._patchify(self.patch_embedding, x[:, :, me.frame_start * pt: me.frame_end * pt])
            tokens = tokens + loc.noisy_bias
        else:
            tokens = x.new_zeros(bl, 0, dim, dtype=torch.float32)
        h = torch.cat([tokens, loc.extra_tokens.expand(bl, -1, -1)], dim=1)
        e, e0 = self.time_embeddings(t)
        e0 = torch.stack([e0, loc.e0_zero.expand(bl, -1, -1)], dim=1)
        self._sp_state.key_plan = cond.key_plan
        try:
            h = self.run_blocks(h, e0, loc)
        finally:
            self._sp_state.key_plan = None
        out = self.head(h[:, : loc.num_noisy], e)
        out = self.unpatchify(out, loc.grid)  # [bl, C, frames * pt, H, W]
        counts = [r.frames * pt for r in cond.layout.ranks]
        out = gather_frames(out, counts, ctx.sp_group, frame_dim=2)
        if cond.cfg_split:
            out = all_gather_dim0(out, ctx.cfg_group, ctx.dims.cfg)
        return out[0] if squeeze else out

    def run_blocks(self, h: torch.Tensor, e0: torch.Tensor, cond: S2VCondition) -> torch.Tensor:
        n = cond.num_noisy
        sharded = self._weights_sharded
        for i, blk in enumerate(self.blocks):
            if sharded and i + 1 < len(self.blocks):
                self.blocks[i + 1].unshard(async_op=True)  # overlap the next block's all-gather
            kv = cond.context_kv[i] if cond.context_kv is not None else None
            h = blk(h, e0, n, cond.rope_cos, cond.rope_sin, context=cond.context, context_kv=kv)
            k = self.injector_of_block.get(i)
            if k is None:
                continue
            if n > 0:
                res = self.audio_injector(k, h[:, :n], cond.audio_tokens, cond.audio_global)
                h = torch.cat([h[:, :n] + res, h[:, n:]], dim=1)
            elif sharded:
                # No frames here, but the injector's weights are all-gathered by every rank:
                # take part with one dummy token (result unused).
                z = h.new_zeros(h.shape[0], 1, 1, h.shape[-1])
                self.audio_injector(k, z[:, 0], z.expand(-1, -1, cond.audio_tokens.shape[2], -1), z)
        return h


def _batch_slicer(batch: int, parts: int, index: int):
    size = batch // parts

    def pick(x):
        if x is None:
            return None
        if isinstance(x, torch.Tensor):
            if x.shape[0] != batch:
                raise ValueError(f"expected a batch of {batch} along dim 0, got shape {tuple(x.shape)}")
            return x[index * size: (index + 1) * size]
        x = list(x)
        if len(x) != batch:
            raise ValueError(f"expected {batch} contexts, got {len(x)}")
        return x[index * size: (index + 1) * size]

    return pick


def _with_unsharded(module, fn):
    module.unshard()
    try:
        return fn(module)
    finally:
        module.reshard()


def parallelize_dit(dit: S2VDiT, ctx: ParallelContext) -> S2VDiT:
    """Make ``dit`` (built, weights loaded, on ``ctx.device``) run on ``ctx``'s group, in place.

    World size 1 without weight sharding: returns ``dit`` unchanged.
    """
    dims = ctx.dims
    dims.validate(dit.cfg)
    if isinstance(dit, ParallelS2VDiT):
        raise ValueError("this DiT is already parallelized")
    if ctx.is_trivial:
        return dit
    engine = resolve_engine(dims.attention_engine)
    attn_cls = YunchangUlyssesAttention if engine == "yunchang" else SequenceParallelAttention
    state = SequenceShardState()
    dit.__class__ = ParallelS2VDiT
    dit.parallel_ctx = ctx
    dit._sp_state = state
    dit._weights_sharded = False
    for blk in dit.blocks:
        blk.self_attn.attn_fn = attn_cls(ctx, blk.self_attn.attn_fn, state)
    if dims.shard_weights:
        from .fsdp import shard_dit_weights

        shard_dit_weights(dit, ctx)
        dit._weights_sharded = True
    log.info("parallel DiT: %s; self-attention engine %s (requested %r): ulysses all-to-all %s, ring "
             "batch_isend_irecv + log-sum-exp merge; frame-local audio injection", dims.describe(), engine,
             dims.attention_engine, "yunchang SeqAllToAll4D" if engine == "yunchang" else "all_to_all_single")
    return dit


__all__ = ["ParallelS2VDiT", "ShardedCondition", "parallelize_dit", "deparallelize_dit"]


def deparallelize_dit(dit: S2VDiT) -> S2VDiT:
    """Undo :func:`parallelize_dit` (in place) for a model whose weights are not sharded."""
    if not isinstance(dit, ParallelS2VDiT):
        return dit
    if dit._weights_sharded:
        raise ValueError("the weights of this DiT are sharded (FSDP2): build and load a new model instead")
    for blk in dit.blocks:
        blk.self_attn.attn_fn = blk.self_attn.attn_fn.local_attn
    for name in ("parallel_ctx", "_sp_state", "_weights_sharded", "_warned_cfg_batch"):
        dit.__dict__.pop(name, None)
    dit.__class__ = S2VDiT
    return dit
