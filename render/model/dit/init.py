"""Random, everywhere-non-zero initialisation for tiny test/demo models (pure torch)."""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def fill_random_(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter with seeded values; the release zero-initialises some layers,
    which would leave paths untested, so nothing here is zero."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1 and "norm" in name:
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        elif p.dim() == 1 or "modulation" in name or "padding_tokens" in name:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model
