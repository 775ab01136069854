"""GPU memory of the product's render path: plain vs --offload under per-process memory caps,
a real out-of-memory error and its recovery, and umT5 on the GPU vs the CPU.

Runs with render/'s dependencies only (no Ray, no PyAV), on a real checkpoint folder loaded by
the product's loader (render.model.components.S2VModels):

    bash benchmarks/gpu_carry.sh stage .gpua && bash benchmarks/gpu_carry.sh install-render /tmp/rsite
    export PYTHONPATH=/tmp/rsite:$PWD
    python3 -m tinymodel.test_checkpoint /tmp/s2v14b --device cuda        # 14B random weights, ~55 s
    python3 benchmarks/gpu_memory.py --ckpt /tmp/s2v14b --out "$OUT"      # ~5 min on an H100 (estimate)
    python3 benchmarks/gpu_memory.py --tiny --out /tmp/gm                 # the script itself, CPU
    python3 benchmarks/gpu_memory.py --ckpt /tmp/s2v14b --out "$OUT" --parts a --sizes 720p --no-caps
                                                   # plain vs offload parity alone (~3 min)

Order: umT5 (part c) first, then the plain model (its runs and the out-of-memory error), then the
offloaded model (capped runs first); ``--budget-s`` skips the uncapped offloaded runs (and the
``--vae-tile`` run) once that many seconds have passed, so the call ends in time.

Parts (``--parts``, default all): ``a`` peak memory and seconds per step of one steady-state
clip (motion re-encode of 73 frames, the DiT's steps, the decode of context + new latents) at
480p (832x448) and 720p (1280x704), plain and offloaded, under the target cap (480p 24 GiB,
720p 48 GiB) and uncapped, plus the max-abs difference of the latents plain vs offload;
``b`` a real CUDA out-of-memory error at 720p under a small cap, handled as the product
handles it, then a 480p clip with offload in the same process; ``c`` umT5-XXL on the GPU
(bf16, float32) vs the CPU (float32) for 4 prompts, and the memory back afterwards.

The clip is rendered by ``ChainRenderer.render_clip`` (the function every render path runs per
clip). ``render_shot`` itself needs PyAV (audio decode, MP4 writer), absent in this call, so
the out-of-memory handling of ``s2v render-shot`` / the render group's rank is repeated here
around the clip: the same ``is_out_of_memory`` / ``out_of_memory_message`` / release / free
calls, in the same order. The caps are ``torch.cuda.set_per_process_memory_fraction``: they
bound what the caching allocator may reserve; the CUDA context (~0.5 GiB) is outside them.
Prints tables and writes gpu_memory.json (after every run, so a cut-off call keeps its
results) and gpu_memory.md to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from render.model.clip_loop import ChainState, ShotConditioning  # noqa: E402
from render.model.components import S2VModels  # noqa: E402
from render.model.out_of_memory import (  # noqa: E402
    free_device_memory,
    is_out_of_memory,
    out_of_memory_message,
)
from render.settings import RenderSettings  # noqa: E402

GIB = 2**30
PROMPTS = ("a woman talks to the camera in a studio", "a man gives a long speech outdoors",
           "a presenter speaks in a newsroom", "a child sings a song in a garden")


@dataclass(frozen=True)
class Size:
    name: str
    width: int
    height: int
    cap_gib: float  # the card size this size must fit with the opt-in options
    area: str  # the --size a user passes


# The official size search turns an 832*480 area with a 832x480 reference into 832x448.
FULL_SIZES = (Size("480p", 832, 448, 24.0, "832*480"), Size("720p", 1280, 704, 48.0, "1280*720"))
TINY_SIZES = (Size("480p", 64, 64, 24.0, "64*64"), Size("720p", 128, 64, 48.0, "128*64"))


class Report:
    """Results collected as they come and written after each, so a cut-off run keeps them."""

    def __init__(self, out: Path, device: torch.device):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.data: dict[str, Any] = {"device": name, "torch": torch.__version__, "runs": [], "oom": None,
                                     "text_encoder": [], "loads": {}, "latent_diffs": []}
        if device.type == "cuda":
            self.data["total_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
        print(f"device: {name}", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        (self.out / "gpu_memory.json").write_text(json.dumps(self.data, indent=1, default=str))


# --- memory helpers ----------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated_gib(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else 0.0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0


def set_cap(device: torch.device, cap_gib: float | None) -> None:
    """Cap what this process's allocator may reserve (None: the whole card). Cached blocks are
    returned first so that the cap applies to what is really in use."""
    if device.type != "cuda":
        return
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = 1.0 if cap_gib is None else min(1.0, cap_gib * GIB / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device.index if device.index is not None else torch.cuda.current_device())


# --- one clip through the product's clip function, with the product's OOM handling ---------------


def conditioning(models: S2VModels, size: Size, seed: int = 0) -> ShotConditioning:
    """A shot's conditioning at ``size``: random prompt embeddings and audio features (their
    values do not change memory or time), the reference latent from the model's own VAE."""
    g = torch.Generator().manual_seed(seed)
    cfg = models.dit.cfg
    ref = torch.rand(3, size.height, size.width, generator=g) * 2 - 1
    with torch.inference_mode():
        ref_lat = models.vae.encode(ref[:, None].to(models.device, models.vae_dtype)).float()[None].cpu()
    text_dim = 4096  # umT5-XXL's width, the DiT's text input
    return ShotConditioning(
        prompt_context=torch.randn(40, text_dim, generator=g), negative_context=torch.randn(120, text_dim, generator=g),
        ref_latents=ref_lat, ref_pixels=ref, audio_frames=torch.randn(1, 25, cfg.audio_dim, 160, generator=g),
        height=size.height, width=size.width)


