"""Procedural "talking" characters: the training data of the tiny S2V model.

A character is a cartoon head on a background (random colours, shapes, hair, eyes, head size
and position) that sways slowly, blinks now and then and opens its mouth with the loudness of
its audio (``render.quality.lipsync.mouth_target``). Only the mouth follows the audio; sway and blinks
are random, so a model can learn lip-sync only from the audio.

Drawing is vectorised torch (signed distances with a one-pixel anti-aliased edge), so a batch
of videos renders on a GPU in milliseconds and on a CPU in well under a second per second of
video. Parameters come from a numpy generator: the same seed gives the same character anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from render.quality.lipsync import MOUTH_RGB, frame_loudness_db, mouth_target

FPS = 16
# Every colour of a character keeps at least this RGB distance from the mouth colour, so the
# lip-sync measurement sees only the open mouth.
_MIN_DIST_FROM_MOUTH = 0.4


def _colour(rng: np.random.Generator, lo: float, hi: float, avoid: list[np.ndarray] | None = None) -> np.ndarray:
    for _ in range(200):
        c = rng.uniform(lo, hi, 3)
        if np.linalg.norm(c - np.asarray(MOUTH_RGB)) < _MIN_DIST_FROM_MOUTH:
            continue
        if avoid and any(np.linalg.norm(c - a) < 0.25 for a in avoid):
            continue
        return c
    raise RuntimeError("could not draw a colour far enough from the mouth colour")


def _skin(rng: np.random.Generator) -> np.ndarray:
    # Natural-ish tones and a few fantasy ones; always bright enough that the dark mouth stands out.
    if rng.random() < 0.75:
        base = np.array([0.96, 0.80, 0.68]) * rng.uniform(0.55, 1.0)
        base[0] = min(1.0, base[0] + rng.uniform(0.0, 0.08))
        c = np.clip(base + rng.normal(0, 0.03, 3), 0, 1)
    else:
        c = rng.uniform(0.45, 0.95, 3)
    if np.linalg.norm(c - np.asarray(MOUTH_RGB)) < _MIN_DIST_FROM_MOUTH or c.mean() < 0.4:
        c = np.array([0.9, 0.75, 0.62])
    return c


@dataclass
class Character:
    """Everything that makes one character; positions/sizes are fractions of the picture height."""

    bg_top: np.ndarray
    bg_bottom: np.ndarray
    blobs: np.ndarray  # [k, 6]: cx, cy, radius, r, g, b
    skin: np.ndarray
    hair: np.ndarray
    hair_style: int  # 0 none, 1 cap, 2 cap + side locks
    eye_white: np.ndarray
    pupil: np.ndarray
    lip: np.ndarray
    shirt: np.ndarray
    cx: float
    cy: float
    rx: float
    ry: float
    eye_dx: float
    eye_y: float
    eye_r: float
    mouth_y: float
    mouth_w: float
    mouth_h: float
    sway: np.ndarray  # [4]: amplitude x, amplitude y, frequency x, frequency y (Hz)
    sway_phase: np.ndarray  # [2]
    blink_period: float  # mean seconds between blinks


def random_character(rng: np.random.Generator) -> Character:
    skin = _skin(rng)
    bg_top = _colour(rng, 0.15, 0.95, [skin])
    bg_bottom = np.clip(bg_top + rng.normal(0, 0.15, 3), 0.1, 1.0)
    if np.linalg.norm(bg_bottom - np.asarray(MOUTH_RGB)) < _MIN_DIST_FROM_MOUTH:
        bg_bottom = bg_top
    blobs = []
    for _ in range(int(rng.integers(0, 5))):
        c = _colour(rng, 0.15, 0.95, [skin])
        blobs.append([rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25), *c])
    rx = rng.uniform(0.22, 0.32)
    ry = rx * rng.uniform(1.1, 1.35)
    return Character(
        bg_top=bg_top, bg_bottom=bg_bottom, blobs=np.asarray(blobs, np.float64).reshape(-1, 6), skin=skin,
        hair=_colour(rng, 0.05, 0.9, [skin]), hair_style=int(rng.integers(0, 3)),
        eye_white=np.clip(np.array([0.95, 0.95, 0.95]) + rng.normal(0, 0.03, 3), 0.8, 1.0),
        pupil=_colour(rng, 0.0, 0.35), lip=_colour(rng, 0.55, 0.95, [skin]), shirt=_colour(rng, 0.1, 0.9, [skin]),
        cx=rng.uniform(0.42, 0.58), cy=rng.uniform(0.45, 0.55), rx=rx, ry=ry,
        eye_dx=rx * rng.uniform(0.35, 0.5), eye_y=-ry * rng.uniform(0.1, 0.25), eye_r=rx * rng.uniform(0.14, 0.22),
        mouth_y=ry * rng.uniform(0.4, 0.55), mouth_w=rx * rng.uniform(0.38, 0.55), mouth_h=ry * rng.uniform(0.22, 0.3),
        sway=np.array([rng.uniform(0.0, 0.03), rng.uniform(0.0, 0.02), rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5)]),
        sway_phase=rng.uniform(0, 2 * np.pi, 2), blink_period=float(rng.uniform(2.0, 5.0)),
    )


def blink_track(rng: np.random.Generator, num_frames: int, period_s: float, fps: int = FPS) -> np.ndarray:
    """Eye closure per frame in [0, 1]: blinks of four frames at random intervals."""
    closure = np.zeros(num_frames, np.float32)
    t = rng.exponential(period_s) * fps
    profile = np.array([0.5, 1.0, 1.0, 0.5], np.float32)
    while t < num_frames:
        i = int(t)
        n = min(len(profile), num_frames - i)
        closure[i:i + n] = np.maximum(closure[i:i + n], profile[:n])
        t += fps * max(0.5, rng.exponential(period_s))
    return closure


@dataclass
class Motion:
    """Per-frame state: head offset (x, y), eye closure and mouth opening, float32 [T] each."""

    dx: np.ndarray
    dy: np.ndarray
    blink: np.ndarray
    mouth: np.ndarray

    @staticmethod
    def still(num_frames: int = 1) -> Motion:
        z = np.zeros(num_frames, np.float32)
        return Motion(z, z.copy(), z.copy(), z.copy())


def motion_for_audio(ch: Character, samples: np.ndarray, sample_rate: int, num_frames: int,
                     rng: np.random.Generator, fps: int = FPS, t0: float = 0.0) -> Motion:
    """Sway and blinks at random, mouth from the audio's per-frame loudness."""
    t = t0 + np.arange(num_frames) / fps
    ax, ay, fx, fy = ch.sway
    dx = ax * np.sin(2 * np.pi * fx * t + ch.sway_phase[0])
    dy = ay * np.sin(2 * np.pi * fy * t + ch.sway_phase[1])
    mouth = mouth_target(frame_loudness_db(samples, sample_rate, fps, num_frames))
    return Motion(dx.astype(np.float32), dy.astype(np.float32), blink_track(rng, num_frames, ch.blink_period, fps),
                  mouth)


