"""Flow-matching samplers matching the official Wan2.2-S2V solvers (``unipc`` default, ``dpm++``).

    s = make_sampler("unipc", steps=40, shift=3.0)
    for i, t in enumerate(s.timesteps):      # int64 timesteps the DiT sees
        x = s.step(dit(x, t), i, x)          # float32 math inside, returns x's dtype

A sampler keeps a short history (previous x0 predictions, the corrector's last sample), so use
one sampler per clip; ``state_dict``/``load_state_dict`` resume an interrupted clip exactly.
"""

from __future__ import annotations

from render.model.samplers.dpmpp import DPMPPSampler
from render.model.samplers.schedule import FlowSampler, dpmpp_schedule, shift_sigmas, unipc_schedule
from render.model.samplers.unipc import UniPCSampler

__all__ = [
    "SAMPLERS",
    "DPMPPSampler",
    "FlowSampler",
    "UniPCSampler",
    "dpmpp_schedule",
    "make_sampler",
    "shift_sigmas",
    "unipc_schedule",
]

# Names as accepted by the official CLI flag ``--sample_solver``.
SAMPLERS: dict[str, type[FlowSampler]] = {
    UniPCSampler.name: UniPCSampler,
    DPMPPSampler.name: DPMPPSampler,
}


def make_sampler(
    name: str, steps: int = 40, shift: float = 3.0, num_train_timesteps: int = 1000
) -> FlowSampler:
    """Build a fresh sampler. Raises ValueError for an unknown name or bad steps/shift."""
    cls = SAMPLERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown sampler {name!r}: expected one of {sorted(SAMPLERS)}")
    return cls(steps=steps, shift=shift, num_train_timesteps=num_train_timesteps)
