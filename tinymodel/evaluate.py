"""Render generated characters speaking held-out audio with a checkpoint and measure lip-sync.

Uses the product's clip loop (``render.model.clip_loop.ChainRenderer``) with the checkpoint folder's
DiT, VAE, text encoder and audio front end, but builds the shot conditioning from arrays instead
of files, so it needs no PyAV (the GPU machines have none) and no temporary media.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from render.model.audio_features import frame_features, load_wav2vec2
from render.model.checkpoint import T5_FILE, TOKENIZER_DIR, VAE_FILE, W2V_DIR
from render.model.clip_loop import ChainRenderer, ShotConditioning, initial_chain_state
from render.model.dit import load_dit
from render.model.text_encoder import load_text_encoder
from render.model.vae import load_vae
from render.quality.lipsync import lipsync_of_video
from render.settings import S2V_NEGATIVE_PROMPT, RenderSettings
from tinymodel.export import PROMPTS, SIZE
from tinymodel.faces import FPS, random_character, reference_frame, to_uint8
from tinymodel.speech import SAMPLE_RATE, Corpus, speech_track

EVAL_SEED_BASE = 9_000_000  # characters of the evaluation never appear in training (seeds < 10^6 there)


@dataclass
class LoadedModel:
    renderer_parts: tuple  # (dit, vae)
    audio: object
    prompt: torch.Tensor
    negative: torch.Tensor
    device: torch.device


def load_model(ckpt: str | Path, device: str = "cpu", prompt: str = PROMPTS[0]) -> LoadedModel:
    ckpt = Path(ckpt)
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    dit = load_dit(ckpt, device=dev, dtype=dtype)
    if dev.type == "cuda":
        from kernels.select import optimize_dit

        optimize_dit(dit, dev)
    vae = load_vae(ckpt / VAE_FILE, device=dev, dtype=torch.float32)
    enc = load_text_encoder(ckpt / T5_FILE, ckpt / TOKENIZER_DIR, text_len=dit.cfg.text_len)
    ctx, neg = (e.float() for e in enc.encode([prompt, S2V_NEGATIVE_PROMPT]))
    enc.release()
    return LoadedModel((dit, vae), load_wav2vec2(ckpt / W2V_DIR), ctx, neg, dev)


def render_speech(model: LoadedModel, ref_rgb: torch.Tensor, samples: np.ndarray, settings: RenderSettings,
                  progress: bool = False) -> np.ndarray:
    """A chain of clips for ``samples`` (16 kHz mono) from a reference picture [3, H, W] in [0, 1];
    uint8 frames [ceil(seconds * fps), H, W, 3]."""
    return render_speech_chain(model, ref_rgb, samples, settings, progress)[0]


def render_speech_chain(model: LoadedModel, ref_rgb: torch.Tensor, samples: np.ndarray, settings: RenderSettings,
                        progress: bool = False) -> tuple[np.ndarray, ChainRenderer]:
    """``render_speech`` and the renderer that made the frames (its per-clip statistics)."""
    dit, vae = model.renderer_parts
    h, w = ref_rgb.shape[1:]
    n_frames = max(1, math.ceil(len(samples) / SAMPLE_RATE * settings.fps - 1e-6))
    clips = max(1, math.ceil(n_frames / settings.infer_frames))
    ref = ref_rgb * 2 - 1
    with torch.inference_mode():
        ref_lat = vae.encode(ref[:, None].to(model.device)).float()[None].cpu()
    audio = frame_features(model.audio, samples, clips * settings.infer_frames, settings.fps)
    shot = ShotConditioning(model.prompt, model.negative, ref_lat, ref, audio, h, w)
    renderer = ChainRenderer(dit, vae, settings, model.device, progress=progress)
    state = initial_chain_state(settings, shot)
    frames = []
    for _ in range(clips):
        video, state = renderer.render_clip(shot, state)
        frames.append(video)
    video = torch.cat(frames, dim=1)[:, :n_frames]  # [3, T, H, W] in [-1, 1]
    return to_uint8(((video + 1) / 2).permute(1, 0, 2, 3)), renderer


def evaluate_lipsync(ckpt: str | Path, device: str = "cpu", samples: int = 2, seconds: float = 10.0,
                     steps: int = 8, guidance: float = 4.5, corpus: str | Path | None = None,
                     seed: int = 0, size: int = SIZE, keep_frames: bool = False) -> dict:
    """Mean/min lip-sync correlation over ``samples`` held-out characters and held-out audio.

    Without a corpus the audio is the procedural voice with held-out seeds.
    """
    model = load_model(ckpt, device)
    settings = RenderSettings(size=f"{size}*{size}", steps=steps, guidance=guidance, seed=seed)
    corp = Corpus(corpus) if corpus is not None else None
    rows, videos = [], []
    for i in range(samples):
        rng = np.random.default_rng(EVAL_SEED_BASE + seed * 1000 + i)
        ch = random_character(rng)
        audio = speech_track(rng, seconds, corp, held_out=True, synth_fraction=0.0 if corp else 1.0)
        frames = render_speech(model, reference_frame(ch, size, size), audio, settings)
        score = lipsync_of_video(frames, audio, SAMPLE_RATE, FPS)
        rows.append(score)
        if keep_frames:
            videos.append((frames, audio))
    corrs = [r["corr"] for r in rows]
    out = {"mean_corr": float(np.mean(corrs)), "min_corr": float(np.min(corrs)), "per_sample": rows,
           "steps": steps, "guidance": guidance, "seconds": seconds}
    if keep_frames:
        out["videos"] = videos
    return out
