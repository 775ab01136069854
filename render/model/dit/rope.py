"""3-D rotary position embedding of the S2V DiT.

The official code builds a complex float64 table per token. We keep the same angles
(float64 arithmetic) but store them as a cos/sin pair per token and per rotary pair, shared by
all heads: ``[L, head_dim // 2]`` each. Applying the rotation in float32 on interleaved pairs
(channels 2k, 2k+1) is the same math as the official complex multiply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ROPE_THETA = 10000.0
REFERENCE_TIME_POSITION = 30


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Rotary pairs given to (time, height, width): 22/21/21 for head_dim 128."""
    hw = 2 * (head_dim // 6)
    t = head_dim - 2 * hw
    return t // 2, hw // 2, hw // 2


def _inv_freq(n_pairs: int, span: int) -> np.ndarray:
    # theta_i = 10000^(-2i/span) with span = 2 * n_pairs (float64 like the official table)
    return 1.0 / np.power(ROPE_THETA, np.arange(0, span, 2, dtype=np.float64)[:n_pairs] / span)


def _truncated_linspace(start: int, stop: int, num: int) -> np.ndarray:
    """numpy linspace with endpoint, truncated toward zero (how the official code samples grids)."""
    return np.linspace(start, stop, num).astype(np.int64)


@dataclass(frozen=True)
class GridSegment:
    """A block of tokens laid out as (t, y, x) row-major with explicit position lists."""

    t_pos: np.ndarray
    y_pos: np.ndarray
    x_pos: np.ndarray

    @property
    def num_tokens(self) -> int:
        return len(self.t_pos) * len(self.y_pos) * len(self.x_pos)


def full_grid(t_positions: np.ndarray, gh: int, gw: int) -> GridSegment:
    return GridSegment(np.asarray(t_positions, np.int64), np.arange(gh), np.arange(gw))


def token_segments(
    frames: int, gh: int, gw: int, with_motion: bool, lat_h: int, lat_w: int
) -> list[GridSegment]:
    """Position grids of the whole token sequence, in sequence order.

    ``gh, gw`` is the token grid of one latent frame (lat_h // 2, lat_w // 2).
    """
    segs = [
        full_grid(np.arange(frames), gh, gw),  # noisy latents
        full_grid(np.array([REFERENCE_TIME_POSITION]), gh, gw),  # reference image
    ]
    if with_motion:
        # FramePack buckets, newest first: 1 latent at full resolution, 2 latents at 2x, 16 at 4x.
        segs.append(full_grid(np.array([-1]), gh, gw))
        segs.append(
            GridSegment(
                np.array([-3]),
                _truncated_linspace(0, gh - 1, lat_h // 4),
                _truncated_linspace(0, gw - 1, lat_w // 4),
            )
        )
        segs.append(
            GridSegment(
                _truncated_linspace(-19, -4, 4),
                _truncated_linspace(0, gh - 1, lat_h // 8),
                _truncated_linspace(0, gw - 1, lat_w // 8),
            )
        )
    return segs


def rope_angles(segments: list[GridSegment], head_dim: int) -> torch.Tensor:
    """Rotation angles per token and rotary pair, float64 [L, head_dim // 2]."""
    nt, nh, nw = rope_split(head_dim)
    ft, fh, fw = _inv_freq(nt, 2 * nt), _inv_freq(nh, 2 * nh), _inv_freq(nw, 2 * nw)
    rows = []
    for s in segments:
        T, H, W = len(s.t_pos), len(s.y_pos), len(s.x_pos)
        at = np.broadcast_to((s.t_pos[:, None] * ft)[:, None, None, :], (T, H, W, nt))
        ah = np.broadcast_to((s.y_pos[:, None] * fh)[None, :, None, :], (T, H, W, nh))
        aw = np.broadcast_to((s.x_pos[:, None] * fw)[None, None, :, :], (T, H, W, nw))
        rows.append(np.concatenate([at, ah, aw], axis=-1).reshape(T * H * W, nt + nh + nw))
    return torch.from_numpy(np.concatenate(rows, axis=0))


def rope_cos_sin(
    segments: list[GridSegment], head_dim: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) float32 [L, head_dim // 2] computed from float64 angles."""
    ang = rope_angles(segments, head_dim)
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` [B, L, H, D] by per-token angles ([L, D/2]).

    Computed in float32 and returned in x's dtype. This is the torch reference that the fused
    kernel in ``kernels/`` must match.
    """
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)
