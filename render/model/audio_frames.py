"""The audio encoders' shared frame rules: the mono float waveform they accept and the
resampling of 50 Hz encoder frames to the 30 fps feature frames the DiT's audio path reads.
(Both the wav2vec2 encoder and the tiny model's log-mel front end use them.)"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

AUDIO_FPS = 30  # rate of the interpolated feature frames (fixed by the official pipeline)


def interpolate_to_30fps(hidden_50hz: torch.Tensor, input_fps: int = 50) -> torch.Tensor:
    """[L, T50, C] -> [L, int(T50 / input_fps * 30), C], linear, align_corners=True (official)."""
    t_in = hidden_50hz.shape[1]
    # Same float expression as the official code (seconds first, then * fps, truncated) so
    # lengths agree at float-rounding edges.
    t_out = int(t_in / float(input_fps) * AUDIO_FPS)
    if t_out < 1:
        raise ValueError(
            f"audio too short: {t_in} wav2vec2 frames at {input_fps} Hz give 0 frames at {AUDIO_FPS} fps; "
            "need at least 2 frames (about 0.05 s of audio)"
        )
    x = hidden_50hz.transpose(1, 2)  # interpolate along time: [L, C, T]
    y = F.interpolate(x, size=t_out, mode="linear", align_corners=True)
    return y.transpose(1, 2)


def as_mono_numpy(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape [N], got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected a float waveform in [-1, 1], got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)
