"""Fused glue (LayerNorm/modulation/residual, RMSNorm + RoPE, fused FFN) against the torch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kernels import glue as glue_mod
from kernels.glue import FusedGlue
from kernels.norms import residual_layer_norm, residual_layer_norm_reference
from kernels.rope import rms_norm_rope, rms_norm_rope_reference
from kernels.select import _attention_modules
from render.model.dit.layers import TORCH_GLUE, RMSNorm
from render.model.dit.rope import apply_rope_reference
from tests.kernels.helpers import dit_inputs, needs_cuda, rel, run_dit, small_dit


def _mods(b, d, device="cpu"):
    # [B, 2, 6, D] unbound along dim 2, as the block does: strided [B, 2, D] views
    e = torch.randn(b, 2, 6, d, device=device)
    return e.unbind(2)


def test_reference_kernels_equal_the_block_formulas():
    """The kernel-level torch references compute exactly what TorchGlue (the block) computes."""
    b, n, d, n_first = 2, 11, 32, 7
    x, y = torch.randn(b, n, d), torch.randn(b, n, d)
    shift, scale, gate, *_ = _mods(b, d)
    w, bias = torch.randn(d), torch.randn(d)
    ref = TORCH_GLUE
    assert torch.equal(residual_layer_norm_reference(x, n_first=n_first, a=1 + scale, b=shift, eps=1e-6)[1],
                       ref.modulate(x, n_first, shift, scale, 1e-6))
    assert torch.equal(residual_layer_norm_reference(x, y, gate, n_first=n_first, norm=False)[0],
                       ref.gated_residual(x, y, n_first, gate))
    got = residual_layer_norm_reference(x, y, gate, n_first=n_first, a=w, b=bias, eps=1e-6)
    want = ref.gated_residual_norm(x, y, n_first, gate, w, bias, 1e-6)
    assert torch.equal(got[0], want[0]) and torch.allclose(got[1], want[1], atol=1e-6)
    got = residual_layer_norm_reference(x, y, n_first=n_first, a=1 + scale, b=shift, eps=1e-6)
    want = ref.residual_modulate(x, y, n_first, shift, scale, 1e-6)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_rope_reference_equals_module_then_rope(dtype):
    b, n, heads, hd = 2, 9, 4, 16
    x = torch.randn(b, n, heads * hd).to(dtype)
    norm = RMSNorm(heads * hd).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(heads * hd))
    ang = torch.rand(n, hd // 2) * 6
    want = apply_rope_reference(norm(x).view(b, n, heads, hd), ang.cos(), ang.sin())
    got = rms_norm_rope_reference(x, norm.weight, norm.eps, ang.cos(), ang.sin())
    assert torch.equal(got.view(b, n, heads, hd), want)
    assert torch.equal(rms_norm_rope_reference(x, norm.weight, norm.eps), norm(x))


def test_fused_glue_routes_to_the_reference_on_cpu():
    model, inp = small_dit(), dit_inputs()
    want = run_dit(model, inp)
    for m in _attention_modules(model):
        m.glue = FusedGlue(m.glue, torch.float32)
    assert torch.equal(run_dit(model, inp), want)


def test_fused_glue_argument_mapping_on_cpu(monkeypatch):
    """Force FusedGlue down its fused route; on CPU the kernels fall back to their torch
    references, so this checks how the block's arguments map onto the kernels."""
    model, inp = small_dit(), dit_inputs()
    want = run_dit(model, inp)
    monkeypatch.setattr(glue_mod, "use_triton", lambda *t: True)
    for m in _attention_modules(model):
        m.glue = FusedGlue(m.glue, torch.float32)
    got = run_dit(model, inp)
    assert not torch.equal(got, torch.zeros_like(got))
    assert (got - want).abs().max() < 1e-4


# --- GPU: Triton kernels at the 14B model's widths ------------------------------------------
@needs_cuda
@pytest.mark.parametrize("case", ["modulate", "gated_norm", "residual_modulate", "gated_add"])
def test_gpu_residual_layer_norm_matches_reference(case):
    b, n, d, n_first = 2, 1500, 5120, 1000
    x = torch.randn(b, n, d, device="cuda")
    y = torch.randn(b, n, d, device="cuda").bfloat16()
    shift, scale, gate, *_ = _mods(b, d, "cuda")
    kw = {
        "modulate": dict(a=1 + scale, b=shift),
        "gated_norm": dict(y=y, gate=gate, a=torch.randn(d, device="cuda"), b=torch.randn(d, device="cuda")),
        "residual_modulate": dict(y=y, a=1 + scale, b=shift),
        "gated_add": dict(y=y, gate=gate, norm=False),
    }[case]
    yy, gg = kw.pop("y", None), kw.pop("gate", None)
    x_out, out = residual_layer_norm(x, yy, gg, n_first=n_first, eps=1e-6, out_dtype=torch.bfloat16, **kw)
    x_ref, out_ref = residual_layer_norm_reference(x, yy, gg, n_first=n_first, eps=1e-6, out_dtype=torch.bfloat16, **kw)
    assert rel(x_out, x_ref) < 1e-6
    if out_ref is not None:
        assert out.dtype == torch.bfloat16 and rel(out, out_ref) < 2e-3
        assert (out.float() - out_ref.float()).abs().max() <= 0.02 * out_ref.float().abs().max()


@needs_cuda
@pytest.mark.parametrize("rope", [True, False])
def test_gpu_rms_norm_rope_matches_reference(rope):
    b, n, d = 2, 3000, 5120
    x = (3 * torch.randn(b, n, d, device="cuda")).bfloat16()
    w = (1 + 0.1 * torch.randn(d, device="cuda")).bfloat16()
    ang = torch.rand(n, 64, device="cuda", dtype=torch.float64) * 40
    cs = (ang.cos().float(), ang.sin().float()) if rope else (None, None)
    got, want = rms_norm_rope(x, w, 1e-6, *cs), rms_norm_rope_reference(x, w, 1e-6, *cs)
    assert got.dtype == torch.bfloat16 and rel(got, want) < 2e-3


@needs_cuda
def test_gpu_fused_ffn_matches_reference():
    d, f = 1024, 2816
    ffn = nn.Sequential(nn.Linear(d, f), nn.GELU(approximate="tanh"), nn.Linear(f, d)).cuda().bfloat16()
    y = torch.randn(2, 777, d, device="cuda").bfloat16()
    with torch.inference_mode():
        got = FusedGlue(TORCH_GLUE).ffn(ffn, y)
        want = TORCH_GLUE.ffn(ffn, y)
    assert got.shape == want.shape and rel(got, want) < 1e-2


@needs_cuda
def test_gpu_small_dit_fused_equals_reference():
    from kernels.select import optimize_dit

    inp = dit_inputs()
    model = small_dit("cuda", torch.bfloat16)
    want = run_dit(model, inp)
    report = optimize_dit(model)
    assert report.glue.startswith("fused Triton"), report.glue
    got = run_dit(model, inp)
    err = rel(got, want)
    print("bf16 small DiT fused vs reference rel err", err)
    assert err < 1e-2
