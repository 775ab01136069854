"""Whether the fused Triton kernels can run for a tensor, decided without importing Triton on CPU."""

from __future__ import annotations

import functools

import torch


@functools.cache
def triton_status() -> tuple[bool, str]:
    """(usable, why): Triton is importable and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import triton  # noqa: F401  (imported for the check; kernels import it lazily)
    except ImportError as exc:
        return False, f"triton is not importable ({exc})"
    return True, f"triton {triton.__version__}"


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when every tensor is on a CUDA device and Triton is usable."""
    return all(t.is_cuda for t in tensors) and triton_status()[0]


def kernels():
    """The Triton kernel module (imported on first use)."""
    from kernels import _triton_kernels

    return _triton_kernels
