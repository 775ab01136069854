"""Small models and inputs for the kernel tests.

Built here rather than through ``tinymodel.checkpoint`` because that module pulls in the media
pipeline (PyAV), which the GPU machines that run the CUDA half of these tests do not have.
"""

from __future__ import annotations

import pytest
import torch

from render.model.checkpoint import DiTConfig
from render.model.dit.init import fill_random_
from render.model.dit.model import S2VDiT

# head_dim 128 as in the 14B model; widths multiples of 16 as fp8 matmuls need.
SMALL_DIT = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, audio_inject_layers=[0, 1],
                      audio_dim=32, text_len=32)


def small_dit(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> S2VDiT:
    """A random S2V DiT whose every parameter is non-zero (so every path matters)."""
    torch.manual_seed(seed)
    model = fill_random_(S2VDiT(SMALL_DIT), seed)
    return model.to(device=device, dtype=dtype).eval()


def dit_inputs(cfg: DiTConfig = SMALL_DIT, frames: int = 3, hw: tuple[int, int] = (8, 12), batch: int = 2,
               seed: int = 1) -> dict:
    """Inputs of one denoise call with motion tokens (a clip r >= 1), CPU float32."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    return dict(
        x=torch.randn(batch, cfg.in_dim, frames, h, w, generator=g),
        t=torch.tensor([700.0]),
        context=[torch.randn(5 + i, cfg.text_dim, generator=g) for i in range(batch)],
        ref=torch.randn(batch, cfg.in_dim, 1, h, w, generator=g),
        motion=torch.randn(batch, cfg.in_dim, 19, h, w, generator=g),
        audio=torch.randn(batch, 25, cfg.audio_dim, 4 * frames, generator=g),
    )


def run_dit(model: S2VDiT, inp: dict) -> torch.Tensor:
    dev = model.patch_embedding.weight.device
    with torch.inference_mode():
        cond = model.prepare(inp["x"].shape, [c.to(dev) for c in inp["context"]], inp["ref"].to(dev),
                             inp["motion"].to(dev), None, inp["audio"].to(dev), cache_context_kv=True)
        return model.denoise(inp["x"].to(dev), inp["t"].to(dev), cond)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine)")
