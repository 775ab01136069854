"""Spatially tiled, streamed VAE decode (opt-in): bounds the decoder's activations by one tile.

The decoder already streams in time (one latent frame per step, a small per-layer history in
between), so its peak is one latent's activations at the full frame size. Tiling splits each
frame into overlapping latent tiles, each decoded as its own causal stream (its own history),
and blends the overlaps with linear ramps. It is not bit-identical to the whole-frame decode: the
decoder's middle attention sees only its tile and the convolutions see zero padding at tile
borders; the overlap hides both (the tests state the difference).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from render.model.vae.model import SPATIAL_FACTOR, WanVAEModel


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Start/stop of tiles of ``tile`` covering ``size`` with at least ``overlap`` shared; the
    last tile ends at ``size`` (it may share more than ``overlap``)."""
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f"VAE tiles of {tile} latents with overlap {overlap}: expected tile >= 1 and "
                         "0 <= overlap < tile")
    if size <= tile:
        return [(0, size)]
    starts = list(range(0, size - tile, tile - overlap)) + [size - tile]
    return [(s, s + tile) for s in starts]


def _ramp(start: int, stop: int, size: int, overlap_px: int) -> torch.Tensor:
    """Pixel weights along one axis of a tile: rising over the overlap where a tile comes before,
    falling where one comes after; never zero, so every pixel has weight."""
    n = stop - start
    w = torch.ones(n)
    k = min(overlap_px, n)
    if k == 0:
        return w
    ramp = (torch.arange(k, dtype=torch.float32) + 0.5) / k
    if start > 0:
        w[:k] = torch.minimum(w[:k], ramp)
    if stop < size:
        w[n - k:] = torch.minimum(w[n - k:], ramp.flip(0))
    return w


def decode_stream_tiled(model: WanVAEModel, z: torch.Tensor, tile: int, overlap: int) -> Iterator[torch.Tensor]:
    """Raw latents [B, z_dim, F, h, w] -> pixel chunks as ``model.decode_stream`` (1 frame, then 4
    per latent), each tile of ``tile`` x ``tile`` latents decoded as its own stream."""
    h, w = z.shape[-2:]
    f = SPATIAL_FACTOR
    tiles = []
    for y0, y1 in tile_spans(h, tile, overlap):
        for x0, x1 in tile_spans(w, tile, overlap):
            weight = (_ramp(f * y0, f * y1, f * h, f * overlap)[:, None]
                      * _ramp(f * x0, f * x1, f * w, f * overlap)[None, :]).to(z.device)
            tiles.append((f * y0, f * y1, f * x0, f * x1, weight, model.decode_stream(z[..., y0:y1, x0:x1])))
    while True:
        total = norm = None
        for y0, y1, x0, x1, weight, stream in tiles:
            chunk = next(stream, None)
            if chunk is None:
                return
            if total is None:
                total = chunk.new_zeros(*chunk.shape[:-2], f * h, f * w, dtype=torch.float32)
                norm = torch.zeros(f * h, f * w, device=chunk.device)
            total[..., y0:y1, x0:x1] += chunk.float() * weight
            norm[y0:y1, x0:x1] += weight
            del chunk
        yield (total / norm).to(z.dtype)
