"""Single-GPU speed of the S2V DiT: ceilings, ours (exact bf16, fp8), the official model, the VAE.

Builds the 14B DiT with random weights (the arithmetic is that of the real checkpoint) on one
GPU and prints, per output size, seconds per forward (one sample; CFG runs conditional and
unconditional as one batch of 2, so a batch-2 call counts as two forwards), MFU, the floor from
the ceilings measured in the same run, peak memory, and per-clip time including the VAE.

    python benchmarks/bench_single_gpu.py --official-repo third_party/Wan2.2 --out-dir OUT

``--layers 4`` makes a quick end-to-end check of the script (the table then is not the 14B's).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_tools import (  # noqa: E402
    FPS,
    FRAMES_PER_CLIP,
    LATENT_FRAMES,
    MOTION_LATENTS,
    attention_tflops,
    clip_inputs,
    forward_cost,
    matmul_tflops,
    median,
    peak_gib,
    psnr,
    random_dit,
    random_init_,
    relative_error,
    reset_peak,
    time_cuda,
)
from kernels import attention  # noqa: E402
from kernels.select import optimize_dit  # noqa: E402
from kernels.triton_support import triton_status  # noqa: E402
from render.model.checkpoint import DiTConfig  # noqa: E402

log = logging.getLogger("bench")
STEPS = 40  # sampling steps per clip; with CFG 2 forwards each


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="480x832,704x1024", help="HxW output sizes, comma separated")
    p.add_argument("--official-repo", default=None, help="local Wan2.2 checkout for the official numbers")
    p.add_argument("--repeats", type=int, default=2, help="timed forwards per configuration (after 1 warm-up)")
    p.add_argument("--layers", type=int, default=None, help="fewer DiT blocks, for a quick check of the script")
    p.add_argument("--skip", default="",
                   help="comma list of parts to skip: reference,fp8,fp8attn,official,vae,ceilings")
    p.add_argument("--out-dir", default=None, help="folder for results.json and results.md")
    p.add_argument("--device", default="cuda")
    p.add_argument("--profile", action="store_true", help="kernel-time breakdown of one forward per mode")
    p.add_argument("--tiny", action="store_true", help="a tiny DiT (smoke run of the script, e.g. on CPU)")
    return p.parse_args(argv)


TINY_DIT = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, audio_inject_layers=[0, 1], audio_dim=32,
                     text_len=32)


def dit_config(layers: int | None) -> DiTConfig:
    cfg = DiTConfig()
    if layers is not None:
        cfg.num_layers = layers
        cfg.audio_inject_layers = [i for i in cfg.audio_inject_layers if i < layers] or [0]
    return cfg


def prepare(dit, inp, batch):
    return dit.prepare(inp["x"][:batch].shape, inp["context"][:batch], inp["ref"][:batch], inp["motion"][:batch],
                       None, inp["audio"][:batch], cache_context_kv=True)


def measure_ours(dit, inp, batch: int, repeats: int) -> dict:
    """Seconds per forward (per sample) of denoise at ``batch``; prepare once, timed separately."""
    reset_peak()
    with torch.inference_mode():
        t_prep = median(time_cuda(lambda: prepare(dit, inp, batch), 1, warmup=0))
        cond = prepare(dit, inp, batch)
        x, t = inp["x"][:batch], inp["t"]
        out = None

        def fwd():
            nonlocal out
            out = dit.denoise(x, t, cond)
        times = time_cuda(fwd, repeats)
    res = dict(batch=batch, s_per_call=median(times), s_per_forward=median(times) / batch, times=times,
               prepare_s=t_prep, peak_gib=peak_gib(), out=out.float().cpu(), seq_len=cond.seq_len,
               noisy=cond.num_noisy)
    log.info("ours: %d tokens, batch %d: %.3f s per forward (calls %s), prepare %.2f s, peak %.1f GiB",
             cond.seq_len, batch, res["s_per_forward"], ", ".join(f"{t:.3f}" for t in times), t_prep, res["peak_gib"])
    return res


KERNEL_GROUPS = (  # (group, substrings of CUDA kernel names), first match wins
    ("attention", ("cudnn", "fmha", "flash", "attention", "sdpa")),
    ("fused glue (Triton)", ("residual_layer_norm", "rms_norm_rope", "quantize_rows")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "sm90_", "matmul")),
)


def profile_forward(dit, inp, batch: int, out_file: Path | None) -> dict:
    """CUDA time of one denoise call by kernel group (and the top kernels, written to out_file)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        cond = prepare(dit, inp, batch)
        dit.denoise(inp["x"][:batch], inp["t"], cond)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dit.denoise(inp["x"][:batch], inp["t"], cond)
            torch.cuda.synchronize()
    groups: dict[str, float] = {}
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if not us:
            continue
        name = evt.key.lower()
        group = next((g for g, keys in KERNEL_GROUPS if any(k in name for k in keys)), "other elementwise / copies")
        groups[group] = groups.get(group, 0.0) + us / 1e6
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40))
    return {"batch": batch, "seconds_by_group": groups}