class ClipProbe:
    """Step times and peak memory of each phase of one clip, read at the step callbacks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.step_ends: list[float] = []
        self.sample_peak = 0.0

    def on_step(self, clip: int, step: int, steps: int) -> None:
        sync(self.device)
        self.step_ends.append(time.perf_counter())
        self.sample_peak = max(self.sample_peak, peak_gib(self.device))
        if step == steps - 1:  # from here on the peak is the decode's
            reset_peak(self.device)


def render_steady_clip(models: S2VModels, settings: RenderSettings, cond: ShotConditioning) -> dict[str, Any]:
    """Clip 1 of a chain (the steady state: motion frames in, motion tokens in the DiT, context +
    new latents decoded), split into its phases for the peaks; returns figures and the latents."""
    dev = models.device
    probe = ClipProbe(dev)
    renderer = models.chain_renderer(settings, on_step=probe.on_step, progress=False)
    kept: dict[str, torch.Tensor] = {}
    sample = renderer.sample

    def keep_latents(*args: Any) -> torch.Tensor:
        kept["latents"] = sample(*args)
        return kept["latents"]

    renderer.sample = keep_latents  # type: ignore[method-assign]
    state = ChainState(1, torch.zeros(3, settings.motion_frames, cond.height, cond.width))
    sync(dev)
    reset_peak(dev)
    t0 = time.perf_counter()
    with torch.inference_mode():
        state.ensure_motion_latents(models.vae)  # what render_clip runs first for a motion clip
    sync(dev)
    t_encode = time.perf_counter()
    encode_peak = peak_gib(dev)
    reset_peak(dev)
    video, _ = renderer.render_clip(cond, state)
    sync(dev)
    t_end = time.perf_counter()
    ends = probe.step_ends
    steps = [b - a for a, b in zip([t_encode, *ends[:-1]], ends)]  # the first includes prepare()
    return {
        "encode73_s": round(t_encode - t0, 2), "step_s": [round(s, 2) for s in steps],
        "decode_s": round(t_end - ends[-1], 2), "clip_s": round(t_end - t0, 2),
        "peak_encode_gib": round(encode_peak, 2), "peak_sample_gib": round(probe.sample_peak, 2),
        "peak_clip_gib": round(max(encode_peak, probe.sample_peak, peak_gib(dev)), 2),
        "peak_decode_gib": round(peak_gib(dev), 2),
        "frames": int(video.shape[1]), "latents": kept["latents"].float().cpu(),
    }


def guarded_clip(models: S2VModels, settings: RenderSettings, cond: ShotConditioning, size: Size,
                 cap_gib: float | None) -> dict[str, Any]:
    """``render_steady_clip`` under a cap, out of memory handled as the product handles it: the
    message built inside ``except``, the exception dropped, the offload copies released, the
    device cache freed; then the memory allocated must be what it was before the clip."""
    dev = models.device
    set_cap(dev, cap_gib)
    before = allocated_gib(dev)
    message = None
    result: dict[str, Any] = {}
    try:
        result = render_steady_clip(models, settings, cond)
    except Exception as exc:
        where = failure_site(exc)
        if not is_out_of_memory(exc):
            # Not the product's out-of-memory path (e.g. a library's own allocation error under
            # the cap): recorded as a finding, and the script goes on to the next run.
            traceback.print_exc()
            result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        else:
            message = out_of_memory_message(exc, width=size.width, height=size.height, size=size.area,
                                            device=dev, offload=models.offload)
        result["failed_at"] = where
    # read before free_device_memory, which resets the peak statistics after a failure
    peak_reserved = torch.cuda.max_memory_reserved(dev) / GIB if dev.type == "cuda" else 0.0
    if message is not None or "error" in result:
        offload = getattr(models._dit, "offload", None)
        if offload is not None:
            offload.release_all()
        free_device_memory(dev)
    result.update(oom=message, allocated_before_gib=round(before, 3), allocated_after_gib=round(allocated_gib(dev), 3),
                  peak_reserved_gib=round(peak_reserved, 2))
    set_cap(dev, None)
    return result


def failure_site(exc: BaseException) -> str:
    """The innermost frame of the project's code where ``exc`` was raised (file:line function)."""
    root = str(Path(__file__).resolve().parents[1])
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(root)]
    f = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{Path(f.filename).relative_to(root) if f.filename.startswith(root) else f.filename}:{f.lineno} {f.name}"


