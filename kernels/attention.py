"""The single attention entry point of the DiT, and the choice of backend.

Every attention in the model (self-attention, text cross-attention, per-frame audio attention)
calls :func:`attention` with tensors laid out ``[B, L, H, D]``. ``parallel/`` swaps in sequence-
parallel variants by replacing a module's ``attn_fn``; ``kernels/`` picks the fastest exact
backend once per process (cuDNN on Hopper, flash as fallback, plain SDPA math on CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_BACKEND_PREFERENCE = {
    # name -> torch SDPBackend names in priority order
    "cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "flash": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "efficient": ("EFFICIENT_ATTENTION", "MATH"),
    "math": ("MATH",),
    "default": None,
}
_chosen: dict[str, str] = {}


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention in float32, [B, L, H, D] layout; the parity reference."""
    scale = q.shape[-1] ** -0.5
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    w = torch.softmax((qf @ kf.transpose(-1, -2)) * scale, dim=-1)
    return (w @ vf).transpose(1, 2).to(q.dtype)


def choose_backend(device: torch.device | str) -> str:
    """Pick the attention backend for ``device`` once, log the choice, and remember it."""
    device = torch.device(device)
    key = device.type
    if key in _chosen:
        return _chosen[key]
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        backend = "cudnn" if major >= 9 and torch.backends.cudnn.is_available() else "flash"
    else:
        backend = "default"
    _chosen[key] = backend
    log.info("attention backend for %s: %s", key, backend)
    return backend


def set_backend(device_type: str, backend: str) -> None:
    if backend not in _BACKEND_PREFERENCE:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {sorted(_BACKEND_PREFERENCE)}")
    _chosen[device_type] = backend
    log.info("attention backend for %s set to %s", device_type, backend)


def _sdpa_context(backend: str):
    names = _BACKEND_PREFERENCE[backend]
    if names is None:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [getattr(SDPBackend, n) for n in names]
    try:
        return sdpa_kernel(backends, set_priority=True)
    except TypeError:  # older torch without set_priority
        return sdpa_kernel(backends)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for [B, L, H, D] tensors, unmasked, in q's dtype."""
    backend = choose_backend(q.device)
    with _sdpa_context(backend):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