def nose_colour(skin: np.ndarray) -> np.ndarray:
    """Skin darkened by 20%, or less where that would come near the mouth colour (skin itself
    always keeps its distance)."""
    for f in (0.8, 0.87, 0.94):
        c = skin * f
        if np.linalg.norm(c - np.asarray(MOUTH_RGB)) >= _MIN_DIST_FROM_MOUTH:
            return c
    return skin


def _cover(sd: torch.Tensor, px: float) -> torch.Tensor:
    """Coverage in [0, 1] from a signed distance (negative inside), anti-aliased over one pixel."""
    return (0.5 - sd / px).clamp(0.0, 1.0)


def _ellipse_sd(x: torch.Tensor, y: torch.Tensor, cx, cy, rx, ry) -> torch.Tensor:
    """Approximate signed distance to an ellipse (exact for circles), broadcasting over frames."""
    k = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + 1e-12)
    return (k - 1.0) * torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry))


def render_character(ch: Character, motion: Motion, height: int = 128, width: int = 128,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Frames [T, 3, H, W] float32 in [0, 1]."""
    dev = torch.device(device)
    T = len(motion.mouth)
    f = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=dev)  # noqa: E731
    col = lambda c: f(c).view(1, 3, 1, 1)  # noqa: E731
    ys = (torch.arange(height, device=dev, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=dev, dtype=torch.float32) + 0.5 - width / 2) / height + 0.5
    y = ys.view(1, height, 1)
    x = xs.view(1, 1, width)
    px = 1.0 / height
    img = col(ch.bg_top) * (1 - y[:, None]) + col(ch.bg_bottom) * y[:, None]
    img = img.expand(T, 3, height, width).clone()

    def paint(cover: torch.Tensor, c) -> None:
        a = cover[:, None]
        img.mul_(1 - a).add_(a * (c if isinstance(c, torch.Tensor) else col(c)))

    for b in ch.blobs:
        paint(_cover(_ellipse_sd(x, y, b[0], b[1], b[2], b[2]), px).expand(T, height, width), b[3:6])
    dx, dy = f(motion.dx).view(T, 1, 1), f(motion.dy).view(T, 1, 1)
    cx, cy = ch.cx + dx, ch.cy + dy
    # Shoulders / shirt below the head (moves half as much as the head).
    paint(_cover(_ellipse_sd(x, y, ch.cx + dx / 2, ch.cy + ch.ry * 1.9 + dy / 2, ch.rx * 1.8, ch.ry * 1.0), px),
          ch.shirt)
    if ch.hair_style:
        paint(_cover(_ellipse_sd(x, y, cx, cy - ch.ry * 0.12, ch.rx * 1.12, ch.ry * 1.02), px), ch.hair)
    paint(_cover(_ellipse_sd(x, y, cx, cy, ch.rx, ch.ry), px), ch.skin)
    if ch.hair_style:
        # Fringe: the top of the hair ellipse, cut by a line across the forehead.
        hair = _cover(_ellipse_sd(x, y, cx, cy - ch.ry * 0.12, ch.rx * 1.12, ch.ry * 1.02), px)
        hair = hair * _cover((y - (cy - ch.ry * 0.55)), px)
        if ch.hair_style == 2:
            for side in (-1, 1):
                lock = _cover(_ellipse_sd(x, y, cx + side * ch.rx * 0.95, cy, ch.rx * 0.18, ch.ry * 0.5), px)
                hair = torch.maximum(hair, lock)
        paint(hair, ch.hair)
    blink = f(motion.blink).view(T, 1, 1)
    eye_ry = ch.eye_r * 1.15 * (1 - 0.92 * blink)
    for side in (-1, 1):
        ex, ey = cx + side * ch.eye_dx, cy + ch.eye_y
        eye = _cover(_ellipse_sd(x, y, ex, ey, ch.eye_r, eye_ry), px)
        paint(eye, ch.eye_white)
        pupil = _cover(_ellipse_sd(x, y, ex, ey + ch.eye_r * 0.1, ch.eye_r * 0.5, ch.eye_r * 0.5), px)
        paint(pupil * eye, ch.pupil)
    # Nose: a slightly darker skin spot (never as close to the mouth colour as the rules allow).
    paint(_cover(_ellipse_sd(x, y, cx, cy + ch.ry * 0.15, ch.rx * 0.07, ch.ry * 0.09), px), nose_colour(ch.skin))
    # Mouth: lips (always visible, a line when closed) and the open inside in MOUTH_RGB.
    m = f(motion.mouth).view(T, 1, 1)
    my = cy + ch.mouth_y
    mw = ch.mouth_w * (1 - 0.2 * m)
    inner_h = 0.004 + ch.mouth_h * m
    paint(_cover(_ellipse_sd(x, y, cx, my, mw + 1.5 * px, inner_h + 2.0 * px), px), ch.lip)
    paint(_cover(_ellipse_sd(x, y, cx, my, mw, inner_h), px) * (m > 0.02).float(), MOUTH_RGB)
    return img.clamp(0, 1)


def reference_frame(ch: Character, height: int = 128, width: int = 128) -> torch.Tensor:
    """The character at rest (centred, eyes open, mouth closed): [3, H, W] in [0, 1]."""
    return render_character(ch, Motion.still(1), height, width)[0]


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] in [0, 1] -> uint8 [T, H, W, 3]."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
