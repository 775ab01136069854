"""Where a training step of the tiny model spends its time (GPU): data rendering, VAE, DiT.

    python benchmarks/profile_tiny_train.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from render.model.dit.model import S2VDiT
from render.model.vae.model import WanVAEModel
from tinymodel.export import TRAINED_DIT
from tinymodel.train import dit_batch, init_for_training
from tinymodel.train_vae import make_chunk_local, snippets, vae_reconstruct


def timed(fn, n=5):
    fn()
    torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.time() - t0) / n


def main():
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    rows = []
    rows.append(("render 12 snippets x 9 frames", timed(lambda: snippets(rng, 12, 9, 128, dev))))
    x = snippets(rng, 12, 9, 128, dev)
    vae = WanVAEModel(dim=8).to(dev)

    def vae_step(dtype=None):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is not None):
            rec, mu = vae_reconstruct(vae, x, 0.05)
            loss = (rec.float() - x).abs().mean()
        loss.backward()

    rows.append(("VAE fwd+bwd B=12 T=9 fp32", timed(vae_step)))
    rows.append(("VAE fwd+bwd B=12 T=9 bf16 autocast", timed(lambda: vae_step(torch.bfloat16))))
    x48 = snippets(rng, 48, 9, 128, dev)
    x, xs = x48, x
    rows.append(("VAE fwd+bwd B=48 T=9 bf16 autocast", timed(lambda: vae_step(torch.bfloat16), 3)))
    # The chunk-local VAE the training script now builds (3-tap convs run as 2-D convs).
    vae_t = vae
    vae = make_chunk_local(WanVAEModel(dim=8).to(dev))
    x = x48
    rows.append(("chunk-local VAE fwd+bwd B=48 T=9 fp32", timed(vae_step, 3)))
    rows.append(("chunk-local VAE fwd+bwd B=48 T=9 bf16 autocast", timed(lambda: vae_step(torch.bfloat16), 3)))
    vae = vae_t
    x = xs
    with torch.no_grad():
        w = torch.randn(16, 3, 153, 128, 128, device=dev).clamp(-1, 1)
        rows.append(("VAE encode 16 x 153 frames fp32", timed(lambda: vae.encode_mu(w), 2)))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            rows.append(("VAE encode 16 x 153 frames bf16", timed(lambda: vae.encode_mu(w), 2)))
    model = init_for_training(S2VDiT(TRAINED_DIT)).to(dev)
    data = {"motion_lat": torch.randn(64, 16, 39, 16, 16, device=dev).bfloat16(),
            "motion_aud": torch.randn(64, 32, 80, device=dev).half(), "motion_ref": torch.zeros(64, dtype=torch.long, device=dev),
            "first_lat": torch.randn(64, 16, 21, 16, 16, device=dev).bfloat16(),
            "first_aud": torch.randn(64, 32, 80, device=dev).half(), "refs": torch.randn(2, 16, 1, 16, 16, device=dev).bfloat16()}
    p = [torch.randn(8, 4096, device=dev)]
    n = torch.randn(5, 4096, device=dev)

    def dit_step(b):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = dit_batch(model, data, p, n, b, False, 0.1, 3.0, dev)
        loss.backward()

    for b in (32, 64):
        rows.append((f"DiT fwd+bwd B={b} motion windows", timed(lambda b=b: dit_step(b))))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        dit_step(32)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        vae_step(torch.bfloat16)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    print(f"\n{torch.cuda.get_device_name()}")
    for name, t in rows:
        print(f"| {name} | {t * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