def simulated_oom_hook(models: S2VModels) -> Any:
    """On the CPU no allocator fails: an allocator-worded error raised in the first block
    exercises the same handling (the tiny smoke run only)."""
    def fail(*_: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                     "of 79.19 GiB of which 1.06 GiB is free.")
    return models.dit.blocks[0].register_forward_pre_hook(fail)


# --- the parts ------------------------------------------------------------------------------------


def load_models(ckpt: Path, device: torch.device, offload: bool, report: Report) -> S2VModels:
    t0 = time.perf_counter()
    models = S2VModels(ckpt, device=device, offload=offload)
    models.dit  # noqa: B018 - load now, timed
    models.vae  # noqa: B018
    sync(device)
    report.data["loads"]["offload" if offload else "plain"] = {
        "s": round(time.perf_counter() - t0, 1), "allocated_gib": round(allocated_gib(device), 2)}
    print(f"loaded {'offloaded' if offload else 'plain'} models in {time.perf_counter() - t0:.1f} s, "
          f"{allocated_gib(device):.2f} GiB on the device", flush=True)
    return models


def record_run(report: Report, mode: str, size: Size, cap: float | None, res: dict[str, Any]) -> dict[str, Any]:
    row = {"mode": mode, "size": size.name, "wxh": f"{size.width}x{size.height}", "cap_gib": cap,
           **{k: v for k, v in res.items() if k != "latents"}}
    report.data["runs"].append(row)
    report.save()
    steps = row.get("step_s") or []
    print(f"{mode:8} {size.name:5} cap {str(cap):5} "
          + (f"OOM at {row.get('failed_at')}: {row['oom']}" if row.get("oom") else
             f"ERROR at {row.get('failed_at')}: {row['error']}" if row.get("error") else
             f"peak {row['peak_clip_gib']:.2f} GiB (encode {row['peak_encode_gib']:.2f}, sample "
             f"{row['peak_sample_gib']:.2f}, decode {row['peak_decode_gib']}), steps {steps} s, clip {row['clip_s']} s"),
          flush=True)
    return row


