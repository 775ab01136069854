"""``--fast``: the measured best combination of the fast-mode pieces, and what the device adds.

The sampling part (step cache, guidance schedule) works on every device and is what the quality
measurements on the tiny model chose (benchmarks/results/fast_mode.md). The device part turns on
what the GPU has: fp8 linear layers (sm89+), bfloat16 VAE, and FlashAttention-4 when installed
(the attention backend picks it by itself; the preset only reports it). On a device without them
the preset says what it could not turn on instead of failing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from render.settings import RenderSettings

#: RenderSettings fields --fast sets (chosen from benchmarks/results/fast_mode.md)
FAST_SAMPLING: dict[str, Any] = {
    # audio-aware caching: ~1 dB closer to exact than reusing the whole residual, same forwards;
    # at 40 steps max_skips sets the rate (3: 26 of 80 forwards, 34.0 dB on the tiny model)
    "step_cache": "audio",
    "step_cache_threshold": 0.20,
    "step_cache_max_skips": 3,
    # Exact guidance: fewer unconditional forwards alone cost little (cfg every 2: 44.5 dB at 40
    # steps), but together with the cache the two reuses compound (29.2 dB at 40 steps).
    "cfg_until": 1.0,
    "cfg_every": 1,
}


def apply_fast(settings: RenderSettings) -> RenderSettings:
    """``settings`` with the fast sampling fields (validated again by RenderSettings)."""
    return dataclasses.replace(settings, **FAST_SAMPLING)


@dataclass(frozen=True)
class FastPlan:
    """What --fast turns on for one device, and what it could not."""

    sampling: dict[str, Any]
    fp8: bool
    vae_bf16: bool
    fa4: bool
    enabled: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = "--fast: " + "; ".join(self.enabled)
        if self.unavailable:
            text += ". Not on this device: " + "; ".join(self.unavailable)
        return text


def _cuda_capability(device: str) -> tuple[int, int] | None:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(torch.device(device))


def fast_plan(device: str, capability: tuple[int, int] | None | str = "detect",
              fa4_installed: bool | None = None) -> FastPlan:
    """The --fast plan for ``device`` ("cpu", "cuda", "cuda:N"). ``capability`` / ``fa4_installed``
    override the detection (tests)."""
    cap = _cuda_capability(device) if capability == "detect" else capability
    if fa4_installed is None:
        from kernels.attention import fa4_status

        fa4_installed = fa4_status()[0]
    s = FAST_SAMPLING
    enabled = [f"step cache {s['step_cache']} (threshold {s['step_cache_threshold']:g}, at most "
               f"{s['step_cache_max_skips']} steps skipped in a row)"]
    if (s["cfg_until"], s["cfg_every"]) != (1.0, 1):
        enabled.append(f"unconditional branch every {s['cfg_every']} step(s) on the first {s['cfg_until']:.0%} "
                       "of the steps")
    unavailable = []
    fp8 = cap is not None and cap >= (8, 9)
    (enabled if fp8 else unavailable).append("fp8 linear layers" + ("" if fp8 else " (needs a CUDA GPU, sm89 or newer)"))
    vae_bf16 = cap is not None
    (enabled if vae_bf16 else unavailable).append("bf16 VAE" + ("" if vae_bf16 else " (GPU only: slow on the CPU)"))
    fa4 = bool(cap is not None and cap >= (9, 0) and fa4_installed)
    if fa4:
        enabled.append("FlashAttention-4 attention")
    else:
        why = "needs a CUDA GPU, sm90 or newer" if cap is None or cap < (9, 0) else "flash-attn-4 is not installed"
        unavailable.append(f"FlashAttention-4 ({why})")
    return FastPlan(dict(s), fp8, vae_bf16, fa4, enabled, unavailable)
