"""Opt-in spatial tiling of the VAE decode (render/model/vae/tiling.py)."""

from __future__ import annotations

import pytest
import torch

from render.model.vae import WanVAE, WanVAEModel
from render.model.vae.tiling import _ramp, tile_spans


def _random_vae(dim: int = 8, seed: int = 3) -> WanVAE:
    from benchmarks.bench_tools import random_init_

    model = WanVAEModel(dim=dim)
    random_init_(model, seed=seed)
    return WanVAE(model)


@pytest.mark.parametrize("size,tile,overlap", [(12, 6, 2), (13, 6, 2), (24, 8, 4), (5, 8, 2), (9, 4, 0)])
def test_tile_spans_cover_the_axis_with_the_overlap(size, tile, overlap):
    spans = tile_spans(size, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(b - a == min(tile, size) for a, b in spans)
    for (_, stop), (start, _) in zip(spans, spans[1:]):
        assert stop - start >= overlap  # neighbours share at least the overlap
        assert start <= stop  # no gap


@pytest.mark.parametrize("tile,overlap", [(0, 0), (4, 4), (4, -1)])
def test_bad_tiles_are_refused(tile, overlap):
    with pytest.raises(ValueError, match="VAE tiles"):
        tile_spans(10, tile, overlap)
    with pytest.raises(ValueError, match="VAE tiles"):
        _random_vae().set_decode_tiles(tile, overlap)


def test_ramps_of_neighbours_sum_to_one_in_a_regular_overlap():
    size, tile, overlap = 24, 8, 4  # latents; spans 0-8, 4-12, ... 16-24
    f = 8
    total = torch.zeros(f * size)
    for a, b in tile_spans(size, tile, overlap):
        total[f * a:f * b] += _ramp(f * a, f * b, f * size, f * overlap)
    assert torch.allclose(total, torch.ones_like(total))


def test_one_tile_covering_the_frame_is_the_whole_frame_decode():
    vae = _random_vae()
    z = torch.randn(16, 2, 6, 8, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    vae.set_decode_tiles(8, 2)
    assert torch.equal(vae.decode(z), full)


def test_tiled_decode_streams_the_same_chunks_and_stays_close():
    """Tiles see zero padding at their borders and the decoder's middle attention sees only its
    tile, so the pixels differ from the whole-frame decode. Measured with random weights (no
    trained locality), latents 8x12 in tiles of 6 with overlap 2: max-abs 1.19, mean-abs 0.094
    of pixels in [-1, 1] at width 8; 0.74 / 0.086 at the release width 96 (CPU, float32)."""
    vae = _random_vae()
    z = torch.randn(16, 2, 8, 12, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    vae.set_decode_tiles(6, 2)
    chunks = list(vae.decode_stream(z))
    assert [c.shape[1] for c in chunks] == [1, 4]  # 1 frame for the first latent, then 4 per latent
    tiled = torch.cat(chunks, dim=1)
    assert tiled.shape == full.shape and tiled.dtype == torch.float32
    assert float(tiled.abs().max()) <= 1.0  # clamped as the whole-frame decode
    diff = (tiled - full).abs()
    assert float(diff.mean()) < 0.15
    # The interior of each tile, away from borders, is where tiling changes the least.
    assert float(diff[..., :24, :24].mean()) < float(diff.mean()) * 1.5
    vae.set_decode_tiles(None)
    assert torch.equal(vae.decode(z), full)  # switched off: the default decode again


def test_trained_tiny_vae_tiles_differ_little():
    """The bundled trained tiny VAE, latents 16x24 (128x192 pixels), 3 latent frames: tiles of
    12 with overlap 4 give max-abs 0.23 / mean-abs 0.0064 against the whole-frame decode
    (tiles of 8 with overlap 4: 0.87 / 0.013: the borders matter more in small tiles)."""
    from pathlib import Path

    from render.model.vae import load_vae

    vae = load_vae(Path(__file__).resolve().parents[2] / "tinymodel/tiny-s2v/Wan2.1_VAE.pth")
    z = torch.randn(16, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    vae.set_decode_tiles(12, 4)
    diff = (vae.decode(z) - full).abs()
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.3
