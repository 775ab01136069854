"""The tiny-model VAE's training set-up: chunk-local constraint through Adam, crop sampling."""

from __future__ import annotations

import torch

from render.model.vae.model import WanVAEModel, is_chunk_local, past_temporal_taps
from tinymodel.train_vae import make_chunk_local, pool_batch, recon_loss, vae_reconstruct


def test_chunk_local_constraint_survives_adam_steps():
    torch.manual_seed(0)
    vae = make_chunk_local(WanVAEModel(dim=4))
    assert is_chunk_local(vae)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    before = [w.detach().clone() for w, _ in past_temporal_taps(vae)]
    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    for _ in range(2):
        rec, mu = vae_reconstruct(vae, x, noise=0.05)
        opt.zero_grad()
        recon_loss(rec, x, mu).backward()
        opt.step()
    assert is_chunk_local(vae)
    # ... while the current-frame taps did train.
    assert any(not torch.equal(w[:, :, -1], b[:, :, -1]) for (w, _), b in zip(past_temporal_taps(vae), before))


def test_pool_batch_crops_on_the_latent_grid():
    torch.manual_seed(1)
    rows = torch.arange(64.0).view(1, 1, 64, 1).expand(4, 9, 64, 64)
    cols = torch.arange(64.0).view(1, 1, 1, 64).expand(4, 9, 64, 64)
    pool = torch.stack([rows, cols, rows], dim=1).bfloat16()  # [4, 3, 9, 64, 64]: pixel = (row, col)
    whole = pool_batch(pool, 3, frames=9)
    assert whole.shape == (3, 3, 9, 64, 64) and whole.dtype == torch.float32
    for _ in range(10):
        x = pool_batch(pool, 5, frames=5, crop=32)
        assert x.shape == (5, 3, 5, 32, 32)
        top, left = x[:, 0, 0, 0, 0], x[:, 1, 0, 0, :]
        assert (top % 8 == 0).all()  # crops start on the 8-px latent grid ...
        start = torch.minimum(left[:, 0], left[:, -1])  # ... also when flipped horizontally
        assert (start % 8 == 0).all() and ((left[:, -1] - left[:, 0]).abs() == 31).all()