def part_a_plain_and_b(a: argparse.Namespace, ckpt: Path, device: torch.device, sizes: tuple[Size, ...],
                       settings: RenderSettings, report: Report, parts: str) -> dict[str, torch.Tensor]:
    """Plain runs (part a), then the out-of-memory error (part b); returns the plain latents."""
    latents: dict[str, torch.Tensor] = {}
    models = load_models(ckpt, device, offload=False, report=report)
    conds = {s.name: conditioning(models, s) for s in sizes}
    latents.update({f"ref:{name}": c.ref_latents for name, c in conds.items()})
    if "a" in parts:
        for size in sizes:
            res = guarded_clip(models, settings, conds[size.name], size, None)
            if "latents" in res:
                latents[size.name] = res["latents"]
            record_run(report, "plain", size, None, res)
        for size in sizes:
            if device.type == "cuda" and not a.no_caps:  # the cap only exists on a GPU
                record_run(report, "plain", size, size.cap_gib,
                           guarded_clip(models, settings, conds[size.name], size, size.cap_gib))
    if "b" in parts:
        big = sizes[-1]
        before = allocated_gib(device)
        # The weights and 8 GiB: the 720p clip's DiT activations (well above that) cannot fit.
        small_cap = before + 8.0
        hook = simulated_oom_hook(models) if device.type != "cuda" else None
        res = guarded_clip(models, settings, conds[big.name], big, small_cap if device.type == "cuda" else None)
        if hook is not None:
            hook.remove()
        msg = res.get("oom") or ""
        report.data["oom"] = {
            "size": f"{big.width}x{big.height}", "cap_gib": round(small_cap, 2),
            "simulated": device.type != "cuda", "message": msg,
            "names_size": f"{big.width}x{big.height}" in msg, "names_needed": "needed" in msg,
            "names_options": "--offload" in msg and "smaller size" in msg,
            "failed_at": res.get("failed_at"), "other_error": res.get("error"),
            "allocated_before_gib": res["allocated_before_gib"], "allocated_after_gib": res["allocated_after_gib"],
            "memory_back": abs(res["allocated_after_gib"] - res["allocated_before_gib"]) < 1e-3,
        }
        report.save()
        print(f"OOM at {big.name} under {small_cap:.2f} GiB: {msg}\n  allocated before {res['allocated_before_gib']} "
              f"GiB, after {res['allocated_after_gib']} GiB", flush=True)
    dit = weakref.ref(models.dit)
    del models, conds
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # The offloaded runs' caps hold only if the plain DiT is gone from the device.
    report.data["loads"]["plain_dit_freed"] = dit() is None
    report.data["loads"]["allocated_after_plain_dropped_gib"] = round(allocated_gib(device), 3)
    report.save()
    return latents


