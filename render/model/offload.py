"""Block offload: the DiT's transformer blocks live in (pinned) host memory and are streamed to
the device one block ahead of the forward, for cards smaller than the bf16 model (30.4 GiB).

:func:`offload_dit` changes where a built :class:`~render.model.dit.model.S2VDiT`'s block
weights live, not the model or its forward (as ``parallel/`` applies sharding to an unchanged
model). Each block's parameters and buffers are packed into one flat host buffer, so a block
travels as one host-to-device copy. Forward pre-hooks on every block:

* wait for the block's copy (started while the previous block ran) and point its tensors at
  the device copy;
* start the copy of the next ``ahead`` blocks on a side CUDA stream, so it overlaps this
  block's compute (after the last block: the first ones, ready for the next forward);

and a forward hook (also when the forward raises) points the tensors back at the host buffer
and drops the device copy. Everything else (embeddings, audio encoder and injectors, head)
stays resident. At most ``ahead + 1`` blocks are on the device at a time.

The text keys/values a clip caches in ``prepare`` are projected by each block outside its
forward, so ``project_context`` is wrapped the same way. Only weights move: the output is bit
for bit the model's. On the CPU the same mechanism streams from the packed "host" buffer to a
working copy (no side stream), which is how the tests check it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

ALIGN = 256  # bytes between tensors in a packed block: every dtype's alignment, and CUDA's


@dataclass(frozen=True)
class _Slot:
    """One tensor of a block: where it is in its module and in the packed buffer."""

    module: nn.Module
    name: str
    is_param: bool
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: torch.Size

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        return flat[self.offset: self.offset + self.nbytes].view(self.dtype).view(self.shape)

    def point_at(self, flat: torch.Tensor) -> None:
        t = self.view(flat)
        if self.is_param:
            getattr(self.module, self.name).data = t
        else:
            self.module._buffers[self.name] = t


class _PackedBlock:
    """A block's parameters and buffers in one flat host buffer; the module's tensors are views
    of it while the block is not on the device."""

    def __init__(self, block: nn.Module):
        self.tensors: list[torch.Tensor] = []
        slots, offset = [], 0
        for mod in block.modules():
            named = [(n, True, p) for n, p in mod.named_parameters(recurse=False)]
            named += [(n, False, b) for n, b in mod.named_buffers(recurse=False) if b is not None]
            for name, is_param, t in named:
                nbytes = t.numel() * t.element_size()
                slots.append(_Slot(mod, name, is_param, offset, nbytes, t.dtype, t.shape))
                self.tensors.append(t)
                offset += -(-nbytes // ALIGN) * ALIGN
        self.slots: list[_Slot] = slots
        self.nbytes = offset
        self.host = torch.empty(0, dtype=torch.uint8)

    def pack_into(self, host: torch.Tensor) -> None:
        """Copy the block into ``host`` (uint8, ``nbytes`` long) and keep only that copy."""
        self.host = host
        for slot, t in zip(self.slots, self.tensors):
            slot.view(host).copy_(t.detach())
            slot.point_at(host)
        self.tensors = []  # the original tensors are freed here (nothing else holds them)

    def point_at(self, flat: torch.Tensor) -> None:
        for slot in self.slots:
            slot.point_at(flat)


def _blocks_per_page(block_bytes: int, most: int = 8) -> int:
    """How many blocks share one pinned host allocation. torch's pinned-memory allocator rounds
    every allocation up to a power of two (a 0.65 GiB release block would take 1 GiB), so blocks
    are grouped into pages whose total wastes the least of that rounding."""
    def waste(n: int) -> float:
        total = n * block_bytes
        return (1 << (total - 1).bit_length()) / total

    return min(range(1, most + 1), key=lambda n: (waste(n), n))


def _pack(blocks: list[_PackedBlock], pin: bool) -> None:
    per_page = _blocks_per_page(max((b.nbytes for b in blocks), default=1)) if pin else 1
    for start in range(0, len(blocks), per_page):
        group = blocks[start: start + per_page]
        page = torch.empty(sum(b.nbytes for b in group), dtype=torch.uint8, pin_memory=pin)
        offset = 0
        for b in group:
            b.pack_into(page[offset: offset + b.nbytes])
            offset += b.nbytes


class BlockOffload:
    """The streaming state of an offloaded DiT (installed by :func:`offload_dit`)."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device, ahead: int = 1):
        if ahead < 1:
            raise ValueError(f"offload: ahead={ahead}; expected >= 1 block streamed ahead")
        self.device = device
        self.ahead = min(ahead, max(1, len(blocks) - 1))
        cuda = device.type == "cuda"
        self.packed = [_PackedBlock(b) for b in blocks]
        _pack(self.packed, pin=cuda)
        self.copy_stream = torch.cuda.Stream(device) if cuda else None
        # index -> (device buffer, copy-done event or None); at most ahead + 1 entries
        self.on_device: dict[int, tuple[torch.Tensor, Any]] = {}
        self.active: dict[int, int] = {}  # index -> nesting depth of enter() (forward + project_context)
        self.copies = 0  # host-to-device block copies started (the tests count them)
        self.peak_blocks = 0  # most blocks on the device at once
        self.handles: list[Any] = []
        for i, blk in enumerate(blocks):
            self.handles.append(blk.register_forward_pre_hook(lambda _m, _a, i=i: self.enter(i)))
            self.handles.append(blk.register_forward_hook(lambda _m, _a, _o, i=i: self.leave(i), always_call=True))
            blk.cross_attn.project_context = self._streamed(i, blk.cross_attn.project_context)

    def _streamed(self, i: int, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            self.enter(i)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave(i)

        return run

    def prefetch(self, i: int) -> None:
        """Start copying block ``i`` to the device (nothing if it is there or on its way)."""
        if i in self.on_device:
            return
        packed = self.packed[i]
        # Allocated on the compute stream: the caching allocator may hand out the memory of a
        # block just released there, so the copy first waits for the compute queued so far.
        buf = torch.empty(packed.nbytes, dtype=torch.uint8, device=self.device)
        event = None
        if self.copy_stream is not None:
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.copy_stream):
                buf.copy_(packed.host, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.copy_stream)
        else:
            buf.copy_(packed.host)
        self.on_device[i] = (buf, event)
        self.copies += 1
        self.peak_blocks = max(self.peak_blocks, len(self.on_device))

    def enter(self, i: int) -> None:
        depth = self.active.get(i, 0)
        self.active[i] = depth + 1
        if depth:
            return  # project_context inside the block's own forward: already there
        self.prefetch(i)
        buf, event = self.on_device[i]
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        self.packed[i].point_at(buf)
        n = len(self.packed)
        for j in range(1, self.ahead + 1):
            self.prefetch((i + j) % n)

    def leave(self, i: int) -> None:
        depth = self.active.get(i, 0) - 1
        if depth > 0:
            self.active[i] = depth
            return
        self.active.pop(i, None)
        self.packed[i].point_at(self.packed[i].host)
        self.on_device.pop(i, None)  # back to the allocator, in the compute stream's order

    def release_all(self) -> None:
        """Drop every device copy (after an error, before the caller frees the cache)."""
        if self.copy_stream is not None:
            self.copy_stream.synchronize()  # a prefetch in flight still writes its buffer
        for i in list(self.active):
            self.packed[i].point_at(self.packed[i].host)
        self.active.clear()
        self.on_device.clear()

    def block_bytes(self) -> int:
        return max((p.nbytes for p in self.packed), default=0)


