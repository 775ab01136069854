"""Fast mode: fewer and cheaper DiT forwards per clip, every piece opt-in (RenderSettings).

* :mod:`~render.model.fast.step_cache` — skip the transformer blocks on steps whose input barely
  changed, reusing the last residual (optionally recomputing the audio injections);
* :mod:`~render.model.fast.guidance` — run the unconditional CFG branch on fewer steps;
* :mod:`~render.model.fast.preset` — ``--fast``: the measured best combination, plus the
  device options (fp8 linears, FA4, bf16 VAE) where the device has them.
"""

from render.model.fast.guidance import GuidanceSchedule, condition_rows, reuse_guidance
from render.model.fast.stats import SamplingStats, sampling_stats
from render.model.fast.step_cache import StepCache, StepRecord, make_step_cache

__all__ = [
    "GuidanceSchedule",
    "SamplingStats",
    "StepCache",
    "StepRecord",
    "condition_rows",
    "make_step_cache",
    "reuse_guidance",
    "sampling_stats",
]
