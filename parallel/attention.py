"""Sequence-parallel self-attention: Ulysses all-to-all inside, ring of key/value blocks across.

Each rank enters with its local tokens ``q, k, v [B, S, H, D]`` (S includes padding) and
leaves with the exact attention output for them over the whole sequence:

1. Ulysses (degree U): one all-to-all of the stacked q/k/v scatters the heads and gathers the
   sequence of the U ranks -> ``[B, U*S, H/U, D]``.
2. Ring (degree R): the gathered key/value block travels round the ring (``batch_isend_irecv``,
   the next block in flight while the current one is computed); partial outputs are merged
   exactly with their log-sum-exp.
3. The inverse all-to-all gives every rank its own tokens with all heads back.

Padding keys are removed from each block before the kernel runs (the :class:`KeyPlan`), so
the result is exact for any sequence length. The local kernel of the Ulysses-only path is the
block's own attention function (``kernels.attention`` picks cuDNN on Hopper); the ring path
needs the log-sum-exp, from the fused SDPA ops (cuDNN, flash, efficient on CUDA; flash on CPU).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from kernels.attention import AttentionFn, attention_reference
from parallel.comm import gather_heads_scatter_seq, scatter_heads_gather_seq
from parallel.context import ParallelContext
from parallel.layout import KeyPlan

log = logging.getLogger(__name__)

_LSE_KERNEL: dict[str, str] = {}  # device type -> chosen kernel
_EXCLUDED: set[tuple[str, str]] = set()


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked attention for [B, L, H, D] tensors -> (out [B, Lq, H, D] in q's dtype,
    log-sum-exp [B, H, Lq] float32)."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    dev = q.device.type
    kernel = _LSE_KERNEL.get(dev)
    if kernel is None:
        kernel = _pick_lse_kernel(qt, kt, vt)
    try:
        out, lse = _run_lse_kernel(kernel, qt, kt, vt)
    except RuntimeError as e:
        if kernel == "math":
            raise
        # A kernel can refuse a shape the small probe accepted: fall back to the next one.
        log.warning("ring attention kernel %s failed on %s (%s); choosing again", kernel,
                    tuple(qt.shape), str(e).splitlines()[0])
        _EXCLUDED.add((dev, kernel))
        _LSE_KERNEL.pop(dev, None)
        return attention_with_lse(q, k, v)
    return out.transpose(1, 2), lse.reshape(qt.shape[:3]).float()


def _run_lse_kernel(kernel: str, q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    aten = torch.ops.aten
    if kernel == "cudnn":
        r = aten._scaled_dot_product_cudnn_attention(q, k, v, None, True)
        return r[0], r[1]
    if kernel == "flash":
        r = aten._scaled_dot_product_flash_attention(q, k, v)
        return r[0], r[1]
    if kernel == "efficient":
        r = aten._scaled_dot_product_efficient_attention(q, k, v, None, True)
        return r[0], r[1][..., : q.shape[2]]
    if kernel == "cpu-flash":
        r = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        return r[0], r[1]
    # math: the reference in float32
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1) @ v.float()
    return out.to(q.dtype), lse


def _pick_lse_kernel(q, k, v) -> str:
    dev = q.device.type
    if dev == "cuda":
        major, _ = torch.cuda.get_device_capability(q.device)
        order = (["cudnn"] if major >= 9 else []) + ["flash", "efficient", "math"]
    else:
        order = ["cpu-flash", "math"]
    ref_out = ref_lse = None
    for name in order:
        if (dev, name) in _EXCLUDED:
            continue
        try:
            out, lse = _run_lse_kernel(name, q[:1, :1, :64], k[:1, :1, :64], v[:1, :1, :64])
        except (RuntimeError, NotImplementedError) as e:
            log.info("log-sum-exp attention kernel %s unavailable on %s: %s", name, dev, str(e).splitlines()[0])
            continue
        if ref_out is None:
            ref_out, ref_lse = _run_lse_kernel("math", q[:1, :1, :64], k[:1, :1, :64], v[:1, :1, :64])
        ok = torch.allclose(out.float(), ref_out.float(), atol=2e-2, rtol=2e-2) and torch.allclose(
            lse.reshape(ref_lse.shape).float(), ref_lse.float(), atol=2e-2, rtol=2e-2)
        if ok:
            _LSE_KERNEL[dev] = name
            log.info("ring attention kernel on %s: %s", dev, name)
            return name
        log.warning("log-sum-exp attention kernel %s on %s disagrees with the reference; skipped", name, dev)
    _LSE_KERNEL[dev] = "math"
    return "math"


def merge_partial(out: torch.Tensor | None, lse: torch.Tensor | None, out_i: torch.Tensor,
                  lse_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two softmax-normalised partial results over disjoint key sets (float32)."""
    out_i = out_i.float()
    if out is None:
        return out_i, lse_i
    new_lse = torch.logaddexp(lse, lse_i)
    w_old = torch.exp(lse - new_lse).transpose(1, 2).unsqueeze(-1)  # [B, L, H, 1]
    w_new = torch.exp(lse_i - new_lse).transpose(1, 2).unsqueeze(-1)
    return out * w_old + out_i * w_new, new_lse


