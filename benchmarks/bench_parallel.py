"""Seconds per DiT forward of the 14B S2V model on 1, 2 and 4 GPUs: ours vs the official Ulysses path.

Random weights (the arithmetic is the same as with the real checkpoint), bf16, F = 20 latent
frames with motion (FramePack), 512 text tokens, 25 x 1024 x 80 audio features: the inputs of
every clip after the first.

    python benchmarks/bench_parallel.py --gpus 1,2,4 --sizes 480x832,704x1024 \
        [--official third_party/Wan2.2] [--out DIR] [--budget-s 480]

runs one ``torchrun`` per GPU count and prints one table. "Ours" times ``dit.denoise`` on the
clip loop's batch of 2 (conditional + unconditional) after ``dit.prepare`` (once per clip,
timed separately) and reports half of it per forward, so both columns are per forward of one
sample. The official model runs as its pipeline does: ``torch.amp.autocast(bf16)``, one
sample per forward, sequence parallel = its Ulysses path (world size = ulysses degree), its
``flash_attention`` routed to ``torch.nn.functional.scaled_dot_product_attention`` (flash-attn
has no wheel for the GPUs' torch; SDPA's default backend choice, as in the official measurements).
Its package ``__init__``s are bypassed (they import the pipelines); it needs ``diffusers``.

``--device cpu --tiny`` runs the same code on CPU/gloo with a tiny model (a smoke test; with
``--official`` it also checks that both implementations compute the same function).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_parallel_models import build_official, build_ours, enable_official_sp  # noqa: E402

# Run order per process count ("official" = the official model's Ulysses path). Our main
# configuration comes first; those more likely to be cut by the time budget come last.
DEFAULT_CONFIGS = {
    1: ["single", "official"],
    2: ["cfg2", "u2", "official"],
    4: ["cfg2.u2", "u4", "official", "cfg2.u2.fsdp", "u2.r2"],
}
TINY = dict(dim=128, ffn_dim=256, num_heads=4, num_layers=4, audio_inject_layers=[0, 2, 3], audio_dim=64,
            text_len=32)


def parse_config(name: str):
    from parallel import ParallelDims

    kw: dict = {}
    for part in name.split("."):
        if part == "single":
            continue
        if part == "fsdp":
            kw["shard_weights"] = True
        elif part.startswith("cfg"):
            kw["cfg"] = int(part[3:])
        elif part.startswith("u"):
            kw["ulysses"] = int(part[1:])
        elif part.startswith("r"):
            kw["ring"] = int(part[1:])
        else:
            raise ValueError(f"config {name!r}: unknown part {part!r} (expected cfgN, uN, rN, fsdp)")
    return ParallelDims(**kw)


# -- inputs and timing ------------------------------------------------------------------------
def make_inputs(cfg, h: int, w: int, frames: int, device, batch: int, seed: int = 1) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    lh, lw = h // 8, w // 8

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    return dict(
        x=r(batch, cfg.in_dim, frames, lh, lw), t=torch.tensor(500.0, device=device),
        context=[r(cfg.text_len - 7 * i, cfg.text_dim) for i in range(batch)],
        ref=r(batch, cfg.in_dim, 1, lh, lw), motion=r(batch, cfg.in_dim, 19, lh, lw),
        audio=r(batch, 25, cfg.audio_dim, 4 * frames),
    )


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, reps: int):
    """(median seconds over reps, last result), every rank in step, slowest rank counts."""
    import torch
    import torch.distributed as dist

    times, out = [], None
    for _ in range(reps):
        sync(device)
        dist.barrier()
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    t = torch.tensor([times[len(times) // 2]], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t), out


def peak_gib(device) -> float:
    import torch
    import torch.distributed as dist

    if device.type != "cuda":
        return float("nan")
    v = torch.tensor([torch.cuda.max_memory_allocated(device) / 2**30], device=device)
    dist.all_reduce(v, op=dist.ReduceOp.MAX)
    return float(v)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def token_count(cfg, h: int, w: int, frames: int) -> int:
    from render.model.dit.rope import token_segments

    lh, lw = h // 8, w // 8
    return sum(s.num_tokens for s in token_segments(frames, lh // 2, lw // 2, True, lh, lw))


# -- the worker (one per GPU count, under torchrun) -------------------------------------------
def worker(args) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from parallel import is_parallelized
    from render.model.checkpoint import DiTConfig

    start = time.monotonic()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:  # kernel and engine choices are logged at INFO
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        torch.set_num_threads(max(1, args.threads))
    dist.init_process_group(backend, timeout=timedelta(seconds=args.collective_timeout_s),
                            **({"device_id": device} if backend == "nccl" else {}))
    cfg = DiTConfig(**TINY) if args.tiny else DiTConfig()
    dtype = torch.float32 if args.tiny else torch.bfloat16
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    configs = args.configs.split(",") if args.configs else DEFAULT_CONFIGS.get(world, [f"u{world}", "official"])
    results = []

    def emit(rec: dict) -> None:
        rec.update(gpus=world, device=device_name(device))
        results.append(rec)
        if rank == 0:
            print("RESULT " + json.dumps(rec), flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(rec) + "\n")

    def over_budget() -> bool:
        flag = torch.tensor([time.monotonic() - start > args.budget_s], device=device, dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    ours_out: dict = {}
    dit = None
    for ci, name in enumerate(configs):
        if ci > 0 and over_budget():
            emit(dict(impl="official" if name == "official" else "ours", config=name, skipped="time budget"))
            continue
        if name == "official":
            dit = None  # the two 14B models do not fit one card together
            free(device)
            if not args.official:
                continue
            try:
                state = build_ours(cfg, device, dtype).state_dict() if args.check else None
                official(args, cfg, dtype, device, world, sizes, emit, state, ours_out)
            except Exception as e:  # noqa: BLE001 - report and go on with the next config
                emit(dict(impl="official", config=f"u{world}", skipped=f"failed: {type(e).__name__}: {e}"[:300]))
            free(device)
            continue
        dims = parse_config(name)
        if dims.world_size != world:
            continue
        if dit is None:
            dit = build_ours(cfg, device, dtype)
            kernels = install_kernels(dit, device, args.kernels)
        try:
            run_ours(args, cfg, dit, dims, name, device, world, sizes,
                     lambda rec, k=kernels: emit(dict(rec, kernels=k)), ours_out if ci == 0 and args.check else None)
        except Exception as e:  # noqa: BLE001
            emit(dict(impl="ours", config=name, skipped=f"failed: {type(e).__name__}: {e}"[:300]))
        if dims.shard_weights or is_parallelized(dit):
            dit = None  # sharded (or left half-transformed by a failure): build a fresh one next time
            free(device)
    dist.barrier()
    dist.destroy_process_group()


def run_ours(args, cfg, dit, dims, name, device, world, sizes, emit, keep_out) -> None:
    import torch

    from parallel import ParallelContext, deparallelize_dit, parallelize_dit

    ctx = ParallelContext.create(dims, device=device)
    model = parallelize_dit(dit, ctx)
    free(device)
    for h, w in sizes:
        reset_peak(device)
        inp = make_inputs(cfg, h, w, args.frames, device, batch=2)
        with torch.inference_mode():
            t_prep, cond = timed(lambda i=inp: model.prepare(
                i["x"].shape, i["context"], i["ref"], i["motion"], None, i["audio"],
                motion_frames=(73, 19), cache_context_kv=True), device, 1)
            timed(lambda i=inp, c=cond: model.denoise(i["x"], i["t"], c), device, args.warmup)
            t, out = timed(lambda i=inp, c=cond: model.denoise(i["x"], i["t"], c), device, args.reps)
        if keep_out is not None:
            keep_out[(h, w)] = out[0].float().cpu()
        rec = dict(impl="ours", config=name, size=f"{h}x{w}", tokens=token_count(cfg, h, w, args.frames),
                   s_per_forward=t / 2, s_prepare=t_prep, peak_gib=peak_gib(device))
        rec.update(compare_with_single(args, world, h, w, out))
        emit(rec)
        cond = out = inp = None  # free before the next size
    if not dims.shard_weights:
        deparallelize_dit(model)


def install_kernels(dit, device, mode: str) -> str:
    """'optimized': kernels.select.optimize_dit (fused Triton glue, per-shape attention backend),
    the production single-GPU path; 'reference': the model's plain torch code."""
    if mode == "reference" or device.type != "cuda":
        return "reference"
    try:
        from kernels.select import optimize_dit

        return "optimized: " + optimize_dit(dit, device).describe()
    except Exception as e:  # noqa: BLE001 - measure the reference path rather than nothing
        print(f"optimize_dit failed ({type(e).__name__}: {e}); timing the torch reference", flush=True)
        return "reference (optimize_dit failed)"


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def official(args, cfg, dtype, device, world, sizes, emit, state, ours_out) -> None:
    import torch

    model, sp_attn = build_official(Path(args.official), cfg, device, dtype)
    if state is not None:  # same weights as ours: the outputs must agree
        model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    if world > 1:
        enable_official_sp(model, sp_attn, float32_smoke=dtype == torch.float32)
    amp = torch.amp.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)  # as official
    for h, w in sizes:
        n = token_count(cfg, h, w, args.frames)
        name = f"u{world}" if world > 1 else "single"
        if n % world:
            # torch.chunk gives unequal pieces and its all_to_all needs equal ones: it cannot run.
            emit(dict(impl="official", config=name, size=f"{h}x{w}", tokens=n,
                      skipped=f"{n} tokens not divisible by ulysses {world}"))
            continue
        reset_peak(device)
        inp = make_inputs(cfg, h, w, args.frames, device, batch=2)  # sample 0 = ours' sample 0

        # As the official pipeline calls it on a GPU: latents, T5 output and wav2vec features in
        # bf16 (benchmarks/official_s2v.py does the same); float32 in a CPU smoke run.
        cast = (lambda v: v.bfloat16()) if dtype == torch.bfloat16 else (lambda v: v)
        one = {k: cast(v[0]) for k, v in inp.items() if k in ("x", "ref", "motion")}
        one["t"] = inp["t"].reshape(1)
        ctx0, aud = cast(inp["context"][0]), cast(inp["audio"][:1])

        def fwd(i=one, c=ctx0, a=aud, n=n):
            with amp:
                return model([i["x"]], t=i["t"], context=[c], seq_len=n,
                             ref_latents=[i["ref"]], motion_latents=[i["motion"]],
                             cond_states=[torch.zeros_like(i["x"])], audio_input=a,
                             motion_frames=[73, 19], drop_motion_frames=False)[0]

        with torch.no_grad():
            timed(fwd, device, args.warmup)
            t, out = timed(fwd, device, args.reps)
        rec = dict(impl="official", config=name, size=f"{h}x{w}", tokens=n, s_per_forward=t,
                   peak_gib=peak_gib(device))
        if state is not None and (h, w) in ours_out:  # only meaningful with the same weights (--check)
            rec["max_abs_vs_ours"] = float((out.float().cpu() - ours_out[(h, w)]).abs().max())
        emit(rec)
        inp = out = None


