"""Test helpers for long shots: generated speech with known pauses, and a cheap stand-in for the
model's chain renderer (same interface, deterministic frames that depend on the chain state,
the clip's noise seed and its audio position), so that planning, segment state, stitching and
crash safety can be tested on minutes of audio in seconds."""

from __future__ import annotations

import numpy as np
import torch

from render.model.clip_loop import ChainState, clip_seed
from render.settings import RenderSettings

RATE = 16000


def long_speech(seconds: float, seed: int = 0, rate: int = RATE) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Sentences of voiced syllables separated by silent pauses; returns (samples, pauses), pauses as
    (start s, end s) of digital silence of at least 0.6 s between sentences."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    out = np.zeros(n, np.float32)
    pauses = []
    t = 0.3
    while t < seconds - 1.0:
        sentence_end = min(seconds - 0.5, t + float(rng.uniform(2.0, 7.0)))
        while t < sentence_end:
            dur = float(rng.uniform(0.1, 0.25))
            i0, i1 = int(t * rate), min(n, int((t + dur) * rate))
            tt = np.arange(i1 - i0) / rate
            f0 = rng.uniform(100, 200)
            env = np.sin(np.pi * np.arange(i1 - i0) / max(1, i1 - i0)) ** 2
            out[i0:i1] += (0.3 * env * (np.sin(2 * np.pi * f0 * tt) + 0.3 * np.sin(2 * np.pi * 3 * f0 * tt))).astype(np.float32)
            t += dur + float(rng.uniform(0.03, 0.12))
        gap = float(rng.uniform(0.6, 1.4))
        pauses.append((t, min(seconds, t + gap)))
        t += gap
    return np.clip(out, -1, 1), pauses


class FakeRenderer:
    """``ChainRenderer`` stand-in: frames are a moving pattern plus a small term from the clip's
    noise seed and from the carried state, so a wrong seed or state shows in the frames."""

    def __init__(self, settings: RenderSettings):
        self.s = settings
        self.vae = None  # render_segment only asks for motion latents, which we always fill
        self.calls: list[tuple[int, int, int]] = []  # (segment, clip, audio offset)

    def render_clip(self, shot, state: ChainState, segment: int = 0, audio_offset: int | None = None):
        s, clip = self.s, state.next_clip
        start = clip * s.infer_frames if audio_offset is None else audio_offset
        self.calls.append((segment, clip, start))
        n, h, w = s.infer_frames, shot.height, shot.width
        t = torch.arange(start, start + n, dtype=torch.float32)[:, None, None]
        y = torch.arange(h, dtype=torch.float32)[None, :, None]
        x = torch.arange(w, dtype=torch.float32)[None, None, :]
        g = torch.Generator().manual_seed(clip_seed(s.seed, segment, clip))
        jitter = 0.05 * torch.rand(n, h, w, generator=g)
        carried = 0.0 if state.motion_latents is None else float(state.motion_latents.mean())
        chans = [torch.sin(0.15 * x + 0.1 * y + 0.2 * t + k) * 0.6 + jitter + 0.1 * carried for k in range(3)]
        frames = torch.stack(chans).clamp(-1, 1)
        buf = torch.cat([state.motion_pixels, frames], dim=1)[:, -s.motion_frames:]
        latents = torch.full((1, 16, 1, 1, 1), float(frames.mean()) + 0.5 * carried)
        return frames, ChainState(clip + 1, buf.contiguous(), motion_latents=latents)


def fake_shot(settings: RenderSettings, height: int = 64, width: int = 64):
    """A ShotConditioning with empty tensors (the fake renderer reads only its size)."""
    from render.model.clip_loop import ShotConditioning

    z = torch.zeros(1)
    return ShotConditioning(z, z, z, torch.zeros(3, height, width), torch.zeros(1, 1, 1, 1), height, width)