class SequenceParallelAttention:
    """Replacement ``attn_fn`` of a self-attention module whose tokens are sharded.

    ``state.key_plan`` (set by the parallel DiT at the start of each forward) says which key
    positions of each ring chunk are padding.
    """

    def __init__(self, ctx: ParallelContext, local_attn: AttentionFn, state: SequenceShardState):
        self.ctx = ctx
        self.local_attn = local_attn
        self.state = state

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        plan = self.state.key_plan
        if plan is None:
            raise RuntimeError("sequence-parallel attention called outside a parallel denoise (no key plan)")
        ctx = self.ctx
        u, r = ctx.dims.ulysses, ctx.dims.ring
        if u > 1:
            qkv = scatter_heads_gather_seq(torch.stack([q, k, v]), ctx.ulysses_group, u)
            q, k, v = qkv.unbind(0)
        if r == 1:
            kc, vc = plan.valid_keys(0, k, v)
            out = self.local_attn(q, kc, vc)
        else:
            out = ring_attention(q, k, v, ctx, plan)
        return gather_heads_scatter_seq(out, ctx.ulysses_group, u)


class SequenceShardState:
    """Per-forward information shared by all attention modules of one parallel DiT."""

    def __init__(self) -> None:
        self.key_plan: KeyPlan | None = None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ParallelContext,
                   plan: KeyPlan) -> torch.Tensor:
    """q, k, v [B, L, H, D]: this ring member's chunk; returns attention over all chunks."""
    n, me = ctx.dims.ring, ctx.ring_rank
    send_to, recv_from = ctx.ring_ranks[(me + 1) % n], ctx.ring_ranks[(me - 1) % n]
    kv = torch.stack([k, v]).contiguous()
    out = lse = None
    for step in range(n):
        reqs, nxt = [], None
        if step < n - 1:
            nxt = torch.empty_like(kv)
            ops = [dist.P2POp(dist.isend, kv, send_to, ctx.ring_group),
                   dist.P2POp(dist.irecv, nxt, recv_from, ctx.ring_group)]
            reqs = dist.batch_isend_irecv(ops)
        src = (me - step) % n  # the chunk in hand came from ring member src
        kc, vc = plan.valid_keys(src, kv[0], kv[1])
        if kc.shape[1] > 0:
            out_i, lse_i = attention_with_lse(q, kc, vc)
            out, lse = merge_partial(out, lse, out_i, lse_i)
        for req in reqs:
            req.wait()
        if nxt is not None:
            kv = nxt
    if out is None:
        raise RuntimeError("ring attention found no valid keys in any chunk")
    return out.to(q.dtype)


__all__ = ["SequenceParallelAttention", "SequenceShardState", "attention_with_lse", "ring_attention",
           "merge_partial", "attention_reference"]
