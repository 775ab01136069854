"""Attention entry point: torch reference, backend order per device, per-shape verified choice."""

from __future__ import annotations

import logging

import pytest
import torch

from kernels import attention as A
from tests.kernels.helpers import needs_cuda, rel


@pytest.fixture(autouse=True)
def _fresh_choices():
    A.reset()
    yield
    A.reset()


def _qkv(b, lq, lk, h=2, d=16, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(b, n, h, d, generator=g).to(device=device, dtype=dtype) for n in (lq, lk, lk)]


def test_cpu_attention_matches_reference():
    q, k, v = _qkv(2, 33, 7)
    assert rel(A.attention(q, k, v), A.attention_reference(q, k, v)) < 1e-5
    assert A.choose_backend("cpu") == A.DEFAULT


def test_reference_is_softmax_attention():
    q, k, v = _qkv(1, 4, 3, h=1, d=2)
    w = torch.softmax(q[0, :, 0] @ k[0, :, 0].T / 2**0.5, dim=-1)
    assert torch.allclose(A.attention_reference(q, k, v)[0, :, 0], w @ v[0, :, 0], atol=1e-6)


@pytest.mark.parametrize("cap,fa4,first", [((9, 0), False, "cudnn"), ((9, 0), True, "fa4"), ((10, 0), True, "fa4"),
                                           ((8, 0), True, "flash"), ((8, 0), False, "flash")])
def test_device_order_follows_compute_capability(monkeypatch, cap, fa4, first):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: cap)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "test GPU")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(A, "fa4_status", lambda: (fa4, "flash_attn.cute" if fa4 else "not importable (test)"))
    order, why = A.default_order(torch.device("cuda", 0))
    assert order[0] == first and order[-1] == "math" and "test GPU" in why
    assert ("fa4" in order) == (fa4 and cap[0] >= 9)
    if cap[0] >= 9 and not fa4:
        assert "FA4: not importable (test)" in why and order[:2] == ("cudnn", "flash")


def test_fa4_status_on_this_machine_is_a_reason_not_an_error():
    ok, why = A.fa4_status()
    assert isinstance(ok, bool) and why


def _fake_backends(monkeypatch, calls):
    """cudnn cannot run the shape, flash runs but is wrong, efficient is right."""
    def fake_run(backend, q, k, v):
        calls.append(backend)
        if backend == "cudnn":
            raise RuntimeError("No available kernel. Aborting execution.")
        out = A.attention_reference(q, k, v)
        return out + 1.0 if backend == "flash" else out
    monkeypatch.setattr(A, "_run", fake_run)
    A._choices["cpu"] = A.DeviceChoice(A.SDPA_BACKENDS, "test order")


def test_per_shape_choice_skips_failing_and_wrong_backends(monkeypatch, caplog):
    calls = []
    _fake_backends(monkeypatch, calls)
    q, k, v = _qkv(2, 40, 5)
    with caplog.at_level(logging.INFO, logger="kernels.attention"):
        out = A.attention(q, k, v)
    assert rel(out, A.attention_reference(q, k, v)) < 1e-6
    assert calls == ["cudnn", "flash", "efficient"]
    assert A.chosen_backends()["cpu"] == {"B=2 Lq=40 Lk=5 H=2 D=16 float32": "efficient"}
    assert "efficient" in caplog.text and "cudnn: No available kernel" in caplog.text
    calls.clear()
    A.attention(q, k, v)  # decided once per shape
    assert calls == ["efficient"]
    A.attention(*_qkv(2, 40, 6))  # a new key length is a new shape
    assert calls[1:] == ["cudnn", "flash", "efficient"]


