"""How much DiT work fast mode saved on one clip (logged per clip, read by the benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass

from render.model.fast.step_cache import StepCache


@dataclass(frozen=True)
class SamplingStats:
    clip: int
    steps: int
    guided: bool
    uncond_steps: int  # steps that ran the unconditional forward
    forwards: int  # DiT block passes run, one per batch row (exact CFG: 2 x steps)
    exact_forwards: int  # what the exact path runs
    computed_steps: int  # steps whose blocks ran (the others reused the cache)
    # steps by kind: "cfg" / "cond" (both rows / the conditional row alone, blocks run) and
    # "cfg_skip" / "cond_skip" (the same, blocks skipped by the cache)
    step_kinds: dict[str, int]

    @property
    def speedup(self) -> float:
        return self.exact_forwards / max(self.forwards, 1)

    def summary(self) -> str:
        return (f"{self.forwards} of {self.exact_forwards} DiT forwards ({self.speedup:.2f}x fewer): blocks computed "
                f"on {self.computed_steps} of {self.steps} steps, unconditional branch on {self.uncond_steps}")


def sampling_stats(clip: int, steps: int, uncond_steps: int, cache: StepCache | None) -> SamplingStats:
    guided = uncond_steps > 0
    kinds = {"cfg": 0, "cond": 0, "cfg_skip": 0, "cond_skip": 0}
    if cache is None:
        forwards, computed = steps + uncond_steps, steps
        kinds["cfg" if guided else "cond"] += uncond_steps if guided else steps
        kinds["cond"] += steps - uncond_steps if guided else 0
    else:
        forwards, computed = cache.forwards(), cache.computed_steps
        rows: dict[int, set[int]] = {}
        ran: dict[int, bool] = {}
        for r in cache.history:  # without cfg_batch a step has one record per row
            rows.setdefault(r.step, set()).update(r.rows)
            ran[r.step] = ran.get(r.step, False) or r.computed
        for step, step_rows in rows.items():
            kinds[("cfg" if len(step_rows) == 2 else "cond") + ("" if ran[step] else "_skip")] += 1
    return SamplingStats(clip, steps, guided, uncond_steps, forwards, steps * (2 if guided else 1), computed, kinds)
