"""Audio path inside the DiT: the causal audio encoder and the per-frame audio injection.

The audio encoder and its injection into the DiT blocks. Names follow the official checkpoint, including its
``casual_audio_encoder`` spelling.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.attention import AttentionFn
from render.model.dit.layers import CrossAttention, layer_norm, linear

NUM_WAV2VEC_LAYERS = 25  # fixed in the official encoder (embeddings + 24 layers)
ADAIN_EPS = 1e-5
ENCODER_NORM_EPS = 1e-6


class CausalConv1d(nn.Module):
    """Conv1d with left replicate padding of kernel-1 samples (output j sees inputs <= j*stride)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.pad = kernel - 1
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad, 0), mode="replicate")
        return self.conv(x.to(self.conv.weight.dtype)).float()


class MotionEncoderTC(nn.Module):
    """Temporal audio encoder: local tokens (num_tokens + 1 learned) and a global vector per step."""

    def __init__(self, in_dim: int, hidden: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.conv1_local = CausalConv1d(in_dim, hidden // 4 * num_tokens, 3, stride=1)
        self.conv1_global = CausalConv1d(in_dim, hidden // 4, 3, stride=1)
        self.conv2 = CausalConv1d(hidden // 4, hidden // 2, 3, stride=2)
        self.conv3 = CausalConv1d(hidden // 2, hidden, 3, stride=2)
        self.final_linear = nn.Linear(hidden, hidden)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, hidden))

    def _shared_tail(self, x: torch.Tensor) -> torch.Tensor:
        """conv2 and conv3 (shared by both branches) with LN + SiLU; x: [N, C, T] -> [N, T', C']."""
        x = F.silu(layer_norm(x.transpose(1, 2), ENCODER_NORM_EPS)).transpose(1, 2)
        x = F.silu(layer_norm(self.conv2(x).transpose(1, 2), ENCODER_NORM_EPS)).transpose(1, 2)
        return F.silu(layer_norm(self.conv3(x).transpose(1, 2), ENCODER_NORM_EPS))

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feat [B, C_audio, T] -> (local [B, T', num_tokens + 1, hidden], global [B, T', 1, hidden])."""
        b = feat.shape[0]
        loc = self.conv1_local(feat)  # [B, n*c, T]; channels are group-major (group g = c-block g)
        loc = loc.unflatten(1, (self.num_tokens, -1)).flatten(0, 1)  # [B*n, c, T]
        loc = self._shared_tail(loc)  # [B*n, T', hidden]
        loc = loc.unflatten(0, (b, self.num_tokens)).transpose(1, 2)  # [B, T', n, hidden]
        pad = self.padding_tokens.float().expand(b, loc.shape[1], 1, -1)
        loc = torch.cat([loc, pad], dim=2)
        glob = self._shared_tail(self.conv1_global(feat))  # [B, T', hidden]
        glob = linear(self.final_linear, glob).float()[:, :, None]
        return loc, glob


class CausalAudioEncoder(nn.Module):
    def __init__(self, audio_dim: int, hidden: int, num_tokens: int):
        super().__init__()
        self.weights = nn.Parameter(torch.full((1, NUM_WAV2VEC_LAYERS, 1, 1), 0.01))
        self.encoder = MotionEncoderTC(audio_dim, hidden, num_tokens)

    def forward(
        self, audio_input: torch.Tensor, motion_pixel_frames: int, motion_latent_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio_input [B, 25, C, 4F] -> (tokens [B, F, n+1, D], global [B, F, 1, D]).

        The clip's first audio frame is repeated ``motion_pixel_frames`` times in front (the
        official stand-in for the motion frames' audio); after the two stride-2 convolutions the
        first ``motion_latent_frames`` steps belong to that padding and are dropped.
        """
        x = audio_input.float()
        x = torch.cat([x[..., :1].expand(*x.shape[:-1], motion_pixel_frames), x], dim=-1)
        w = F.silu(self.weights.float())
        feat = (x * w).sum(dim=1) / w.sum(dim=1)  # [B, C, T]
        loc, glob = self.encoder(feat)
        return loc[:, motion_latent_frames:], glob[:, motion_latent_frames:]


class AdaLayerNorm(nn.Module):
    """LayerNorm (eps 1e-5, no affine) shifted/scaled by Linear(SiLU(c)); chunk order shift, scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = linear(self.linear, F.silu(cond.float())).float()
        shift, scale = emb.chunk(2, dim=-1)
        return layer_norm(x, ADAIN_EPS) * (1 + scale[:, None]) + shift[:, None]


class AudioInjector(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_injectors: int, eps: float):
        super().__init__()
        self.injector = nn.ModuleList([CrossAttention(dim, num_heads, eps) for _ in range(num_injectors)])
        self.injector_adain_layers = nn.ModuleList([AdaLayerNorm(dim) for _ in range(num_injectors)])

    def set_attention(self, fn: AttentionFn) -> None:
        for m in self.injector:
            m.attn_fn = fn

    def forward(
        self, k: int, noisy: torch.Tensor, audio_tokens: torch.Tensor, audio_global: torch.Tensor
    ) -> torch.Tensor:
        """Residual for the noisy tokens of whole latent frames.

        noisy [B, f*T, D] (f latent frames of T tokens each), audio_tokens [B, f, n+1, D],
        audio_global [B, f, 1, D]. Each frame attends only to its own audio tokens, so any
        split on frame boundaries gives the same result.
        """
        b, f = audio_tokens.shape[:2]
        x = noisy.reshape(b * f, -1, noisy.shape[-1])
        h = self.injector_adain_layers[k](x, audio_global.reshape(b * f, -1))
        out = self.injector[k](h, context=audio_tokens.reshape(b * f, -1, audio_tokens.shape[-1]))
        return out.float().reshape(noisy.shape)
