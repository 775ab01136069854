"""fp8 linears: row-wise quantisation, the cache of the last activation, the error of the mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kernels import fp8
from kernels.fp8 import FP8Linear, quantize_rows, quantize_rows_reference
from tests.kernels.helpers import dit_inputs, needs_cuda, rel, run_dit, small_dit


def test_quantize_rows_reference_scales_each_row_to_the_fp8_range():
    x = torch.randn(6, 64) * torch.logspace(-3, 3, 6)[:, None]
    q, s = quantize_rows_reference(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (6,)
    assert torch.allclose(s, x.abs().amax(1) / 448)
    assert torch.allclose(q.float().abs().amax(1), torch.full((6,), 448.0))
    deq = q.float() * s[:, None]
    assert rel(deq, x) < 0.04  # 3 mantissa bits
    assert ((deq - x).abs() <= x.abs() * 2**-4 + s[:, None] * 2**-9).all()


def test_quantize_rows_reference_handles_zero_rows_and_gelu():
    x = torch.zeros(2, 32)
    q, s = quantize_rows_reference(x)
    assert torch.isfinite(s).all() and (q.float() == 0).all()
    y = torch.randn(3, 32).bfloat16()
    qg, sg = quantize_rows_reference(y, gelu=True)
    g = torch.nn.functional.gelu(y, approximate="tanh").float()
    assert rel(qg.float() * sg[:, None], g) < 0.04


def test_fp8_linear_reference_error_is_small_but_not_zero():
    lin = nn.Linear(256, 128)
    x = torch.randn(4, 10, 256)
    f = FP8Linear.from_linear(lin)
    with torch.no_grad():
        want = lin(x)
        got = f(x)
    assert got.shape == want.shape and got.dtype == torch.float32  # the replaced layer's dtype
    err = rel(got, want)
    assert 1e-3 < err < 0.06


def test_last_activation_cache_is_keyed_by_the_tensor_object():
    cache = fp8._LastQuantized()
    x = torch.randn(4, 8)
    val = quantize_rows_reference(x)
    cache.put(x, val)
    assert cache.get(x) is val
    assert cache.get(x.clone()) is None
    x.add_(1)  # modified in place: stale
    assert cache.get(x) is None
    cache.put(x, val)
    del x
    assert cache._ref() is None  # a freed tensor never matches a new one at the same address


def test_fp8_mode_on_a_small_dit_cpu():
    from kernels.select import optimize_dit

    model, inp = small_dit(), dit_inputs()
    want = run_dit(model, inp)
    report = optimize_dit(model, fp8=True)
    n = sum(isinstance(m, FP8Linear) for m in model.modules())
    assert n == 2 * 8 + 2 * 2 and report.fp8.startswith("20 layers")
    got = run_dit(model, inp)
    err = rel(got, want)
    assert 1e-4 < err < 0.1, err


# --- GPU -------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("gelu", [False, True])
def test_gpu_quantize_rows_matches_reference(gelu):
    x = (torch.randn(3001, 13824, device="cuda") * 4).bfloat16()
    q, s = quantize_rows(x, gelu)
    qr, sr = quantize_rows_reference(x, gelu)
    assert rel(s, sr) < 1e-6
    mismatch = (q.float() != qr.float()).float().mean().item()
    assert mismatch < 1e-3, mismatch  # GELU's tanh form may move a value across a rounding tie


@needs_cuda
def test_gpu_scaled_mm_matches_dequantised_reference():
    if not fp8.scaled_mm_supported(torch.cuda.current_device()):
        pytest.skip("no fp8 tensor cores")
    lin = nn.Linear(5120, 5120).cuda().bfloat16()
    f = FP8Linear.from_linear(lin)
    x = torch.randn(1003, 5120, device="cuda").bfloat16()  # rows not a multiple of 16
    xq, xs = quantize_rows(x)
    with torch.inference_mode():
        got = f.matmul_quantized(xq, xs)
        ref = fp8.matmul_quantized_reference(xq, xs, f.weight_q, f.weight_scale, f.bias, torch.bfloat16)
        exact = lin(x)
    assert rel(got, ref) < 5e-3
    err = rel(got, exact)
    print("fp8 linear vs bf16 rel err", err)
    assert err < 0.06


@needs_cuda
def test_gpu_fp8_from_host_memory_equals_in_place_and_holds_no_bf16_copy():
    """S2VModels loads an fp8 DiT into host memory and quantises each linear onto the card
    (optimize_dit fp8_to_device): the same model as converting on the card, and the card's
    memory afterwards is what the converted model holds, not what the bf16 one held."""
    from kernels.select import optimize_dit

    if not fp8.scaled_mm_supported(torch.cuda.current_device()):
        pytest.skip("no fp8 tensor cores")
    inp = dit_inputs()
    in_place = small_dit("cuda", torch.bfloat16)
    optimize_dit(in_place, "cuda", fp8=True)
    want = run_dit(in_place, inp)
    del in_place
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    staged = small_dit("cpu", torch.bfloat16)
    optimize_dit(staged, "cuda", fp8=True, fp8_to_device=True)
    staged.to("cuda")
    held = sum(t.nbytes for t in list(staged.parameters()) + list(staged.buffers()))
    assert all(t.is_cuda for t in list(staged.parameters()) + list(staged.buffers()))
    assert torch.cuda.memory_allocated() - before <= held + 2**20
    assert torch.equal(run_dit(staged, inp), want)