def measure_approximation(dit, inputs: dict, sizes, R: dict, name: str, repeats: int) -> None:
    """Time the DiT as it is now configured (an approximate mode) at every size, CFG batch of 2,
    and record its error against the exact run: flow prediction rel L2 and PSNR, and the PSNR of
    the clean latent x0 = x - sigma * v it implies."""
    for s in sizes:
        r = R["sizes"][f"{s[0]}x{s[1]}"]
        r[f"{name}_b2"] = measure_ours(dit, inputs[s], 2, repeats)
        v_exact, v = r["exact_b2"]["out"], r[f"{name}_b2"]["out"]
        sigma = float(inputs[s]["t"]) / 1000
        x = inputs[s]["x"].float().cpu()
        r[f"{name}_flow_rel_err"] = relative_error(v, v_exact)
        r[f"{name}_x0_psnr_db"] = psnr(x - sigma * v, x - sigma * v_exact)
        r[f"{name}_flow_psnr_db"] = psnr(v, v_exact)


def measure_official(model, inp, repeats: int) -> dict:
    from benchmarks.official_s2v import official_forward

    reset_peak()
    cond = torch.zeros_like(inp["x"][:1])
    with torch.inference_mode():
        times = time_cuda(lambda: official_forward(model, inp["x"][0], inp["t"], inp["context"][0],
                                                   inp["ref"][:1], inp["motion"][:1], cond, inp["audio"][:1]),
                          repeats)
    log.info("official: %.3f s per forward (calls %s), peak %.1f GiB", median(times),
             ", ".join(f"{t:.3f}" for t in times), peak_gib())
    return dict(s_per_forward=median(times), times=times, peak_gib=peak_gib())


