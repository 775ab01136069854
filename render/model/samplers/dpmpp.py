"""DPM-Solver++ (Lu et al. 2022) multistep, order 2, midpoint variant, for flow matching.

Configuration of the official ``--sample_solver dpm++``: data prediction (x0), second order with
the "midpoint" correction term, first order at the final step (final sigma 0), deterministic.

The schedule starts at sigma = 1 (pure noise, alpha = 0, lambda = -inf). The formulas below
take that limit gracefully: exp(-h) -> 0 and the first second-order step's D1 term gets weight
1/r0 = 0, exactly as in the official implementation.
"""

from __future__ import annotations

import torch

from render.model.samplers.schedule import FlowSampler, dpmpp_schedule

__all__ = ["DPMPPSampler"]


class DPMPPSampler(FlowSampler):
    name = "dpm++"
    solver_order = 2

    @staticmethod
    def _schedule(steps: int, shift: float, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
        return dpmpp_schedule(steps, shift, num_train_timesteps)

    def _update(self, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = self._step_index
        x0_pred = x - self.sigmas[n] * velocity
        self._push_model_output(x0_pred)

        # The last step lands on sigma 0 where lambda = +inf: use first order there.
        is_final = n == self.steps - 1
        if self.solver_order == 1 or self._lower_order_nums < 1 or is_final:
            x_next = self._first_order(x)
        else:
            x_next = self._second_order(x)
        if self._lower_order_nums < self.solver_order:
            self._lower_order_nums += 1
        return x_next

    def _first_order(self, x: torch.Tensor) -> torch.Tensor:
        """DDIM-like step: x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1) m0."""
        n = self._step_index
        sigma_t, sigma_s = self.sigmas[n + 1], self.sigmas[n]
        alpha_t = 1 - sigma_t
        h = self._log_snr(n + 1) - self._log_snr(n)
        return (sigma_t / sigma_s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * self._model_outputs[-1]

    def _second_order(self, x: torch.Tensor) -> torch.Tensor:
        """Multistep midpoint: adds 0.5 * D1 with D1 the lambda-scaled difference of x0 predictions."""
        n = self._step_index
        sigma_t, sigma_s0 = self.sigmas[n + 1], self.sigmas[n]
        alpha_t = 1 - sigma_t
        lambda_s0 = self._log_snr(n)
        h = self._log_snr(n + 1) - lambda_s0
        h_0 = lambda_s0 - self._log_snr(n - 1)
        r0 = h_0 / h
        m0, m1 = self._model_outputs[-1], self._model_outputs[-2]
        d1 = (1.0 / r0) * (m0 - m1)
        phi = alpha_t * (torch.exp(-h) - 1.0)
        return (sigma_t / sigma_s0) * x - phi * m0 - 0.5 * phi * d1
