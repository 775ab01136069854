"""Cheaper classifier-free guidance: run the unconditional branch on fewer steps.

CFG costs one extra DiT forward per step (with ``cfg_batch`` a batch of 2 instead of 1). The
difference ``cond - uncond`` that guidance amplifies changes slowly over the steps, so on a
step without the unconditional forward the loop reuses the last measured difference:

    pred = cond + (guidance - 1) * (cond_last - uncond_last)

which is exactly ``uncond + guidance * (cond - uncond)`` when the difference is current. The
unconditional branch runs on the first ``until`` fraction of the steps (the late steps only
refine detail), every ``every``-th step there; step 0 always runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from render.model.dit.model import S2VCondition


@dataclass(frozen=True)
class GuidanceSchedule:
    steps: int
    until: float = 1.0  # fraction of the steps (from the first) that may run the unconditional branch
    every: int = 1  # inside that fraction, run it every ``every``-th step

    def __post_init__(self) -> None:
        if not (0 < self.until <= 1) or self.every < 1 or self.steps < 1:
            raise ValueError(f"guidance schedule: until={self.until} must be in (0, 1], every={self.every} >= 1, "
                             f"steps={self.steps} >= 1")

    @property
    def is_exact(self) -> bool:
        return self.until == 1.0 and self.every == 1

    def runs_uncond(self, step: int) -> bool:
        """Does ``step`` (0-based) run the unconditional forward?"""
        # rounded first: 0.55 * 100 is 55.00000000000001 in floating point, which ceil makes 56
        return step < math.ceil(round(self.until * self.steps, 9)) and step % self.every == 0

    def uncond_steps(self) -> int:
        return sum(self.runs_uncond(i) for i in range(self.steps))


def reuse_guidance(cond: torch.Tensor, last_difference: torch.Tensor, guidance: float) -> torch.Tensor:
    """The guided prediction from the conditional prediction and a cond-uncond difference of an
    earlier step."""
    return cond + (guidance - 1.0) * last_difference


def condition_rows(cond: S2VCondition, rows: slice) -> S2VCondition:
    """The rows ``rows`` of a batched condition (e.g. the conditional half of a CFG batch of 2),
    sharing storage with it. Tensors without a batch dimension (RoPE tables) are shared whole."""
    unbatched = {"grid", "latent_hw", "rope_cos", "rope_sin", "context_kv"}
    values = {f.name: getattr(cond, f.name) for f in fields(cond)}
    for name, value in values.items():
        if name not in unbatched:
            values[name] = value[rows]
    if cond.context_kv is not None:
        values["context_kv"] = [(k[rows], v[rows]) for k, v in cond.context_kv]
    return S2VCondition(**values)
