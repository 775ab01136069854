"""VAE cost of the motion hand-off per clip, and what `decode_context_latents` saves.

The official loop decodes [19 motion latents + 20 new] = 39 latents and keeps the last 80 frames.
Warming the causal decoder with only the last k motion latents decodes k + 20 latents instead.
Prints time per clip and the pixel difference of the kept 80 frames against the full decode.
With random weights the difference shows how far the decoder's temporal context reaches, not
visual quality.

    python benchmarks/bench_vae_handoff.py [--size 480x832] [--dtype bf16] [--ks 1,2,4,8,19]
"""

from __future__ import annotations

import argparse
import time

import torch

from render.model.vae import WanVAE
from render.model.vae.model import WanVAEModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="480x832")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--ks", default="1,2,4,8,19")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    vae = WanVAE(WanVAEModel().to(a.device, dtype).eval())
    lat = torch.randn(16, 39, h // 8, w // 8, device=a.device)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"

    def timed(fn):
        if a.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if a.device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    with torch.inference_mode():
        timed(lambda: vae.decode(lat[:, -3:].to(dtype)))  # warm-up
        full, t_full = timed(lambda: vae.decode(lat.to(dtype))[:, -80:].float())
        frames = torch.randn(3, 73, h, w, device=a.device).clamp(-1, 1)
        _, t_enc = timed(lambda: vae.encode(frames.to(dtype)))
        print(f"device: {name}, VAE {a.dtype}, {h}x{w}")
        print(f"encode 73 motion frames: {t_enc:.2f} s")
        print("| context latents | decoded latents | decode s | max-abs vs full | PSNR dB vs full |")
        print("|---|---|---|---|---|")
        for k in [int(v) for v in a.ks.split(",")]:
            out, t = timed(lambda k=k: vae.decode(lat[:, 19 - k:].to(dtype))[:, -80:].float())
            mse = (out - full).pow(2).mean().item()
            psnr = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()
            print(f"| {k} | {k + 20} | {t:.2f} | {(out - full).abs().max().item():.3g} | {psnr:.1f} |")


if __name__ == "__main__":
    main()
