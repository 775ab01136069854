"""Train the tiny S2V model from scratch: VAE, then the DiT, on generated talking characters.

    python -m tinymodel.train --out OUT [--corpus .cache/speech_corpus.npz] [--minutes 9]

Stages, each bounded by its share of the time budget (one GPU; `--device cpu --smoke` runs
every stage for a few steps, which is what the tests do):

1. VAE (train_vae.py): the Wan2.1 architecture at base width 8, chunk-local (every temporal tap that reaches an
   earlier chunk held at zero: no stream state, so no drift with the frame index, and its 3-tap
   convs run as 2-D convs), trained on short snippets of generated characters through the same
   streaming encode/decode the renderer uses (L1 + L2, the mouth colour weighted up); then its
   latents are renormalised so the official wrapper's fixed per-channel mean/std give
   unit-variance latents (``export.fold_latent_normalisation``). ``--vae-temporal`` trains the
   unconstrained VAE instead. A VAE can be trained over several runs (``--vae-only``, then
   ``--init-vae F --vae-finetune``) and the DiT on top of it (``--init-vae F``).
2. Data: generated 15-s videos of characters speaking corpus or procedural speech; each gives
   "motion" windows (73 frames of context + an 80-frame clip = 39 latents: 19 motion latents,
   the same frames as the renderer's motion hand-off, and the clip's 20) and "first clip"
   windows (reference frame + 80 frames = 21 latents, the first being the reference). By default
   the motion latents encode the ground-truth frames; ``--handoff renderer`` makes them as the
   renderer does - the previous clip decoded, optionally perturbed, re-encoded (windows.py) -
   so the DiT learns to continue the decoded frames a chain really hands on.
3. DiT: our S2V DiT (render/dit, the same code as the 14B) with flow matching, the official
   conditioning (reference latents, FramePack motion, per-frame audio injection, zero-timestep
   modulation, text), unconditional = negative prompt + zero audio for 10% of samples (the
   pair CFG uses at inference), bf16 autocast, AdamW, EMA of the weights.
4. Export: the folder in the official layout (tinymodel/export.py) and a lip-sync evaluation on
   held-out characters and audio through the renderer's clip loop.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from render.model.audio_features import frame_features, load_wav2vec2
from render.model.checkpoint import T5_FILE, TOKENIZER_DIR, W2V_DIR
from render.model.dit.model import S2VDiT
from render.model.vae.model import WanVAEModel
from render.model.vae.wrapper import WanVAE
from render.settings import S2V_NEGATIVE_PROMPT
from tinymodel.export import (
    PROMPTS,
    SHIPPED_DIR,
    SIZE,
    TRAINED_DIT,
    fold_latent_normalisation,
    write_dit,
    write_vae,
)
from tinymodel.faces import FPS, motion_for_audio, random_character, reference_frame, render_character
from tinymodel.speech import SAMPLE_RATE, Corpus, speech_track
from tinymodel.train_vae import log, snippets, train_vae
from tinymodel.windows import (
    CLIP_FRAMES,
    HANDOFF_LEAD,
    MOTION_FRAMES,
    MOTION_LATENTS,
    clip_audio_frames,
    handoff_window_latents,
    motion_window_starts,
)

VIDEO_FRAMES = 241  # 15 s + 1 frame per generated video




def encode_norm(vae: WanVAEModel, x: torch.Tensor) -> torch.Tensor:
    """Normalised latents exactly as the renderer's WanVAE.encode gives them (official mean / 1/std)."""
    return WanVAE(vae).encode(x)


