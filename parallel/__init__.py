"""Multi-GPU execution of the S2V DiT: sequence (Ulysses + ring), CFG and weight parallelism.

``render/`` stays single-device; this package transforms a built model::

    dims = ParallelDims(ulysses=2, ring=1, cfg=2)      # world size 4
    ctx = ParallelContext.create(dims, group=None, device=device)
    dit = parallelize_dit(dit, ctx)                     # in place
    cond = dit.prepare(...); out = dit.denoise(x, t, cond)   # same full inputs/outputs on every rank

and gives a render group's clip loop its hand-off (``GroupChainSync``: one rank runs the VAE and
writes, the others receive what they need from it).
"""

from __future__ import annotations

from .chain_sync import ChainDivergedError, ChainSyncError, GroupChainSync
from .context import ParallelContext
from .dims import ParallelDims
from .dit import ParallelS2VDiT, ShardedCondition, deparallelize_dit, parallelize_dit
from .layout import ShardLayout

__all__ = ["ParallelDims", "ParallelContext", "parallelize_dit", "ParallelS2VDiT", "ShardedCondition",
           "ShardLayout", "deparallelize_dit", "GroupChainSync", "ChainSyncError", "ChainDivergedError"]
