"""What fast mode costs in quality: fast vs exact with the same seed, on the trained tiny model and
on a 14B-wide random-weight DiT. Writes benchmarks/results/fast_mode.md (+ .json).

1. Calibration (``--calibrate``): per denoising step of exact renders of the tiny model, the step
   cache's indicator (relative L1 change of the first block's modulated input) next to what it
   stands for (relative L1 change of the blocks' output residual). The thresholds compared in (2)
   are chosen from this table.
2. Tiny model (tinymodel/tiny-s2v), held-out characters and voices (seeds >= 9 000 000, as
   tinymodel/evaluate.py): per setting, DiT forwards per clip, speed-up in forwards and in CPU
   wall time, lip-sync correlation (and its ratio to exact's), PSNR / SSIM of the frames against
   the exact render, seam and drift metrics.
3. 14B width (``--wide``): DiTConfig's release width (5120, 40 heads, ffn 13824) with
   ``--wide-layers`` blocks (the full 40 do not fit this machine's 24 GiB in float32) and random
   weights: relative L2 of the final latents of one clip vs exact, per setting.

    python benchmarks/bench_fast_quality.py --calibrate --steps 8 40
    python benchmarks/bench_fast_quality.py --steps 8 40 --samples 2 --seconds 10 --wide
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from render.model.checkpoint import DiTConfig  # noqa: E402
from render.model.clip_loop import ChainRenderer, ShotConditioning  # noqa: E402
from render.model.fast.preset import FAST_SAMPLING, apply_fast  # noqa: E402
from render.settings import RenderSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tinymodel" / "tiny-s2v"
OUT_MD = ROOT / "benchmarks" / "results" / "fast_mode.md"
KEEP_MARKER = "<!-- text below this line is kept when the script rewrites the tables -->"

#: settings compared (name -> RenderSettings fields); thresholds from the calibration table
CANDIDATES: dict[str, dict] = {
    "exact": {},
    "cfg until 0.5": dict(cfg_until=0.5),
    "cfg every 2": dict(cfg_every=2),
    "cfg every 3": dict(cfg_every=3),
    "cache residual 0.10": dict(step_cache="residual", step_cache_threshold=0.10),
    "cache residual 0.20": dict(step_cache="residual", step_cache_threshold=0.20),
    "cache audio 0.10": dict(step_cache="audio", step_cache_threshold=0.10),
    "cache audio 0.20": dict(step_cache="audio", step_cache_threshold=0.20),
    "cache residual 0.30": dict(step_cache="residual", step_cache_threshold=0.30),
    "cache audio 0.30": dict(step_cache="audio", step_cache_threshold=0.30),
    "residual 0.20 + cfg every 2": dict(step_cache="residual", step_cache_threshold=0.20, cfg_every=2),
    "audio 0.20 + cfg every 2": dict(step_cache="audio", step_cache_threshold=0.20, cfg_every=2),
    "audio 0.30 + cfg every 2": dict(step_cache="audio", step_cache_threshold=0.30, cfg_every=2),
    "audio 0.20 + cfg until 0.5": dict(step_cache="audio", step_cache_threshold=0.20, cfg_until=0.5),
    "audio 0.20 max 3": dict(step_cache="audio", step_cache_threshold=0.20, step_cache_max_skips=3),
    "audio 0.25 max 4": dict(step_cache="audio", step_cache_threshold=0.25, step_cache_max_skips=4),
    "audio 0.20 max 3 + cfg every 2": dict(step_cache="audio", step_cache_threshold=0.20, step_cache_max_skips=3,
                                           cfg_every=2),
    "audio 0.15 max 3 + cfg every 3": dict(step_cache="audio", step_cache_threshold=0.15, step_cache_max_skips=3,
                                           cfg_every=3),
    "fast preset": dict(FAST_SAMPLING),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of grey frames (8x8 windows, the usual constants)."""
    x = torch.from_numpy(a).float().mean(-1)[:, None]
    y = torch.from_numpy(b).float().mean(-1)[:, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def pool(t):
        return torch.nn.functional.avg_pool2d(t, 8, 4)

    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx**2, pool(y * y) - my**2, pool(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


# --- the tiny model -------------------------------------------------------------------------------


def heldout_samples(n: int, seconds: float, size: int):
    from tinymodel.evaluate import EVAL_SEED_BASE
    from tinymodel.faces import random_character, reference_frame
    from tinymodel.speech import speech_track

    out = []
    for i in range(n):
        rng = np.random.default_rng(EVAL_SEED_BASE + i)
        ch = random_character(rng)
        audio = speech_track(rng, seconds, None, held_out=True, synth_fraction=1.0)
        out.append((reference_frame(ch, size, size), audio))
    return out


def render_tiny(model, ref_rgb: torch.Tensor, samples: np.ndarray, settings: RenderSettings):
    """(uint8 frames [T, H, W, 3], renderer): the held-out evaluation's chain, keeping the renderer."""
    from tinymodel.evaluate import render_speech_chain

    return render_speech_chain(model, ref_rgb, samples, settings)


class StepProbe:
    """Per forward of the conditional row: the cache indicator and the residual change."""

    def __init__(self, dit):
        self.rows: list[dict] = []
        self._prev_mod = self._prev_res = None
        self._h_in = None
        dit.blocks[0].register_forward_pre_hook(self._blocks_in)
        dit.head.register_forward_pre_hook(self._blocks_out)
        self.dit = dit

    def _blocks_in(self, module, args):
        h, e0, n = args[0], args[1], args[2]
        shift, scale = (module.modulation.float()[:, None] + e0[:1].float()).unbind(2)[:2]
        self._mod = module.glue.modulate(h[:1], n, shift, scale, module.eps)[:, :n].float()
        self._h_in = h[:1, :n].float()

    def _blocks_out(self, module, args):
        res = args[0][:1].float() - self._h_in
        row = {}
        if self._prev_mod is not None:
            row["indicator"] = float((self._mod - self._prev_mod).abs().mean() / self._prev_mod.abs().mean())
            row["residual_change"] = float((res - self._prev_res).abs().mean() / self._prev_res.abs().mean())
        self._prev_mod, self._prev_res = self._mod, res
        self.rows.append(row)

    def reset(self):
        self._prev_mod = self._prev_res = None


def calibrate(model, samples, steps_list, size: int) -> dict:
    dit = model.renderer_parts[0]
    probe = StepProbe(dit)
    original_sample = ChainRenderer.sample

    def sample(self, *args, **kwargs):  # each clip starts the step-to-step comparison afresh
        probe.reset()
        return original_sample(self, *args, **kwargs)

    out = {}
    ChainRenderer.sample = sample
    try:
        for steps in steps_list:
            # exact CFG as one batch: one probe row per step
            per_step: list[list[dict]] = [[] for _ in range(steps)]
            for ref, audio in samples:
                probe.rows.clear()
                render_tiny(model, ref, audio, RenderSettings(size=f"{size}*{size}", steps=steps, seed=0))
                for i, row in enumerate(probe.rows):
                    per_step[i % steps].append(row)
            table = []
            for i, rows in enumerate(per_step[1:], start=1):
                table.append({"step": i, "indicator": round(float(np.mean([r["indicator"] for r in rows])), 4),
                              "residual_change": round(float(np.mean([r["residual_change"] for r in rows])), 4)})
            xs = [r["indicator"] for r in table]
            ys = [r["residual_change"] for r in table]
            corr = float(np.corrcoef(xs, ys)[0, 1]) if len(xs) > 2 else float("nan")
            out[str(steps)] = {"per_step": table, "corr_indicator_vs_residual_change": round(corr, 3)}
    finally:
        ChainRenderer.sample = original_sample
    return out


def tiny_table(model, samples, steps: int, size: int, names: list[str]) -> list[dict]:
    from render.quality.lipsync import lipsync_of_video
    from render.quality.seams import seam_report
    from render.shot.plan import plan_segments
    from tinymodel.faces import FPS
    from tinymodel.speech import SAMPLE_RATE

    base = RenderSettings(size=f"{size}*{size}", steps=steps, seed=0)
    exact_frames, rows = {}, []
    for name in names:
        settings = dataclasses.replace(base, **CANDIDATES[name])
        corr, psnrs, ssims, walls, fwd, exact_fwd, seams, drifts = [], [], [], [], [], [], [], []
        kinds: dict[str, float] = {}
        for k, (ref, audio) in enumerate(samples):
            t0 = time.perf_counter()
            frames, renderer = render_tiny(model, ref, audio, settings)
            walls.append(time.perf_counter() - t0)
            corr.append(lipsync_of_video(frames, audio, SAMPLE_RATE, FPS)["corr"])
            if name == "exact":
                exact_frames[k] = frames
            psnrs.append(psnr(frames, exact_frames[k]))
            ssims.append(ssim(frames, exact_frames[k]))
            clips = max(1, math.ceil(len(frames) / settings.infer_frames))
            stats = renderer.fast_stats
            fwd.append(sum(s.forwards for s in stats) / clips if stats else 2 * steps)
            for st in stats:
                for kind, n in st.step_kinds.items():
                    kinds[kind] = kinds.get(kind, 0) + n / (clips * len(samples))
            exact_fwd.append(2 * steps)
            plan = plan_segments(audio, settings, mode="sequential")
            ref_u8 = (ref.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            rep = seam_report(iter(frames), plan, reference_rgb=ref_u8)
            bounds = [b["value"] for b in rep["clip_boundaries"]]
            seams.append(max(bounds) / rep["inside"]["p95"] if bounds and rep["inside"]["p95"] > 0 else float("nan"))
            drifts.append(max(abs(c["mean_minus_ref"][0]) for c in rep["colour"]["clips"]))
        rows.append({
            "setting": name, "steps": steps, "fields": CANDIDATES[name],
            "forwards_per_clip": float(np.mean(fwd)), "speedup_forwards": float(np.mean(exact_fwd) / np.mean(fwd)),
            "wall_s": float(np.mean(walls)), "lipsync": float(np.mean(corr)), "lipsync_per_sample": corr,
            "psnr_db": float(np.mean([p for p in psnrs if math.isfinite(p)] or [float("inf")])),
            "ssim": float(np.mean(ssims)), "seam_ratio": float(np.nanmean(seams)) if seams else float("nan"),
            "drift_L": float(np.mean(drifts)), "step_kinds": kinds,
        })
        print(f"  {steps} steps {name}: {rows[-1]['forwards_per_clip']:.1f} fwd/clip, lip-sync "
              f"{rows[-1]['lipsync']:.3f}, PSNR {rows[-1]['psnr_db']:.1f} dB, {rows[-1]['wall_s']:.1f} s", flush=True)
    exact = rows[0]
    for r in rows:
        r["lipsync_vs_exact"] = r["lipsync"] / exact["lipsync"] if exact["lipsync"] else float("nan")
        r["speedup_wall"] = exact["wall_s"] / r["wall_s"]
    return rows


# --- the 14B-wide random model -------------------------------------------------------------------


def wide_table(layers: int, steps: int, names: list[str], device: torch.device, seed: int = 0) -> list[dict]:
    cfg = DiTConfig(num_layers=layers)
    cfg.audio_inject_layers = [i for i in cfg.audio_inject_layers if i < layers] or [layers - 1]
    if device.type == "cuda":  # the whole 14B fits a GPU in bf16; weights drawn there
        from benchmarks.bench_tools import random_dit

        dit = random_dit(cfg, device)
    else:
        from render.model.dit.init import fill_random_
        from render.model.dit.model import S2VDiT

        torch.manual_seed(seed)
        dit = fill_random_(S2VDiT(cfg), seed).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    h = w = 16
    frames = 16
    shot = ShotConditioning(
        prompt_context=torch.randn(12, cfg.text_dim, generator=g), negative_context=torch.randn(20, cfg.text_dim, generator=g),
        ref_latents=torch.randn(1, cfg.in_dim, 1, h, w, generator=g), ref_pixels=torch.zeros(3, 8 * h, 8 * w),
        audio_frames=torch.randn(1, 25, cfg.audio_dim, frames, generator=g), height=8 * h, width=8 * w)
    rows, exact = [], None
    for name in names:
        settings = RenderSettings(steps=steps, infer_frames=frames, motion_frames=5, **CANDIDATES[name])
        renderer = ChainRenderer(dit, _NoVAE(), settings, device, progress=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            lat = renderer.sample(shot, shot.audio_frames, None, None, False, 0, 0)
        wall = time.perf_counter() - t0
        exact = lat if exact is None else exact
        stats = renderer.fast_stats[0] if renderer.fast_stats else None
        rows.append({"setting": name, "steps": steps, "layers": layers, "fields": CANDIDATES[name],
                     "forwards_per_clip": stats.forwards if stats else 2 * steps,
                     "rel_l2_latents": float((lat - exact).norm() / exact.norm()), "wall_s": wall})
        print(f"  wide {steps} steps {name}: {rows[-1]['forwards_per_clip']} fwd, rel L2 {rows[-1]['rel_l2_latents']:.4f}",
              flush=True)
    for r in rows:
        r["speedup_forwards"] = 2 * steps / r["forwards_per_clip"]
        r["speedup_wall"] = rows[0]["wall_s"] / r["wall_s"]
    return rows


class _NoVAE:
    chunk_local = False


# --- report ---------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    lines = ["# Fast mode: forwards saved and quality cost", "", "Produced by these runs (rows of a later run replace "
             "the same settings' rows of an earlier one):", ""]
    lines += [f"* `python benchmarks/bench_fast_quality.py {r.get('argv', '?')}` on {r.get('machine', '?')} "
              f"({r.get('date', '?')})" for r in result.get("runs", [])]
    lines.append("")
    for steps, cal in result.get("calibration", {}).items():
        lines += [f"## Calibration, tiny model, {steps} steps (mean over clips of the held-out samples)", "",
                  "Indicator = relative L1 change of block 0's modulated input (noisy tokens) since the previous step; "
                  "residual change = relative L1 change of the blocks' output residual (what a skipped step reuses). "
                  f"Correlation over steps: {cal['corr_indicator_vs_residual_change']}.", "",
                  "| step | indicator | residual change |", "|---:|---:|---:|"]
        lines += [f"| {r['step']} | {r['indicator']:.4f} | {r['residual_change']:.4f} |" for r in cal["per_step"]]
        lines.append("")
    for steps, rows in result.get("tiny", {}).items():
        lines += [f"## Tiny trained model, {steps} steps: {result['samples']} held-out samples x {result['seconds']} s, "
                  f"{result['size']}x{result['size']}", "",
                  "| setting | forwards / clip | speed-up (forwards) | speed-up (wall) | lip-sync | vs exact | "
                  "PSNR vs exact (dB) | SSIM | seam ratio | drift dL |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['setting']}{' (= --fast)' if r.get('is_fast_preset') else ''} | {r['forwards_per_clip']:.1f} | {r['speedup_forwards']:.2f}x | "
                         f"{r['speedup_wall']:.2f}x | {r['lipsync']:.3f} | {r['lipsync_vs_exact']:.3f} | "
                         f"{r['psnr_db']:.1f} | {r['ssim']:.3f} | {r['seam_ratio']:.2f} | {r['drift_L']:.2f} |")
        lines += ["", "Seam ratio: largest frame change at a clip boundary / p95 of the changes inside clips "
                  "(render/quality/seams.py). Drift dL: largest |mean L*| difference of a clip to the reference "
                  "picture.", ""]
    for steps, rows in result.get("wide", {}).items():
        lines += [f"## 14B-wide random-weight DiT ({rows[0]['layers']} of 40 blocks), {steps} steps, one clip", "",
                  "| setting | forwards / clip | speed-up (forwards) | speed-up (wall) | rel. L2 of final latents vs exact |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['setting']}{' (= --fast)' if r.get('is_fast_preset') else ''} | {r['forwards_per_clip']} | {r['speedup_forwards']:.2f}x | {r['speedup_wall']:.2f}x | "
                  f"{r['rel_l2_latents']:.4f} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def is_preset(fields: dict) -> bool:
    base = RenderSettings()
    return dataclasses.replace(base, **fields) == apply_fast(base)


def refresh_preset_rows(result: dict) -> None:
    """Drop "fast preset" rows of an earlier preset, mark the rows that are today's --fast, and
    record their steps by kind per clip (bench_fast_speed.py prices them on the GPU)."""
    result["fast_mix"], result["fast_mix_fields"] = {}, dict(FAST_SAMPLING)
    for part in ("tiny", "wide"):
        for steps, rows in result.get(part, {}).items():
            rows[:] = [r for r in rows if r["setting"] != "fast preset" or is_preset(r.get("fields", {}))]
            for r in rows:
                r["is_fast_preset"] = is_preset(r.get("fields", CANDIDATES.get(r["setting"], {})))
                if part == "tiny" and r["is_fast_preset"] and r.get("step_kinds"):
                    result["fast_mix"][steps] = r["step_kinds"]


def write_report(result: dict, md: Path) -> None:
    kept = ""
    if md.exists():
        text = md.read_text()
        if KEEP_MARKER in text:
            kept = text[text.index(KEEP_MARKER):]
    md.write_text(markdown(result) + "\n" + (kept or KEEP_MARKER + "\n"))
    md.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=str(TINY))
    p.add_argument("--steps", type=int, nargs="+", default=[8, 40])
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--settings", nargs="+", default=list(CANDIDATES), help="names of CANDIDATES ('exact' first)")
    p.add_argument("--calibrate", action="store_true", help="only the calibration table")
    p.add_argument("--wide", action="store_true", help="also the 14B-wide random-weight DiT")
    p.add_argument("--wide-layers", type=int, default=2)
    p.add_argument("--no-tiny", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the JSON of earlier runs")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (tiny model in bf16; --wide-layers 40 fits)")
    p.add_argument("--out", default=str(OUT_MD))
    a = p.parse_args(argv)
    names = ["exact", *[n for n in a.settings if n != "exact"]]
    import platform

    machine = (torch.cuda.get_device_name() if a.device.startswith("cuda") else
               f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    this_run = {"argv": " ".join(sys.argv[1:] if argv is None else argv), "machine": f"{machine}, torch {torch.__version__}",
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    result: dict = {"runs": [], "samples": a.samples, "seconds": a.seconds, "size": a.size}
    out = Path(a.out)
    if out.with_suffix(".json").exists():  # keep parts of an earlier run that this one does not redo
        old = json.loads(out.with_suffix(".json").read_text())
        result["runs"] = old.get("runs") or [{k: old[k] for k in ("argv", "machine", "date") if k in old}]
        for key in ("calibration", "tiny", "wide", "samples", "seconds", "size"):
            if key in old:
                result[key] = old[key]
    if a.report_only:
        a.no_tiny, a.wide = True, False
    else:
        result["runs"].append(this_run)
    if not a.no_tiny:
        from tinymodel.evaluate import load_model

        model = load_model(a.ckpt, a.device)
        samples = heldout_samples(a.samples, a.seconds, a.size)
        if a.calibrate:
            result["calibration"] = calibrate(model, samples, a.steps, a.size)
        else:
            for s in a.steps:  # rows of settings not rerun now are kept from the earlier run
                new = tiny_table(model, samples, s, a.size, names)
                done = {r["setting"] for r in new}
                old = [r for r in result.get("tiny", {}).get(str(s), []) if r["setting"] not in done]
                result.setdefault("tiny", {})[str(s)] = new + old
    if a.wide:
        result["wide"] = {str(s): wide_table(a.wide_layers, s, names, torch.device(a.device)) for s in a.steps}
    refresh_preset_rows(result)
    write_report(result, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