def part_a_offload(a: argparse.Namespace, ckpt: Path, device: torch.device, sizes: tuple[Size, ...],
                   settings: RenderSettings, report: Report, parts: str, plain: dict[str, torch.Tensor]) -> None:
    """Offloaded runs: capped first (the proof, and part b's follow-up clip), uncapped while the
    time budget lasts; latents compared with the plain ones."""
    models = load_models(ckpt, device, offload=True, report=report)
    conds = {s.name: conditioning(models, s) for s in sizes}
    # The reference latents come from the VAE alone (offload does not touch it): if they differ
    # from the plain model's, so will the sampled latents, whatever offload does. Seen on an H100
    # at 720p after the capped runs (the VAE also ran 1.7x slower then): cuDNN seems to fall back to
    # other convolution algorithms when a workspace does not fit a cap, and to keep them.
    for name, c in conds.items():
        if f"ref:{name}" in plain:
            diff = float((c.ref_latents - plain[f"ref:{name}"]).abs().max())
            report.data["latent_diffs"].append({"size": name, "what": "reference latents (VAE encode)",
                                                "max_abs_plain_vs_offload": diff})
            print(f"  reference latents (VAE) plain vs offload-run at {name}: max-abs {diff}", flush=True)
    runs = [(s, s.cap_gib if device.type == "cuda" and not a.no_caps else None) for s in sizes]
    if device.type == "cuda" and not a.no_caps:
        runs += [(s, None) for s in sizes]
    for i, (size, cap) in enumerate(runs):
        if i >= len(sizes) and report.elapsed() > a.budget_s:
            report.data["runs"].append({"mode": "offload", "size": size.name, "cap_gib": cap,
                                        "skipped": f"time budget {a.budget_s} s spent"})
            continue
        res = guarded_clip(models, settings, conds[size.name], size, cap)
        row = record_run(report, "offload", size, cap, res)
        if i == 0 and "b" in parts and report.data.get("oom") is not None:
            report.data["oom"]["next_clip_480p_offload"] = "rendered" if not row.get("oom") else row["oom"]
        if "latents" in res and size.name in plain:
            diff = float((res["latents"] - plain[size.name]).abs().max())
            report.data["latent_diffs"].append({"size": size.name, "cap_gib": cap, "what": "sampled latents",
                                                "max_abs_plain_vs_offload": diff})
            print(f"  latents plain vs offload at {size.name}: max-abs {diff}", flush=True)
        report.save()
    if a.vae_tile:  # the decode's peak with spatial tiles, at the largest size (pixels differ slightly)
        size = sizes[-1]
        models.vae.set_decode_tiles(a.vae_tile)
        if report.elapsed() > a.budget_s:
            report.data["runs"].append({"mode": f"offload+vae-tile {a.vae_tile}", "size": size.name,
                                        "skipped": f"time budget {a.budget_s} s spent"})
        else:
            record_run(report, f"offload+vae-tile {a.vae_tile}", size, None,
                       guarded_clip(models, settings, conds[size.name], size, None))
        models.vae.set_decode_tiles(None)
    del models, conds
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def part_c_text_encoder(ckpt: Path, device: torch.device, report: Report) -> None:
    """umT5 for 4 prompts: load + encode seconds, device memory, memory after release."""
    from render.model.checkpoint import T5_FILE, TOKENIZER_DIR, DiTConfig
    from render.model.text_encoder import load_text_encoder

    text_len = DiTConfig.from_json(ckpt / "config.json").text_len
    cases = [("cpu", torch.float32)]
    if device.type == "cuda":
        cases = [(str(device), torch.bfloat16), (str(device), torch.float32), *cases]
    reference: list[torch.Tensor] | None = None
    for where, dtype in cases:
        dev = torch.device(where)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        base = allocated_gib(device)
        reset_peak(device)
        t0 = time.perf_counter()
        enc = load_text_encoder(ckpt / T5_FILE, ckpt / TOKENIZER_DIR, device=dev, dtype=dtype, text_len=text_len)
        sync(device)
        t_load = time.perf_counter()
        with torch.inference_mode():
            embs = [e.float().cpu() for e in enc.encode(list(PROMPTS))]
        sync(device)
        t_enc = time.perf_counter()
        enc.release()
        row = {"device": where, "dtype": str(dtype).removeprefix("torch."), "cpu_threads": torch.get_num_threads(),
               "load_s": round(t_load - t0, 2),
               "encode_s": round(t_enc - t_load, 2), "total_s": round(t_enc - t0, 2),
               "peak_gib": round(peak_gib(device) - base, 2), "allocated_before_gib": round(base, 3),
               "allocated_after_release_gib": round(allocated_gib(device), 3)}
        if reference is None:
            reference = embs
        else:
            row["max_abs_vs_first"] = max(float((x - y).abs().max()) for x, y in zip(embs, reference))
        report.data["text_encoder"].append(row)
        report.save()
        print(f"umT5 {where:7} {row['dtype']:8} load {row['load_s']} s, encode {row['encode_s']} s, peak "
              f"{row['peak_gib']} GiB, allocated after release {row['allocated_after_release_gib']} GiB", flush=True)


