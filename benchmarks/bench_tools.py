"""Timing, FLOP counting, random models and inputs for ``bench_single_gpu.py``."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from render.model.checkpoint import DiTConfig

FRAMES_PER_CLIP = 80  # pixel frames of one clip (the official infer_frames)
LATENT_FRAMES = 20
MOTION_LATENTS = 19
FPS = 16


def time_cuda(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` (CUDA events around each call; a host clock without CUDA),
    after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return times
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return times


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --- ceilings --------------------------------------------------------------------------------
def matmul_tflops(device: torch.device, n: int = 8192, fp8: bool = False, repeats: int = 10) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).bfloat16()
    b = torch.randn(n, n, device=device, generator=g).bfloat16()
    if fp8:
        from kernels.fp8 import quantize_rows_reference

        aq, sa = quantize_rows_reference(a)
        bq, sb = quantize_rows_reference(b)
        fn = lambda: torch._scaled_mm(aq, bq.t(), scale_a=sa[:, None], scale_b=sb[None, :],  # noqa: E731
                                      out_dtype=torch.bfloat16)
    else:
        fn = lambda: a @ b  # noqa: E731
    t = median(time_cuda(fn, repeats, warmup=3))
    return 2 * n**3 / t / 1e12


def attention_tflops(device: torch.device, tokens: int, backend: str, heads: int = 40, head_dim: int = 128,
                     repeats: int = 3) -> float | str:
    """Self-attention rate of one SDPA backend at [1, heads, tokens, head_dim] bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, head_dim, device=device, generator=g).bfloat16() for _ in range(3))
    if backend == "fa4":  # FlashAttention-4 (flash_attn.cute) takes [B, L, H, D]
        from flash_attn.cute import flash_attn_func

        ql, kl, vl = (t.transpose(1, 2).contiguous() for t in (q, k, v))

        def fn():
            return flash_attn_func(ql, kl, vl)[0]
    else:
        name = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}[backend]

        def fn():
            with sdpa_kernel([getattr(SDPBackend, name)]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    try:
        t = median(time_cuda(fn, repeats))
    except Exception as exc:  # no kernel for the shape; FA4 raises AssertionError / DSL errors
        return f"n/a ({str(exc).splitlines()[0][:60]})"
    return 4 * tokens**2 * heads * head_dim / t / 1e12


# --- the DiT's arithmetic --------------------------------------------------------------------
@dataclass
class ForwardCost:
    tokens: int  # whole sequence (noisy + reference + motion)
    noisy: int
    linear_flops: float  # per sample and forward
    self_attn_flops: float
    other_attn_flops: float  # text cross-attention + audio attention

    @property
    def total(self) -> float:
        return self.linear_flops + self.self_attn_flops + self.other_attn_flops

    def floor_s(self, matmul_tflops: float, attn_tflops: float) -> float:
        return self.linear_flops / (matmul_tflops * 1e12) + (self.self_attn_flops + self.other_attn_flops) / (
            attn_tflops * 1e12)


def forward_cost(cfg: DiTConfig, tokens: int, noisy: int, frames: int = LATENT_FRAMES) -> ForwardCost:
    d, f = cfg.dim, cfg.ffn_dim
    n_inj = len(cfg.audio_inject_layers)
    audio_tokens = cfg.num_audio_token + 1
    per_block = 2 * tokens * (4 * d * d + 2 * d * d + 2 * d * f)  # q k v o, cross q o, ffn
    linear = cfg.num_layers * per_block + n_inj * 2 * noisy * 2 * d * d  # + injector q, o
    linear += n_inj * 2 * frames * audio_tokens * 2 * d * d  # injector k, v on audio tokens
    linear += 2 * noisy * d * cfg.out_dim * math.prod(cfg.patch_size)  # head
    self_attn = cfg.num_layers * 4 * tokens * tokens * d
    other = cfg.num_layers * 4 * tokens * cfg.text_len * d + n_inj * 4 * noisy * audio_tokens * d
    return ForwardCost(tokens, noisy, linear, self_attn, other)


# --- random models and inputs ----------------------------------------------------------------
def random_init_(model: nn.Module, seed: int = 0) -> None:
    """Fill every parameter on its device: weights N(0, 1/fan_in), norm weights ~1, biases and
    modulation tables small, so activations stay in the range a trained model has."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32)
            if name.endswith("gamma") or (p.dim() == 1 and "norm" in name):
                p.copy_(1 + 0.1 * r)
            elif p.dim() == 1 or "modulation" in name or "padding_tokens" in name or "weights" in name:
                p.copy_(0.1 * r)
            else:
                p.copy_(r / math.sqrt(p[0].numel()))


def random_dit(cfg: DiTConfig, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """The S2V DiT with random weights, built on the meta device and materialised on ``device``."""
    from render.model.dit import build_dit_skeleton

    model = build_dit_skeleton(cfg).to(dtype)
    model = model.to_empty(device=device)
    random_init_(model)
    return model.eval().requires_grad_(False)


def clip_inputs(cfg: DiTConfig, height: int, width: int, batch: int, device: torch.device, seed: int = 0) -> dict:
    """One clip's DiT inputs for clips r >= 1 (with motion tokens), CFG as a batch of ``batch``."""
    g = torch.Generator(device=device).manual_seed(seed)
    h, w = height // 8, width // 8

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device)

    return dict(
        x=rnd(batch, cfg.in_dim, LATENT_FRAMES, h, w),
        t=torch.tensor([700.0], device=device),
        context=[rnd(cfg.text_len, cfg.text_dim) for _ in range(batch)],
        ref=rnd(batch, cfg.in_dim, 1, h, w),
        motion=rnd(batch, cfg.in_dim, MOTION_LATENTS, h, w),
        audio=rnd(batch, 25, cfg.audio_dim, FRAMES_PER_CLIP),
    )


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def psnr(test: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR with the reference's dynamic range (max - min) as the peak."""
    ref, test = ref.float(), test.float()
    mse = float((test - ref).pow(2).mean())
    peak = float(ref.max() - ref.min())
    return float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)
