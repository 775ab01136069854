"""optimize_dit: what it installs where, and that it logs its choice."""

from __future__ import annotations

import logging

import torch

from kernels.select import optimize_dit, use_reference_glue
from render.model.dit.layers import TORCH_GLUE
from tests.kernels.helpers import dit_inputs, run_dit, small_dit


def test_cpu_keeps_the_torch_reference_and_logs(caplog):
    model, inp = small_dit(), dit_inputs()
    want = run_dit(model, inp)
    with caplog.at_level(logging.INFO, logger="kernels"):
        report = optimize_dit(model)
    assert report.glue == "torch reference" and report.fp8 == "off" and report.attention == "default"
    assert all(b.glue is TORCH_GLUE and b.self_attn.glue is TORCH_GLUE for b in model.blocks)
    assert "optimize_dit: cpu: attention default; glue torch reference" in caplog.text
    assert torch.equal(run_dit(model, inp), want)
    use_reference_glue(model)  # nothing to undo
    assert torch.equal(run_dit(model, inp), want)
