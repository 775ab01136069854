"""Sampler tests: golden schedules/trajectories of the official solvers, edge cases, resume, dtypes."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from render.model.samplers import SAMPLERS, FlowSampler, make_sampler

# Golden file key names use "dpmpp" for the "dpm++" solver.
GOLDEN_KEY = {"unipc": "unipc", "dpm++": "dpmpp"}


@pytest.fixture(scope="module")
def sampler_golden(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "audio_sampler_golden.safetensors"))


def toy_velocity(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The golden README's toy model: v = tanh(x) * (t / 1000) + 0.1 * c."""
    return torch.tanh(x) * (t.to(torch.float32) / 1000) + 0.1 * c


def run(sampler: FlowSampler, x: torch.Tensor, velocity_fn, start: int = 0) -> list[torch.Tensor]:
    """Run the remaining steps; returns the latents after each step."""
    out = []
    for i in range(start, sampler.steps):
        x = sampler.step(velocity_fn(x, sampler.timesteps[i]), i, x)
        out.append(x)
    return out


def test_registry() -> None:
    assert set(SAMPLERS) == {"unipc", "dpm++"}
    for name in SAMPLERS:
        s = make_sampler(name, steps=5)
        assert isinstance(s, FlowSampler) and s.name == name


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
@pytest.mark.parametrize("steps", [40, 8])
@pytest.mark.parametrize("shift", [3, 5])
def test_schedule_matches_golden(sampler_golden, name: str, steps: int, shift: int) -> None:
    s = make_sampler(name, steps=steps, shift=float(shift), num_train_timesteps=1000)
    prefix = f"sched_{GOLDEN_KEY[name]}_steps{steps}_shift{shift}"
    want_t = sampler_golden[f"{prefix}_timesteps"]
    want_s = sampler_golden[f"{prefix}_sigmas"]
    assert s.timesteps.dtype == torch.int64 and s.timesteps.shape == (steps,)
    assert s.sigmas.dtype == torch.float32 and s.sigmas.shape == (steps + 1,)
    assert s.sigmas[-1].item() == 0.0
    assert torch.equal(s.timesteps, want_t), f"{prefix}: {s.timesteps.tolist()} != {want_t.tolist()}"
    err = (s.sigmas - want_s).abs().max().item()
    print(f"{prefix}: sigmas max-abs {err:.3e}")
    assert err <= 1e-6


def test_schedule_details() -> None:
    # UniPC: sigma_max = float32(0.999), truncation -> first timestep 999, the official 8-step list.
    u = make_sampler("unipc", steps=8, shift=3.0)
    assert u.timesteps.tolist() == [999, 954, 899, 832, 749, 642, 499, 299]
    assert u.sigmas[0].item() == pytest.approx(3 * 0.99900001287 / (1 + 2 * 0.99900001287), abs=1e-7)
    # DPM++: linspace(1, 0) -> first sigma exactly 1, first timestep 1000.
    d = make_sampler("dpm++", steps=8, shift=3.0)
    assert d.sigmas[0].item() == 1.0 and d.timesteps[0].item() == 1000
    # Shift 1 is the identity: plain linspace.
    p = make_sampler("dpm++", steps=4, shift=1.0)
    assert p.sigmas.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
def test_trajectory_matches_golden(sampler_golden, name: str) -> None:
    want = sampler_golden[f"traj_{GOLDEN_KEY[name]}_steps8_shift3"]
    x = sampler_golden["traj_init_latent"].clone()
    c = sampler_golden["traj_toy_c"]
    s = make_sampler(name, steps=8, shift=3.0)
    got = torch.stack([x, *run(s, x, lambda x, t: toy_velocity(x, t, c))])
    per_step = (got - want).abs().flatten(1).amax(dim=1)
    print(f"{name} trajectory max-abs per step: {[f'{e:.2e}' for e in per_step.tolist()]}")
    assert got.dtype == torch.float32
    assert per_step.max().item() <= 1e-5


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_straight_flow_lands_on_data(name: str, steps: int) -> None:
    """With the exact velocity of a straight path (v = noise - data) every solver step stays on
    the path, so any step count (including the lower-order 1 and 2 step paths) ends at the data."""
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(2, 3, 4, generator=gen)
    noise = torch.randn(2, 3, 4, generator=gen)
    s = make_sampler(name, steps=steps, shift=3.0)
    sigma0 = s.sigmas[0]
    x = (1 - sigma0) * data + sigma0 * noise
    final = run(s, x, lambda x, t: noise - data)[-1]
    assert torch.isfinite(final).all()
    err = (final - data).abs().max().item()
    print(f"{name} steps={steps}: |final - data| max {err:.2e}")
    assert err <= 1e-5


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
@pytest.mark.parametrize("steps", [1, 2])
def test_few_steps_finite_with_toy_model(name: str, steps: int) -> None:
    c = torch.randn(1, 4, 2, 3, 3)
    x = torch.randn(1, 4, 2, 3, 3)
    s = make_sampler(name, steps=steps, shift=5.0)
    outs = run(s, x, lambda x, t: toy_velocity(x, t, c))
    assert len(outs) == steps and all(torch.isfinite(o).all() for o in outs)
    assert s.step_index == steps


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
@pytest.mark.parametrize("split", [1, 2, 4])
def test_state_dict_resume_is_bit_identical(name: str, split: int) -> None:
    c = torch.randn(2, 4, 3, 3)
    x0 = torch.randn(2, 4, 3, 3)
    vel = lambda x, t: toy_velocity(x, t, c)
    reference = run(make_sampler(name, steps=6, shift=3.0), x0, vel)

    first = make_sampler(name, steps=6, shift=3.0)
    head = run_partial(first, x0, vel, split)
    # Round-trip through torch.save/load(weights_only=True), as a resumable job would.
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = make_sampler(name, steps=6, shift=3.0)
    resumed.load_state_dict(state)
    assert resumed.step_index == split
    tail = run(resumed, head[-1], vel, start=split)
    for a, b in zip(reference, head + tail):
        assert torch.equal(a, b)


