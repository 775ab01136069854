"""GPU speed of --fast against the exact path: per clip at few steps, and GPU-s per video-second
at 40 steps, on a random-weight 14B checkpoint (the arithmetic of the real one).

    python benchmarks/bench_fast_speed.py --ckpt /tmp/s2v-14b --out "$OUT/fast_speed.json"
    python benchmarks/bench_fast_speed.py --tiny --out /tmp/fast_speed_tiny.json   # CPU check of the script

On the GPU machines (no omegaconf there): carry .gpur, run ``bash benchmarks/gpu_carry.sh install-render
/tmp/site`` and ``export PYTHONPATH=/tmp/site:$PWD`` first (benchmarks/gpu_carry.sh).

The checkpoint's DiT and VAE are written first when missing (random values drawn on the GPU,
~1 min; the text encoder and wav2vec2 are not needed: prompts and audio features are random
tensors of their shapes, computed once per shot anyway). For each size, one clip with motion
(clip r >= 1: motion re-encode, sampling, decode) is rendered with ``--few-steps`` steps exact
(bf16 DiT, fp32 VAE) and fast (the preset's sampling, fp8 linears, bf16 VAE), and each kind of
denoising step is timed alone:

* exact: a CFG step (batch of 2);
* fast: a CFG step (2 rows), a conditional-only step (1 row), and a step the cache skips (for 2
  and for 1 rows: patch embedding, head and, in ``audio`` mode, the audio injections).

The 40-step cost of a clip = (clip at few steps - its steps) + the steps of a 40-step clip, where
the fast clip's mix of step kinds is the one measured on the trained tiny model at 40 steps
(benchmarks/results/fast_mode.json, written by bench_fast_quality.py; ``--mix`` overrides it).
GPU-s per video-second = that / (80 frames / 16 fps). The ratio fast / exact comes from the same
run on the same card.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from render.model.checkpoint import VAE_FILE  # noqa: E402
from render.model.clip_loop import ChainRenderer, ShotConditioning, initial_chain_state  # noqa: E402
from render.model.components import load_render_dit  # noqa: E402
from render.model.fast import StepCache, condition_rows  # noqa: E402
from render.model.fast.preset import FAST_SAMPLING, apply_fast  # noqa: E402
from render.model.out_of_memory import prefer_expandable_segments  # noqa: E402
from render.settings import RenderSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUALITY_JSON = ROOT / "benchmarks" / "results" / "fast_mode.json"
STEP_KINDS = ("cfg", "cond", "cfg_skip", "cond_skip")  # rows run x computed or skipped by the cache
log = logging.getLogger("bench_fast_speed")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None,
                   help="checkpoint folder, written when missing (default /tmp/s2v-14b-random, --tiny /tmp/s2v-tiny-random)")
    p.add_argument("--tiny", action="store_true", help="CPU check: the tiny demo checkpoint, small sizes")
    p.add_argument("--sizes", default=None, help="WxH output sizes (default 832x480,1280x720; --tiny 64x64)")
    p.add_argument("--few-steps", type=int, default=None, help="steps of the timed clips (default 1)")
    p.add_argument("--full-steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2, help="timed calls per step kind (after a warm-up)")
    p.add_argument("--mix", default=None,
                   help="fast 40-step mix 'cfg,cond,cfg_skip,cond_skip' (steps of each kind per clip); default: "
                        "measured on the tiny model (fast_mode.json)")
    p.add_argument("--device", default=None)
    p.add_argument("--phases", default="exact,fast", choices=("exact,fast", "exact", "fast"),
                   help="which paths to time (one alone: no ratio)")
    p.add_argument("--out", required=True, help="JSON result file")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` (host clock around a synchronised call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def ensure_checkpoint(folder: Path, tiny: bool, device: torch.device) -> float:
    """Write the DiT and VAE of a random-weight checkpoint when missing; seconds spent."""
    t0 = time.perf_counter()
    if tiny:
        from tinymodel.test_checkpoint import write_test_checkpoint

        if not (folder / "config.json").exists():
            write_test_checkpoint(folder, "tiny")
        return time.perf_counter() - t0
    from tinymodel.test_checkpoint import RELEASE, _present, write_dit, write_vae

    folder.mkdir(parents=True, exist_ok=True)
    present = _present(folder)
    if not present["dit"]:
        write_dit(folder, RELEASE, device, 0)
    if not present["vae"]:
        write_vae(folder, RELEASE, device, 1)
    sync(device)
    return time.perf_counter() - t0


def random_shot(dit, width: int, height: int, device: torch.device, seed: int = 0) -> ShotConditioning:
    cfg = dit.cfg
    g = torch.Generator().manual_seed(seed)
    h, w = height // 8, width // 8
    return ShotConditioning(
        prompt_context=torch.randn(cfg.text_len // 4, cfg.text_dim, generator=g),
        negative_context=torch.randn(cfg.text_len // 3, cfg.text_dim, generator=g),
        ref_latents=torch.randn(1, cfg.in_dim, 1, h, w, generator=g), ref_pixels=torch.zeros(3, height, width),
        audio_frames=torch.randn(1, 25, cfg.audio_dim, 2 * 80, generator=g), height=height, width=width)


def time_clip(dit, vae, settings: RenderSettings, shot: ShotConditioning, device: torch.device) -> float:
    """Seconds of one clip with motion (clip 1: motion re-encode, sampling, decode)."""
    renderer = ChainRenderer(dit, vae, settings, device, progress=False)

    def run():
        state = initial_chain_state(settings, shot, first_clip=1)
        with torch.inference_mode():
            renderer.render_clip(shot, state, audio_offset=0)

    return timed(run, device, repeats=1)


def time_steps(dit, settings: RenderSettings, shot: ShotConditioning, device: torch.device, repeats: int,
               kinds: tuple[str, ...]) -> dict[str, float]:
    """Seconds of one denoising step of each kind (a clip with motion, as in time_clip)."""
    s = settings
    h, w = shot.latent_hw
    shape = (dit.cfg.in_dim, s.latent_frames, h, w)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g).to(device)
    motion = torch.randn(1, dit.cfg.in_dim, s.motion_latent_frames, h, w, generator=g).to(device)
    audio = shot.audio_frames[..., :s.infer_frames].to(device)
    with torch.inference_mode():
        cond2 = dit.prepare(shape, [shot.prompt_context.to(device), shot.negative_context.to(device)],
                            shot.ref_latents.to(device).expand(2, -1, -1, -1, -1), motion.expand(2, -1, -1, -1, -1),
                            None, torch.cat([audio, 0 * audio]), motion_frames=(s.motion_frames, s.motion_latent_frames),
                            cache_context_kv=True)
    cond1 = condition_rows(cond2, slice(0, 1))
    t = torch.tensor(700, device=device)
    x2 = x[None].expand(2, -1, -1, -1, -1)
    out: dict[str, float] = {}
    cache = None
    if settings.step_cache != "off":
        # Computed steps are timed with the cache attached (they record what a skipped step reuses);
        # no step is skipped until the warm-up is lowered below.
        cache = StepCache(settings.step_cache, threshold=10.0, steps=10**6, warmup=10**6, max_skips=10**6)
    counter = iter(range(10**6))

    def step(xs, c, rows):
        if cache is not None:
            cache.begin_step(next(counter), rows)
        return dit.denoise(xs, t, c)

    with torch.inference_mode(), cache.attached(dit) if cache is not None else nullcontext():
        if "cfg" in kinds:
            out["cfg"] = timed(lambda: step(x2, cond2, (0, 1)), device, repeats)
        if "cond" in kinds:
            out["cond"] = timed(lambda: step(x[None], cond1, (0,)), device, repeats)
        if cache is not None:
            cache.warmup = 0  # from now on every step is skipped: the input does not change
            for kind, rows, xs, c in (("cfg_skip", (0, 1), x2, cond2), ("cond_skip", (0,), x[None], cond1)):
                if kind in kinds:
                    out[kind] = timed(lambda xs=xs, c=c, rows=rows: step(xs, c, rows), device, repeats, warmup=0)
                    assert not cache.history[-1].computed, "the timed step was not a skipped one"
    return out


def fast_mix(full_steps: int, override: str | None) -> tuple[dict[str, float], str]:
    """Steps of each kind in a fast clip of ``full_steps`` steps, and where the numbers come from."""
    if override:
        values = [float(v) for v in override.split(",")]
        return dict(zip(STEP_KINDS, values)), "--mix"
    if QUALITY_JSON.exists():
        measured = json.loads(QUALITY_JSON.read_text())
        if measured.get("fast_mix_fields") != FAST_SAMPLING:
            raise SystemExit(f"{QUALITY_JSON} measured another preset ({measured.get('fast_mix_fields')}) than "
                             f"--fast's {FAST_SAMPLING}: rerun benchmarks/bench_fast_quality.py, or pass --mix")
        mixes = measured.get("fast_mix", {})
        if str(full_steps) in mixes:
            return mixes[str(full_steps)], f"{QUALITY_JSON.name}: the fast preset on the tiny model at {full_steps} steps"
    raise SystemExit(f"no measured fast step mix for {full_steps} steps in {QUALITY_JSON}; pass --mix")


def step_seconds(mix: dict[str, float], cost: dict[str, float]) -> float:
    return sum(n * cost[k] for k, n in mix.items() if n)


def few_step_mix(settings: RenderSettings) -> dict[str, float]:
    """The step kinds of a clip of settings.steps (the cache skips nothing before its warm-up ends:
    the timed clips use few steps, so only the guidance schedule matters there)."""
    from render.model.fast import GuidanceSchedule
    from render.model.fast.step_cache import DEFAULT_WARMUP

    if settings.steps > DEFAULT_WARMUP + 1 and settings.step_cache != "off":
        raise ValueError("few-step clips are meant to stay inside the cache's warm-up")
    sched = GuidanceSchedule(settings.steps, settings.cfg_until, settings.cfg_every)
    n_cfg = sched.uncond_steps()
    return {"cfg": n_cfg, "cond": settings.steps - n_cfg, "cfg_skip": 0, "cond_skip": 0}


def main(argv=None) -> int:
    a = parse_args(argv)
    prefer_expandable_segments()  # as the product's processes do (render/model/out_of_memory.py)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    t_start = time.perf_counter()
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.tiny else "cpu"))
    sizes = [tuple(int(v) for v in s.split("x")) for s in (a.sizes or ("64x64" if a.tiny else "832x480,1280x720")).split(",")]
    few = a.few_steps or 1
    ckpt = Path(a.ckpt or ("/tmp/s2v-tiny-random" if a.tiny else "/tmp/s2v-14b-random"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    R: dict = {"gpu": gpu, "device": str(device), "torch": torch.__version__, "ckpt": str(ckpt), "few_steps": few,
               "full_steps": a.full_steps, "fast_sampling": FAST_SAMPLING, "sizes": {}}
    R["checkpoint_write_s"] = ensure_checkpoint(ckpt, a.tiny, device)
    mix40, mix_source = fast_mix(a.full_steps, a.mix)
    R["fast_mix"], R["fast_mix_source"] = mix40, mix_source

    from render.model.fast.preset import fast_plan
    from render.model.vae import load_vae

    t0 = time.perf_counter()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dit = None  # the exact path's DiT (bf16 linears); --fast's is loaded below, as the product loads it
    if "exact" in a.phases.split(","):
        dit, report = load_render_dit(ckpt, device, dtype)
        R["optimize_exact"] = report.describe()
    vae32 = load_vae(ckpt / VAE_FILE, device=device, dtype=torch.float32)
    plan = fast_plan(str(device))
    vae_fast = load_vae(ckpt / VAE_FILE, device=device, dtype=torch.bfloat16) if plan.vae_bf16 else vae32
    R["load_s"] = time.perf_counter() - t0
    R["fast_plan"] = plan.describe()
    print(plan.describe(), flush=True)

    frames = RenderSettings().infer_frames
    video_s = frames / RenderSettings().fps
    exact_settings = {}
    for w, h in sizes:
        # Sides are used as given (multiples of 16 here); the size search would pick the same for a
        # reference picture of this aspect ratio.
        exact_settings[(w, h)] = RenderSettings(size=f"{w}*{h}", steps=few)
    # exact first (bf16 linears), then the DiT is loaded again as every render path loads it for --fast
    for phase in a.phases.split(","):
        if phase == "fast" and (plan.fp8 or dit is None):
            del dit
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            dit, report = load_render_dit(ckpt, device, dtype, fp8=plan.fp8)
            R["optimize_fast"] = report.describe()
            if device.type == "cuda":
                R["fast_models_gib"] = torch.cuda.memory_allocated(device) / 2**30  # the fp8 DiT + both VAEs
                torch.cuda.reset_peak_memory_stats(device)
        for w, h in sizes:
            key = f"{w}x{h}"
            entry = R["sizes"].setdefault(key, {})
            shot = random_shot(dit, w, h, device)
            settings = exact_settings[(w, h)]
            vae = vae32
            kinds: tuple[str, ...] = ("cfg",)
            if phase == "fast":  # the kinds the 40-step mix and the few-step clip use
                settings, vae = apply_fast(settings), vae_fast
                used = {k for k, n in mix40.items() if n} | {k for k, n in few_step_mix(settings).items() if n}
                kinds = tuple(k for k in STEP_KINDS if k in used)
            t0 = time.perf_counter()
            try:
                # steps first: their warm-up also settles the attention autotuning, so the clip is timed warm
                steps = time_steps(dit, settings, shot, device, a.repeats, kinds)
                clip_s = time_clip(dit, vae, settings, shot, device)
            except torch.OutOfMemoryError as exc:  # recorded; the other sizes still run
                entry[phase] = {"error": f"out of GPU memory: {(str(exc).splitlines() or [''])[0][:200]}",
                                "oom": str(exc),
                                "allocated_gib": torch.cuda.memory_allocated(device) / 2**30,
                                "reserved_gib": torch.cuda.memory_reserved(device) / 2**30}
                log.error("%s %s: out of GPU memory", key, phase)
                torch.cuda.empty_cache()
                continue
            few_mix = few_step_mix(settings)
            other_s = max(clip_s - step_seconds(few_mix, steps), 0.0)  # VAE, motion encode, prepare
            mix = {"cfg": a.full_steps, "cond": 0, "cfg_skip": 0, "cond_skip": 0} if phase == "exact" else mix40
            clip40 = other_s + step_seconds(mix, steps)
            entry[phase] = {"clip_s_few_steps": clip_s, "step_s": steps, "vae_and_other_s": other_s,
                            "clip_s_40": clip40, "gpu_s_per_video_s_40": clip40 / video_s,
                            "forwards_40": mix["cfg"] * 2 + mix["cond"], "wall_s": time.perf_counter() - t0}
            if device.type == "cuda":
                entry[phase]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            log.info("%s %s: %s", key, phase, entry[phase])
    for entry in R["sizes"].values():
        if "exact" not in entry or "fast" not in entry or "error" in entry["exact"] or "error" in entry["fast"]:
            continue
        entry["speedup_few_steps"] = entry["exact"]["clip_s_few_steps"] / entry["fast"]["clip_s_few_steps"]
        entry["speedup_40"] = entry["exact"]["clip_s_40"] / entry["fast"]["clip_s_40"]
    R["total_s"] = time.perf_counter() - t_start
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(R, indent=1, default=str))
    print(table(R))
    print(f"wrote {a.out} ({R['total_s']:.0f} s in all)")
    return 0


def table(R: dict) -> str:
    lines = [f"fast vs exact on {R['gpu']} (torch {R['torch']}); 40-step fast mix from {R['fast_mix_source']}: "
             f"{R['fast_mix']}", f"{R['fast_plan']}",
             f"| size | exact clip ({R['few_steps']} steps) s | fast clip s | ratio | exact GPU-s / video-s @{R['full_steps']} "
             f"| fast GPU-s / video-s | ratio | fast forwards / clip |", "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(run: dict | None, key: str, fmt: str) -> str:
        if run is None:
            return "-"
        return run["error"] if "error" in run else format(run[key], fmt)

    for key, e in R["sizes"].items():
        x, f = e.get("exact"), e.get("fast")
        both = "speedup_40" in e
        lines.append(f"| {key} | {cell(x, 'clip_s_few_steps', '.2f')} | {cell(f, 'clip_s_few_steps', '.2f')} | "
                     f"{format(e['speedup_few_steps'], '.2f') + 'x' if both else '-'} | "
                     f"{cell(x, 'gpu_s_per_video_s_40', '.1f')} | {cell(f, 'gpu_s_per_video_s_40', '.1f')} | "
                     f"{format(e['speedup_40'], '.2f') + 'x' if both else '-'} | {cell(f, 'forwards_40', 'g')} |")
    lines.append("step seconds: " + "; ".join(
        f"{k} {phase} " + ", ".join(f"{n} {v:.3f}" for n, v in run["step_s"].items())
        for k, e in R["sizes"].items() for phase, run in e.items() if isinstance(run, dict) and "step_s" in run))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