@torch.no_grad()
def build_data(args, vae: WanVAEModel, audio_enc, corpus: Corpus | None, dev, fh) -> dict:
    budget = args.minutes * 60 * args.data_share
    t0 = time.time()
    motion_lat, motion_aud, motion_ref, first_lat, first_aud, refs = [], [], [], [], [], []
    v = 0
    group = 4 if args.smoke else 16
    handoff_gen = torch.Generator(device=dev).manual_seed(args.seed * 7919 + 17)
    while v < args.max_videos and (time.time() - t0 < budget or v == 0):
        clips, clip_kind, ref_pixels = [], [], []
        for _ in range(group):
            rng = np.random.default_rng(args.seed * 1_000_003 + v)
            ch = random_character(rng)
            audio = speech_track(rng, VIDEO_FRAMES / FPS + 0.1, corpus)
            mo = motion_for_audio(ch, audio, SAMPLE_RATE, VIDEO_FRAMES, rng)
            frames = render_character(ch, mo, args.size, args.size, dev).permute(1, 0, 2, 3) * 2 - 1
            ref = reference_frame(ch, args.size, args.size).to(dev) * 2 - 1
            feats = frame_features(audio_enc, audio, VIDEO_FRAMES, FPS)[0, 0].to(dev)  # [C, T]
            ref_pixels.append(ref)
            ref_id = len(refs) + len(ref_pixels) - 1
            for s in motion_window_starts(rng, VIDEO_FRAMES, args.handoff):
                # With --handoff renderer the window also holds the HANDOFF_LEAD frames before its
                # motion frames: the previous clip the renderer would hand on (see windows.py).
                lead = HANDOFF_LEAD if args.handoff == "renderer" else 0
                clips.append(frames[:, s - lead:s + MOTION_FRAMES + CLIP_FRAMES])
                clip_kind.append("m")
                motion_aud.append(feats[:, clip_audio_frames(s)].half())
                motion_ref.append(ref_id)
            for s in rng.choice(VIDEO_FRAMES - CLIP_FRAMES + 1, 2, replace=False):
                clips.append(torch.cat([ref[:, None], frames[:, s:s + CLIP_FRAMES]], dim=1))
                clip_kind.append("f")
                first_aud.append(feats[:, s:s + CLIP_FRAMES].half())
            v += 1
        if not args.vae_folded:
            # Normalise on real training windows (long clips, as the renderer encodes them).
            raw = vae.encode_mu(torch.stack([c[:, -MOTION_FRAMES - CLIP_FRAMES:]
                                             for c, k in zip(clips, clip_kind) if k == "m"][:8]))
            raw = raw.transpose(0, 1).flatten(1)
            fold_latent_normalisation(vae, raw.mean(1), raw.std(1).clamp_min(1e-3))
            args.vae_folded = True
            log(f"VAE latents normalised (raw channel std {raw.std(1).min():.3f}..{raw.std(1).max():.3f})", fh)
        refs.append(encode_norm(vae, torch.stack(ref_pixels)[:, :, None]).to(torch.bfloat16))
        for kind in ("m", "f"):
            batch = torch.stack([c for c, k in zip(clips, clip_kind) if k == kind])
            for chunk in batch.split(16):
                if kind == "m" and args.handoff == "renderer":
                    lat = handoff_window_latents(WanVAE(vae), chunk, args.handoff_latent_noise, args.handoff_colour,
                                                 handoff_gen).to(torch.bfloat16)
                else:
                    lat = encode_norm(vae, chunk).to(torch.bfloat16)
                (motion_lat if kind == "m" else first_lat).append(lat)
        if v % 160 == 0 or args.smoke:
            log(f"data: {v} videos ({time.time() - t0:.0f} s)", fh)
    data = {
        "motion_lat": torch.cat(motion_lat), "motion_aud": torch.stack(motion_aud),
        "motion_ref": torch.tensor(motion_ref, device=dev), "first_lat": torch.cat(first_lat),
        "first_aud": torch.stack(first_aud), "refs": torch.cat(refs),
    }
    log(f"data done: {v} videos, {len(data['motion_lat'])} motion + {len(data['first_lat'])} first-clip windows, "
        f"latent std {data['motion_lat'].float().std():.3f} ({time.time() - t0:.0f} s)", fh)
    args.metrics["videos"] = v
    return data


