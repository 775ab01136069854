"""Building blocks of the S2V DiT (SPEC §2.5–2.9), written for one device.

Precision follows the official bf16 run: linears run in the weight dtype, while norms,
modulation, gates and the residual stream stay float32. In float32 mode everything is float32.
Parameter names equal the official checkpoint's.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.attention import AttentionFn, attention

from .rope import apply_rope_reference


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Run a linear layer in its weight dtype (autocast-like), whatever x's dtype."""
    return layer(x.to(layer.weight.dtype))


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
    """[cos(t w), sin(t w)] with w_i = 10000^(-i/half), computed in float64 (SPEC §2.5)."""
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
    seg = _segment_index(x.shape[1], n_first, x.device)
    return y * (1 + scale[:, seg]) + shift[:, seg]


def gate_segments(x: torch.Tensor, n_first: int, gate: torch.Tensor) -> torch.Tensor:
    seg = _segment_index(x.shape[1], n_first, x.device)
    return x.float() * gate[:, seg]


def _segment_index(length: int, n_first: int, device: torch.device) -> torch.Tensor:
    idx = torch.ones(length, dtype=torch.long, device=device)
    idx[: max(0, min(n_first, length))] = 0
    return idx


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        # Replaceable by kernels/ (backend choice) and parallel/ (sequence-parallel attention).
        self.attn_fn: AttentionFn = attention
        self.rope_fn = apply_rope_reference

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.norm_q(linear(self.q, x)).view(b, n, self.num_heads, -1)
        k = self.norm_k(linear(self.k, x)).view(b, n, self.num_heads, -1)
        v = linear(self.v, x).view(b, n, self.num_heads, -1)
        q, k = self.rope_fn(q, cos, sin), self.rope_fn(k, cos, sin)
        out = self.attn_fn(q, k, v)
        return linear(self.o, out.flatten(2))


class CrossAttention(nn.Module):
    """Unmasked cross-attention with q/k RMSNorm (text context, and per-frame audio tokens)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.attn_fn: AttentionFn = attention

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the context; constant over a clip, so callers may cache them."""
        b, m, _ = context.shape
        k = self.norm_k(linear(self.k, context)).view(b, m, self.num_heads, -1)
        v = linear(self.v, context).view(b, m, self.num_heads, -1)
        return k, v

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.norm_q(linear(self.q, x)).view(b, n, self.num_heads, -1)
        k, v = kv if kv is not None else self.project_context(context)
        out = self.attn_fn(q, k, v)
        return linear(self.o, out.flatten(2))


class S2VBlock(nn.Module):
    """One transformer block with two-segment modulation (SPEC §2.7)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / math.sqrt(dim))
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

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
        y = modulate_segments(x, n_noisy, shift1, scale1, self.eps)
        x = x + gate_segments(self.self_attn(y, cos, sin), n_noisy, gate1)
        normed = F.layer_norm(
            x.float(), (x.shape[-1],), self.norm3.weight.float(), self.norm3.bias.float(), self.eps
        )
        x = x + self.cross_attn(normed, context=context, kv=context_kv).float()
        y = modulate_segments(x, n_noisy, shift2, scale2, self.eps)
        y = linear(self.ffn[2], self.ffn[1](linear(self.ffn[0], y)))
        return x + gate_segments(y, n_noisy, gate2)


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
