"""Markdown tables of ``bench_single_gpu.py`` results."""

from __future__ import annotations

import datetime as dt


def _f(x, fmt="{:.2f}"):
    return fmt.format(x) if isinstance(x, (int, float)) else ("—" if x is None else str(x))


def render(R: dict, steps: int, frames_per_clip: int, fps: int) -> str:
    mm, mm8 = R["matmul_bf16_tflops"], R["matmul_fp8_tflops"]
    lines = [
        f"# Single-GPU S2V DiT benchmark — {R['card']}",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; torch {R['torch']}, CUDA {R['cuda']}, "
        f"cuDNN {R['cudnn']}, Triton {R['triton']}; {R['layers']} blocks, random weights; "
        f"median of {R['repeats']} timed calls after a warm-up.",
        "",
        f"Ours: `{R.get('optimize', '')}`" + (f"; fp8: `{R['optimize_fp8']}`" if "optimize_fp8" in R else "")
        + (f"; fp8 attention: {R['fp8_attention']}" if "fp8_attention" in R else ""),
        "",
        "## Ceilings (same run)",
        "",
        "| what | TFLOP/s |",
        "|---|---|",
        f"| bf16 matmul 8192³ | {_f(mm, '{:.0f}')} |",
        f"| fp8 e4m3 `torch._scaled_mm` 8192³, row-wise scales | {_f(mm8, '{:.0f}')} |",
    ]
    for size, r in R["sizes"].items():
        at = r.get("attn_tflops", {})
        lines.append(f"| self-attention 1×40×{r['exact_b2']['seq_len']}×128 bf16 ({size}): SDPA cuDNN / SDPA flash / FA4 | "
                     f"{_f(at.get('cudnn'), '{:.0f}')} / {_f(at.get('flash'), '{:.0f}')} / {_f(at.get('fa4'), '{:.0f}')} |")
    lines += [
        "",
        "## Seconds per forward (one sample; CFG runs cond + uncond as one batch of 2 = 2 forwards)",
        "",
        "| size | tokens | official | ours exact (CFG batch 2) | ours exact, SDPA attention only (batch 2) "
        "| ours exact (batch 1) | ours fp8 (batch 2) | ours fp8 + fp8 attention (batch 2) "
        "| floor bf16 | floor fp8 | exact − floor | MFU exact / fp8 | peak GiB official / exact / fp8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, r in R["sizes"].items():
        c = r["cost"]
        att = _best_attention(r)
        floor = _floor(c, mm, att)
        floor8 = _floor(c, mm8, att)
        ex = r["exact_b2"]["s_per_forward"]
        f8 = r.get("fp8_b2", {}).get("s_per_forward")
        off = r.get("official", {})
        total = c["linear_flops"] + c["self_attn_flops"] + c["other_attn_flops"]
        mfu = lambda s, total=total: None if s is None or mm is None else total / s / (mm * 1e12)  # noqa: E731
        lines.append(
            f"| {size} | {c['tokens']} | {_f(off.get('s_per_forward'))} | {_f(ex)} | "
            f"{_f(r.get('exact_b2_sdpa', {}).get('s_per_forward'))} | "
            f"{_f(r.get('exact_b1', {}).get('s_per_forward'))} | {_f(f8)} | "
            f"{_f(r.get('fp8attn_b2', {}).get('s_per_forward'))} | {_f(floor)} | {_f(floor8)} | "
            f"{_f(None if floor is None else ex - floor)} | "
            f"{_f(mfu(ex), '{:.0%}')} / {_f(mfu(f8), '{:.0%}')} | {_f(off.get('peak_gib'), '{:.1f}')} / "
            f"{_f(r['exact_b2']['peak_gib'], '{:.1f}')} / {_f(r.get('fp8_b2', {}).get('peak_gib'), '{:.1f}')} |")
    lines += ["", "FLOPs per forward (one sample): " + "; ".join(
        f"{size}: linear {r['cost']['linear_flops'] / 1e15:.3f} P, self-attention {r['cost']['self_attn_flops'] / 1e15:.3f} P, "
        f"text + audio attention {r['cost']['other_attn_flops'] / 1e15:.3f} P" for size, r in R["sizes"].items()),
        "MFU = those FLOPs / time / measured bf16 matmul rate. Floor = linear FLOPs / matmul rate + attention "
        "FLOPs / fastest measured attention rate (cuDNN or FA4, above)."]
    lines += ["", "## Accuracy", "", "| size | what | value |", "|---|---|---|"]
    for size, r in R["sizes"].items():
        if "exact_vs_reference_rel_err" in r:
            lines.append(f"| {size} | exact (fused kernels) vs torch reference glue, flow prediction, rel L2 | "
                         f"{r['exact_vs_reference_rel_err']:.2e} |")
            lines.append(f"| {size} | CFG batch of 2 vs batch 1, same sample, rel L2 | {r['exact_b2_vs_b1_rel_err']:.2e} |")
        if "exact_fa4_vs_sdpa_rel_err" in r:
            lines.append(f"| {size} | exact with FA4 vs with SDPA (cuDNN) attention, flow prediction, rel L2 | "
                         f"{r['exact_fa4_vs_sdpa_rel_err']:.2e} |")
        if "fp8attn_flow_rel_err" in r:
            lines.append(f"| {size} | fp8 linears + fp8 attention vs exact, flow prediction, rel L2 | "
                         f"{r['fp8attn_flow_rel_err']:.2e} |")
            lines.append(f"| {size} | fp8 linears + fp8 attention vs exact, x0 = x − σv, PSNR | "
                         f"{r['fp8attn_x0_psnr_db']:.1f} dB |")
        if "fp8_flow_rel_err" in r:
            lines.append(f"| {size} | fp8 vs exact, flow prediction, rel L2 | {r['fp8_flow_rel_err']:.2e} |")
            lines.append(f"| {size} | fp8 vs exact, flow prediction, PSNR (peak = range of the exact one) | "
                         f"{r['fp8_flow_psnr_db']:.1f} dB |")
            lines.append(f"| {size} | fp8 vs exact, predicted clean latent x0 = x − σv, PSNR | "
                         f"{r['fp8_x0_psnr_db']:.1f} dB |")
    if "reference" in R:
        ref = R["reference"]
        lines.append(f"| {next(iter(R['sizes']))} | torch reference glue, batch 1: s / forward (for scale) | "
                     f"{ref['s_per_forward']:.2f} |")
    if "vae" in R:
        v = R["vae"]
        size = next(iter(R["sizes"]))
        lines += ["", f"## VAE at {size} (random weights; seconds)", "",
                  "| op | fp32 | bf16 |", "|---|---|---|"]
        for op, what in (("decode39", "decode 39 latents (19 motion + 20 new: what each clip does)"),
                         ("decode20", "decode the 20 new latents only"),
                         ("encode73", "encode 73 motion frames (hand-off)")):
            lines.append(f"| {what} | {v[op + '_float32']:.2f} | {v[op + '_bfloat16']:.2f} |")
        lines.append(f"| peak GiB | {v['peak_gib_float32']:.1f} | {v['peak_gib_bfloat16']:.1f} |")
        lines.append(f"\nbf16 vs fp32 decode of the same latents: PSNR {v['bf16_vs_fp32_decode_psnr_db']:.1f} dB "
                     "(random weights: indicative of bf16 rounding only).")
        r = R["sizes"][size]
        per_fwd = r["exact_b2"]["s_per_forward"]
        dit = 2 * steps * per_fwd + r["exact_b2"]["prepare_s"]
        secs = frames_per_clip / fps
        lines += ["", f"## Per clip at {size} ({steps} steps × CFG = {2 * steps} forwards, {secs:.0f} s of video)", "",
                  "| configuration | s / clip | GPU-s per s of video |", "|---|---|---|"]
        rows = [("ours exact, VAE fp32 (pipeline default)", dit + v["decode39_float32"] + v["encode73_float32"]),
                ("ours exact, VAE bf16", dit + v["decode39_bfloat16"] + v["encode73_bfloat16"])]
        if "fp8_b2" in r:
            dit8 = 2 * steps * r["fp8_b2"]["s_per_forward"] + r["fp8_b2"]["prepare_s"]
            rows.append(("ours fp8, VAE bf16", dit8 + v["decode39_bfloat16"] + v["encode73_bfloat16"]))
        if "official" in r:
            rows.append(("official, VAE fp32", 2 * steps * r["official"]["s_per_forward"] + v["decode39_float32"]
                         + v["encode73_float32"]))
        lines += [f"| {name} | {t:.0f} | {t / secs:.1f} |" for name, t in rows]
    lines += _profiles(R)
    lines += ["", "## Attention backend picked per shape", ""]
    for dev, shapes in R.get("attention_choices", {}).items():
        lines += [f"- {dev}: {shape} → {b}" for shape, b in shapes.items()]
    return "\n".join(lines) + "\n"


def _profiles(R: dict) -> list[str]:
    """Kernel time per sample by group, next to what the measured ceilings allow for it."""
    size = next(iter(R["sizes"]), None)
    profs = {k.removeprefix("profile_"): v for k, v in R.items() if k.startswith("profile_")}
    if not profs or size is None:
        return []
    r = R["sizes"][size]
    c = r["cost"]
    att = _best_attention(r)
    floors = {"matmul": c["linear_flops"] / (R["matmul_bf16_tflops"] * 1e12) if R["matmul_bf16_tflops"] else None,
              "attention": (c["self_attn_flops"] + c["other_attn_flops"]) / (att * 1e12)
              if isinstance(att, float) else None}
    groups = sorted({g for p in profs.values() for g in p["seconds_by_group"]})
    lines = ["", f"## Where the time goes at {size}: CUDA kernel seconds per sample (one forward call profiled)", "",
             "| kernel group | " + " | ".join(profs) + " | floor (bf16 ceilings) |",
             "|---|" + "---|" * (len(profs) + 1)]
    for g in groups:
        cells = [_f(p["seconds_by_group"].get(g, 0.0) / p["batch"], "{:.3f}") for p in profs.values()]
        lines.append(f"| {g} | " + " | ".join(cells) + f" | {_f(floors.get(g), '{:.3f}')} |")
    totals = [_f(sum(p["seconds_by_group"].values()) / p["batch"], "{:.3f}") for p in profs.values()]
    lines.append("| total | " + " | ".join(totals) + " | |")
    return lines


def _best_attention(r: dict) -> float | None:
    """The fastest measured self-attention rate of one size (TFLOP/s), None if none measured."""
    rates = [v for v in r.get("attn_tflops", {}).values() if isinstance(v, float)]
    return max(rates) if rates else None


def _floor(c: dict, mm: float | None, att: float | None) -> float | None:
    if att is None or mm is None:
        return None
    return c["linear_flops"] / (mm * 1e12) + (c["self_attn_flops"] + c["other_attn_flops"]) / (att * 1e12)