def write_markdown(report: Report) -> str:
    d = report.data
    lines = [f"# GPU memory: {d['device']}", "",
             "| mode | size | cap GiB | peak alloc GiB (encode / sample / decode) | peak reserved GiB | s/step | clip s | result |",
             "|---|---|---|---|---|---|---|---|"]
    for r in d["runs"]:
        if r.get("skipped"):
            lines.append(f"| {r['mode']} | {r['size']} | {r.get('cap_gib')} | | | | | skipped: {r['skipped']} |")
        elif r.get("oom") or r.get("error"):
            what = "out of memory" if r.get("oom") else "error: " + r["error"][:80]
            lines.append(f"| {r['mode']} | {r['size']} | {r['cap_gib']} | | {r['peak_reserved_gib']} | | | "
                         f"{what} at {r.get('failed_at')} |")
        else:
            lines.append(f"| {r['mode']} | {r['wxh']} | {r['cap_gib']} | {r['peak_clip_gib']} ({r['peak_encode_gib']} / "
                         f"{r['peak_sample_gib']} / {r['peak_decode_gib']}) | {r['peak_reserved_gib']} | "
                         f"{r['step_s'][-1]} | {r['clip_s']} | ok |")
    for x in d["latent_diffs"]:
        lines.append(f"\n{x.get('what', 'latents')} plain vs offload, {x['size']} (cap {x.get('cap_gib')}): "
                     f"max-abs {x['max_abs_plain_vs_offload']}")
    if d["oom"]:
        lines += ["", "Out of memory:", "```", json.dumps(d["oom"], indent=1), "```"]
    if d["text_encoder"]:
        lines += ["", "| umT5 device | dtype | load s | encode s (4 prompts) | peak GiB | allocated after release |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['device']} | {r['dtype']} | {r['load_s']} | {r['encode_s']} | {r['peak_gib']} | "
                  f"{r['allocated_after_release_gib']} |" for r in d["text_encoder"]]
    text = "\n".join(lines) + "\n"
    (report.out / "gpu_memory.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint folder (official layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="write a tiny checkpoint and run on the CPU (script check)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--parts", default="abc", help="a: plain/offload table, b: out of memory, c: umT5 (default abc)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=250.0,
                   help="the uncapped offload runs start only before this many seconds (keeps the call short)")
    p.add_argument("--vae-tile", type=int, default=0, metavar="N",
                   help="also one offloaded clip at the largest size with the decode in NxN-latent tiles")
    p.add_argument("--sizes", default=None, help="comma-separated size names to run (480p,720p; default both)")
    p.add_argument("--no-caps", action="store_true",
                   help="uncapped runs only: plain vs offload output with the same convolution algorithms "
                        "(a capped run can leave cuDNN on other ones for the rest of the process)")
    a = p.parse_args(argv)
    from render.model.out_of_memory import prefer_expandable_segments

    prefer_expandable_segments()  # as the product's processes do
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.tiny else "cpu"))
    if a.tiny:
        from tinymodel.checkpoint import write_tiny_checkpoint

        ckpt = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="s2v-tiny-")))
    elif a.ckpt:
        ckpt = Path(a.ckpt)
    else:
        p.error("--ckpt is needed (or --tiny)")
    sizes = TINY_SIZES if a.tiny else FULL_SIZES
    if a.sizes:
        wanted = a.sizes.split(",")
        unknown = sorted(set(wanted) - {s.name for s in sizes})
        if unknown:
            p.error(f"--sizes {a.sizes}: unknown {unknown}; expected names from {[s.name for s in sizes]}")
        sizes = tuple(s for s in sizes if s.name in wanted)
    report = Report(Path(a.out), device)
    report.data["steps"] = a.steps
    settings = RenderSettings(steps=a.steps, seed=1)
    if a.tiny:  # short clips: the CPU check runs every code path, not the sizes
        settings = RenderSettings(steps=a.steps, seed=1, infer_frames=8, motion_frames=5)
    if "c" in a.parts:
        part_c_text_encoder(ckpt, device, report)
    plain: dict[str, torch.Tensor] = {}
    if "a" in a.parts or "b" in a.parts:
        plain = part_a_plain_and_b(a, ckpt, device, sizes, settings, report, a.parts)
        part_a_offload(a, ckpt, device, sizes, settings, report, a.parts, plain)
    report.save()
    print(write_markdown(report))
    print(f"done in {report.elapsed():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
