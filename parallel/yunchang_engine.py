"""Optional attention engine: the Ulysses all-to-all of yunchang (the USP engine under xfuser).

Selected explicitly with ``ParallelDims(attention_engine="yunchang")``; ``"auto"`` selects this
package's own engine (see ``resolve_engine``). yunchang's ``SeqAllToAll4D`` runs on this
context's own Ulysses group (never yunchang's global ``set_seq_parallel_pg`` groups). The
attention on the gathered sequence and the ring across stay ours, because yunchang's kernels
take no key mask (padded sequences would not be exact) and its cuDNN/math variants return no
log-sum-exp for the ring merge.
"""

from __future__ import annotations

import logging

import torch

from parallel.attention import SequenceParallelAttention, ring_attention

log = logging.getLogger(__name__)


def yunchang_available() -> bool:
    try:
        import yunchang.comm.all_to_all  # noqa: F401  (pure Python, imports on CPU)
    except ImportError:
        return False
    return True


class YunchangUlyssesAttention(SequenceParallelAttention):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from yunchang.comm.all_to_all import SeqAllToAll4D

        plan = self.state.key_plan
        if plan is None:
            raise RuntimeError("sequence-parallel attention called outside a parallel denoise (no key plan)")
        ctx = self.ctx
        group = ctx.ulysses_group
        if ctx.dims.ulysses > 1:  # [B, S, H, D] -> [B, U*S, H/U, D]: scatter heads (2), gather sequence (1)
            q, k, v = (SeqAllToAll4D.apply(group, t.contiguous(), 2, 1) for t in (q, k, v))
        if ctx.dims.ring == 1:
            kc, vc = plan.valid_keys(0, k, v)
            out = self.local_attn(q, kc, vc)
        else:
            out = ring_attention(q, k, v, ctx, plan)
        if ctx.dims.ulysses > 1:
            out = SeqAllToAll4D.apply(group, out.contiguous(), 1, 2)
        return out


def resolve_engine(requested: str) -> str:
    """'auto' -> 'torch': our engine is exact with padded sequences and runs the best local
    kernel (cuDNN on Hopper), where yunchang's torch path uses flash; 'yunchang' must import."""
    if requested == "yunchang":
        if not yunchang_available():
            raise ValueError("attention_engine='yunchang' needs the yunchang package: "
                             "pip install 'yunchang>=0.6' (the project's 'parallel' extra)")
        return "yunchang"
    return "torch"
