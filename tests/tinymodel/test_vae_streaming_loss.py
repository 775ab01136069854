"""Truncated back-propagation through the VAE's streaming caches (tinymodel.train_vae)."""

from __future__ import annotations

import numpy as np
import torch

from render.model.vae.model import FRAMES_PER_LATENT, WanVAEModel
from tinymodel.train_vae import mouth_weight, snippets, vae_long_sequence_loss, vae_reconstruct


def _chunked_reference_loss(vae: WanVAEModel, x: torch.Tensor) -> torch.Tensor:
    """The same per-latent loss from one untruncated graph (renderer-identical streaming)."""
    rec, mu = vae_reconstruct(vae, x)
    n_lat = mu.shape[2]
    terms = []
    for i in range(n_lat):
        a = 0 if i == 0 else 1 + FRAMES_PER_LATENT * (i - 1)
        b = 1 + FRAMES_PER_LATENT * i
        t, r = x[:, :, a:b], rec[:, :, a:b]
        w = mouth_weight(t)
        terms.append((w * (r - t).abs()).mean() + (w * (r - t) ** 2).mean() + 1e-4 * mu[:, :, i].pow(2).mean())
    return torch.stack(terms).sum() / n_lat


def _grads(vae):
    return torch.cat([p.grad.flatten() for p in vae.parameters() if p.grad is not None])


def test_untruncated_streaming_loss_equals_one_graph_and_truncation_changes_only_gradients():
    torch.manual_seed(0)
    vae = WanVAEModel(dim=4)
    x = snippets(np.random.default_rng(3), 1, 13, 32, "cpu")  # 4 latents

    vae.zero_grad()
    ref = _chunked_reference_loss(vae, x)
    ref.backward()
    g_ref = _grads(vae).clone()
    ref = float(ref.detach())

    vae.zero_grad()
    loss_full = vae_long_sequence_loss(vae, x, window=100, noise=0.0)
    g_full = _grads(vae).clone()
    assert abs(loss_full - ref) < 1e-5
    torch.testing.assert_close(g_full, g_ref, rtol=1e-4, atol=1e-6)

    vae.zero_grad()
    loss_cut = vae_long_sequence_loss(vae, x, window=1, noise=0.0)
    g_cut = _grads(vae)
    assert abs(loss_cut - ref) < 1e-5  # the forward is the same stream
    assert not torch.allclose(g_cut, g_ref, rtol=1e-3, atol=1e-6)  # gradients stop at the caches
