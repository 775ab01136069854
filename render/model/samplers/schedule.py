"""Flow-matching sigma/timestep schedules and the shared sampler base class.

Flow matching here means ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the DiT predicts the
velocity ``v = noise - x0``, so ``x0 = x_sigma - sigma * v``. The solvers treat this as a
diffusion process with ``alpha = 1 - sigma`` and log-SNR ``lambda = log(alpha) - log(sigma)``.

The schedules reproduce the official Wan2.2 numbers bit for bit, which is why they are computed in
float64 with the same operation order as NumPy (``linspace`` as ``i * step + start``) and only cast
to float32 at the end: a one-ulp difference can flip an int64-truncated timestep (e.g. 900 vs 899).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "FlowSampler",
    "dpmpp_schedule",
    "numpy_linspace",
    "shift_sigmas",
    "unipc_schedule",
    "validate_schedule_args",
]


def validate_schedule_args(steps: object, shift: object, num_train_timesteps: object) -> None:
    """Raise a ValueError naming the bad argument, its value and what is expected."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"sampler steps={steps!r} is invalid: expected an integer >= 1 (official default 40)"
        )
    if isinstance(shift, bool) or not isinstance(shift, int | float):
        raise ValueError(
            f"sampler shift={shift!r} is invalid: expected a finite number > 0 (CLI default 3.0)"
        )
    if not math.isfinite(float(shift)) or float(shift) <= 0:
        raise ValueError(
            f"sampler shift={shift!r} is invalid: expected a finite number > 0 (CLI default 3.0)"
        )
    if (
        isinstance(num_train_timesteps, bool)
        or not isinstance(num_train_timesteps, int)
        or num_train_timesteps < 2
    ):
        raise ValueError(
            f"sampler num_train_timesteps={num_train_timesteps!r} is invalid: expected an integer >= 2 "
            "(the Wan2.2 models were trained with 1000)"
        )


def numpy_linspace(start: float, stop: float, num: int) -> torch.Tensor:
    """float64 ``np.linspace(start, stop, num)`` with NumPy's exact arithmetic.

    torch.linspace evaluates the second half backwards from ``stop``, which differs from NumPy in
    the last ulp; the official schedule was computed with NumPy, so we mirror its formula.
    """
    if num == 1:
        return torch.tensor([start], dtype=torch.float64)
    step = (stop - start) / (num - 1)
    values = torch.arange(num, dtype=torch.float64) * step + start
    values[-1] = stop
    return values


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift ``shift * s / (1 + (shift - 1) * s)``: spends more steps at high noise."""
    shift = float(shift)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _finish_schedule(shifted: torch.Tensor, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Timesteps are truncated (not rounded) to int64 from the float64 sigmas, and the solver sigmas
    # are the same float64 values cast to float32 with a final 0 ("final_sigmas_type=zero").
    timesteps = (shifted * num_train_timesteps).to(torch.int64)
    sigmas = torch.cat([shifted, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)
    return timesteps, sigmas


def unipc_schedule(
    steps: int, shift: float, num_train_timesteps: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official UniPC schedule: linspace(sigma_max, 0, steps + 1)[:-1], shifted.

    sigma_max is the largest training sigma ``1 - 1/N`` as stored in float32 (0.99900001287 for
    N = 1000), read back as a Python float, so the first timestep is 999, not 1000.
    """
    validate_schedule_args(steps, shift, num_train_timesteps)
    sigma_max = float(torch.tensor(1.0 - 1.0 / num_train_timesteps, dtype=torch.float64).to(torch.float32))
    base = numpy_linspace(sigma_max, 0.0, steps + 1)[:-1]
    return _finish_schedule(shift_sigmas(base, shift), num_train_timesteps)