def compare_with_single(args, world: int, h: int, w: int, out) -> dict:
    """The 1-GPU run stores its prediction; the others report how far theirs is from it
    (same weights, inputs and noise on every degree)."""
    import torch

    if not args.ref_dir or int(os.environ.get("RANK", "0")) != 0:
        return {}
    path = Path(args.ref_dir) / f"single_{h}x{w}.pt"
    if world == 1:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out.float().cpu(), path)
        return {}
    if not path.exists():
        return {}
    ref = torch.load(path, weights_only=True)
    diff = out.float().cpu() - ref
    return dict(max_abs_vs_single=float(diff.abs().max()),
                rel_l2_vs_single=float(diff.norm() / ref.norm()))


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# -- the driver -------------------------------------------------------------------------------
def driver(args) -> int:
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    results_file = (out_dir / "parallel_results.jsonl") if out_dir else Path(f"/tmp/bench_parallel_{os.getpid()}.jsonl")
    results_file.unlink(missing_ok=True)
    start = time.monotonic()
    gpus = [int(g) for g in args.gpus.split(",")]
    available = _device_count(args.device)
    for n in gpus:
        if args.device == "cuda" and n > available:
            print(f"skipping {n} GPUs: only {available} visible", flush=True)
            continue
        left = args.budget_s - (time.monotonic() - start)
        if left < 30:
            print(f"skipping {n} GPUs: time budget spent", flush=True)
            continue
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               str(Path(__file__).resolve()), "--worker", "--device", args.device, "--sizes", args.sizes,
               "--frames", str(args.frames), "--reps", str(args.reps), "--warmup", str(args.warmup),
               "--budget-s", str(max(10.0, left * _share(n, gpus) - 20)),
               "--results", str(results_file), "--threads", str(args.threads),
               "--collective-timeout-s", str(args.collective_timeout_s)]
        for flag in ("tiny", "check"):
            if getattr(args, flag):
                cmd.append(f"--{flag}")
        cmd += ["--kernels", args.kernels]
        cmd += ["--ref-dir", args.ref_dir or f"/tmp/bench_parallel_single_{os.getpid()}"]
        if args.official:
            cmd += ["--official", args.official]
        if args.configs_for.get(n):
            cmd += ["--configs", args.configs_for[n]]
        print(f"== {n} process(es): {' '.join(cmd[3:6])} ...", flush=True)
        try:
            subprocess.run(cmd, check=False, timeout=left, cwd=REPO)
        except subprocess.TimeoutExpired:
            print(f"{n} GPUs: timed out after {left:.0f} s", flush=True)
    recs = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    table = format_table(recs)
    print(table)
    if out_dir:
        (out_dir / "parallel_table.md").write_text(table + "\n")
    return 0 if recs else 1