def measure_vae(device, height, width, repeats) -> dict:
    """Decode of 39 latents (19 motion + 20 new, as each clip does today), of the 20 new ones
    alone, and the re-encode of 73 motion frames; fp32 and bf16 weights; random weights."""
    from render.model.vae import WanVAE, build_vae_skeleton

    model = build_vae_skeleton(96).to_empty(device=device)
    random_init_(model, seed=3)
    vae = WanVAE(model)
    g = torch.Generator(device=device).manual_seed(5)
    h, w = height // 8, width // 8
    z = torch.randn(16, MOTION_LATENTS + LATENT_FRAMES, h, w, device=device, generator=g)
    frames = torch.rand(3, 73, height, width, device=device, generator=g) * 2 - 1
    res, decoded = {}, {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            vae.to(dtype=dtype)
            name = str(dtype).removeprefix("torch.")
            reset_peak()
            res[f"decode39_{name}"] = median(time_cuda(lambda: vae.decode(z), repeats))
            decoded[name] = vae.decode(z)
            res[f"decode20_{name}"] = median(time_cuda(lambda: vae.decode(z[:, MOTION_LATENTS:]), repeats))
            res[f"encode73_{name}"] = median(time_cuda(lambda d=dtype: vae.encode(frames.to(d)), repeats))
            res[f"peak_gib_{name}"] = peak_gib()
    res["bf16_vs_fp32_decode_psnr_db"] = psnr(decoded["bfloat16"], decoded["float32"])
    log.info("VAE: %s", res)
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench_single_gpu: no CUDA GPU here (use --device cpu --tiny for a smoke run)", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    if dev.type != "cuda":
        skip |= {"ceilings", "vae"}
    cfg = TINY_DIT if args.tiny else dit_config(args.layers)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    R = {"card": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
         "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
         "triton": triton_status()[1], "layers": cfg.num_layers, "dim": cfg.dim, "repeats": args.repeats,
         "sizes": {}, "matmul_bf16_tflops": None, "matmul_fp8_tflops": None}
    log.info("card %s, torch %s, CUDA %s, cuDNN %s, %s", R["card"], R["torch"], R["cuda"], R["cudnn"], R["triton"])

    # -- ceilings (same run) -------------------------------------------------------------------
    if "ceilings" not in skip:
        R["matmul_bf16_tflops"] = matmul_tflops(dev)
        R["matmul_fp8_tflops"] = matmul_tflops(dev, fp8=True)
    inputs = {s: clip_inputs(cfg, *s, batch=2, device=dev) for s in sizes}

    # -- ours ----------------------------------------------------------------------------------
    dit = random_dit(cfg, dev)
    log.info("DiT built: %.2f B parameters", sum(p.numel() for p in dit.parameters()) / 1e9)
    first = sizes[0]
    if "reference" not in skip:  # torch glue (no fused kernels), same attention dispatch
        R["reference"] = measure_ours(dit, inputs[first], 1, 1)
    R["optimize"] = optimize_dit(dit, dev).describe()
    fa4 = dev.type == "cuda" and attention.fa4_status()[0]
    R["fa4"] = attention.fa4_status()[1]
    for s in sizes:
        r = R["sizes"].setdefault(f"{s[0]}x{s[1]}", {})
        if fa4:  # the same model with torch's SDPA backends only (cuDNN on Hopper), for comparison
            attention.set_backend(dev, attention.SDPA_BACKENDS)
            r["exact_b2_sdpa"] = measure_ours(dit, inputs[s], 2, args.repeats)
            attention.reset()
        r["exact_b2"] = measure_ours(dit, inputs[s], 2, args.repeats)
        if fa4:
            r["exact_fa4_vs_sdpa_rel_err"] = relative_error(r["exact_b2"]["out"], r["exact_b2_sdpa"]["out"])
        r["exact_b1"] = measure_ours(dit, inputs[s], 1, args.repeats)
        r["exact_b2_vs_b1_rel_err"] = relative_error(r["exact_b2"]["out"][:1], r["exact_b1"]["out"])
        if s == first and "reference" in R:
            r["exact_vs_reference_rel_err"] = relative_error(r["exact_b1"]["out"], R["reference"]["out"])
        if args.profile and s == first and dev.type == "cuda":
            for b in (2, 1):
                R[f"profile_exact_b{b}"] = profile_forward(dit, inputs[s], b, _out(args, f"profile_exact_b{b}.txt"))
        tokens = r["exact_b2"]["seq_len"]
        r["cost"] = forward_cost(cfg, tokens, r["exact_b2"]["noisy"]).__dict__
        if "ceilings" not in skip:
            r["attn_tflops"] = {b: attention_tflops(dev, tokens, b) for b in ("cudnn", "flash", *(("fa4",) if fa4 else ()))}
    if "fp8" not in skip:
        R["optimize_fp8"] = optimize_dit(dit, dev, fp8=True).describe()
        measure_approximation(dit, inputs, sizes, R, "fp8", args.repeats)
        if args.profile and dev.type == "cuda":
            R["profile_fp8_b2"] = profile_forward(dit, inputs[first], 2, _out(args, "profile_fp8_b2.txt"))
        # fp8 linears + the self-attention in fp8 (cuDNN), where nvidia-cudnn-frontend is installed.
        from kernels.fp8_attention import cudnn_fp8_status

        ok, why = cudnn_fp8_status(dev)
        R["fp8_attention"] = why
        if ok and "fp8attn" not in skip:
            try:
                R["optimize_fp8_attention"] = optimize_dit(dit, dev, fp8_attention=True).describe()
            except ValueError as exc:
                R["fp8_attention"] = f"failed: {exc}"
            else:
                measure_approximation(dit, inputs, sizes, R, "fp8attn", args.repeats)
                if args.profile:
                    R["profile_fp8attn_b2"] = profile_forward(dit, inputs[first], 2, _out(args, "profile_fp8attn_b2.txt"))
    R["attention_choices"] = attention.chosen_backends(with_timings=True)
    _save(R, args)
    del dit
    _free()

    # -- official ------------------------------------------------------------------------------
    if args.official_repo and "official" not in skip:
        from benchmarks.official_s2v import build_official

        official = build_official(args.official_repo, cfg, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
        log.info("official WanModel_S2V built from %s", args.official_repo)
        for s in sizes:
            R["sizes"][f"{s[0]}x{s[1]}"]["official"] = measure_official(official, inputs[s], args.repeats)
        del official
        _save(R, args)
        _free()

    # -- VAE -------------------------------------------------------------------------------------
    if "vae" not in skip:
        R["vae"] = measure_vae(dev, *first, max(1, args.repeats - 1))
        _save(R, args)
        _free()

    _save(R, args)
    text = render_markdown(R)
    print(text)
    if args.out_dir:
        (Path(args.out_dir) / "results.md").write_text(text)
    return 0


def _save(R: dict, args) -> None:
    """results.json so far (a run cut short still leaves its numbers)."""
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(_jsonable(R), indent=1))


def _out(args, name: str) -> Path | None:
    return Path(args.out_dir) / name if args.out_dir else None


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if k != "out"}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x if isinstance(x, (int, float, str, bool, type(None))) else str(x)


def render_markdown(R: dict) -> str:
    from benchmarks.bench_report import render

    return render(R, steps=STEPS, frames_per_clip=FRAMES_PER_CLIP, fps=FPS)


if __name__ == "__main__":
    sys.exit(main())
