"""Fused implementation of the DiT's glue (the methods of ``render.model.dit.layers.TorchGlue``).

Per block this replaces about twenty elementwise torch kernels (and the [B, L, D] gathers of
the two-segment modulation) by five passes over the residual stream:

    modulate            LN(x) * (1 + scale) + shift            -> bf16 input of q/k/v
    gated_residual_norm x += gate1 * attn;  norm3(x)           -> bf16 input of the cross-attention
    residual_modulate   x += cross;  LN(x) * (1 + scale2) + shift2 -> bf16 input of the FFN
    ffn                 GELU fused into the first matmul (cuBLASLt epilogue) or into the fp8
                        quantisation of its output
    gated_residual      x += gate2 * ffn

plus RMSNorm + RoPE of q and k in one pass each. Anything the kernels do not cover (CPU tensors,
other dtypes or layouts) goes to the reference object given at construction.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kernels.fp8 import FP8Linear, quantize_rows
from kernels.norms import residual_layer_norm
from kernels.rope import rms_norm_rope
from kernels.triton_support import use_triton


class FusedGlue:
    """Drop-in for ``TorchGlue`` whose outputs feed linears in ``linear_dtype``."""

    def __init__(self, reference, linear_dtype: torch.dtype = torch.bfloat16):
        self.reference = reference
        self.linear_dtype = linear_dtype

    def _fused(self, x: torch.Tensor) -> bool:
        return use_triton(x) and x.dtype == torch.float32 and x.dim() == 3 and x.is_contiguous()

    def modulate(self, x, n_first, shift, scale, eps):
        if not self._fused(x):
            return self.reference.modulate(x, n_first, shift, scale, eps)
        return residual_layer_norm(x, n_first=n_first, a=1 + scale.float(), b=shift, eps=eps,
                                   out_dtype=self.linear_dtype)[1]

    def gated_residual(self, x, y, n_first, gate):
        if not self._fused(x):
            return self.reference.gated_residual(x, y, n_first, gate)
        return residual_layer_norm(x, y.contiguous(), gate, n_first=n_first, norm=False)[0]

    def gated_residual_norm(self, x, y, n_first, gate, weight, bias, eps):
        if not self._fused(x):
            return self.reference.gated_residual_norm(x, y, n_first, gate, weight, bias, eps)
        return residual_layer_norm(x, y.contiguous(), gate, n_first=n_first, a=weight, b=bias, eps=eps,
                                   out_dtype=self.linear_dtype)

    def residual_modulate(self, x, y, n_first, shift, scale, eps):
        if not self._fused(x):
            return self.reference.residual_modulate(x, y, n_first, shift, scale, eps)
        return residual_layer_norm(x, y.contiguous(), n_first=n_first, a=1 + scale.float(), b=shift, eps=eps,
                                   out_dtype=self.linear_dtype)

    def rms_norm(self, x, norm):
        if not (use_triton(x) and x.dim() == 3):
            return self.reference.rms_norm(x, norm)
        return rms_norm_rope(x.contiguous(), norm.weight, norm.eps)

    def rms_norm_rope(self, x, norm, cos, sin, num_heads):
        if not (use_triton(x) and x.dim() == 3):
            return self.reference.rms_norm_rope(x, norm, cos, sin, num_heads)
        b, n, _ = x.shape
        return rms_norm_rope(x.contiguous(), norm.weight, norm.eps, cos, sin).view(b, n, num_heads, -1)

    def ffn(self, ffn: nn.Sequential, y: torch.Tensor) -> torch.Tensor:
        first, act, second = ffn[0], ffn[1], ffn[2]
        tanh_gelu = isinstance(act, nn.GELU) and act.approximate == "tanh"
        if not (use_triton(y) and tanh_gelu):
            return self.reference.ffn(ffn, y)
        lead = y.shape[:-1]
        if isinstance(first, FP8Linear) and isinstance(second, FP8Linear):
            h = first(y.to(first.input_dtype))
            hq, hs = quantize_rows(h.reshape(-1, h.shape[-1]), gelu=True)
            return second.matmul_quantized(hq, hs).view(*lead, second.out_features)
        if isinstance(first, nn.Linear) and first.bias is not None and first.weight.dtype in (
                torch.bfloat16, torch.float16):
            # GELU(tanh) in the cuBLASLt epilogue: one less pass over the [tokens, ffn_dim] hidden
            y2 = y.reshape(-1, y.shape[-1]).to(first.weight.dtype)
            h = torch._addmm_activation(first.bias, y2, first.weight.t(), use_gelu=True)
            return second(h.to(second.weight.dtype) if isinstance(second, nn.Linear) else h).view(*lead, -1)
        return self.reference.ffn(ffn, y)