def format_table(recs: list[dict]) -> str:
    base = {r["size"]: r["s_per_forward"] for r in recs
            if r.get("impl") == "ours" and r.get("gpus") == 1 and "s_per_forward" in r}
    off = {(r["size"], r["gpus"]): r["s_per_forward"] for r in recs
           if r.get("impl") == "official" and "s_per_forward" in r}
    dev = next((r["device"] for r in recs if r.get("device")), "?")
    lines = [f"device: {dev}", "",
             "| impl | config | GPUs | size | tokens | s/forward | speed-up vs ours 1 GPU | vs official same GPUs | "
             "peak GiB/GPU | prepare s/clip |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    recs = sorted(recs, key=lambda r: (r.get("tokens", 0), r["gpus"], r["impl"] != "ours"))
    for r in recs:
        if "s_per_forward" not in r:
            lines.append(f"| {r['impl']} | {r.get('config', '')} | {r['gpus']} | {r.get('size', '')} | "
                         f"{r.get('tokens', '')} | — ({r.get('skipped', 'failed')}) | | | | |")
            continue
        s = r["s_per_forward"]
        b = base.get(r["size"])
        o = off.get((r["size"], r["gpus"]))
        up = f"{b / s:.2f}x" if b and r["impl"] == "ours" else ""
        vs = f"{o / s:.2f}x" if o and r["impl"] == "ours" else ""
        prep = f"{r['s_prepare']:.2f}" if "s_prepare" in r else ""
        extra = f" (max-abs vs ours {r['max_abs_vs_ours']:.1e})" if "max_abs_vs_ours" in r else ""
        if "rel_l2_vs_single" in r:
            extra = f" (vs 1 GPU: rel-L2 {r['rel_l2_vs_single']:.1e})"
        lines.append(f"| {r['impl']} | {r['config']} | {r['gpus']} | {r['size']} | {r['tokens']} | {s:.3f}{extra} | "
                     f"{up} | {vs} | {r['peak_gib']:.1f} | {prep} |")
    return "\n".join(lines)


def _share(n: int, order: list[int]) -> float:
    """Fraction of the remaining budget for the run on n GPUs (one GPU is the slowest)."""
    weight = {m: 1.6 if m == 1 else 1.0 for m in order}
    rest = order[order.index(n):]
    return weight[n] / sum(weight[m] for m in rest)


def _device_count(device: str) -> int:
    if device != "cuda":
        return 1 << 30
    import torch

    return torch.cuda.device_count()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", default="1,2,4", help="process counts to run, e.g. 1,2,4")
    p.add_argument("--sizes", default="480x832,704x1024", help="HxW output sizes")
    p.add_argument("--frames", type=int, default=20, help="latent frames F")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--official", default=None, help="local copy of the official Wan2.2 repository")
    p.add_argument("--out", default=None, help="folder for parallel_table.md and parallel_results.jsonl")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole run")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    p.add_argument("--check", action="store_true", help="give the official model our weights and compare")
    p.add_argument("--kernels", default="optimized", choices=["optimized", "reference"],
                   help="our single-GPU kernels: kernels.select.optimize_dit, or the plain torch reference")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process (cpu device)")
    p.add_argument("--collective-timeout-s", type=float, default=300.0)
    p.add_argument("--configs", default=None, help="worker: comma-separated configs (cfg2.u2, u4, u2.r2, ...)")
    p.add_argument("--configs-for", default="", help="driver: N=cfgA,cfgB;M=... per process count")
    p.add_argument("--ref-dir", default=None, help="where the 1-GPU predictions are kept for comparison")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    args.configs_for = dict(kv.split("=", 1) for kv in args.configs_for.split(";") if kv) if args.configs_for else {}
    args.configs_for = {int(k): v for k, v in args.configs_for.items()}
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
