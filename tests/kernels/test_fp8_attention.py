"""fp8 self-attention: its float32 model (CPU), installation on the DiT, and cuDNN parity (GPU)."""

from __future__ import annotations

import pytest
import torch

from kernels import attention as A
from kernels.fp8_attention import (
    E4M3_MAX,
    Fp8SelfAttention,
    cudnn_fp8_status,
    fp8_attention_reference,
    quantize_per_tensor,
)
from tests.kernels.helpers import dit_inputs, needs_cuda, rel, run_dit, small_dit


def _qkv(b=2, lq=96, lk=80, h=3, d=32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, h, d, generator=g).to(device=device, dtype=torch.bfloat16) for n in (lq, lk, lk)]


def test_quantize_per_tensor_uses_the_whole_e4m3_range():
    x = torch.randn(4, 50, 2, 16) * 3
    x8, descale = quantize_per_tensor(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    assert float(x8.float().abs().max()) == E4M3_MAX  # the largest value maps to 448
    assert rel(x8.float() * descale.view(()), x) < 4e-2  # 3 mantissa bits: ~2^-4 relative steps


def test_reference_is_close_to_exact_attention_but_not_equal():
    q, k, v = _qkv()
    exact = A.attention_reference(q, k, v)
    fp8 = fp8_attention_reference(q, k, v)
    assert fp8.shape == q.shape and fp8.dtype == q.dtype
    err = rel(fp8, exact)
    assert 1e-3 < err < 8e-2, err


def test_reference_handles_peaked_and_flat_attention():
    q, k, v = _qkv(seed=1)
    # e4m3 q/k carry ~2^-4 relative error per element, so the error grows with the logits' size:
    # measured 5 % at unit-variance q/k (D = 32), 8 % at 2x, 21 % at 8x (near one-hot rows).
    errs = [rel(fp8_attention_reference(q * s, k * s, v), A.attention_reference(q * s, k * s, v)) for s in (1, 2, 8)]
    assert errs[0] < 8e-2 and errs[1] < 0.12 and errs[0] < errs[1] < errs[2] < 0.3, errs
    flat = fp8_attention_reference(torch.zeros_like(q), k, v)  # uniform rows: the mean of v
    assert rel(flat, v.float().mean(1, keepdim=True).expand_as(q)) < 4e-2


def test_reference_models_the_hopper_e4m3_output():
    q, k, v = _qkv(lq=256, lk=512, seed=2)
    exact = A.attention_reference(q, k, v)
    bf16_out = fp8_attention_reference(q, k, v)
    e4m3_out = fp8_attention_reference(q, k, v, out_fp8=True)
    _, dv = quantize_per_tensor(v)
    # every output is an e4m3 value times v's descale (up to the final bf16 rounding), and that last
    # rounding adds error
    requant = lambda o: (o.float() / dv.view(())).to(torch.float8_e4m3fn).float() * dv.view(())  # noqa: E731
    assert rel(requant(e4m3_out), e4m3_out) < 5e-3 < rel(requant(bf16_out), bf16_out)
    assert rel(bf16_out, exact) < rel(e4m3_out, exact) < 0.12


def test_module_refuses_without_cudnn_unless_reference_is_allowed():
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="fp8 attention"):
        Fp8SelfAttention()(q, k, v)
    assert torch.equal(Fp8SelfAttention(reference_ok=True)(q, k, v), fp8_attention_reference(q, k, v))
    ok, why = cudnn_fp8_status("cpu")
    assert not ok and "not a CUDA device" in why


def test_optimize_dit_installs_fp8_self_attention_on_cpu():
    from kernels.select import optimize_dit

    dit, inp = small_dit(), dit_inputs()
    exact = run_dit(dit, inp)
    report = optimize_dit(dit, "cpu", fp8_attention=True)
    assert "fp8 self-attention" in report.describe()
    assert all(isinstance(b.self_attn.attn_fn, Fp8SelfAttention) for b in dit.blocks)
    assert not isinstance(dit.blocks[0].cross_attn.attn_fn, Fp8SelfAttention)  # text/audio stay exact
    out = run_dit(dit, inp)
    err = rel(out, exact)
    assert 0 < err < 0.1, err


@needs_cuda
def test_gpu_cudnn_fp8_matches_its_model():
    """cuDNN's fp8 attention errs like its float32 model (scale or layout mistakes give errors of 100 %).

    Not elementwise: measured on an H100, both are ~6 % from exact attention but ~6.5 % from each
    other - cuDNN's online softmax quantises P against the running row maximum of each key block,
    not the final one, so the roundings fall on other grids (independent errors of the same size)."""
    ok, why = cudnn_fp8_status("cuda")
    if not ok:
        pytest.skip(why)
    attn = Fp8SelfAttention()
    for lq, lk in ((1024, 1024), (1560, 1560), (4096, 4096)):
        q, k, v = _qkv(2, lq, lk, h=40, d=128, device="cuda")
        out = attn(q, k, v)
        out_fp8 = attn.plans()[-1]["out_fp8"]  # Hopper: e4m3 output only
        n = 128
        model = fp8_attention_reference(q[:, :n], k, v, out_fp8=out_fp8)
        exact = A.attention_reference(q[:, :n], k, v)
        err, model_err = rel(out[:, :n], exact), rel(model, exact)
        print(lq, attn.plans()[-1]["variant"], "vs exact", err, "model vs exact", model_err,
              "vs model", rel(out[:, :n], model))
        assert err < 1.25 * model_err
        assert rel(out[:, :n], model) < 2 * model_err


@needs_cuda
def test_gpu_optimize_dit_runs_the_dit_with_cudnn_fp8_attention():
    from kernels.select import optimize_dit

    ok, why = cudnn_fp8_status("cuda")
    if not ok:
        pytest.skip(why)
    dit, inp = small_dit("cuda", torch.bfloat16), dit_inputs()  # head dim 128, as in the 14B
    exact = run_dit(dit, inp)
    report = optimize_dit(dit, "cuda", fp8_attention=True)
    assert "cuDNN fp8 SDPA" in report.fp8_attention and "output" in report.fp8_attention
    out = run_dit(dit, inp)
    err = rel(out, exact)
    print(report.describe(), "rel err vs exact", err)
    assert torch.isfinite(out).all() and 0 < err < 0.3
