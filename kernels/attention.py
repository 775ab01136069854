"""The single attention entry point of the DiT, and the choice of backend.

Every attention in the model (self-attention, text cross-attention, per-frame audio attention)
calls :func:`attention` with tensors laid out ``[B, L, H, D]``. ``parallel/`` swaps in sequence-
parallel variants by replacing a module's ``attn_fn``.

Backend choice. Per device, an order of backends is fixed once and logged: on Hopper and newer
FlashAttention-4 (the ``flash-attn-4`` package's CuTe kernels, ``flash_attn.cute``) when it is
installed, then torch's SDPA backends with cuDNN first (585 against 363 TFLOP/s for flash at the
DiT's shapes); flash first on older GPUs; torch's own dispatch on CPU. On a GPU, the first call with a new shape
(batch, query and key lengths, heads, head dim, dtype) runs each backend of that order on its
own, keeps those that run *and* match the float32 reference on a slice of the queries, times
them once more, and uses the fastest from then on (the plain math backend only when no fused one
works: it materialises the whole score matrix). That per-shape pick is logged with the timings.
A backend that cannot take a shape or computes it wrongly is thus never used for it, and one
that is merely slower for a shape (few keys, as in the text and audio attention) is not either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BACKENDS = ("fa4", "cudnn", "flash", "efficient", "math")
SDPA_BACKENDS = BACKENDS[1:]
_SDPA_NAMES = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
               "math": "MATH"}
DEFAULT = "default"  # torch's own dispatch, no per-shape check (what CPU uses)
VERIFY_QUERIES = 64  # query rows of the first sample checked against the float32 reference
VERIFY_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-3}


@dataclass
class DeviceChoice:
    """The backend order of one device and the backend picked for each shape seen.

    ``autotune``: time every working backend at a new shape and keep the fastest (default on
    GPUs); otherwise keep the first that works.
    """

    order: tuple[str, ...]
    reason: str
    per_shape: dict[tuple, str] = field(default_factory=dict)
    autotune: bool = True
    timings: dict[tuple, dict[str, float]] = field(default_factory=dict)


_choices: dict[str, DeviceChoice] = {}


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


def default_order(device: torch.device) -> tuple[tuple[str, ...], str]:
    """(backend order, why) for a device, from its kind and compute capability."""
    if device.type != "cuda":
        return (DEFAULT,), f"{device.type}: torch's own SDPA dispatch"
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if major >= 9:
        fa4, why = fa4_status()
        order = tuple(b for b in BACKENDS if (b != "fa4" or fa4) and (b != "cudnn" or torch.backends.cudnn.is_available()))
        return order, (f"{name} (sm{major}{minor}): {'FA4 then ' if fa4 else ''}cuDNN first (fastest measured on "
                       f"Hopper), flash as fallback; each shape autotuned" + ("" if fa4 else f"; FA4: {why}"))
    return SDPA_BACKENDS[1:], f"{name} (sm{major}{minor}): flash first"


def fa4_status() -> tuple[bool, str]:
    """(usable, why) for FlashAttention-4's CuTe kernels (``pip install flash-attn-4``)."""
    try:
        from flash_attn.cute import flash_attn_func  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA / CuTe-DSL install
        return False, f"flash_attn.cute not importable ({type(exc).__name__}: {str(exc)[:80]})"
    return True, "flash_attn.cute"


def choose_backend(device: torch.device | str) -> str:
    """Fix the backend order of ``device`` once (logged) and return the preferred backend."""
    return device_choice(device).order[0]


def device_choice(device: torch.device | str) -> DeviceChoice:
    device = torch.device(device)
    key = _device_key(device)
    if key not in _choices:
        order, reason = default_order(device)
        _choices[key] = DeviceChoice(order, reason)
        log.info("attention on %s: %s; order %s", key, reason, " > ".join(order))
    return _choices[key]


def set_backend(device: torch.device | str, backend: str | tuple[str, ...]) -> None:
    """Force one backend (or ``"default"``), or an order of them that is autotuned per shape as
    usual, for a device, e.g. to compare backends."""
    order = (backend,) if isinstance(backend, str) else tuple(backend)
    for b in order:
        if b not in BACKENDS and b != DEFAULT:
            raise ValueError(f"unknown attention backend {b!r}; expected one of {[*BACKENDS, DEFAULT]}")
    device = torch.device(device)
    key = _device_key(device)
    _choices[key] = DeviceChoice(order, "set explicitly")
    log.info("attention backend for %s set to %s", key, " > ".join(order))