def offload_dit(dit: nn.Module, device: torch.device | str, ahead: int = 1) -> BlockOffload:
    """Keep ``dit``'s blocks in host memory, streamed to ``device`` around each block's forward;
    move everything else to ``device``. The model may come from any device (load it on the CPU
    when the whole model does not fit the card). Returns the installed state (``dit.offload``)."""
    device = torch.device(device)
    if getattr(dit, "offload", None) is not None:
        raise ValueError("offload_dit: this DiT is already offloaded")
    if getattr(dit, "sharding", None) is not None:
        raise ValueError("offload_dit: the DiT is parallelized over several devices; offload is for one device "
                         "(a render group of one GPU)")
    in_blocks = {id(t) for t in list(dit.blocks.parameters()) + list(dit.blocks.buffers())}
    resident = 0
    for mod in dit.modules():
        for p in mod.parameters(recurse=False):
            if id(p) not in in_blocks:
                p.data = p.data.to(device)
                resident += p.numel() * p.element_size()
        for name, b in list(mod.named_buffers(recurse=False)):
            if b is not None and id(b) not in in_blocks:
                mod._buffers[name] = b.to(device)
                resident += b.numel() * b.element_size()
    state = BlockOffload(dit.blocks, device, ahead)
    dit.offload = state
    if device.type == "cuda":
        torch.cuda.empty_cache()
    host = sum(p.nbytes for p in state.packed)
    log.info("offload: %d blocks (%.2f GiB) in %s host memory, streamed to %s %d ahead (%.2f GiB per block); "
             "%.2f GiB resident on the device", len(state.packed), host / 2**30,
             "pinned" if device.type == "cuda" else "plain", device, state.ahead, state.block_bytes() / 2**30,
             resident / 2**30)
    return state
