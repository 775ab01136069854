"""Opt-in fp8 (e4m3) linear layers: per-output-channel weight scales, per-token activation scales.

``y = (q_x * s_x[m]) @ (q_w * s_w[n])^T + bias`` with q = round_e4m3(value * 448 / amax) and
scale = amax / 448 over the row. On Hopper/Ada GPUs (sm89+) the product runs through
``torch._scaled_mm`` (fp8 tensor cores, float32 accumulation, bf16 out); elsewhere the same
quantised arithmetic runs as a dequantised float32 matmul (the reference), so the error of the
mode can be measured on any machine.

Three inputs of a block's self-attention (q, k, v) share one activation: the quantised copy of
the last activation is kept (by weak reference, so a freed tensor can never match) and reused.
"""

from __future__ import annotations

import functools
import logging
import weakref

import torch
import torch.nn as nn

from kernels.triton_support import kernels, use_triton

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
MIN_AMAX = 1e-12


def quantize_rows_reference(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q [M, K] fp8 e4m3, scale [M] float32) with q * scale ~ x (row-wise amax scaling).

    ``gelu``: apply GELU(tanh) first, in x's dtype, as ``nn.GELU(approximate="tanh")`` would.
    """
    if gelu:
        x = torch.nn.functional.gelu(x, approximate="tanh")
    xf = x.float()
    amax = xf.abs().amax(dim=-1).clamp_min(MIN_AMAX)
    q = (xf * (FP8_MAX / amax)[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, amax / FP8_MAX


def quantize_rows(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused (Triton) version of :func:`quantize_rows_reference` on CUDA; the reference elsewhere."""
    if x.dim() != 2:
        raise ValueError(f"quantize_rows: x must be [M, K], got {tuple(x.shape)}")
    if not use_triton(x) or x.stride(-1) != 1 or x.shape[-1] > 16384:
        return quantize_rows_reference(x, gelu)
    m, k_dim = x.shape
    q = torch.empty((m, k_dim), dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty(m, dtype=torch.float32, device=x.device)
    k = kernels()
    block, warps = k.launch_config(k_dim)
    k.quantize_rows_kernel[(m,)](x, q, scale, k_dim, x.stride(0), APPLY_GELU=gelu, BLOCK=block, num_warps=warps)
    return q, scale


class _LastQuantized:
    """The quantised copy of the most recent activation (weakly keyed by the tensor object)."""

    def __init__(self) -> None:
        self._ref: weakref.ref | None = None
        self._version = -1
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._ref is not None and self._ref() is x and _version(x) == self._version:
            return self._value
        return None

    def put(self, x: torch.Tensor, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._ref, self._version, self._value = weakref.ref(x), _version(x), value

    def clear(self) -> None:
        self._ref, self._value = None, None


def _version(x: torch.Tensor) -> int:
    """In-place modification counter; inference-mode tensors have none (-1: identity only, which
    holds for the DiT, where a linear's input is never modified between the q/k/v projections)."""
    try:
        return x._version
    except RuntimeError:
        return -1


_last = _LastQuantized()


@functools.cache
def scaled_mm_supported(device_index: int) -> bool:
    """fp8 tensor-core matmuls need compute capability 8.9 or newer."""
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


class FP8Linear(nn.Module):
    """A frozen ``nn.Linear`` stored as fp8 e4m3 with one float32 scale per output channel."""

    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 out_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features = weight_q.shape[1], weight_q.shape[0]
        self.out_dtype = out_dtype
        # what render.model.dit.layers.linear casts the input to: the replaced layer's dtype, so the
        # rest of the model sees the same dtypes as before
        self.input_dtype = out_dtype
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> FP8Linear:
        w = layer.weight.detach()
        q, scale = quantize_rows_reference(w)
        bias = layer.bias.detach() if layer.bias is not None else None
        return cls(q, scale, bias, out_dtype=w.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8_e4m3, per-channel scales"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cached = _last.get(x)
        if cached is None:
            cached = quantize_rows(x.reshape(-1, self.in_features))
            _last.put(x, cached)
        return self.matmul_quantized(*cached).view(*x.shape[:-1], self.out_features)

    def matmul_quantized(self, xq: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        """[M, K] fp8 activations with their row scales -> [M, N] in out_dtype."""
        if xq.is_cuda and scaled_mm_supported(xq.device.index or 0):
            return _scaled_mm(xq, x_scale, self.weight_q, self.weight_scale, self.bias, self.out_dtype)
        return matmul_quantized_reference(xq, x_scale, self.weight_q, self.weight_scale, self.bias, self.out_dtype)


def matmul_quantized_reference(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                               bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """The fp8 product written as float32 arithmetic on the dequantised operands."""
    out = (xq.float() * x_scale[:, None]) @ (wq.float() * w_scale[:, None]).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


_bias_in_scaled_mm: dict[int, bool] = {}


def _scaled_mm(xq, x_scale, wq, w_scale, bias, out_dtype):
    dev = xq.device.index or 0
    kwargs = dict(scale_a=x_scale[:, None], scale_b=w_scale[None, :], out_dtype=out_dtype)
    if bias is not None and _bias_in_scaled_mm.get(dev, True):
        try:
            return torch._scaled_mm(xq, wq.t(), bias=bias, **kwargs)
        except RuntimeError as exc:  # some torch builds refuse a bias with row-wise scales
            _bias_in_scaled_mm[dev] = False
            log.info("torch._scaled_mm refuses a bias with row-wise scales (%s); adding it separately", exc)
    out = torch._scaled_mm(xq, wq.t(), **kwargs)
    return out + bias if bias is not None else out


def convert_linears_to_fp8(modules: list[tuple[nn.Module, str]], device: torch.device | None = None) -> int:
    """Replace ``getattr(parent, name)`` (an nn.Linear) by its FP8Linear, freeing the original
    weight. ``device``: where each layer is quantised and its fp8 weights kept (default: where the
    layer is). Returns how many layers were converted."""
    n = 0
    for parent, name in modules:
        layer = getattr(parent, name) if not isinstance(parent, nn.Sequential) else parent[int(name)]
        if not isinstance(layer, nn.Linear):
            continue
        # One layer's high-precision weight on the device at a time: transient, the same few sizes
        # over and over, so the allocator reuses it and the fp8 weights end up back to back.
        fp8 = FP8Linear.from_linear(layer if device is None else layer.to(device))
        if isinstance(parent, nn.Sequential):
            parent[int(name)] = fp8
        else:
            setattr(parent, name, fp8)
        n += 1
    _last.clear()
    return n