# -- stage 3: DiT ---------------------------------------------------------------------------
@torch.no_grad()
def init_for_training(model: S2VDiT) -> S2VDiT:
    """Xavier linears/convs, zero biases; the prediction head and the audio injectors' output
    projections start at zero (the release's zero_init), so training starts from v = 0."""
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv3d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
    nn.init.zeros_(model.head.head.weight)
    nn.init.zeros_(model.head.head.bias)
    for inj in model.audio_injector.injector:
        nn.init.zeros_(inj.o.weight)
        nn.init.zeros_(inj.o.bias)
    return model


def contexts(template: Path, text_len: int, dev) -> tuple[list[torch.Tensor], torch.Tensor]:
    from render.model.text_encoder import load_text_encoder

    enc = load_text_encoder(template / T5_FILE, template / TOKENIZER_DIR, text_len=text_len)
    embs = [e.float().to(dev) for e in enc.encode([*PROMPTS, S2V_NEGATIVE_PROMPT])]
    enc.release()
    return embs[:-1], embs[-1]


def dit_batch(model: S2VDiT, data: dict, prompts, negative, batch: int, first_clip: bool,
              uncond_p: float, shift: float, dev, boundary_weight: float = 1.0,
              boundary_latents: int = 2) -> torch.Tensor:
    n = len(data["first_lat" if first_clip else "motion_lat"])
    idx = torch.randint(0, n, (batch,), device=dev)
    if first_clip:
        lat = data["first_lat"][idx].float()
        ref, motion, x0 = lat[:, :, :1], None, lat[:, :, 1:]
        aud = data["first_aud"][idx].float()
    else:
        lat = data["motion_lat"][idx].float()
        motion, x0 = lat[:, :, :MOTION_LATENTS], lat[:, :, MOTION_LATENTS:]
        ref = data["refs"][data["motion_ref"][idx]].float()
        aud = data["motion_aud"][idx].float()
    uncond = torch.rand(batch, device=dev) < uncond_p
    aud = aud * (~uncond).float().view(-1, 1, 1)
    audio = aud[:, None].expand(-1, 25, -1, -1)
    ctx = [negative if u else prompts[int(torch.randint(0, len(prompts), ()))] for u in uncond.tolist()]
    cond = model.prepare(x0.shape[1:], ctx, ref, motion, None, audio, motion_frames=(MOTION_FRAMES, MOTION_LATENTS),
                         drop_motion_frames=first_clip)
    u = torch.sigmoid(torch.randn(batch, device=dev))
    sigma = shift * u / (1 + (shift - 1) * u)
    noise = torch.randn_like(x0)
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    pred = model.denoise(xt, sigma * 1000, cond)
    if boundary_weight == 1.0 or first_clip:
        return F.mse_loss(pred.float(), noise - x0)
    # The first latents after the motion frames are the ones a seam shows: weight them up.
    err = (pred.float() - (noise - x0)).pow(2).mean(dim=(0, 1, 3, 4))  # per latent frame
    w = torch.ones_like(err)
    w[:boundary_latents] = boundary_weight
    return (w * err).sum() / w.sum()


def train_dit(args, data: dict, prompts, negative, dev, fh) -> tuple[S2VDiT, S2VDiT]:
    torch.manual_seed(args.seed + 1)
    model = init_for_training(S2VDiT(TRAINED_DIT)).to(dev)
    if args.init_dit:
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(args.init_dit).items()})
        log(f"DiT: continuing from {args.init_dit}", fh)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    budget = args.minutes * 60 * args.dit_share
    t0, step, losses = time.time(), 0, []
    warm = 50 if args.init_dit else 300
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1 or (args.smoke and step >= 3):
            break
        lr = args.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1))))
        for g in opt.param_groups:
            g["lr"] = lr
        first = bool(torch.rand(()) < args.first_clip_p)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = dit_batch(model, data, prompts, negative, args.batch, first, 0.1, args.shift, dev,
                             args.boundary_weight, args.boundary_latents)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if step % 200 == 0:
            log(f"DiT step {step} loss {np.mean(losses[-200:]):.4f} lr {lr:.2e} ({time.time() - t0:.0f} s)", fh)
        step += 1
    log(f"DiT done: {step} steps, last-500 loss {np.mean(losses[-500:]):.4f}", fh)
    args.metrics["dit_steps"] = step
    args.metrics["dit_loss_last500"] = round(float(np.mean(losses[-500:])), 4)
    args.metrics["dit_batch"] = args.batch
    return model, ema


