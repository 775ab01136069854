"""Self-attention at the 14B DiT's shapes: bf16 (cuDNN SDPA, FlashAttention-4 if installed) against
cuDNN's fp8 attention (kernels/fp8_attention.py), speed and error, one GPU.

    python benchmarks/bench_fp8_attention.py [--tokens 35074,63360] [--batch 2] [--out-dir DIR]

Times are CUDA-event medians; "fp8 total" includes the per-tensor quantisation of q, k, v (what the
model pays), "fp8 kernel" the cuDNN graph alone. TFLOP/s count 4 B H L^2 D for every column, so the
fp8 rates are bf16-equivalent. Errors: relative L2 against float32 attention on the first 256 query
rows (all keys), and against the float32 model of the fp8 arithmetic.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_tools import median, time_cuda  # noqa: E402
from benchmarks.bench_tools import relative_error as rel  # noqa: E402
from kernels import attention as A  # noqa: E402
from kernels.fp8_attention import (  # noqa: E402
    Fp8SelfAttention,
    cudnn_fp8_status,
    fp8_attention_reference,
    quantize_per_tensor,
)


def qkv(b: int, n: int, h: int, d: int, logit_scale: float, device) -> tuple[torch.Tensor, ...]:
    """Unit-variance k, v; q scaled so that q.k/sqrt(D) has std ``logit_scale`` (RMS-normed q/k in
    the DiT give logits of a few units)."""
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(b, n, h, d, device=device, generator=g) * logit_scale
    k = torch.randn(b, n, h, d, device=device, generator=g)
    v = torch.randn(b, n, h, d, device=device, generator=g)
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def measure(fp8: Fp8SelfAttention, n: int, args, dev: torch.device) -> dict:
    """Times and errors at one sequence length (tensors are freed on return)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, d = args.batch, args.heads, args.head_dim
    flops = 4 * b * h * n * n * d
    q, k, v = qkv(b, n, h, d, 1.0, dev)
    row = {"tokens": n, "batch": b}
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

    def cudnn_bf16():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)

    row["cudnn_bf16_ms"] = 1e3 * median(time_cuda(cudnn_bf16, args.repeats))
    if A.fa4_status()[0]:
        from flash_attn.cute import flash_attn_func

        row["fa4_bf16_ms"] = 1e3 * median(time_cuda(lambda: flash_attn_func(q, k, v)[0], args.repeats))
    row["fp8_total_ms"] = 1e3 * median(time_cuda(lambda: fp8(q, k, v), args.repeats))
    plan = next(p for p in fp8.plans() if p["q"] == tuple(q.shape))
    row["fp8_variant"], out_fp8 = plan["variant"], plan["out_fp8"]
    quant = [*quantize_per_tensor(q), *quantize_per_tensor(k), *quantize_per_tensor(v)]
    row["fp8_kernel_ms"] = 1e3 * median(time_cuda(lambda: fp8.attend_quantized(*quant), args.repeats))
    row["quantize_qkv_ms"] = 3e3 * median(time_cuda(lambda: quantize_per_tensor(q), args.repeats))
    for key in [c for c in row if c.endswith("_ms") and c != "quantize_qkv_ms"]:
        row[key.replace("_ms", "_tflops")] = flops / (row[key] / 1e3) / 1e12
    for scale in (float(x) for x in args.logit_scale.split(",")):
        qs = (q.float() * scale).bfloat16()
        out = fp8(qs, k, v)
        m = 256
        exact = A.attention_reference(qs[:, :m], k, v)
        model = fp8_attention_reference(qs[:, :m], k, v, out_fp8=out_fp8)
        row[f"rel_err_vs_exact@{scale:g}"] = rel(out[:, :m], exact)
        row[f"rel_err_vs_model@{scale:g}"] = rel(out[:, :m], model)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="35074,63360", help="self-attention lengths (480x832, 704x1024 clips)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--logit-scale", default="1,3", help="std of the attention logits to test errors at")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not torch.cuda.is_available():
        print("bench_fp8_attention: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    ok, why = cudnn_fp8_status(dev)
    R = {"card": torch.cuda.get_device_name(dev), "torch": torch.__version__, "cudnn_fp8": why,
         "fa4": A.fa4_status()[1], "rows": []}
    print(f"# {R['card']}, torch {R['torch']}; cuDNN fp8: {why}; FA4: {R['fa4']}")
    if not ok:
        print("no cuDNN fp8 attention here:", why)
        return 1
    fp8 = Fp8SelfAttention()
    for n in (int(x) for x in args.tokens.split(",")):
        row = measure(fp8, n, args, dev)
        R["rows"].append(row)
        print(json.dumps(row))
        torch.cuda.empty_cache()
    cols = [("cudnn_bf16", "cuDNN bf16"), ("fa4_bf16", "FA4 bf16"), ("fp8_kernel", "cuDNN fp8 kernel"),
            ("fp8_total", "cuDNN fp8 + quantisation")]
    print("\n| B x L | " + " | ".join(f"{c} ms (TFLOP/s)" for _, c in cols) + " | quant q,k,v ms | variant | rel err vs exact |")
    print("|---" * (len(cols) + 4) + "|")
    for r in R["rows"]:
        cells = [f"{r[k + '_ms']:.1f} ({r[k + '_tflops']:.0f})" if k + "_ms" in r else "-" for k, _ in cols]
        errs = ", ".join(f"{k.split('@')[1]}: {v:.3f}" for k, v in r.items() if k.startswith("rel_err_vs_exact"))
        print(f"| {r['batch']} x {r['tokens']} | " + " | ".join(cells)
              + f" | {r['quantize_qkv_ms']:.2f} | {r['fp8_variant']} | {errs} |")
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.out_dir) / "fp8_attention.json").write_text(json.dumps(R, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
