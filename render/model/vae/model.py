"""Wan2.1 VAE encoder/decoder (4×8×8 compression, z_dim 16) with the official streaming order.

Encode runs the encoder on frame chunks [1], [4], [4], ... and decode runs the decoder on one
latent frame at a time; the causal layers carry their history between chunks in a
:class:`~render.model.vae.layers.StreamCache` that is created fresh for every call. This module works
on raw (un-normalised) latents; ``render.model.vae.wrapper`` adds the latent mean/std and the public API.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from render.model.vae.layers import (
    AttentionBlock,
    CausalConv3d,
    Resample,
    ResidualBlock,
    RMSNorm,
    StreamCache,
)

# Frames per encoder chunk after the first (single) frame = the temporal compression factor.
FRAMES_PER_LATENT = 4
# Spatial compression factor (three ×2 stages).
SPATIAL_FACTOR = 8


class Encoder(nn.Module):
    """Video [B, 3, T, H, W] -> [B, out_channels, T', H/8, W/8] (mean and log-variance stacked)."""

    def __init__(
        self,
        dim: int,
        out_channels: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        dropout: float,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for stage, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(cin, cout, dropout))
                cin = cout
            if stage != len(dim_mult) - 1:  # no resampling after the last stage
                blocks.append(Resample(cout, "downsample3d" if temporal_downsample[stage] else "downsample2d"))
        self.downsamples = nn.ModuleList(blocks)
        width = dims[-1]
        self.middle = nn.ModuleList(
            [ResidualBlock(width, width, dropout), AttentionBlock(width), ResidualBlock(width, width, dropout)]
        )
        self.head = nn.Sequential(RMSNorm(width), nn.SiLU(), CausalConv3d(width, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        return self.head[2](self.head[1](self.head[0](x)), cache)


class Decoder(nn.Module):
    """Latents [B, z_dim, F, h, w] -> video [B, 3, 1 + 4(F-1), 8h, 8w] (streamed by the caller)."""

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temporal_upsample: Sequence[bool],
        dropout: float,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList(
            [ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0], dropout)]
        )
        blocks: list[nn.Module] = []
        for stage, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if stage > 0:
                cin //= 2  # the previous stage's Resample conv halved the channels
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(cin, cout, dropout))
                cin = cout
            if stage != len(dim_mult) - 1:
                blocks.append(Resample(cout, "upsample3d" if temporal_upsample[stage] else "upsample2d"))
        self.upsamples = nn.ModuleList(blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        return self.head[2](self.head[1](self.head[0](x)), cache)


class WanVAEModel(nn.Module):
    """The official ``WanVAE_`` network; defaults are the release values (126.9 M parameters)."""

    def __init__(
        self,
        dim: int = 96,
        z_dim: int = 16,
        dim_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temporal_downsample: Sequence[bool] = (False, True, True),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder(dim, z_dim * 2, dim_mult, num_res_blocks, temporal_downsample, dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder(dim, z_dim, dim_mult, num_res_blocks, list(reversed(temporal_downsample)), dropout)

    def encode_mu(self, video: torch.Tensor) -> torch.Tensor:
        """Raw posterior mean [B, z_dim, 1 + k, H/8, W/8] of a video [B, 3, 1 + 4k, H, W].

        Frames beyond 1 + 4·floor((T-1)/4) would be ignored, as officially; the wrapper rejects them.
        """
        cache = StreamCache()
        n_latents = 1 + (video.shape[2] - 1) // FRAMES_PER_LATENT
        outs = []
        for i in range(n_latents):
            start = 0 if i == 0 else 1 + FRAMES_PER_LATENT * (i - 1)
            stop = 1 + FRAMES_PER_LATENT * i
            outs.append(self.encoder(video[:, :, start:stop], cache))
        # Log-variance (the second z_dim channels) is discarded: encode is deterministic.
        return self.conv1(torch.cat(outs, dim=2))[:, : self.z_dim]

    def decode_stream(self, z: torch.Tensor) -> Iterator[torch.Tensor]:
        """Raw latents [B, z_dim, F, h, w] -> pixel chunks (1 frame, then 4 per latent), unclamped."""
        cache = StreamCache()
        for i in range(z.shape[2]):
            yield self.decoder(self.conv2(z[:, :, i : i + 1]), cache)


def past_temporal_taps(vae: WanVAEModel) -> list[tuple[nn.Parameter, slice]]:
    """Every (conv weight, temporal-kernel slice) through which a frame sees earlier frames.

    The 3-tap causal convs (kernel (3, k, k), taps t-2, t-1, t) see the past through taps 0 and 1;
    the encoder's temporal downsampling conv (stride 2 over [last frame of the previous chunk,
    chunk]) through tap 0 only, its taps 1 and 2 are the pair of frames it merges. With all of
    these zero the VAE is *chunk-local*: latent i is encoded from frames 4i-3..4i alone and decodes
    to the same 4 frames whatever came before (the first chunk, 1 frame, always takes its own path).
    """
    taps = []
    for module in vae.modules():
        if isinstance(module, Resample) and module.mode == "downsample3d":
            taps.append((module.time_conv.weight, slice(0, 1)))
        elif isinstance(module, CausalConv3d) and module.time_pad > 0:
            taps.append((module.weight, slice(0, module.time_pad)))
    return taps


def is_chunk_local(vae: WanVAEModel) -> bool:
    """True when every past temporal tap is exactly zero (see :func:`past_temporal_taps`): then
    decoding a clip after any number of warm-up latents gives the same pixels as after one."""
    taps = past_temporal_taps(vae)
    if any(w.device.type == "meta" for w, _ in taps):
        return False  # no weights yet
    with torch.no_grad():
        return all(not w[:, :, s].any() for w, s in taps)


def use_frame_local_convs(vae: WanVAEModel) -> int:
    """Run the 3-tap causal convs of a chunk-local VAE as per-frame 2-D convs (same values, a
    third of the arithmetic, no stream history). Returns how many convs switched; raises if the
    VAE is not chunk-local (the 2-D conv would drop the past taps' contribution)."""
    if not is_chunk_local(vae):
        raise ValueError("use_frame_local_convs: the VAE has non-zero past temporal taps")
    convs = [m for m in vae.modules() if isinstance(m, CausalConv3d) and m.time_pad > 0 and m.stride[0] == 1]
    for conv in convs:
        conv.frame_local = True
    return len(convs)


def build_vae_skeleton(dim: int = 96) -> WanVAEModel:
    """The VAE with release hyper-parameters and base width ``dim``, on the meta device (no memory)."""
    with torch.device("meta"):
        return WanVAEModel(dim=dim)
