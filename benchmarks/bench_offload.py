"""Block offload (render/model/offload.py) on one GPU: seconds per forward and peak memory with
and without it, and the max-abs difference of the predictions (must be 0).

A DiT with the release block shapes (dim 5120, ffn 13824, 40 heads) but fewer blocks is enough:
offload changes the per-block cost (a 0.65 GiB copy per block, overlapped with the block's
compute) and the weights held on the card, so the 40-block numbers are extrapolated from the
per-block difference and the release model's sizes (printed as such).

    python3 -m benchmarks.bench_offload --layers 8 --out result.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from benchmarks.bench_tools import (
    clip_inputs,
    median,
    peak_gib,
    random_dit,
    random_init_,
    reset_peak,
    time_cuda,
)
from kernels.select import optimize_dit
from render.model.checkpoint import DiTConfig
from render.model.dit import build_dit_skeleton
from render.model.offload import offload_dit

RELEASE = DiTConfig()


def reduced_config(layers: int, smoke: bool = False) -> DiTConfig:
    """The release shapes with ``layers`` blocks; audio injectors after the release's ones that
    still exist, and after the last block. ``smoke``: tiny widths, to check this script on a CPU."""
    inject = sorted({i for i in RELEASE.audio_inject_layers if i < layers} | {layers - 1})
    if smoke:
        return DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=layers, audio_inject_layers=inject,
                         audio_dim=32, text_len=32)
    return DiTConfig(num_layers=layers, audio_inject_layers=inject)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def block_and_rest_gib(cfg: DiTConfig) -> tuple[float, float]:
    m = build_dit_skeleton(cfg)
    blocks = sum(p.numel() for p in m.blocks.parameters()) * 2
    rest = sum(p.numel() for p in m.parameters()) * 2 - blocks
    return blocks / cfg.num_layers / 2**30, rest / 2**30


def measure(model, inp: dict, shape: tuple[int, ...], repeats: int, dev: torch.device) -> dict:
    _sync(dev)
    weights = torch.cuda.memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
    reset_peak()
    with torch.inference_mode():
        cond = model.prepare(shape, inp["context"], inp["ref"], inp["motion"], None, inp["audio"],
                             cache_context_kv=True)
        times = time_cuda(lambda: model.denoise(inp["x"], inp["t"], cond), repeats=repeats, warmup=1)
        out = model.denoise(inp["x"], inp["t"], cond)
    _sync(dev)
    return {"s_per_forward": median(times), "times": times, "peak_gib": peak_gib(), "weights_on_gpu_gib": weights,
            "out": out}


def copy_gbps(nbytes: int, device: torch.device) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(5):
        dev.copy_(host, non_blocking=True)
    _sync(device)
    return 5 * nbytes / (time.perf_counter() - t0) / 1e9


def vae_peaks(device: torch.device, height: int, width: int) -> dict:
    """Peak GPU memory of the VAE's streamed decode (chunks consumed one by one, as the clip
    loop writes them) and of the 73-frame motion re-encode, at one size: whether the release
    VAE needs spatial tiling there. Random weights (memory does not depend on them)."""
    from render.model.vae import WanVAE, build_vae_skeleton

    model = build_vae_skeleton(96).to_empty(device=device)
    random_init_(model, seed=3)
    vae = WanVAE(model)
    g = torch.Generator(device=device).manual_seed(5)
    z = torch.randn(16, 4, height // 8, width // 8, device=device, generator=g)
    frames = torch.rand(3, 73, height, width, device=device, generator=g) * 2 - 1
    res = {"size": f"{width}x{height}"}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            vae.to(dtype=dtype)
            name = str(dtype).removeprefix("torch.")
            _sync(device)
            base = torch.cuda.memory_allocated(device) / 2**30
            reset_peak()
            for chunk in vae.decode_stream(z):
                del chunk
            res[f"decode_stream_peak_gib_{name}"] = peak_gib() - base
            reset_peak()
            vae.encode(frames.to(dtype))
            res[f"encode73_peak_gib_{name}"] = peak_gib() - base
    res["note"] = "GiB above what was allocated before (weights, inputs)"
    return res


def oom_check(device: torch.device) -> dict:
    """A real CUDA out-of-memory error: the message render/model/out_of_memory.py builds from it
    (the allocator's wording of this torch), and the memory back after the handler frees it."""
    from render.model.out_of_memory import free_device_memory, is_out_of_memory, out_of_memory_message

    before = torch.cuda.memory_allocated(device)

    def shot() -> tuple[torch.Tensor, torch.Tensor]:
        held = torch.empty(8 * 2**30, dtype=torch.uint8, device=device)  # what a failing shot holds
        free, _ = torch.cuda.mem_get_info(device)
        return held, torch.empty(free + 2**30, dtype=torch.uint8, device=device)

    message = None
    try:
        shot()
    except Exception as exc:
        if is_out_of_memory(exc):
            message = out_of_memory_message(exc, width=1280, height=704, size="1280*720", device=device,
                                            offload=False, group_size=1)
    free_device_memory(device)
    return {"message": message, "allocated_before_gib": before / 2**30,
            "allocated_after_gib": torch.cuda.memory_allocated(device) / 2**30,
            "reserved_after_gib": torch.cuda.memory_reserved(device) / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ahead", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny widths on the CPU: checks the script only")
    ap.add_argument("--vae-size", default=None, metavar="WxH",
                    help="also the VAE's peak memory at this size (e.g. 1280x704)")
    a = ap.parse_args()
    dev = torch.device("cpu" if a.smoke else "cuda")
    cfg = reduced_config(a.layers, a.smoke)
    inp = clip_inputs(cfg, a.height, a.width, batch=2, device=dev)  # conditional + unconditional batch
    shape = tuple(inp["x"].shape[1:])

    plain = random_dit(cfg, dev)
    host_copy = copy.deepcopy(plain).cpu()  # the same weights, loaded on the host as --offload does
    optimize_dit(plain, dev)
    base = measure(plain, inp, shape, a.repeats, dev)
    out_plain = base.pop("out")
    del plain
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    optimize_dit(host_copy, dev)
    state = offload_dit(host_copy, dev, ahead=a.ahead)
    off = measure(host_copy, inp, shape, a.repeats, dev)
    out_off = off.pop("out")
    max_abs = float((out_off - out_plain).abs().max())

    block_gib, rest_gib = block_and_rest_gib(RELEASE)
    gbps = copy_gbps(state.block_bytes(), dev)
    per_block_extra = (off["s_per_forward"] - base["s_per_forward"]) / cfg.num_layers
    n = RELEASE.num_layers
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "layers": cfg.num_layers,
        "inject": cfg.audio_inject_layers, "size": f"{a.width}x{a.height}", "batch": 2,
        "noisy_tokens": int(inp["x"][0, 0].numel() // 4),
        "ahead": state.ahead, "plain": base, "offload": off, "max_abs_diff": max_abs,
        "block_copies": state.copies, "blocks_on_gpu_peak": state.peak_blocks,
        "h2d_gbps_pinned": gbps, "block_copy_ms": state.block_bytes() / gbps / 1e6,
        "plain_ms_per_block_upper": base["s_per_forward"] / cfg.num_layers * 1e3,  # incl. the non-block share
        "extrapolated_40_blocks": {
            "note": "extrapolated from the reduced-depth measurement and the release model's sizes",
            "plain_weights_gib": n * block_gib + rest_gib,
            "offload_weights_on_gpu_gib": rest_gib + (state.ahead + 1) * block_gib,
            "activation_peak_gib_480p": base["peak_gib"] - base["weights_on_gpu_gib"],
            "offload_extra_s_per_forward": per_block_extra * n,
        },
    }
    if a.vae_size and dev.type == "cuda":
        del host_copy, state, out_off, out_plain
        torch.cuda.empty_cache()
        vw, vh = (int(v) for v in a.vae_size.split("x"))
        result["vae"] = vae_peaks(dev, vh, vw)
    if dev.type == "cuda":
        result["oom_check"] = oom_check(dev)
    print(json.dumps(result, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
