"""The one object that says how a render group splits its work.

A group of ``world_size = replicas x cfg x ring x ulysses`` ranks is laid out as a mesh with
ulysses innermost (neighbouring ranks, the most traffic), then ring, then cfg, then replicas:

    rank = ((replica * cfg + c) * ring + r) * ulysses + u

* ``ulysses``: sequence parallel through all-to-all (heads scattered, sequence gathered);
  must divide the number of attention heads.
* ``ring``: sequence parallel through a ring of key/value blocks (any degree).
* ``cfg``: the conditional and unconditional passes on different halves of the group.
* ``replicas``: independent copies of the model (each renders its own clips).
* ``shard_weights``: FSDP2 ``fully_shard`` of the transformer blocks and audio injectors
  across the ranks of one replica (so the 14B DiT fits cards smaller than its weights).
"""

from __future__ import annotations

from dataclasses import dataclass

from render.model.checkpoint import DiTConfig

ATTENTION_ENGINES = ("auto", "torch", "yunchang")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class ParallelDims:
    ulysses: int = 1
    ring: int = 1
    cfg: int = 1
    replicas: int = 1
    shard_weights: bool = False
    attention_engine: str = "auto"  # "auto" (= torch, see parallel/attention.py), "torch", "yunchang"

    @property
    def sp(self) -> int:
        """Sequence-parallel degree (ranks that share one sample's token sequence)."""
        return self.ulysses * self.ring

    @property
    def group_size(self) -> int:
        """Ranks of one model replica."""
        return self.cfg * self.sp

    @property
    def world_size(self) -> int:
        return self.replicas * self.group_size

    def coords(self, index: int) -> tuple[int, int, int, int]:
        """(replica, cfg, ring, ulysses) coordinates of the rank at ``index`` in the group."""
        u = index % self.ulysses
        r = (index // self.ulysses) % self.ring
        c = (index // self.sp) % self.cfg
        return index // self.group_size, c, r, u

    def index(self, replica: int, cfg: int, ring: int, ulysses: int) -> int:
        return ((replica * self.cfg + cfg) * self.ring + ring) * self.ulysses + ulysses

    def validate(self, model_cfg: DiTConfig | None = None, world_size: int | None = None) -> None:
        """Raise ValueError listing every problem and what to change."""
        problems = []
        for name in ("ulysses", "ring", "cfg", "replicas"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name}={v!r}: expected an integer >= 1")
        if problems:
            raise ValueError("invalid ParallelDims: " + "; ".join(problems))
        if self.cfg not in (1, 2):
            problems.append(
                f"cfg={self.cfg}: expected 1 or 2 (conditional and unconditional pass); put the "
                f"remaining factor {self.cfg // 2 if self.cfg % 2 == 0 else self.cfg} into ulysses, ring or replicas"
            )
        if self.attention_engine not in ATTENTION_ENGINES:
            problems.append(f"attention_engine={self.attention_engine!r}: expected one of {ATTENTION_ENGINES}")
        if model_cfg is not None:
            heads = model_cfg.num_heads
            if heads % self.ulysses:
                ok = [d for d in _divisors(heads) if d <= max(self.ulysses, 8)]
                problems.append(
                    f"ulysses={self.ulysses} does not divide the model's num_heads={heads}: choose ulysses "
                    f"from {ok} and put the rest of the sequence-parallel degree into ring "
                    f"(ring has no divisibility constraint)"
                )
        if world_size is not None and world_size != self.world_size:
            problems.append(
                f"replicas x cfg x ring x ulysses = {self.replicas} x {self.cfg} x {self.ring} x {self.ulysses} "
                f"= {self.world_size}, but the process group has {world_size} ranks: change the degrees so "
                f"that their product is {world_size}, or start {self.world_size} processes"
            )
        if problems:
            raise ValueError("invalid ParallelDims: " + "; ".join(problems))

    def describe(self) -> str:
        extra = ", fsdp" if self.shard_weights else ""
        return (f"replicas={self.replicas} cfg={self.cfg} ring={self.ring} ulysses={self.ulysses}"
                f" (world {self.world_size}{extra})")
