"""Out of GPU memory in one shot: one line naming the size, the memory and the options that fit.

An out-of-memory error at a given size, model and card repeats on every attempt, so it fails the
shot at once (``s2v run`` renders the next shot; ``render-shot`` exits with its own code) with a
message that says what to change. The caller frees the memory of the failed shot: it drops its
references (the exception's traceback holds the frames' tensors, so the message is built inside
the ``except`` and the exception is dropped before :func:`free_device_memory`).
"""

from __future__ import annotations

import gc
import os
import re

import torch

# Parts of the CUDA caching allocator's message, e.g. "Tried to allocate 2.00 GiB. GPU 0 has a
# total capacity of 79.19 GiB of which 1.06 GiB is free."
_TRIED = re.compile(r"Tried to allocate ([\d.]+ [KMGT]?i?B)")
_CAPACITY = re.compile(r"total capacity of ([\d.]+ [KMGT]?i?B) of which ([\d.]+ [KMGT]?i?B) is free")


ALLOCATOR_ENV = "PYTORCH_CUDA_ALLOC_CONF"
# Every name torch reads its allocator settings from (PYTORCH_ALLOC_CONF is the current one):
# any of them set, even empty, is the user's choice and left alone.
ALLOCATOR_ENVS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")
EXPANDABLE_SEGMENTS = "expandable_segments:True"


def prefer_expandable_segments() -> bool:
    """Ask PyTorch's CUDA caching allocator for expandable segments, unless the user configured
    the allocator (see ``ALLOCATOR_ENVS``; ``PYTORCH_ALLOC_CONF=expandable_segments:False`` opts
    out). Call before the process first allocates on a GPU (the setting is read then). With fixed
    segments, the freed buffers of one clip's sizes leave holes the next buffers do not fit: --fast
    at 720p on an 80 GB H100 failed to allocate 3.09 GiB with 14.5 GiB reserved but unused; with
    expandable segments it rendered. Returns whether it set the variable."""
    if any(name in os.environ for name in ALLOCATOR_ENVS):
        return False
    os.environ[ALLOCATOR_ENV] = EXPANDABLE_SEGMENTS
    return True


class ShotOutOfMemory(Exception):
    """A shot needed more GPU memory than its device had; the message says what to change.

    Not a RuntimeError: the run's failure rules read transport words in RuntimeErrors as a dead
    render group, and this is the shot's own failure."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's allocator error, or a library's allocation failure reported as a RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("CUDA out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text)


def memory_report(exc: BaseException, device: torch.device | str | None) -> str:
    """What the shot needed and what the device had: from the allocator's message, else from
    the device's counters."""
    text = str(exc)
    parts = []
    tried = _TRIED.search(text)
    if tried:
        parts.append(f"needed {tried.group(1)} more")
    cap = _CAPACITY.search(text)
    dev = torch.device(device) if device is not None else None
    on_cuda = dev is not None and dev.type == "cuda" and torch.cuda.is_available()
    if cap:
        parts.append(f"{cap.group(2)} free of {cap.group(1)}")
    elif on_cuda:
        free, total = torch.cuda.mem_get_info(dev)
        parts.append(f"{free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB")
    if on_cuda:
        parts.append(f"peak {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB allocated by this process")
    return ", ".join(parts) if parts else "no memory figures in the error"


def out_of_memory_message(exc: BaseException, *, width: int | None, height: int | None, size: str,
                          device: torch.device | str | None, offload: bool,
                          group_size: int | None = None) -> str:
    """One line: the render size, the memory figures and the options that would fit.

    ``group_size``: the render group's GPUs (``s2v run``); None for a single-device render."""
    where = f"{width}x{height}" if width and height else f"size {size}"
    options = []
    if not offload:
        options.append("--offload (DiT blocks streamed from host memory; same frames)")
    options.append(f"a smaller size than {size} (the manifest's size column or --size)")
    if group_size is not None:
        instead = " instead of --offload" if offload else ""  # offload streams to one GPU
        options.append(f"more GPUs per render group{instead} (--group-size {2 * group_size}; each GPU then "
                       "holds a share of the activations)")
    return (f"out of GPU memory rendering {where} ({memory_report(exc, device)}); "
            f"options that fit: {'; '.join(options)}")


def free_device_memory(device: torch.device | str | None) -> None:
    """Return the failed shot's cached blocks to the driver once nothing refers to them."""
    gc.collect()
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
