"""Compare a DiT training window with what the renderer hands the next clip, on tensors (CPU).

    python -m tinymodel.handoff_check [--ckpt tinymodel/tiny-s2v] [--steps 8] [--out result.json]

One held-out character speaks 15 s of held-out audio (the generator gives the ground truth). For a
window whose motion frames start at video frame ``s`` this prints:

1. alignment: the motion latents the renderer builds for clip 1 (the real ``ChainRenderer`` with a
   stand-in sampler that returns the ground truth's latents for clip 0) against the training
   window's motion latents at frame offsets -4..4 (the smallest error must be at offset 0), and
   the renderer's audio slice against the training window's;
2. the hand-off's pixels: PSNR, sharpness and Lab mean of the renderer's motion frames (decoded)
   against the ground truth frames the training window encodes;
3. the VAE alone: colour after repeated encode/decode round trips of the reference picture;
4. the DiT: one clip sampled after (a) the training window's ground-truth motion latents and
   (b) the renderer's round-tripped ones, same noise and audio: the frame change at the boundary
   (last motion frame -> first new frame) against the clip's within-clip p95, and colour drift.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from render.model.audio_features import frame_features
from render.model.clip_loop import ChainRenderer, ChainState, ShotConditioning
from render.quality.seams import frame_change, rgb_to_lab
from render.settings import RenderSettings
from tinymodel.evaluate import EVAL_SEED_BASE, load_model
from tinymodel.export import SHIPPED_DIR
from tinymodel.faces import (
    FPS,
    motion_for_audio,
    random_character,
    reference_frame,
    render_character,
    to_uint8,
)
from tinymodel.speech import SAMPLE_RATE, Corpus, speech_track
from tinymodel.windows import CLIP_FRAMES, MOTION_FRAMES, MOTION_LATENTS, renderer_handoff_latents

VIDEO_FRAMES = 241


def _u8(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    return to_uint8(((video.float().cpu() + 1) / 2).permute(1, 0, 2, 3))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4 / max(float(((a - b) ** 2).mean()), 1e-12))


def _sharpness(video: torch.Tensor) -> float:
    """Mean absolute horizontal + vertical pixel gradient ([-1, 1] units)."""
    return float((video[..., 1:, :] - video[..., :-1, :]).abs().mean() + (video[..., 1:] - video[..., :-1]).abs().mean())


def _lab_mean(frames_u8: np.ndarray) -> np.ndarray:
    return rgb_to_lab(frames_u8).reshape(-1, 3).mean(0)


class _FixedSampler(ChainRenderer):
    """The renderer with its denoising loop replaced by given latents; records what it was given."""

    def __init__(self, *args, latents: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed, self.seen = latents, []

    def sample(self, shot, audio, pose, motion_latents, with_motion, segment, clip):
        self.seen.append({"audio": audio.clone(), "motion": None if motion_latents is None else motion_latents.clone()})
        return self.fixed


@torch.inference_mode()
def run(ckpt: Path, steps: int, corpus: str | None, start: int = 40, sample: int = 0, guidance: float = 4.5) -> dict:
    torch.manual_seed(0)
    model = load_model(ckpt, "cpu")
    dit, vae = model.renderer_parts
    rng = np.random.default_rng(EVAL_SEED_BASE + sample)
    ch = random_character(rng)
    audio = speech_track(rng, VIDEO_FRAMES / FPS + 0.1, Corpus(corpus) if corpus else None, held_out=True,
                         synth_fraction=0.0 if corpus else 1.0)
    mo = motion_for_audio(ch, audio, SAMPLE_RATE, VIDEO_FRAMES, rng)
    frames = render_character(ch, mo, 128, 128).permute(1, 0, 2, 3) * 2 - 1  # [3, T, H, W]
    ref = reference_frame(ch) * 2 - 1
    feats = frame_features(model.audio, audio, VIDEO_FRAMES, FPS)  # [1, 25, C, T]
    s = start
    report: dict = {"motion_start_frame": s, "guidance": guidance, "steps": steps}

    # -- 1. alignment ----------------------------------------------------------------------------
    # Training (current recipe): motion frames s..s+72 and the clip s+73..s+152 encoded together.
    window = vae.encode(frames[:, s:s + MOTION_FRAMES + CLIP_FRAMES])
    train_motion, train_target = window[:, :MOTION_LATENTS], window[:, MOTION_LATENTS:]
    # Renderer: clip 0 = frames s-7..s+72 (its latents: the ground truth's), clip 1 = s+73..s+152.
    prev = vae.encode(frames[:, s - 8:s + MOTION_FRAMES])[:, 1:]  # 20 latents of 4 frames: s-7..s+72
    settings = RenderSettings(size="128*128", steps=steps, guidance=guidance, seed=0)
    shot = ShotConditioning(model.prompt, model.negative, vae.encode(ref[:, None])[None].float(), ref,
                            feats[..., s - 7:s - 7 + 2 * CLIP_FRAMES], 128, 128)
    fixed = _FixedSampler(dit, vae, settings, "cpu", progress=False, latents=prev)
    video0, state = fixed.render_clip(shot, ChainState(0, torch.zeros(3, MOTION_FRAMES, 128, 128)))
    fixed.render_clip(shot, state)
    render_motion = fixed.seen[1]["motion"][0]
    errors = {}
    for d in range(-4, 5):
        m = vae.encode(frames[:, s + d:s + d + MOTION_FRAMES])
        errors[d] = round(float((render_motion - m).pow(2).mean().sqrt() / m.std()), 4)
    report["motion_latent_rel_rms_by_offset"] = errors
    report["motion_latent_rel_rms_per_latent_offset0"] = [
        round(float(v), 3) for v in ((render_motion - train_motion).pow(2).mean(dim=(0, 2, 3)).sqrt()
                                     / train_motion.std())]
    emulated = renderer_handoff_latents(vae, frames[:, s - 8:s + MOTION_FRAMES])
    report["training_emulation_max_abs_diff"] = float((emulated - render_motion).abs().max())
    report["audio_equal"] = bool(torch.equal(fixed.seen[1]["audio"], feats[..., s + MOTION_FRAMES:s + MOTION_FRAMES
                                                                               + CLIP_FRAMES]))

    # -- 2. the hand-off's pixels ------------------------------------------------------------------
    gt_motion_px = frames[:, s:s + MOTION_FRAMES]
    handed = state.motion_pixels
    report["handoff_pixels"] = {
        "psnr_db_vs_ground_truth": round(_psnr(handed, gt_motion_px), 2),
        "sharpness_ground_truth": round(_sharpness(gt_motion_px), 4), "sharpness_handed": round(_sharpness(handed), 4),
        "lab_mean_ground_truth": [round(float(v), 2) for v in _lab_mean(_u8(gt_motion_px))],
        "lab_mean_handed": [round(float(v), 2) for v in _lab_mean(_u8(handed))],
    }

    # -- 3. the VAE alone: repeated round trips ----------------------------------------------------
    ref_lab = _lab_mean(_u8(ref[:, None]))
    x, trips = ref[:, None], {}
    for k in range(1, 13):
        x = vae.decode(vae.encode(x)).clamp(-1, 1)
        if k in (1, 2, 4, 8, 12):
            trips[k] = {"psnr_db": round(_psnr(x, ref[:, None]), 2),
                        "lab_mean_shift": round(float(np.linalg.norm(_lab_mean(_u8(x)) - ref_lab)), 2)}
    report["vae_round_trips_of_reference"] = trips

    # -- 4. the DiT after ground-truth vs handed-over motion latents -----------------------------
    renderer = ChainRenderer(dit, vae, settings, "cpu", progress=False)
    audio1 = feats[..., s + MOTION_FRAMES:s + MOTION_FRAMES + CLIP_FRAMES]
    results = {}
    for name, motion, last_px in (("ground_truth_motion", train_motion, gt_motion_px[:, -1]),
                                  ("handed_over_motion", render_motion, handed[:, -1])):
        lat = renderer.sample(shot, audio1, None, motion[None], True, 0, 1)
        video = vae.decode(torch.cat([motion[:, -1:], lat], dim=1))[:, -CLIP_FRAMES:].clamp(-1, 1)
        u8 = _u8(torch.cat([last_px[:, None], video], dim=1))
        changes = [frame_change(u8[i - 1], u8[i]) for i in range(1, len(u8))]
        p95 = float(np.percentile(changes[1:], 95))
        results[name] = {
            "boundary_change": round(changes[0], 2), "within_p50": round(float(np.median(changes[1:])), 2),
            "within_p95": round(p95, 2), "boundary_over_p95": round(changes[0] / p95, 2),
            "psnr_db_vs_ground_truth_clip": round(_psnr(video, frames[:, s + MOTION_FRAMES:s + MOTION_FRAMES
                                                                      + CLIP_FRAMES]), 2),
            "latent_rel_rms_vs_ground_truth": round(float((lat - train_target).pow(2).mean().sqrt()
                                                          / train_target.std()), 3),
            "lab_mean_shift_vs_reference": round(float(np.linalg.norm(_lab_mean(u8[1:]) - ref_lab)), 2),
            "lab_mean_shift_of_motion_vs_reference": round(float(np.linalg.norm(
                _lab_mean(_u8(gt_motion_px if name.startswith("ground") else handed)) - ref_lab)), 2),
        }
    report["dit_clip"] = results
    return report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", default=str(SHIPPED_DIR))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rep = run(Path(args.ckpt), args.steps, args.corpus, sample=args.sample, guidance=args.guidance)
    text = json.dumps(rep, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return rep


if __name__ == "__main__":
    main()
