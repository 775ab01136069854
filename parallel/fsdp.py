"""Weight sharding of the DiT with FSDP2 (``torch.distributed.fsdp.fully_shard``).

The 40 transformer blocks (~14 B parameters) and the 12 audio injectors (~1.9 B) are sharded
across the ranks of one model replica, each block / injector part its own unit: a rank holds
1/N of their weights and all-gathers one unit at a time (each block's forward starts the
all-gather of the next block, so it overlaps this block's compute). The small remainder (embeddings, audio encoder, FramePack,
head) stays whole on every rank: every rank needs it in prepare() and it is < 2 % of the model.

Load the model on the CPU (or the meta device + load) and let this move the shards to the
GPU; a whole 14B model never has to fit one card.
"""

from __future__ import annotations

import logging

import torch.nn as nn

from parallel.context import ParallelContext
from render.model.dit.model import S2VDiT

log = logging.getLogger(__name__)


def sharded_units(dit: S2VDiT) -> list[nn.Module]:
    """The modules that become FSDP units, in the order a forward uses them."""
    units: list[nn.Module] = list(dit.blocks)
    units += list(dit.audio_injector.injector) + list(dit.audio_injector.injector_adain_layers)
    return units


def shard_dit_weights(dit: S2VDiT, ctx: ParallelContext) -> bool:
    """Shard the units over ``ctx.replica_group``; False when the replica is one rank (nothing
    to shard: the model is only moved to ``ctx.device``)."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    group = ctx.replica_group
    if group is None:
        log.info("weight sharding requested on a group of one rank: nothing to shard")
        dit.to(ctx.device)
        return False
    mesh = DeviceMesh.from_group(group, ctx.device.type)
    units = sharded_units(dit)
    in_units = {id(p) for u in units for p in u.parameters()}
    # Whole (replicated) parameters and buffers go to the device first; fully_shard moves each
    # unit's shards there itself (one unit whole on the device at a time).
    for p in dit.parameters():
        if id(p) not in in_units and p.device != ctx.device:
            p.data = p.data.to(ctx.device)
    for mod in dit.modules():
        for bname, buf in list(mod.named_buffers(recurse=False)):
            if buf.device != ctx.device:
                mod._buffers[bname] = buf.to(ctx.device)
    whole = sum(p.numel() for p in dit.parameters() if id(p) not in in_units)
    for u in units:
        fully_shard(u, mesh=mesh, reshard_after_forward=True)
    for blk, nxt in zip(dit.blocks, list(dit.blocks)[1:]):
        blk.register_forward_pre_hook(_prefetch(nxt))
    log.info("FSDP2: %d units sharded over %d ranks; %.1f M parameters kept whole on every rank",
             len(units), len(ctx.replica_ranks), whole / 1e6)
    return True


def _prefetch(nxt: nn.Module):
    """Forward pre-hook of a block: start the all-gather of the next block's weights, so that it
    overlaps this block's compute. (FSDP2's own ``set_modules_to_forward_prefetch`` needs its
    accelerator streams and fails on CPU, where the tests run.)"""

    def hook(module: nn.Module, args) -> None:
        nxt.unshard(async_op=True)

    return hook


def local_parameter_bytes(module: nn.Module) -> int:
    """Bytes of parameters this rank actually holds (the local shard of sharded ones)."""
    total = 0
    for p in module.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total


__all__ = ["shard_dit_weights", "sharded_units", "local_parameter_bytes"]