def save_strip(path: Path, videos: list[np.ndarray], every: int = 8, count: int = 12) -> None:
    """One row per video: every ``every``-th frame, ``count`` of them."""
    from PIL import Image

    rows = [np.concatenate([v[min(i * every, len(v) - 1)] for i in range(count)], axis=1) for v in videos]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


# -- main -------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the checkpoint, log and metrics")
    ap.add_argument("--corpus", default=None, help="speech corpus .npz (tinymodel/speech.py build_corpus)")
    ap.add_argument("--template", default=str(SHIPPED_DIR), help="folder with the text encoder + audio front end")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--minutes", type=float, default=9.0, help="total time budget")
    ap.add_argument("--vae-share", type=float, default=0.22)
    ap.add_argument("--data-share", type=float, default=0.12)
    ap.add_argument("--dit-share", type=float, default=0.58)
    ap.add_argument("--max-videos", type=int, default=100000)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--vae-batch", type=int, default=48)
    ap.add_argument("--vae-pool", type=int, default=1200, help="pre-rendered VAE training snippets (33 frames)")
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--vae-bf16", action="store_true", help="bf16 autocast for the VAE's training steps")
    ap.add_argument("--vae-crop", type=int, default=0,
                    help="train the VAE mostly on random crops of this size (0: whole frames; measured worse per "
                         "step: 13.9 dB after 1030 steps with 64-px crops vs 15.7 after 1119 whole-frame steps)")
    ap.add_argument("--vae-full-every", type=int, default=4, help="every N-th VAE step on whole frames (0: never)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--shift", type=float, default=3.0)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--first-clip-p", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-vae", default=None, help="continue from a trained (already folded) VAE state dict")
    ap.add_argument("--vae-temporal", action="store_true",
                    help="let the VAE mix frames across chunks (the release's freedom); default: chunk-local")
    ap.add_argument("--vae-long-every", type=int, default=None,
                    help="every N-th VAE step streams a long video (0: never; default 2 with --vae-temporal, else 0)")
    ap.add_argument("--vae-long-frames", type=int, default=129, help="frames of those videos (1 + 4k)")
    ap.add_argument("--vae-long-batch", type=int, default=8)
    ap.add_argument("--vae-only", action="store_true", help="train and write only the VAE (use all of --minutes)")
    ap.add_argument("--vae-finetune", action="store_true", help="keep training the --init-vae VAE")
    ap.add_argument("--init-dit", default=None, help="continue from DiT weights (safetensors)")
    ap.add_argument("--handoff", choices=("ground-truth", "renderer"), default="ground-truth",
                    help="motion latents of the DiT's windows: encoded ground-truth frames (the original recipe) "
                         "or made as the renderer hands a clip on (decoded, re-encoded; tinymodel/windows.py)")
    ap.add_argument("--handoff-latent-noise", type=float, default=0.0,
                    help="with --handoff renderer: noise (std up to this, per window) on the previous clip's "
                         "latents before decoding, a stand-in for the sampler's errors")
    ap.add_argument("--handoff-colour", type=float, default=0.0,
                    help="with --handoff renderer: random per-channel gain/offset (up to this) of the handed "
                         "frames, so the DiT takes colours from the reference rather than copying drift")
    ap.add_argument("--boundary-weight", type=float, default=1.0,
                    help="loss weight of the first --boundary-latents latents after the motion frames")
    ap.add_argument("--boundary-latents", type=int, default=2)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="a few steps of every stage (tests)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.metrics = {}
    if args.vae_long_every is None:
        args.vae_long_every = 2 if args.vae_temporal else 0
    if args.smoke:  # every code path, at toy lengths
        args.vae_long_frames, args.vae_long_batch = min(args.vae_long_frames, 17), min(args.vae_long_batch, 2)
    if args.vae_only:
        args.vae_share = 0.97
    if args.size < 64 or args.size % 16:
        # FramePack's 4x motion packer needs latents of at least 8 x 8 (64 px); patches need 16 px.
        raise SystemExit(f"--size {args.size}: expected a multiple of 16, at least 64")
    if args.vae_crop and (args.vae_crop % 16 or args.vae_crop < 32):
        raise SystemExit(f"--vae-crop {args.vae_crop}: expected 0 or a multiple of 16, at least 32")
    if args.handoff == "ground-truth" and (args.handoff_latent_noise or args.handoff_colour):
        raise SystemExit("--handoff-latent-noise / --handoff-colour need --handoff renderer")
    if (args.vae_long_frames - 1) % 4:
        raise SystemExit(f"--vae-long-frames {args.vae_long_frames}: expected 1 + 4k")
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    template = Path(args.template)
    t_start = time.time()
    with open(out / "train_log.txt", "a") as fh:
        log(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}), "
            f"budget {args.minutes} min", fh)
        corpus = Corpus(args.corpus) if args.corpus else None
        vae = train_vae(args, dev, fh)
        vae.requires_grad_(False)
        if args.vae_only:
            with torch.no_grad():  # normalise on long generated clips, as the data stage would
                x = snippets(np.random.default_rng(args.seed + 5), 4, MOTION_FRAMES + CLIP_FRAMES, args.size, dev)
                raw = vae.encode_mu(x).transpose(0, 1).flatten(1)
                fold_latent_normalisation(vae, raw.mean(1), raw.std(1).clamp_min(1e-3))
            write_vae(out, vae.state_dict())
            args.metrics["total_minutes"] = round((time.time() - t_start) / 60, 2)
            (out / "metrics.json").write_text(json.dumps(args.metrics, indent=2) + "\n")
            log(f"VAE only: wrote {out / 'Wan2.1_VAE.pth'}; metrics: {args.metrics}", fh)
            return args.metrics
        audio_enc = load_wav2vec2(template / W2V_DIR)
        data = build_data(args, vae, audio_enc, corpus, dev, fh)  # also normalises the VAE's latents
        write_vae(out, vae.state_dict())
        del vae
        prompts, negative = contexts(template, TRAINED_DIT.text_len, dev)
        model, ema = train_dit(args, data, prompts, negative, dev, fh)
        del data
        ckpt = out / "ckpt"
        if ckpt.exists():
            shutil.rmtree(ckpt)
        shutil.copytree(template, ckpt, ignore=shutil.ignore_patterns("config.json", "*.safetensors", "*VAE*"))
        shutil.copy(template / W2V_DIR / "config.json", ckpt / W2V_DIR / "config.json")
        write_dit(ckpt, TRAINED_DIT, ema.state_dict())
        shutil.copy(out / "Wan2.1_VAE.pth", ckpt / "Wan2.1_VAE.pth")
        args.metrics["train_minutes"] = round((time.time() - t_start) / 60, 2)
        log(f"exported {ckpt}", fh)
        if args.eval_samples:
            from tinymodel.evaluate import evaluate_lipsync

            for guidance in (1.0, 4.5):
                ev = evaluate_lipsync(ckpt, str(dev), samples=args.eval_samples, seconds=10.0 if not args.smoke else 2.0,
                                      steps=10 if not args.smoke else 2, guidance=guidance, corpus=args.corpus,
                                      size=args.size, keep_frames=True)
                args.metrics[f"lipsync_g{guidance}"] = {k: ev[k] for k in ("mean_corr", "min_corr")}
                log(f"lip-sync (held-out, guidance {guidance}): {ev['per_sample']}", fh)
                save_strip(out / f"sample_g{guidance}.png", [f for f, _ in ev["videos"]])
        args.metrics["total_minutes"] = round((time.time() - t_start) / 60, 2)
        (out / "metrics.json").write_text(json.dumps(args.metrics, indent=2) + "\n")
        log(f"metrics: {args.metrics}", fh)
    return args.metrics


if __name__ == "__main__":
    main()
