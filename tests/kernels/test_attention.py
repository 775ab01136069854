"""Attention entry point: torch reference, backend order per device, per-shape verified choice."""

from __future__ import annotations

import logging

import pytest
import torch

from kernels import attention as A

from .helpers import needs_cuda, rel


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


@pytest.mark.parametrize("cap,first", [((9, 0), "cudnn"), ((8, 0), "flash")])
def test_device_order_follows_compute_capability(monkeypatch, cap, first):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: cap)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "test GPU")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    order, why = A.default_order(torch.device("cuda", 0))
    assert order[0] == first and order[-1] == "math" and "test GPU" in why


def _fake_backends(monkeypatch, calls):
    """cudnn cannot run the shape, flash runs but is wrong, efficient is right."""
    def fake_run(backend, q, k, v):
        calls.append(backend)
        if backend == "cudnn":
            raise RuntimeError("No available kernel. Aborting execution.")
        out = A.attention_reference(q, k, v)
        return out + 1.0 if backend == "flash" else out
    monkeypatch.setattr(A, "_run", fake_run)
    A._choices["cpu"] = A.DeviceChoice(A.BACKENDS, "test order")


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
        assert list(picked.values()) == ["cudnn"]  # 575 vs 357 TFLOP/s for flash on an H100
