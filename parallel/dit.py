"""Sequence-, CFG- and weight-parallel S2V DiT: a built single-device model, transformed in place.

After :func:`parallelize_dit` every rank of the group calls ``dit.prepare(...)`` and
``dit.denoise(x, t, cond)`` exactly as on one device, with the same full inputs, and gets the
same full output. The model keeps its one single-device forward (``render/model/dit/model.py``);
:class:`DiTSharding`, installed as ``dit.sharding``, only chooses what each rank feeds it and
combines what it returns, and the self-attention function of every block is swapped for the
sequence-parallel one. Inside:

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from kernels.attention import AttentionFn
from parallel.attention import SequenceParallelAttention, SequenceShardState
from parallel.comm import all_gather_dim0, gather_frames
from parallel.context import ParallelContext
from parallel.layout import KeyPlan, ShardLayout
from parallel.yunchang_engine import YunchangUlyssesAttention, resolve_engine
from render.model.dit.model import S2VCondition, S2VDiT

log = logging.getLogger(__name__)


@dataclass
class ShardedCondition:
    """What a parallelized DiT's ``prepare`` returns: this rank's share of an S2VCondition."""

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


class DiTSharding:
    """The :class:`~render.model.dit.model.ForwardSharding` of a parallelized DiT.

    Made by :func:`parallelize_dit`, never directly. Holds no model weights: ``prepare`` and
    ``denoise`` wrap the model's own single-device steps, which it is handed on each call.
    """

    def __init__(self, ctx: ParallelContext, engine: str, dit: S2VDiT):
        self.ctx = ctx
        self.attn_cls = YunchangUlyssesAttention if engine == "yunchang" else SequenceParallelAttention
        self.state = SequenceShardState()  # the key plan of the forward in progress, read by attention
        self.blocks = dit.blocks  # to project the text keys/values with unsharded weights
        self.patch_t = dit.cfg.patch_size[0]
        self.weights_sharded = False
        self._warned_cfg_batch = False

    def self_attention(self, local: AttentionFn) -> AttentionFn:
        return self.attn_cls(self.ctx, local, self.state)

    # -- per-clip preparation --------------------------------------------------------------
    def prepare(self, prepare: Callable[..., S2VCondition], latent_shape: Sequence[int],
                context: torch.Tensor | Sequence[torch.Tensor], ref_latents: torch.Tensor,
                motion_latents: torch.Tensor | None, cond_states: torch.Tensor | None, audio_input: torch.Tensor,
                motion_frames: Sequence[int], drop_motion_frames: bool, cache_context_kv: bool) -> ShardedCondition:
        ctx = self.ctx
        batch = ref_latents.shape[0] if ref_latents.dim() == 5 else 1
        cfg_split = ctx.dims.cfg > 1 and batch % ctx.dims.cfg == 0
        if ctx.dims.cfg > 1 and not cfg_split and not self._warned_cfg_batch:
            self._warned_cfg_batch = True
            log.warning("batch %d is not divisible by cfg=%d: every cfg rank computes the whole batch "
                        "(with RenderSettings.cfg_batch the CFG steps split; steps a guidance schedule "
                        "runs without the unconditional branch do not, so cfg_until/cfg_every save no "
                        "time with cfg > 1)", batch, ctx.dims.cfg)
        if cfg_split:
            pick = _batch_slicer(batch, ctx.dims.cfg, ctx.cfg_rank)
            context = pick(context)
            ref_latents, motion_latents, cond_states, audio_input = (
                pick(t) for t in (ref_latents, motion_latents, cond_states, audio_input))
        # FSDP2 all-gathers a block's weights around its forward only, and projecting the text
        # is not a forward: with sharded weights the keys/values are projected here, unsharded.
        kv_inside = cache_context_kv and not self.weights_sharded
        full = prepare(latent_shape, context, ref_latents, motion_latents, cond_states, audio_input,
                       motion_frames, drop_motion_frames, kv_inside)
        if cache_context_kv and not kv_inside:
            full.context_kv = [_with_unsharded(blk, lambda b: b.cross_attn.project_context(full.context))
                               for blk in self.blocks]
        return self._shard(full, batch, cfg_split)

    def _shard(self, full: S2VCondition, batch: int, cfg_split: bool) -> ShardedCondition:
        """This rank's frames, share of the extra tokens (zero-padded to the common length) and
        their RoPE angles (padding: the identity rotation)."""
        ctx = self.ctx
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
    def denoise(self, denoise: Callable[[torch.Tensor, torch.Tensor, S2VCondition], torch.Tensor],
                x: torch.Tensor, t: torch.Tensor, cond: ShardedCondition) -> torch.Tensor:
        if not isinstance(cond, ShardedCondition):
            raise TypeError("a parallelized DiT needs the condition from its own prepare(), got "
                            f"{type(cond).__name__}")
        ctx = self.ctx
        if cond.cfg_split:
            if x.shape[0] != cond.batch:
                raise ValueError(f"denoise got a batch of {x.shape[0]}, but prepare() split a batch of "
                                 f"{cond.batch} across the cfg ranks: call both with the same batch")
            pick = _batch_slicer(cond.batch, ctx.dims.cfg, ctx.cfg_rank)
            x, t = pick(x), pick(t)
        me = cond.layout.ranks[cond.sp_rank]
        pt = self.patch_t
        self.state.key_plan = cond.key_plan
        try:
            out = denoise(x[:, :, me.frame_start * pt: me.frame_end * pt], t, cond.local)
        finally:
            self.state.key_plan = None
        out = gather_frames(out, [r.frames * pt for r in cond.layout.ranks], ctx.sp_group, frame_dim=2)
        if cond.cfg_split:
            out = all_gather_dim0(out, ctx.cfg_group, ctx.dims.cfg)
        return out


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


def _embed_without_frames(conv: nn.Conv3d) -> Callable[[torch.Tensor], torch.Tensor]:
    """``conv.forward`` that also takes an empty time axis (conv3d refuses one): the patch
    embedding of a rank that holds no latent frames."""
    forward = conv.forward

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] > 0:
            return forward(x)
        return x.new_zeros(x.shape[0], conv.out_channels, 0, x.shape[3] // conv.stride[1], x.shape[4] // conv.stride[2])

    return run


def _inject_without_frames(injector: nn.Module, sharding: DiTSharding) -> Callable[..., torch.Tensor]:
    """``AudioInjector.forward`` that also takes zero latent frames (its reshape cannot): the
    residual of a rank that holds no frames is empty."""
    forward = injector.forward

    def run(k: int, noisy: torch.Tensor, audio_tokens: torch.Tensor, audio_global: torch.Tensor) -> torch.Tensor:
        if audio_tokens.shape[1] > 0:
            return forward(k, noisy, audio_tokens, audio_global)
        if sharding.weights_sharded:
            # The other ranks all-gather this injector's weight shards (a collective this rank
            # must join): run it on one dummy frame of one token and drop the result.
            b, d = noisy.shape[0], noisy.shape[-1]
            forward(k, noisy.new_zeros(b, 1, d), audio_tokens.new_zeros(b, 1, *audio_tokens.shape[2:]),
                    audio_global.new_zeros(b, 1, *audio_global.shape[2:]))
        return noisy.new_zeros(noisy.shape, dtype=torch.float32)

    return run


def is_parallelized(dit: S2VDiT) -> bool:
    return dit.sharding is not None


def parallelize_dit(dit: S2VDiT, ctx: ParallelContext) -> S2VDiT:
    """Make ``dit`` (built, weights loaded, on ``ctx.device``) run on ``ctx``'s group, in place.

    World size 1 without weight sharding: returns ``dit`` unchanged.
    """
    dims = ctx.dims
    dims.validate(dit.cfg)
    if is_parallelized(dit):
        raise ValueError("this DiT is already parallelized")
    if ctx.is_trivial:
        return dit
    engine = resolve_engine(dims.attention_engine)
    sharding = DiTSharding(ctx, engine, dit)
    for blk in dit.blocks:
        blk.self_attn.attn_fn = sharding.self_attention(blk.self_attn.attn_fn)
    dit.patch_embedding.forward = _embed_without_frames(dit.patch_embedding)
    dit.audio_injector.forward = _inject_without_frames(dit.audio_injector, sharding)
    if dims.shard_weights:
        from parallel.fsdp import shard_dit_weights

        sharding.weights_sharded = shard_dit_weights(dit, ctx)
    dit.sharding = sharding
    log.info("parallel DiT: %s; self-attention engine %s (requested %r): ulysses all-to-all %s, ring "
             "batch_isend_irecv + log-sum-exp merge; frame-local audio injection", dims.describe(), engine,
             dims.attention_engine, "yunchang SeqAllToAll4D" if engine == "yunchang" else "all_to_all_single")
    return dit


def deparallelize_dit(dit: S2VDiT) -> S2VDiT:
    """Undo :func:`parallelize_dit` (in place) for a model whose weights are not sharded."""
    sharding = dit.sharding
    if sharding is None:
        return dit
    if sharding.weights_sharded:
        raise ValueError("the weights of this DiT are sharded (FSDP2): build and load a new model instead")
    for blk in dit.blocks:
        blk.self_attn.attn_fn = blk.self_attn.attn_fn.local_attn
    del dit.patch_embedding.forward  # the class's own forward again
    del dit.audio_injector.forward
    dit.sharding = None
    return dit


__all__ = ["DiTSharding", "ShardedCondition", "is_parallelized", "parallelize_dit", "deparallelize_dit"]
