"""The render group's chain hook (``render.model.clip_loop.ChainSync``) over torch.distributed.

One rank of a group, the writer, runs the VAE and writes every file; the others only run the
sequence-parallel DiT. What they need from the writer (the shot's conditioning, the motion
latents of the previous clip, where a segment resumes) is broadcast, and after every clip all
ranks compare a hash of the latents they sampled (``agree``), which replaces the per-rank
re-encode and file hash comparison as the group's consistency and liveness check.

The hand-off gets its own process group, by default gloo even when the DiT runs on NCCL:

* its waits are long and legitimate (the other ranks wait while the writer decodes a clip,
  re-encodes the motion frames and writes the clip file: seconds to tens of seconds at 720p),
  so it needs a longer timeout than the DiT's collectives, which stay short to catch dead peers;
* everything it carries lives on the CPU (conditioning and chain state are CPU tensors), so
  gloo needs no device copies and no NCCL communicator memory, and a dead peer closes its
  socket: survivors fail at once instead of waiting for a watchdog.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_HANDOFF_TIMEOUT_S = 600.0


class ChainSyncError(RuntimeError):
    """A hand-off collective failed (a peer died or timed out)."""


class ChainDivergedError(ChainSyncError):
    """Ranks of one group hold different values where they must be identical."""


class GroupChainSync:
    """``ChainSync`` for the ranks of ``group``; ``writer`` is a global rank in it.

    All members must construct it, and then make the same calls in the same order.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, writer: int = 0):
        self.group = group if group is not None else dist.group.WORLD
        self.ranks = dist.get_process_group_ranks(self.group)
        if writer not in self.ranks:
            raise ValueError(f"writer rank {writer} is not a member of the group {self.ranks}")
        self.writer = writer
        self.rank = dist.get_rank()
        self.is_writer = self.rank == writer
        # NCCL moves only device tensors; gloo (the default hand-off) keeps everything on the CPU.
        nccl = dist.get_backend(self.group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    @classmethod
    def create(cls, writer: int = 0, timeout_s: float = DEFAULT_HANDOFF_TIMEOUT_S, backend: str = "gloo",
               ranks: Sequence[int] | None = None) -> GroupChainSync:
        """A hand-off group over ``ranks`` (default: all of WORLD). Every rank of WORLD must call
        this, in the same order relative to other group creations (``dist.new_group``)."""
        ranks = list(range(dist.get_world_size())) if ranks is None else list(ranks)
        group = dist.new_group(ranks, timeout=timedelta(seconds=timeout_s), backend=backend)
        if dist.get_rank() not in ranks:
            raise ValueError(f"rank {dist.get_rank()} is not one of the hand-off ranks {ranks}")
        return cls(group, writer)

    def share(self, t: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if self.is_writer:
            if t is None or tuple(t.shape) != shape or t.dtype != dtype:
                got = None if t is None else (tuple(t.shape), t.dtype)
                raise ValueError(f"writer shares {got}, the others expect {(shape, dtype)}")
            buf = t.detach().to(self.device).contiguous()
        else:
            buf = torch.empty(shape, dtype=dtype, device=self.device)
        try:
            dist.broadcast(buf, src=self.writer, group=self.group)
        except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses with transport details
            raise ChainSyncError(f"rank {self.rank}: hand-off from writer rank {self.writer} failed: {exc}") from exc
        return t if self.is_writer and t.device.type == "cpu" else buf.cpu()

    def agree(self, t: torch.Tensor, what: str) -> None:
        h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        mine = torch.tensor(list(h.digest()), dtype=torch.int64, device=self.device)
        gathered = [torch.empty_like(mine) for _ in self.ranks]
        try:
            dist.all_gather(gathered, mine, group=self.group)
        except Exception as exc:
            raise ChainSyncError(f"rank {self.rank}: consistency check ({what}) failed: {exc}") from exc
        ref = gathered[self.ranks.index(self.writer)]
        differ = [r for r, g in zip(self.ranks, gathered) if not torch.equal(g, ref)]
        if differ:
            raise ChainDivergedError(f"rank {self.rank}: {what}: ranks {differ} diverged from writer rank "
                                     f"{self.writer} (sha256 {bytes(ref.tolist()).hex()[:16]} vs "
                                     f"{', '.join(bytes(gathered[self.ranks.index(r)].tolist()).hex()[:16] for r in differ)})")
