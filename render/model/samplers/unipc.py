"""UniPC multistep solver (Zhao et al. 2023) for flow matching, the official default sampler.

Configuration of the official one: order 2, ``bh2`` (B(h) = e^h - 1), data prediction (x0),
a corrector (UniC) applied from step 1 on, lower order at the final step, final sigma 0.

Per step ``n`` with DiT velocity ``v`` at latent ``x_n`` (sigma_n):
1. ``m_n = x_n - sigma_n * v`` (x0 prediction).
2. Corrector (n >= 1): recompute ``x_n`` from ``x_{n-1}`` using the now known ``m_n``; this is
   free (no extra model call) and raises the order of the previous step by one.
3. Predictor: ``x_{n+1}`` from the corrected ``x_n`` and the last ``order`` x0 predictions.

Everything runs in float32 with 0-d tensors for the coefficients, matching the official
arithmetic closely enough for ~1e-7 parity on the goldens.
"""

from __future__ import annotations

from typing import Any

import torch

from render.model.samplers.schedule import FlowSampler, unipc_schedule

__all__ = ["UniPCSampler"]


def _unipc_coefficients(
    h: torch.Tensor, rks: list[torch.Tensor | float], order: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (h_phi_1, B_h, R, b) of the UniPC linear system for data prediction with bh2.

    ``hh = -h`` because x0-prediction integrates in -lambda. ``b_i = i! * phi_{i+1}(hh) / B(h)``
    with the phi functions built by the recurrence phi_{k+1} = (phi_k - 1/k!) / hh, and
    ``R[i] = rks ** i`` is the Vandermonde matrix of the relative step ratios.
    """
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rk_tensor = torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rks])
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(rk_tensor, i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(rows), torch.stack(b)


def _weighted_sum(weights: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    total = weights[0] * tensors[0]
    for w, t in zip(weights[1:], tensors[1:]):
        total = total + w * t
    return total


class UniPCSampler(FlowSampler):
    name = "unipc"
    solver_order = 2

    @staticmethod
    def _schedule(steps: int, shift: float, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
        return unipc_schedule(steps, shift, num_train_timesteps)

    def reset(self) -> None:
        super().reset()
        # Order used by the previous predictor; the corrector reuses it for the same interval.
        self._this_order = 0
        # Corrected latent the previous predictor started from (x_{n-1}), float32.
        self._last_sample: torch.Tensor | None = None

    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "this_order": self._this_order,
            "has_last_sample": self._last_sample is not None,
        }
        if self._last_sample is not None:
            state["last_sample"] = self._last_sample.clone()
        return state

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        for key in ("this_order", "has_last_sample"):
            if key not in state:
                raise KeyError(f"unipc state_dict is missing key {key!r}")
        self._this_order = int(state["this_order"])
        if state["has_last_sample"]:
            if "last_sample" not in state:
                raise KeyError("unipc state_dict has has_last_sample=True but no 'last_sample' tensor")
            self._last_sample = state["last_sample"].detach().to(torch.float32).clone()
        else:
            self._last_sample = None

    def _history_to(self, device: torch.device) -> None:
        super()._history_to(device)
        if self._last_sample is not None:
            self._last_sample = self._last_sample.to(device)

    def _update(self, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = self._step_index
        x0_pred = x - self.sigmas[n] * velocity

        if n > 0 and self._last_sample is not None:
            x = self._correct(x0_pred, self._last_sample, x, self._this_order)

        self._push_model_output(x0_pred)
        # Lower order near the end (final sigma 0 makes higher orders unstable) and while the
        # history is still warming up.
        this_order = min(self.solver_order, self.steps - n)
        self._this_order = min(this_order, self._lower_order_nums + 1)
        self._last_sample = x
        x_next = self._predict(x, self._this_order)
        if self._lower_order_nums < self.solver_order:
            self._lower_order_nums += 1
        return x_next

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP-bh2: from x_n (sigmas[n]) to sigmas[n + 1]."""
        n = self._step_index
        outputs = self._model_outputs
        m0 = outputs[-1]
        sigma_t, sigma_s0 = self.sigmas[n + 1], self.sigmas[n]
        alpha_t = 1 - sigma_t
        lambda_s0 = self._log_snr(n)
        h = self._log_snr(n + 1) - lambda_s0

        rks: list[torch.Tensor | float] = []
        d1s: list[torch.Tensor] = []
        for k in range(1, order):
            rk = (self._log_snr(n - k) - lambda_s0) / h
            rks.append(rk)
            d1s.append((outputs[-(k + 1)] - m0) / rk)
        rks.append(1.0)
        h_phi_1, b_h, r_mat, b = _unipc_coefficients(h, rks, order)

        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if d1s:
            # For order 2 the official solver fixes rho = 1/2 instead of solving the 1x1 system.
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
            x_t = x_t - alpha_t * b_h * _weighted_sum(rhos_p, d1s)
        return x_t

    def _correct(
        self, model_t: torch.Tensor, last_sample: torch.Tensor, this_sample: torch.Tensor, order: int
    ) -> torch.Tensor:
        """UniC-bh2: redo the step x_{n-1} -> x_n using the new x0 prediction ``model_t`` at n."""
        n = self._step_index
        outputs = self._model_outputs  # not yet holding model_t: outputs[-1] is m_{n-1}
        m0 = outputs[-1]
        sigma_t, sigma_s0 = self.sigmas[n], self.sigmas[n - 1]
        alpha_t = 1 - sigma_t
        lambda_s0 = self._log_snr(n - 1)
        h = self._log_snr(n) - lambda_s0

        rks: list[torch.Tensor | float] = []
        d1s: list[torch.Tensor] = []
        for k in range(1, order):
            rk = (self._log_snr(n - 1 - k) - lambda_s0) / h
            rks.append(rk)
            d1s.append((outputs[-(k + 1)] - m0) / rk)
        rks.append(1.0)
        h_phi_1, b_h, r_mat, b = _unipc_coefficients(h, rks, order)
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b)

        x_t = sigma_t / sigma_s0 * last_sample - alpha_t * h_phi_1 * m0
        correction = rhos_c[-1] * (model_t - m0)
        if d1s:
            correction = _weighted_sum(rhos_c[:-1], d1s) + correction
        return x_t - alpha_t * b_h * correction