def run_partial(sampler: FlowSampler, x: torch.Tensor, velocity_fn, count: int) -> list[torch.Tensor]:
    out = []
    for i in range(count):
        x = sampler.step(velocity_fn(x, sampler.timesteps[i]), i, x)
        out.append(x)
    return out


def test_state_dict_is_a_copy() -> None:
    s = make_sampler("unipc", steps=4)
    x = torch.randn(3, 4)
    s.step(torch.randn(3, 4), 0, x)
    state = s.state_dict()
    state["model_output.0"].zero_()
    assert s.state_dict()["model_output.0"].abs().sum() > 0


def test_load_state_dict_rejects_other_config() -> None:
    s = make_sampler("unipc", steps=4, shift=3.0)
    s.step(torch.randn(3), 0, torch.randn(3))
    state = s.state_dict()
    with pytest.raises(ValueError, match="'steps' = 4"):
        make_sampler("unipc", steps=5, shift=3.0).load_state_dict(state)
    with pytest.raises(ValueError, match="'sampler'"):
        make_sampler("dpm++", steps=4, shift=3.0).load_state_dict(state)
    del state["step_index"]
    with pytest.raises(KeyError, match="step_index"):
        make_sampler("unipc", steps=4, shift=3.0).load_state_dict(state)


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
def test_bf16_in_bf16_out(name: str) -> None:
    c = torch.randn(1, 4, 2, 3, 3)
    x32 = torch.randn(1, 4, 2, 3, 3)
    vel = lambda x, t: toy_velocity(x.float(), t, c).to(x.dtype)
    out16 = run(make_sampler(name, steps=4, shift=3.0), x32.to(torch.bfloat16), vel)
    out32 = run(make_sampler(name, steps=4, shift=3.0), x32, vel)
    assert all(o.dtype == torch.bfloat16 for o in out16)
    # bf16 rounding of the latent between steps only: stays close to the float32 run.
    assert (out16[-1].float() - out32[-1]).abs().max().item() < 0.05


def test_velocity_dtype_may_differ_from_latent() -> None:
    s = make_sampler("dpm++", steps=2)
    x = torch.randn(4, dtype=torch.float32)
    assert s.step(torch.randn(4, dtype=torch.bfloat16), 0, x).dtype == torch.float32


@pytest.mark.parametrize("bad", ["euler", "UniPC", "dpmpp", None])
def test_unknown_sampler_lists_valid_names(bad) -> None:
    with pytest.raises(ValueError, match=r"unknown sampler .*'dpm\+\+'.*'unipc'"):
        make_sampler(bad)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_steps(steps) -> None:
    with pytest.raises(ValueError, match="steps="):
        make_sampler("unipc", steps=steps)


@pytest.mark.parametrize("shift", [0.0, -1.0, math.nan, math.inf, "3"])
def test_bad_shift(shift) -> None:
    with pytest.raises(ValueError, match="shift="):
        make_sampler("dpm++", steps=4, shift=shift)


def test_step_order_and_shape_errors() -> None:
    s = make_sampler("unipc", steps=3)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="out of order"):
        s.step(torch.randn(2, 3), 1, x)
    with pytest.raises(ValueError, match="out of range"):
        s.step(torch.randn(2, 3), 3, x)
    with pytest.raises(ValueError, match="velocity shape"):
        s.step(torch.randn(3, 2), 0, x)
    x = s.step(torch.randn(2, 3), 0, x)
    with pytest.raises(ValueError, match="differs from the history"):
        s.step(torch.randn(4), 1, torch.randn(4))
    s.reset()
    assert s.step_index == 0
    s.step(torch.randn(4), 0, torch.randn(4))
