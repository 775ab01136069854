"""Multi-GPU execution of the S2V DiT: sequence (Ulysses + ring), CFG and weight parallelism.

``render/`` keeps the one single-device forward; this package shards the work around it on a
built model (``dit.sharding``, a swapped self-attention, FSDP2 units)::

    dims = ParallelDims(ulysses=2, ring=1, cfg=2)      # world size 4
    ctx = ParallelContext.create(dims, group=None, device=device)
    dit = parallelize_dit(dit, ctx)                     # in place
    cond = dit.prepare(...); out = dit.denoise(x, t, cond)   # same full inputs/outputs on every rank

and gives a render group's clip loop its hand-off (``GroupChainSync``: one rank runs the VAE and
writes, the others receive what they need from it).
"""

from __future__ import annotations

from parallel.chain_sync import ChainDivergedError, ChainSyncError, GroupChainSync
from parallel.context import GroupCache, ParallelContext
from parallel.dims import ParallelDims
from parallel.dit import DiTSharding, ShardedCondition, deparallelize_dit, is_parallelized, parallelize_dit
from parallel.layout import ShardLayout

__all__ = ["ParallelDims", "ParallelContext", "GroupCache", "parallelize_dit", "is_parallelized", "DiTSharding",
           "ShardedCondition", "ShardLayout", "deparallelize_dit", "GroupChainSync", "ChainSyncError",
           "ChainDivergedError"]
