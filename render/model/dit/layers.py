"""Building blocks of the S2V DiT, written for one device.

Precision follows the official bf16 run: linears run in the weight dtype, while norms,
modulation, gates and the residual stream stay float32. In float32 mode everything is float32.
Parameter names equal the official checkpoint's.

The elementwise and normalisation work between the matmuls goes through a ``glue`` object on
each block and attention module (:class:`TorchGlue`, plain torch, is the reference);
``kernels.select.optimize_dit`` swaps in fused GPU kernels with the same methods, as it and
``parallel/`` swap ``attn_fn``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.attention import AttentionFn, attention
from render.model.dit.rope import apply_rope_reference


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a linear layer in its weight dtype (autocast-like), whatever x's dtype.

    A layer whose weights are not in its input dtype (the fp8 linears of ``kernels.fp8``, which
    quantise their bf16 input themselves) names that dtype in ``input_dtype``.
    """
    dtype = getattr(layer, "input_dtype", None) or layer.weight.dtype
    return layer(x.to(dtype))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (y.to(x.dtype) * self.weight).to(x.dtype)


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Non-affine LayerNorm over the last dim, in float32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos(t w), sin(t w)] with w_i = 10000^(-i/half), computed in float64 (as the official code)."""
    half = dim // 2
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    arg = t.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1).float()


def modulate_segments(
    x: torch.Tensor, n_first: int, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift with two variants along the sequence.

    ``shift``/``scale`` are [B, 2, D]: variant 0 for the first ``n_first`` tokens (noisy latents),
    variant 1 for the rest (reference and motion tokens, modulated with t = 0).
    """
    y = layer_norm(x, eps)
    length = x.shape[1]
    return y * (1 + _per_token(scale, length, n_first)) + _per_token(shift, length, n_first)


def gate_segments(x: torch.Tensor, n_first: int, gate: torch.Tensor) -> torch.Tensor:
    return x.float() * _per_token(gate, x.shape[1], n_first)


def _per_token(v: torch.Tensor, length: int, n_first: int) -> torch.Tensor:
    """[B, 2, D] -> [B, length, D]: variant 0 for the first n_first tokens, variant 1 after.

    Built from two broadcast views rather than an index gather: same values, and its gradient
    (training the tiny model) is a cheap sum instead of a scatter-add."""
    n = max(0, min(n_first, length))
    return torch.cat([v[:, :1].expand(-1, n, -1), v[:, 1:2].expand(-1, length - n, -1)], dim=1)


class TorchGlue:
    """The work between a block's matmuls, in plain torch: the reference for ``kernels/``.

    Outputs that feed a linear layer may come back in any float dtype (``linear`` casts them to
    the weight dtype); residual-stream outputs are float32 like the stream. A fused replacement
    must compute the same function within the rounding of the linear's input dtype.
    """

    def modulate(self, x: torch.Tensor, n_first: int, shift: torch.Tensor, scale: torch.Tensor,
                 eps: float) -> torch.Tensor:
        return modulate_segments(x, n_first, shift, scale, eps)

    def gated_residual(self, x: torch.Tensor, y: torch.Tensor, n_first: int, gate: torch.Tensor) -> torch.Tensor:
        return x + gate_segments(y, n_first, gate)

    def gated_residual_norm(
        self, x: torch.Tensor, y: torch.Tensor, n_first: int, gate: torch.Tensor,
        weight: torch.Tensor, bias: torch.Tensor, eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + gate * y, affine LayerNorm of that sum)."""
        x = self.gated_residual(x, y, n_first, gate)
        return x, F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps)

    def residual_modulate(
        self, x: torch.Tensor, y: torch.Tensor, n_first: int, shift: torch.Tensor, scale: torch.Tensor,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + y, modulated LayerNorm of that sum)."""
        x = x + y.float()
        return x, modulate_segments(x, n_first, shift, scale, eps)

    def rms_norm(self, x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        return norm(x)

    def rms_norm_rope(self, x: torch.Tensor, norm: RMSNorm, cos: torch.Tensor, sin: torch.Tensor,
                      num_heads: int) -> torch.Tensor:
        """RMSNorm over the whole width, then RoPE per head: [B, L, H*D] -> [B, L, H, D]."""
        b, n, _ = x.shape
        return apply_rope_reference(norm(x).view(b, n, num_heads, -1), cos, sin)

    def ffn(self, ffn: nn.Sequential, y: torch.Tensor) -> torch.Tensor:
        return linear(ffn[2], ffn[1](linear(ffn[0], y)))


TORCH_GLUE = TorchGlue()


class _QKVOAttention(nn.Module):
    """q/k/v/o projections with q/k RMSNorm (the official parameter names)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        # Replaceable by kernels/ (backend choice, fused glue) and parallel/ (sequence-parallel attention).
        self.attn_fn: AttentionFn = attention
        self.glue = TORCH_GLUE


class SelfAttention(_QKVOAttention):

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.glue.rms_norm_rope(linear(self.q, x), self.norm_q, cos, sin, self.num_heads)
        k = self.glue.rms_norm_rope(linear(self.k, x), self.norm_k, cos, sin, self.num_heads)
        v = linear(self.v, x).view(b, n, self.num_heads, -1)
        out = self.attn_fn(q, k, v)
        return linear(self.o, out.flatten(2))


class CrossAttention(_QKVOAttention):
    """Unmasked cross-attention with q/k RMSNorm (text context, and per-frame audio tokens)."""

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the context; constant over a clip, so callers may cache them."""
        b, m, _ = context.shape
        k = self.glue.rms_norm(linear(self.k, context), self.norm_k).view(b, m, self.num_heads, -1)
        v = linear(self.v, context).view(b, m, self.num_heads, -1)
        return k, v

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.glue.rms_norm(linear(self.q, x), self.norm_q).view(b, n, self.num_heads, -1)
        k, v = kv if kv is not None else self.project_context(context)
        out = self.attn_fn(q, k, v)
        return linear(self.o, out.flatten(2))


class S2VBlock(nn.Module):
    """One transformer block with two-segment modulation (noisy tokens vs reference/motion tokens)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / math.sqrt(dim))
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.glue = TORCH_GLUE

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        n_noisy: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        context: torch.Tensor | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: [B, L, D] float32 residual stream; e0: [B, 2, 6, D] time projections for (t, 0)."""
        mod = (self.modulation.float()[:, None] + e0.float()).unbind(2)  # 6 x [B, 2, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod
        g = self.glue
        y = g.modulate(x, n_noisy, shift1, scale1, self.eps)
        x, normed = g.gated_residual_norm(
            x, self.self_attn(y, cos, sin), n_noisy, gate1, self.norm3.weight, self.norm3.bias, self.eps
        )
        x, y = g.residual_modulate(x, self.cross_attn(normed, context=context, kv=context_kv), n_noisy,
                                   shift2, scale2, self.eps)
        return g.gated_residual(x, g.ffn(self.ffn, y), n_noisy, gate2)


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / math.sqrt(dim))
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] noisy tokens; e: [B, D] time embedding of t (not t = 0)."""
        shift, scale = (self.modulation.float() + e.float()[:, None]).unbind(1)
        y = layer_norm(x, self.eps) * (1 + scale[:, None]) + shift[:, None]
        return linear(self.head, y).float()
