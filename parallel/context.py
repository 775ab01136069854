"""Process groups of one parallel layout, built explicitly from a parent group.

Nothing here is global: a :class:`ParallelContext` is created from a :class:`ParallelDims` and
a parent process group (default: the WORLD of an initialised ``torch.distributed``) and is
passed to whatever needs it. Contexts made one after another from the same parent share their
sub-groups through a :class:`GroupCache` that the caller passes to each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from parallel.dims import ParallelDims

log = logging.getLogger(__name__)


class GroupCache:
    """The sub-groups made so far, by (parent ranks, member ranks).

    Contexts made one after another from the same parent reuse each other's sub-groups through
    it instead of making them again. Inside a parent smaller than WORLD only a group's members
    make it, and torch names it from its ranks (recent versions add how many groups this rank
    has made so far): remaking a rank set fails on older torch, and on recent torch needs every
    member to have made the same number of groups. Reuse also saves communicators. Every rank
    keeps its own cache and passes it to each ``ParallelContext.create`` in the same order
    (``ctx.group_cache`` is the one a context used).
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[tuple[int, ...], tuple[int, ...]], dist.ProcessGroup | None] = {}

    def get(self, parent_ranks: tuple[int, ...], members: tuple[int, ...],
            make: Callable[[], dist.ProcessGroup | None]) -> dist.ProcessGroup | None:
        key = (parent_ranks, members)
        if key not in self._groups:
            self._groups[key] = make()
        return self._groups[key]


@dataclass
class ParallelContext:
    dims: ParallelDims
    device: torch.device
    group: dist.ProcessGroup | None  # parent group (None when world size 1 and no dist)
    index: int  # this rank's position in the parent group
    replica: int
    cfg_rank: int
    ring_rank: int
    ulysses_rank: int
    # Global ranks (as torch.distributed numbers them) of the peers in each dimension.
    ulysses_ranks: list[int] = field(default_factory=list)
    ring_ranks: list[int] = field(default_factory=list)  # ring_ranks[j] is ring member j with my ulysses rank
    sp_ranks: list[int] = field(default_factory=list)
    cfg_ranks: list[int] = field(default_factory=list)
    replica_ranks: list[int] = field(default_factory=list)
    ulysses_group: dist.ProcessGroup | None = None
    ring_group: dist.ProcessGroup | None = None
    sp_group: dist.ProcessGroup | None = None
    cfg_group: dist.ProcessGroup | None = None
    replica_group: dist.ProcessGroup | None = None  # all ranks of one model copy (FSDP shards here)
    group_cache: GroupCache = field(default_factory=GroupCache, repr=False)  # pass on to reuse the groups

    @property
    def sp_rank(self) -> int:
        return self.ring_rank * self.dims.ulysses + self.ulysses_rank

    @property
    def is_trivial(self) -> bool:
        return self.dims.group_size == 1 and not self.dims.shard_weights

    @classmethod
    def create(cls, dims: ParallelDims, group: dist.ProcessGroup | None = None,
               device: torch.device | str | None = None, groups: GroupCache | None = None) -> ParallelContext:
        """Build every sub-group of ``dims`` inside ``group``; all its ranks must call this.

        ``groups``: the cache of earlier contexts from the same parent (their sub-groups are
        reused); None starts a new one.
        """
        dims.validate()
        device = torch.device(device if device is not None else "cpu")
        if not dist.is_available() or not dist.is_initialized():
            if dims.world_size != 1:
                raise RuntimeError(
                    f"ParallelDims({dims.describe()}) needs {dims.world_size} processes, but "
                    "torch.distributed is not initialised: call torch.distributed.init_process_group "
                    "first (or use parallel.launch.spawn)"
                )
            return cls(dims, device, None, 0, 0, 0, 0, 0, [0], [0], [0], [0], [0])
        parent = group if group is not None else dist.group.WORLD
        ranks = dist.get_process_group_ranks(parent)
        dims.validate(world_size=len(ranks))
        me = dist.get_rank()
        if me not in ranks:
            raise RuntimeError(f"rank {me} is not a member of the parent group {ranks}")
        index = ranks.index(me)
        replica, c, r, u = dims.coords(index)

        def members(select) -> list[list[int]]:
            """Rank lists of one kind of group, for every fixed value of the other coordinates."""
            buckets: dict[tuple, list[int]] = {}
            for i, g in enumerate(ranks):
                key, _ = select(dims.coords(i))
                buckets.setdefault(key, []).append(g)
            return list(buckets.values())

        kinds = {
            "ulysses": lambda co: ((co[0], co[1], co[2]), co[3]),
            "ring": lambda co: ((co[0], co[1], co[3]), co[2]),
            "sp": lambda co: ((co[0], co[1]), (co[2], co[3])),
            "cfg": lambda co: ((co[0], co[2], co[3]), co[1]),
            "replica": lambda co: ((co[0],), (co[1], co[2], co[3])),
        }
        cache = groups if groups is not None else GroupCache()
        mine: dict[str, tuple[list[int], dist.ProcessGroup | None]] = {}
        use_world_protocol = parent is dist.group.WORLD or len(ranks) == dist.get_world_size()
        for kind, select in kinds.items():
            for rank_list in members(select):
                if rank_list == ranks:
                    made = parent
                else:
                    made = cache.get(tuple(ranks), tuple(rank_list),
                                     lambda rl=rank_list: _new_group(rl, me, use_world_protocol))
                if me in rank_list:
                    mine[kind] = (rank_list, made if len(rank_list) > 1 else None)
        ctx = cls(
            dims, device, parent, index, replica, c, r, u,
            ulysses_ranks=mine["ulysses"][0], ring_ranks=mine["ring"][0], sp_ranks=mine["sp"][0],
            cfg_ranks=mine["cfg"][0], replica_ranks=mine["replica"][0],
            ulysses_group=mine["ulysses"][1], ring_group=mine["ring"][1], sp_group=mine["sp"][1],
            cfg_group=mine["cfg"][1], replica_group=mine["replica"][1], group_cache=cache,
        )
        log.info("parallel context on rank %d: %s; replica %d cfg %d ring %d ulysses %d (device %s)",
                 me, dims.describe(), replica, c, r, u, device)
        return ctx


def _new_group(rank_list: list[int], me: int, world_protocol: bool) -> dist.ProcessGroup | None:
    if len(rank_list) == 1:
        return None
    if world_protocol:
        # Every rank of WORLD creates every group in the same order (the standard protocol).
        return dist.new_group(rank_list)
    if me not in rank_list:
        return None
    # A parent smaller than WORLD: only members synchronise (the other ranks may never call this).
    return dist.new_group(rank_list, use_local_synchronization=True)
