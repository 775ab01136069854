"""q/k RMSNorm and 3-D RoPE in one pass.

The official code rotates q and k with a complex float64 table; the DiT keeps the same angles
as a float32 cos/sin pair per token and rotary pair ([L, head_dim / 2], built once per clip by
``S2VDiT.prepare``) and rotates in float32 (``render.model.dit.rope.apply_rope_reference``). Here the
RMSNorm over the full width (rounded to the row dtype exactly as the torch module does) and the
rotation of every head run in one kernel: one read and one write of q (or k).
"""

from __future__ import annotations

import torch

from kernels.triton_support import kernels, use_triton

MAX_FUSED_WIDTH = 16384


def rms_norm_rope_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float,
    cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain torch: RMSNorm of x [B, L, W] (as ``render.model.dit.layers.RMSNorm``), then, with cos/sin
    [L, P], rotation of the interleaved pairs of each head (head_dim = 2P); x's dtype out."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    y = (y.to(x.dtype) * weight).to(x.dtype)
    if cos is None:
        return y
    b, n, w = x.shape
    p = cos.shape[-1]
    yf = y.float().view(b, n, w // (2 * p), p, 2)
    y0, y1 = yf[..., 0], yf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((y0 * c - y1 * s, y0 * s + y1 * c), dim=-1)
    return out.flatten(2).to(x.dtype)


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, eps: float,
    cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSNorm (and RoPE when cos/sin are given) of x [B, L, W]; returns [B, L, W] in x's dtype."""
    if x.dim() != 3:
        raise ValueError(f"rms_norm_rope: x must be [B, L, W], got {tuple(x.shape)}")
    b, n, w = x.shape
    if cos is not None:
        if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[0] != n or w % (2 * cos.shape[1]):
            raise ValueError(f"rms_norm_rope: cos/sin {tuple(cos.shape)}/{tuple(sin.shape)} do not fit "
                             f"x {tuple(x.shape)}: expected [L={n}, head_dim/2] with head_dim dividing {w}")
    if not use_triton(x) or not x.is_contiguous() or w > MAX_FUSED_WIDTH or weight.shape != (w,):
        return rms_norm_rope_reference(x, weight, eps, cos, sin)
    out = torch.empty_like(x)
    k = kernels()
    block, warps = k.launch_config(w)
    rope = cos is not None
    if rope:
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
    k.rms_norm_rope_kernel[(b * n,)](
        x, weight, cos if rope else x, sin if rope else x, out,
        n, w, eps,
        HALF_HEAD=cos.shape[1] if rope else 1, HAS_ROPE=rope, BLOCK=block, num_warps=warps,
    )
    return out
