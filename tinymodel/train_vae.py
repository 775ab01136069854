"""Stage 1 of the tiny model's training (``python -m tinymodel.train``): the VAE.

The Wan2.1 architecture at base width 8, made chunk-local (every temporal tap that reaches an
earlier chunk held at zero), trained on short snippets of generated characters through the same
streaming encode/decode the renderer uses (L1 + L2, the mouth colour weighted up). Also the
progress log every stage writes.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from render.model.vae.model import WanVAEModel, is_chunk_local, past_temporal_taps, use_frame_local_convs
from render.quality.lipsync import MOUTH_RGB, MOUTH_TOLERANCE
from tinymodel.export import VAE_DIM
from tinymodel.faces import Motion, random_character, render_character


def log(msg: str, fh=None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh is not None:
        fh.write(line + "\n")
        fh.flush()


# -- stage 1: VAE ---------------------------------------------------------------------------
def random_motion(rng: np.random.Generator, frames: int) -> Motion:
    """Mouth and eyes in random states (VAE data need not follow audio)."""
    mouth = np.clip(np.cumsum(rng.normal(0, 0.35, frames)) * 0.5 + rng.uniform(-0.3, 1.0), 0, 1)
    mouth = np.where(rng.random(frames) < 0.15, 0.0, mouth).astype(np.float32)
    blink = (rng.random(frames) < 0.15).astype(np.float32) * rng.uniform(0.3, 1.0)
    dx = (rng.uniform(-0.03, 0.03) + np.cumsum(rng.normal(0, 0.004, frames))).astype(np.float32)
    dy = (rng.uniform(-0.02, 0.02) + np.cumsum(rng.normal(0, 0.003, frames))).astype(np.float32)
    return Motion(dx, dy, blink.astype(np.float32), mouth)


def snippets(rng: np.random.Generator, batch: int, frames: int, size: int, dev) -> torch.Tensor:
    """[B, 3, frames, H, W] in [-1, 1]."""
    out = [render_character(random_character(rng), random_motion(rng, frames), size, size, dev)
           for _ in range(batch)]
    return torch.stack(out).permute(0, 2, 1, 3, 4) * 2 - 1


def mouth_weight(x: torch.Tensor) -> torch.Tensor:
    """1 everywhere, 10 on mouth-coloured pixels of x [B, 3, T, H, W] in [-1, 1]."""
    rgb = (x + 1) / 2
    d = (rgb - torch.tensor(MOUTH_RGB, device=x.device).view(1, 3, 1, 1, 1)).norm(dim=1, keepdim=True)
    return 1 + 9 * (d < MOUTH_TOLERANCE).float()


def recon_loss(rec: torch.Tensor, x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """L1 + L2 with the mouth colour weighted up, plus a small pull of the latents towards 0."""
    w = mouth_weight(x)
    return (w * (rec - x).abs()).mean() + (w * (rec - x) ** 2).mean() + 1e-4 * mu.float().pow(2).mean()


def vae_reconstruct(vae: WanVAEModel, x: torch.Tensor, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    mu = vae.encode_mu(x)
    z = mu + noise * mu.detach().std() * torch.randn_like(mu) if noise else mu
    return torch.cat(list(vae.decode_stream(z)), dim=2), mu


def _detach_cache(cache) -> None:
    for k, v in list(cache._state.items()):
        cache._state[k] = v.detach()


def vae_long_sequence_loss(vae: WanVAEModel, x: torch.Tensor, window: int = 4, noise: float = 0.05,
                           autocast: bool = False) -> float:
    """Encode and decode a long video [B, 3, 1 + 4k, H, W] chunk by chunk exactly as the renderer
    streams it, back-propagating every ``window`` latents and then cutting the graph at the
    streaming caches (truncated back-propagation through time). Gradients accumulate in the
    parameters; returns the mean loss.

    Why: the causal VAE's temporal receptive field is ~90 frames, so a VAE trained only on short
    snippets never sees its caches in their steady state and falls apart after ~40 frames of a clip
    (measured: 18 dB for frames 0-31, 10 dB from frame 48 on). This trains that regime at the cost
    of a short snippet per window.
    """
    from render.model.vae.layers import StreamCache
    from render.model.vae.model import FRAMES_PER_LATENT

    enc_cache, dec_cache = StreamCache(), StreamCache()
    n_lat = 1 + (x.shape[2] - 1) // FRAMES_PER_LATENT
    total, pending, count = 0.0, [], 0
    for i in range(n_lat):
        start = 0 if i == 0 else 1 + FRAMES_PER_LATENT * (i - 1)
        stop = 1 + FRAMES_PER_LATENT * i
        target = x[:, :, start:stop]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            mu = vae.conv1(vae.encoder(target, enc_cache))[:, : vae.z_dim]
            z = mu + noise * mu.detach().std() * torch.randn_like(mu) if noise else mu
            rec = vae.decoder(vae.conv2(z), dec_cache).float()
        pending.append(recon_loss(rec, target, mu))
        if len(pending) == window or i == n_lat - 1:
            loss = torch.stack(pending).sum() / n_lat
            loss.backward()
            total += float(loss.detach()) * n_lat
            count += len(pending)
            pending = []
            _detach_cache(enc_cache)
            _detach_cache(dec_cache)
    return total / count


def snippet_pool(rng: np.random.Generator, count: int, frames: int, size: int, dev) -> torch.Tensor:
    """[count, 3, frames, H, W] bf16 snippets rendered once: drawing characters one by one costs
    as much GPU time as a VAE step, so steps sample from this pool (with flips) instead."""
    return torch.cat([snippets(rng, 16, frames, size, dev).to(torch.bfloat16) for _ in range(-(-count // 16))])


# (frames, share of the batch): the causal VAE must see long sequences in training, or its
# streaming state goes wrong after the snippet length (measured: 9-frame training -> PSNR ~10 dB
# from frame 12 on).
VAE_LENGTHS = ((9, 1.0), (17, 0.5), (33, 0.25))


def pool_batch(pool: torch.Tensor, batch: int, frames: int | None = None, crop: int | None = None) -> torch.Tensor:
    """Random snippets of the pool (random start frame, horizontal flips), optionally a random
    crop x crop window of them (at a multiple of 8 px, the latent grid)."""
    idx = torch.randint(0, len(pool), (batch,), device=pool.device)
    frames = frames or pool.shape[2]
    start = int(torch.randint(0, pool.shape[2] - frames + 1, ()))
    x = pool[idx, :, start:start + frames]
    if crop and crop < x.shape[-1]:
        i, j = (8 * int(torch.randint(0, (n - crop) // 8 + 1, ())) for n in x.shape[-2:])
        x = x[..., i:i + crop, j:j + crop]
    x = x.float()
    flip = torch.rand(batch, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1, 1), x.flip(-1), x)


def make_chunk_local(vae: WanVAEModel) -> WanVAEModel:
    """Zero every past temporal tap and keep it zero through training (its gradient is masked, so
    Adam's moments and updates for it stay 0).

    Why: a causal VAE trained on short snippets goes wrong at stream positions it never saw
    (measured: 18 dB for frames 0-31 of a clip, 10 dB from frame 48 on, the same frames at 18 dB
    as a fresh stream). A chunk-local VAE - still the Wan2.1 architecture and checkpoint layout -
    has no stream position: each latent holds 4 frames of its own, so short snippets train every
    case it meets, and temporal coherence is the DiT's job (as it is for the motion frames).
    """
    with torch.no_grad():
        for weight, taps in past_temporal_taps(vae):
            weight[:, :, taps] = 0

            def mask(grad: torch.Tensor, taps=taps) -> torch.Tensor:
                grad = grad.clone()
                grad[:, :, taps] = 0
                return grad

            weight.register_hook(mask)
    use_frame_local_convs(vae)  # 2-D convs: the same values at a third of the cost
    return vae


def train_vae(args, dev, fh) -> WanVAEModel:
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    vae = WanVAEModel(dim=VAE_DIM).to(dev)
    if args.init_vae:
        vae.load_state_dict(torch.load(args.init_vae, map_location=dev, weights_only=True))
        log(f"VAE: loaded {args.init_vae} (chunk-local: {is_chunk_local(vae)})"
            + (", fine-tuning" if args.vae_finetune else " (already normalised)"), fh)
        if not args.vae_finetune:
            args.vae_folded = True
            return vae.eval()
    if not args.vae_temporal:
        make_chunk_local(vae)
    t0 = time.time()
    pool = snippet_pool(rng, args.vae_pool, VAE_LENGTHS[-1][0], args.size, dev)
    log(f"VAE: {len(pool)} snippets rendered ({time.time() - t0:.0f} s)", fh)
    t0 = time.time()  # the budget is for training steps
    opt = torch.optim.Adam(vae.parameters(), lr=args.vae_lr)
    budget = args.minutes * 60 * args.vae_share
    step = 0
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1 or (args.smoke and step >= 3):
            break
        for g in opt.param_groups:
            g["lr"] = args.vae_lr * min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1))))
        opt.zero_grad(set_to_none=True)
        if args.vae_long_every and step % args.vae_long_every == args.vae_long_every - 1:
            # A long video streamed like the renderer does (steady-state caches), fresh characters.
            x = snippets(rng, args.vae_long_batch, args.vae_long_frames, args.size, dev)
            loss = torch.tensor(vae_long_sequence_loss(vae, x))
        else:
            # A chunk-local VAE has no stream state to learn: 9 frames (the first, single-frame
            # chunk and two 4-frame chunks) show it everything, so the whole batch is 9 frames.
            frames, share = VAE_LENGTHS[step % len(VAE_LENGTHS)] if args.vae_temporal else (9, 1.0)
            # Mostly crops (convolutions are local: 4x the samples per second at 64 px), every
            # --vae-full-every-th step whole frames (the mid-block attention sees the full grid).
            full = not args.vae_crop or (args.vae_full_every and step % args.vae_full_every == 0)
            crop = None if full else args.vae_crop
            n = max(1, int(args.vae_batch * share * (1 if full else (args.size / args.vae_crop) ** 2 / 2)))
            x = pool_batch(pool, n, frames, crop)
            # fp32 (TF32 matmuls/convs) by default: with 3-D convs on the H200 it was no slower than
            # bf16 autocast (153 vs 172 ms per step at 12 x 9 frames), and the renderer runs the VAE
            # in fp32; --vae-bf16 for the chunk-local VAE's 2-D convs (not measured yet).
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.vae_bf16):
                rec, mu = vae_reconstruct(vae, x, noise=0.05)
            loss = recon_loss(rec.float(), x, mu)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            log(f"VAE step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", fh)
        step += 1
    del pool
    vae.eval()
    with torch.no_grad():
        # Characters not in the pool, 161 frames (longer than the 153 the renderer decodes per clip):
        # PSNR over all and per 16 frames - it must not fall with the frame index.
        x = snippets(np.random.default_rng(args.seed + 999), 2, 17 if args.smoke else 161, args.size, dev)
        rec, _ = vae_reconstruct(vae, x)
        mse_t = ((rec.clamp(-1, 1) - x) ** 2).mean(dim=(0, 1, 3, 4))
        psnr = 10 * math.log10(4 / max(mse_t.mean().item(), 1e-12))
        per = [round(10 * math.log10(4 / max(m.mean().item(), 1e-12)), 1) for m in mse_t.split(16)]
    log(f"VAE done: {step} steps, held-out {x.shape[2]}-frame PSNR {psnr:.1f} dB; per 16 frames {per}", fh)
    args.metrics["vae_psnr_per_16_frames"] = per
    args.metrics["vae_steps"], args.metrics["vae_psnr_db"] = step, round(psnr, 2)
    args.vae_folded = False
    return vae


# -- stage 2: data --------------------------------------------------------------------------