def test_autotune_keeps_the_fastest_verified_backend(monkeypatch):
    calls = []
    _fake_backends(monkeypatch, calls)
    monkeypatch.setattr(A, "_run", lambda backend, q, k, v: A.attention_reference(q, k, v))
    speed = {"cudnn": 3e-3, "flash": 1e-3, "efficient": 2e-3}
    monkeypatch.setattr(A, "_time_once", lambda backend, q, k, v: speed[backend])
    A.attention(*_qkv(1, 16, 16))
    assert list(A.chosen_backends()["cpu"].values()) == ["flash"]
    assert "flash 1.00 ms" in next(iter(A.chosen_backends(with_timings=True)["cpu"].values()))
    A._choices["cpu"].autotune = False  # first that works
    A._choices["cpu"].per_shape.clear()
    A.attention(*_qkv(1, 16, 16))
    assert list(A.chosen_backends()["cpu"].values()) == ["cudnn"]


def test_a_backend_that_asserts_is_skipped_like_one_that_raises(monkeypatch):
    """FA4's interface rejects what it cannot run with AssertionError (dtype, head dim...)."""
    def fake_run(backend, q, k, v):
        if backend == "fa4":
            raise AssertionError("inputs must be float16, bfloat16, fp8 e4m3fn, or fp8 e5m2")
        return A.attention_reference(q, k, v)
    monkeypatch.setattr(A, "_run", fake_run)
    A.set_backend("cpu", ("fa4", "cudnn"))
    A.attention(*_qkv(1, 8, 8))
    assert list(A.chosen_backends()["cpu"].values()) == ["cudnn"]


def test_no_working_backend_names_every_try(monkeypatch):
    monkeypatch.setattr(A, "_run", lambda backend, q, k, v: torch.full_like(q, float("nan")))
    A._choices["cpu"] = A.DeviceChoice(("flash", "math"), "test order")
    with pytest.raises(RuntimeError, match="flash: rel err nan.*math: rel err nan"):
        A.attention(*_qkv(1, 8, 8))


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        A.set_backend("cpu", "fast")


# --- GPU: the three attentions of the DiT at their real head layout --------------------------
SHAPES = {
    "self": (2, 4096, 4096),  # noisy + reference + motion tokens
    "text cross": (2, 4096, 512),  # 512 text tokens, unmasked
    "audio per frame": (40, 1560, 5),  # 20 latent frames x 2 samples, 4 + 1 audio tokens each
}


@needs_cuda
@pytest.mark.parametrize("name", list(SHAPES))
def test_gpu_backend_is_verified_per_shape(name):
    b, lq, lk = SHAPES[name]
    q, k, v = _qkv(b, lq, lk, h=40, d=128, dtype=torch.bfloat16, device="cuda")
    out = A.attention(q, k, v)
    n = 256
    assert rel(out[:2, :n], A.attention_reference(q[:2, :n], k[:2], v[:2])) < 2e-2
    picked = A.chosen_backends()[f"cuda:{torch.cuda.current_device()}"]
    print(name, picked)
    assert len(picked) == 1
    if torch.cuda.get_device_capability()[0] >= 9 and name == "self":
        # 575 vs 357 TFLOP/s for flash on an H100; FA4 (when installed) is timed against cuDNN.
        assert list(picked.values())[0] in ("cudnn", "fa4")


@needs_cuda
def test_gpu_fa4_matches_reference_when_installed():
    if not A.fa4_status()[0] or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("flash-attn-4 not installed or not Hopper+")
    for name, (b, lq, lk) in SHAPES.items():
        q, k, v = _qkv(b, lq, lk, h=40, d=128, dtype=torch.bfloat16, device="cuda")
        # FA4 itself for the long self-attention; a fallback may take the tiny audio shapes.
        A.set_backend("cuda", ("fa4",) if name == "self" else ("fa4", "flash", "efficient"))
        out = A.attention(q, k, v)
        n = 256
        assert out.shape == q.shape and out.dtype == q.dtype
        assert rel(out[:2, :n], A.attention_reference(q[:2, :n], k[:2], v[:2])) < 2e-2
    print(A.chosen_backends(with_timings=True))
