"""Residual add, gate and LayerNorm with the two-segment modulation, fused in one pass.

One call computes, per token row of a float32 residual stream ``x`` [B, L, D]:

    x' = x + gate[b, seg] * y          (if y is given; gate optional)
    out = LayerNorm(x') * a[b, seg] + b_[b, seg]   (if norm; a, b_ optional)

where ``seg`` is 0 for the first ``n_first`` tokens of a sample and 1 for the rest (noisy latents
versus reference/motion tokens). The modulation ``LN(x)(1 + scale) + shift`` is
``a = 1 + scale, b_ = shift``; the affine ``norm3`` is ``a = weight, b_ = bias`` with one
segment. On CUDA this is one Triton kernel reading ``x`` and ``y`` once and writing ``x'`` and
``out`` once; elsewhere the same arithmetic runs in torch (:func:`residual_layer_norm_reference`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.triton_support import kernels, use_triton

MAX_FUSED_WIDTH = 16384  # one row per program, held in registers


def _segments(t: torch.Tensor | None, batch: int, width: int, name: str) -> torch.Tensor | None:
    """A per-(batch, segment) vector as float32 [B or 1, S, D] with a contiguous last dim."""
    if t is None:
        return None
    t = t.float()
    if t.dim() == 1:
        t = t[None, None]
    elif t.dim() == 2:
        t = t[:, None]
    if t.dim() != 3 or t.shape[-1] != width or t.shape[0] not in (1, batch) or t.shape[1] not in (1, 2):
        raise ValueError(f"{name}: shape {tuple(t.shape)}, expected [D], [B, D] or [B, S, D] with "
                         f"S in (1, 2), B = {batch} (or 1), D = {width}")
    return t if t.stride(-1) == 1 else t.contiguous()


def _seg_index(length: int, n_first: int, device: torch.device) -> torch.Tensor:
    idx = torch.ones(length, dtype=torch.long, device=device)
    idx[: max(0, min(n_first, length))] = 0
    return idx


def _pick(t: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """[B, S, D] -> per token [B, L, D] (S = 1 broadcasts)."""
    return t if t.shape[1] == 1 else t[:, seg]


def residual_layer_norm_reference(
    x: torch.Tensor, y: torch.Tensor | None = None, gate: torch.Tensor | None = None, *,
    n_first: int = 0, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
    eps: float = 1e-6, norm: bool = True, out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain torch version of :func:`residual_layer_norm` (same signature)."""
    bsz, length, width = x.shape
    seg = _seg_index(length, n_first, x.device)
    x = x.float()
    if y is not None:
        yf = y.float()
        g = _segments(gate, bsz, width, "gate")
        x = x + (yf * _pick(g, seg) if g is not None else yf)
    if not norm:
        return x, None
    h = F.layer_norm(x, (width,), eps=eps)
    av, bv = _segments(a, bsz, width, "a"), _segments(b, bsz, width, "b")
    if av is not None:
        h = h * _pick(av, seg) + _pick(bv, seg)
    return x, h.to(out_dtype)


def residual_layer_norm(
    x: torch.Tensor, y: torch.Tensor | None = None, gate: torch.Tensor | None = None, *,
    n_first: int = 0, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
    eps: float = 1e-6, norm: bool = True, out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x' float32 [B, L, D], out [B, L, D] in out_dtype or None); see the module docstring.

    ``x`` must be float32 (the residual stream); ``y`` any float dtype of the same shape.
    Without ``y``, x' is ``x`` itself (nothing is written).
    """
    if x.dim() != 3:
        raise ValueError(f"residual_layer_norm: x must be [B, L, D], got {tuple(x.shape)}")
    if (a is None) != (b is None):
        raise ValueError("residual_layer_norm: give both a and b, or neither")
    tensors = [t for t in (x, y) if t is not None]
    if (not use_triton(*tensors) or x.dtype != torch.float32 or x.shape[-1] > MAX_FUSED_WIDTH
            or any(not t.is_contiguous() for t in tensors) or (y is not None and y.shape != x.shape)):
        return residual_layer_norm_reference(x, y, gate, n_first=n_first, a=a, b=b, eps=eps, norm=norm,
                                             out_dtype=out_dtype)
    bsz, length, width = x.shape
    g = _segments(gate, bsz, width, "gate")
    av, bv = _segments(a, bsz, width, "a"), _segments(b, bsz, width, "b")
    x_out = torch.empty_like(x) if y is not None else x
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device) if norm else None
    k = kernels()
    block, warps = k.launch_config(width)
    dummy = x  # never read when its flag is off

    def strides(t: torch.Tensor | None) -> tuple[int, int]:
        if t is None:
            return 0, 0
        return (t.stride(0) if t.shape[0] > 1 else 0), (t.stride(1) if t.shape[1] > 1 else 0)

    k.residual_layer_norm_kernel[(bsz * length,)](
        x, y if y is not None else dummy, x_out, out if out is not None else dummy,
        g if g is not None else dummy, av if av is not None else dummy, bv if bv is not None else dummy,
        length, width, max(0, n_first), eps,
        *strides(g), *strides(av), *strides(bv),
        HAS_Y=y is not None, HAS_GATE=g is not None, WRITE_X=y is not None,
        DO_NORM=norm, HAS_AFFINE=av is not None, BLOCK=block, num_warps=warps,
    )
    return x_out, out
