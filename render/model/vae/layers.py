"""Building blocks of the Wan2.1 causal 3-D VAE, with streaming (chunked) evaluation.

Every temporal operation is causal, so a video can be processed a few frames at a time: each
causal conv remembers the last ``CACHE_T`` frames of its input in a :class:`StreamCache` and uses
them as history for the next chunk. The cache lives for exactly one encode/decode call, which is
what makes calls independent of each other (the official behaviour).

Module and parameter names follow the official checkpoint (``residual.0.gamma``, ``time_conv``,
``resample.1`` ...), so its state dict loads without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Frames of history a causal conv keeps between chunks (= temporal kernel size - 1 of the 3-tap convs).
CACHE_T = 2


class StreamCache:
    """Per-call state of the streaming layers, keyed by the module that owns it.

    A value is the tail of that module's input seen so far (a tensor), or absent before the first
    chunk. Keying by module (not by call position) keeps encoder and decoder state apart and lets
    any number of independent calls run side by side, each with its own cache object.
    """

    def __init__(self) -> None:
        self._state: dict[nn.Module, torch.Tensor] = {}

    def get(self, owner: nn.Module) -> torch.Tensor | None:
        return self._state.get(owner)

    def put(self, owner: nn.Module, value: torch.Tensor) -> None:
        self._state[owner] = value


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class CausalConv3d(nn.Conv3d):
    """Conv3d whose temporal padding (2 * padding_t) is all on the past side.

    Spatial padding is symmetric zero padding (done by the conv itself). With a ``cache`` the conv
    is evaluated chunk by chunk: the remembered tail of the previous chunks replaces as many of the
    leading zero frames as it has frames, so streaming equals one pass over the whole sequence.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        pad_t, pad_h, pad_w = _triple(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(0, pad_h, pad_w))
        self.time_pad = 2 * pad_t
        # Set (by render.model.vae.model.use_frame_local_convs) only when every past tap is zero: the
        # conv is then a 2-D conv of each frame with the last tap, with no history to keep.
        self.frame_local = False

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        if self.frame_local:
            b, c, t, h, w = x.shape
            y = F.conv2d(x.transpose(1, 2).reshape(b * t, c, h, w), self.weight[:, :, -1], self.bias,
                         self.stride[1:], self.padding[1:])
            return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
        front = self.time_pad
        if cache is not None and front > 0:
            history = cache.get(self)
            if history is not None and history.shape[2] > 0:
                x = torch.cat([history, x], dim=2)
                front = max(front - history.shape[2], 0)
            # Clone: a view would keep the whole (possibly full-resolution) chunk alive.
            cache.put(self, x[:, :, -CACHE_T:].clone())
        if front > 0:
            x = F.pad(x, (0, 0, 0, 0, front, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned per-channel gain (no bias).

    ``image=True`` is the 4-D (N, C, H, W) variant with gamma [C, 1, 1]; otherwise gamma is
    [C, 1, 1, 1] for (B, C, T, H, W) tensors, as in the checkpoint.
    """

    def __init__(self, dim: int, image: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if image else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # Same op order as the reference (normalize, then scale, then gain) for fp32 parity.
            return F.normalize(x, dim=1) * self.scale * self.gamma
        # Low precision: only the channel statistics go to fp32 (cheap: one value per position).
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32).clamp_min(1e-12)
        return x * (self.scale / norm).to(x.dtype) * self.gamma


class ResidualBlock(nn.Module):
    """[norm, SiLU, conv3³, norm, SiLU, dropout, conv3³] + (1×1×1 conv shortcut if channels change)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # Indices 0..6 are part of the checkpoint key names: keep the SiLU/Dropout slots.
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        r = self.residual
        h = r[2](r[1](r[0](x)), cache)
        h = r[6](r[5](r[4](r[3](h))), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions of each frame (no temporal mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, image=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        # Frame-local, so no streaming state; ``cache`` is accepted for a uniform block interface.
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 1, 3 * c, h * w).transpose(2, 3)
        q, k, v = qkv.chunk(3, dim=-1)  # channel order of to_qkv: [q | k | v]
        out = F.scaled_dot_product_attention(q, k, v)  # [bt, 1, hw, c]
        out = self.proj(out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)


def _per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of a (B, C, T, H, W) tensor."""
    b, c, t, h, w = x.shape
    y = module(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2).contiguous()


class Resample(nn.Module):
    """Spatial ×2 down/upsampling, optionally with ×2 temporal down/upsampling ("...3d" modes).

    * downsample: zero-pad right/bottom by 1, 3×3 conv stride 2 (per frame); for "downsample3d"
      then a (3,1,1) conv with temporal stride 2 over [last frame of the previous chunk, chunk].
      The very first chunk skips it, so output frame 0 is input frame 0.
    * upsample: for "upsample3d" first a causal (3,1,1) conv C -> 2C whose halves become frames
      2t and 2t+1; the very first chunk skips it (latent 0 decodes to one frame) and later frames
      see zeros, not frame 0, as history. Then per frame nearest ×2 and a 3×3 conv C -> C/2.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r}, expected one of {self.MODES}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"), nn.Conv2d(dim, dim // 2, 3, padding=1)
            )
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _double_frames(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        if cache.get(self.time_conv) is None:
            # First chunk passes through. An empty history (0 frames) marks "started": from now on
            # the causal conv pads zeros in front of frame 1, exactly as if frame 0 never existed.
            cache.put(self.time_conv, x[:, :, :0])
            return x
        y = self.time_conv(x, cache)
        b, c2, t, h, w = y.shape
        # [B, 2, C, T, H, W] -> [B, C, T, 2, H, W]: half 0 -> frame 2t, half 1 -> frame 2t+1.
        return y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)

    def _halve_frames(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        previous = cache.get(self)
        cache.put(self, x[:, :, -1:].clone())
        if previous is None:
            return x
        # Windows (0,1,2), (2,3,4), ... over the whole sequence: the previous chunk's last frame is
        # the first tap of this chunk's first window. No padding, so no causal cache in the conv.
        return self.time_conv(torch.cat([previous, x], dim=2))