def chosen_backends(with_timings: bool = False) -> dict[str, dict[str, str]]:
    """{device: {shape description: backend}} for everything decided so far (for reports);
    with timings, the backend reads e.g. ``"cudnn (cudnn 88.1 ms, flash 140.3 ms)"``."""
    out = {}
    for dev, choice in _choices.items():
        out[dev] = {}
        for k, b in choice.per_shape.items():
            t = choice.timings.get(k) if with_timings else None
            out[dev][_describe(k)] = b + (f" ({', '.join(f'{n} {s * 1e3:.2f} ms' for n, s in t.items())})" if t else "")
    return out


def reset() -> None:
    """Forget all choices (tests, benchmarks switching backends)."""
    _choices.clear()


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention in float32, [B, L, H, D] layout; the parity reference."""
    scale = q.shape[-1] ** -0.5
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    w = torch.softmax((qf @ kf.transpose(-1, -2)) * scale, dim=-1)
    return (w @ vf).transpose(1, 2).to(q.dtype)


def _run(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if backend == "fa4":
        from flash_attn.cute import flash_attn_func

        # FA4 takes and returns [B, L, H, D] (our layout: no transposes); it returns (out, lse).
        return flash_attn_func(q, k, v)[0]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend == DEFAULT:
        return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, _SDPA_NAMES[backend])]):
        return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)


def _describe(key: tuple) -> str:
    b, lq, lk, h, d, dtype = key
    return f"B={b} Lq={lq} Lk={lk} H={h} D={d} {str(dtype).removeprefix('torch.')}"


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.float() - ref.float()).norm()
    return float(diff / ref.float().norm().clamp_min(1e-30))


def _verify(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """Relative L2 error of the first sample's first query rows against the float32 reference."""
    n = min(VERIFY_QUERIES, q.shape[1])
    ref = attention_reference(q[:1, :n], k[:1], v[:1])
    return relative_error(out[:1, :n], ref)


def _time_once(backend: str, q, k, v) -> float:
    """Seconds of one call (CUDA events; the backend has run once already, so no set-up cost)."""
    if not q.is_cuda:
        return 0.0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    _run(backend, q, k, v)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000


def _pick_for_shape(choice: DeviceChoice, key: tuple, q, k, v) -> tuple[str, torch.Tensor]:
    tol = VERIFY_TOLERANCE.get(q.dtype, 2e-2)
    tried, timed = [], {}
    best: tuple[float, str, torch.Tensor] | None = None
    for backend in choice.order:
        if backend == "math" and best is not None:
            break  # the unfused fallback only when nothing else works
        try:
            out = _run(backend, q, k, v)
        except Exception as exc:  # "No available kernel", cuDNN graph errors, out of memory, FA4 asserts...
            tried.append(f"{backend}: {str(exc).splitlines()[0][:120]}")
            continue
        err = _verify(out, q, k, v)
        if not (err == err and err <= tol):  # err == err rejects NaN
            tried.append(f"{backend}: rel err {err:.2e} > {tol:.0e}")
            continue
        if not choice.autotune:
            best = (0.0, backend, out)
            break
        timed[backend] = _time_once(backend, q, k, v)
        if best is None or timed[backend] < best[0]:
            best = (timed[backend], backend, out)
        del out
    if best is None:
        raise RuntimeError(f"no attention backend works for {_describe(key)} on {q.device}: {'; '.join(tried)}")
    _, backend, out = best
    choice.per_shape[key] = backend
    choice.timings[key] = timed
    times = ", ".join(f"{b} {t * 1e3:.2f} ms" for b, t in timed.items())
    log.info("attention %s on %s: %s (verified on %d queries%s)%s", _describe(key), q.device, backend,
             min(VERIFY_QUERIES, q.shape[1]), f"; timed {times}" if timed else "",
             f"; skipped {'; '.join(tried)}" if tried else "")
    return backend, out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for [B, L, H, D] tensors, unmasked, in q's dtype."""
    choice = device_choice(q.device)
    if choice.order == (DEFAULT,):
        return _run(DEFAULT, q, k, v)
    key = (q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.shape[3], q.dtype)
    backend = choice.per_shape.get(key)
    if backend is None:
        return _pick_for_shape(choice, key, q, k, v)[1]
    return _run(backend, q, k, v)