def dpmpp_schedule(
    steps: int, shift: float, num_train_timesteps: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official DPM++ schedule: linspace(1, 0, steps + 1)[:steps], shifted; first timestep is N."""
    validate_schedule_args(steps, shift, num_train_timesteps)
    base = numpy_linspace(1.0, 0.0, steps + 1)[:steps]
    return _finish_schedule(shift_sigmas(base, shift), num_train_timesteps)


class FlowSampler:
    """Multistep flow-matching solver over a fixed schedule.

    Subclasses implement ``_update(velocity32, x32) -> next_x32`` using ``self._step_index`` and
    their history. The base class owns the schedule, argument checks, dtype handling and the
    (de)serialisation of the history so a clip can resume mid-sampling bit-identically.
    """

    name: str = ""
    solver_order: int = 2

    def __init__(self, steps: int = 40, shift: float = 3.0, num_train_timesteps: int = 1000) -> None:
        validate_schedule_args(steps, shift, num_train_timesteps)
        self.steps = steps
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps
        self.timesteps, self.sigmas = self._schedule(steps, self.shift, num_train_timesteps)
        self.reset()

    # -- subclass hooks -------------------------------------------------------------------------
    @staticmethod
    def _schedule(steps: int, shift: float, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _update(self, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _history_to(self, device: torch.device) -> None:
        # A state_dict loaded with map_location="cpu" may meet latents on the GPU.
        self._model_outputs = [m.to(device) for m in self._model_outputs]

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # -- public API -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the history: the next call must be ``step(..., 0, ...)``."""
        self._step_index = 0
        self._lower_order_nums = 0
        # Converted (x0) model outputs, oldest first, at most ``solver_order`` of them, float32.
        self._model_outputs: list[torch.Tensor] = []

    @property
    def step_index(self) -> int:
        """Index of the next step to run (0..steps; == steps once sampling has finished)."""
        return self._step_index

    def step(self, velocity: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """Advance the latent ``x`` at ``sigmas[i]`` to ``sigmas[i + 1]`` given the DiT velocity.

        Steps must be taken in order 0, 1, ..., steps - 1 because the solver is multistep; use
        ``state_dict``/``load_state_dict`` to resume and ``reset`` to start over.
        """
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"{self.name} step index i={i!r} must be an int in 0..{self.steps - 1}")
        if not 0 <= i < self.steps:
            raise ValueError(f"{self.name} step index i={i} out of range: expected 0..{self.steps - 1}")
        if i != self._step_index:
            raise ValueError(
                f"{self.name} step index i={i} out of order: the solver history expects step "
                f"{self._step_index} next (call reset() to restart, or load_state_dict() to resume)"
            )
        if velocity.shape != x.shape:
            raise ValueError(
                f"{self.name} step {i}: velocity shape {tuple(velocity.shape)} != latent shape {tuple(x.shape)}"
            )
        if self._model_outputs and self._model_outputs[-1].shape != x.shape:
            raise ValueError(
                f"{self.name} step {i}: latent shape {tuple(x.shape)} differs from the history's "
                f"{tuple(self._model_outputs[-1].shape)}; use a fresh sampler (or reset()) per clip"
            )
        self._history_to(x.device)
        # The official solvers compute in float32 regardless of the latent dtype.
        x_next = self._update(velocity.to(torch.float32), x.to(torch.float32))
        self._step_index += 1
        return x_next.to(x.dtype)

    def state_dict(self) -> dict[str, Any]:
        """Solver history as a flat dict of tensors/ints/floats/str (``torch.save`` friendly,
        loadable with ``weights_only=True``). Tensors are cloned."""
        state: dict[str, Any] = {
            "sampler": self.name,
            "steps": self.steps,
            "shift": self.shift,
            "num_train_timesteps": self.num_train_timesteps,
            "step_index": self._step_index,
            "lower_order_nums": self._lower_order_nums,
            "num_model_outputs": len(self._model_outputs),
        }
        for k, m in enumerate(self._model_outputs):
            state[f"model_output.{k}"] = m.clone()
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a history saved by ``state_dict`` of a sampler with the same configuration."""
        expected = {
            "sampler": self.name,
            "steps": self.steps,
            "shift": self.shift,
            "num_train_timesteps": self.num_train_timesteps,
        }
        for key, want in expected.items():
            if key not in state:
                raise KeyError(f"{self.name} state_dict is missing key {key!r} (expected {want!r})")
            if state[key] != want:
                raise ValueError(
                    f"{self.name} state_dict key {key!r} = {state[key]!r} does not match this sampler's "
                    f"{want!r}; build the sampler with the same settings before loading"
                )
        for key in ("step_index", "lower_order_nums", "num_model_outputs"):
            if key not in state:
                raise KeyError(f"{self.name} state_dict is missing key {key!r}")
        step_index = int(state["step_index"])
        if not 0 <= step_index <= self.steps:
            raise ValueError(f"{self.name} state_dict step_index={step_index}: expected 0..{self.steps}")
        count = int(state["num_model_outputs"])
        if not 0 <= count <= self.solver_order:
            raise ValueError(
                f"{self.name} state_dict num_model_outputs={count}: expected 0..{self.solver_order}"
            )
        outputs = []
        for k in range(count):
            key = f"model_output.{k}"
            if key not in state:
                raise KeyError(f"{self.name} state_dict is missing key {key!r}")
            outputs.append(state[key].detach().to(torch.float32).clone())
        self._step_index = step_index
        self._lower_order_nums = int(state["lower_order_nums"])
        self._model_outputs = outputs
        self._load_extra_state(state)

    # -- helpers for subclasses -----------------------------------------------------------------
    def _log_snr(self, index: int) -> torch.Tensor:
        """lambda = log(alpha) - log(sigma) at ``sigmas[index]`` as a float32 0-d tensor.

        +inf at sigma 0 and -inf at sigma 1; the update formulas are arranged (as in the official
        code) so that these limits give the exact endpoint instead of NaN.
        """
        sigma = self.sigmas[index]
        return torch.log(1 - sigma) - torch.log(sigma)

    def _push_model_output(self, x0_pred: torch.Tensor) -> None:
        self._model_outputs.append(x0_pred)
        del self._model_outputs[: -self.solver_order]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(steps={self.steps}, shift={self.shift}, "
            f"num_train_timesteps={self.num_train_timesteps}, next_step={self._step_index})"
        )
