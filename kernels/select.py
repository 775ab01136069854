"""Install the fastest exact kernels (and, on request, fp8 linears) on a built S2V DiT.

``optimize_dit(dit, device)`` is called once after the model is built and loaded. It decides
everything at that point and logs it: the attention backend order for the device (each shape is
still checked at its first use, see ``kernels.attention``), the fused Triton glue when the model
sits on a CUDA device with Triton (checked against the torch reference on small tensors before it
is installed), and fp8 linears when ``fp8=True`` on a GPU that has fp8 tensor cores. On CPU it
installs nothing: the model keeps the plain torch reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from kernels import attention
from kernels.fp8 import FP8Linear, convert_linears_to_fp8, scaled_mm_supported
from kernels.glue import FusedGlue
from kernels.norms import residual_layer_norm, residual_layer_norm_reference
from kernels.rope import rms_norm_rope, rms_norm_rope_reference
from kernels.triton_support import triton_status

log = logging.getLogger(__name__)

# Linear layers converted in fp8 mode: everything of the blocks and audio injectors that runs on
# every token at every forward. The text K/V projections run once per clip and stay bf16.
FP8_BLOCK_LINEARS = (("self_attn", "q"), ("self_attn", "k"), ("self_attn", "v"), ("self_attn", "o"),
                     ("cross_attn", "q"), ("cross_attn", "o"), ("ffn", "0"), ("ffn", "2"))
FP8_INJECTOR_LINEARS = ("q", "o")


@dataclass
class OptimizationReport:
    device: str
    attention: str
    glue: str
    fp8: str
    fp8_attention: str = "off"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.device}: attention {self.attention}; glue {self.glue}; fp8 linears {self.fp8}"
        return text + (f"; fp8 self-attention {self.fp8_attention}" if self.fp8_attention != "off" else "")


def _attention_modules(dit: nn.Module) -> list[nn.Module]:
    mods = []
    for blk in dit.blocks:
        mods += [blk, blk.self_attn, blk.cross_attn]
    mods += list(dit.audio_injector.injector)
    return mods


def _glue_self_test(device: torch.device) -> str | None:
    """Run each fused kernel once on small random tensors against the torch reference;
    returns a problem description or None."""
    g = torch.Generator(device=device).manual_seed(0)
    b, n, d = 2, 37, 320

    def rnd(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)

    x, y = rnd(b, n, d), rnd(b, n, d, dtype=torch.bfloat16)
    gate, a, sh = rnd(b, 2, d), rnd(b, 2, d), rnd(b, 2, d)
    got = residual_layer_norm(x, y, gate, n_first=20, a=a, b=sh, eps=1e-6, out_dtype=torch.bfloat16)
    ref = residual_layer_norm_reference(x, y, gate, n_first=20, a=a, b=sh, eps=1e-6, out_dtype=torch.bfloat16)
    problems = []
    if attention.relative_error(got[0], ref[0]) > 1e-6 or attention.relative_error(got[1], ref[1]) > 1e-2:
        problems.append("residual_layer_norm")
    q = rnd(b, n, d, dtype=torch.bfloat16)
    w = 1 + 0.1 * rnd(d, dtype=torch.bfloat16)
    cos, sin = rnd(n, 16), rnd(n, 16)
    if attention.relative_error(rms_norm_rope(q, w, 1e-6, cos, sin), rms_norm_rope_reference(q, w, 1e-6, cos, sin)) > 1e-2:
        problems.append("rms_norm_rope")
    return ", ".join(problems) + " disagree with the torch reference" if problems else None


def optimize_dit(dit: nn.Module, device: torch.device | str | None = None, fp8: bool = False,
                 fp8_attention: bool = False, fp8_to_device: bool = False) -> OptimizationReport:
    """Install the kernels chosen for ``device`` (default: where the DiT's weights are) on ``dit``.

    ``fp8_to_device``: the DiT is still in host memory; each converted linear is quantised on
    ``device`` and stays there (the caller moves the rest). Converting a DiT already on the card
    frees its bf16 weights between the new fp8 ones, leaving ~15 GB of holes at 14B sized for
    weights; from host memory the fp8 weights are allocated back to back (19.4 GiB on an H100 for
    the 14B DiT and both VAEs of bench_fast_speed).

    ``fp8_attention``: the self-attention through cuDNN's fp8 flash attention (sm90+, needs
    nvidia-cudnn-frontend; on CPU its float32 model, for error measurements); changes numbers."""
    device = torch.device(device) if device is not None else dit.patch_embedding.weight.device
    attention.choose_backend(device)
    att = attention.device_choice(device)
    report = OptimizationReport(str(device), " > ".join(att.order), "torch reference", "off")
    if device.type == "cuda":
        ok, why = triton_status()
        problem = _glue_self_test(device) if ok else why
        if problem is None:
            linear_dtype = dit.blocks[0].self_attn.q.weight.dtype if isinstance(
                dit.blocks[0].self_attn.q, nn.Linear) else torch.bfloat16
            for m in _attention_modules(dit):
                if not isinstance(m.glue, FusedGlue):
                    m.glue = FusedGlue(m.glue, linear_dtype)
            report.glue = f"fused Triton ({why})"
        else:
            report.glue = f"torch reference ({problem})"
    if fp8:
        report.fp8 = _install_fp8(dit, device, report, to_device=fp8_to_device)
    if fp8_attention:
        report.fp8_attention = _install_fp8_attention(dit, device)
    log.info("optimize_dit: %s", report.describe())
    return report


def use_reference_glue(dit: nn.Module) -> None:
    """Undo the fused glue of :func:`optimize_dit` (the torch reference again; fp8 linears stay)."""
    for m in _attention_modules(dit):
        if isinstance(m.glue, FusedGlue):
            m.glue = m.glue.reference


def _install_fp8(dit: nn.Module, device: torch.device, report: OptimizationReport, to_device: bool = False) -> str:
    if device.type == "cuda" and not scaled_mm_supported(device.index or 0):
        cap = torch.cuda.get_device_capability(device)
        raise ValueError(f"fp8 mode needs fp8 tensor cores (compute capability >= 8.9); {device} has "
                         f"{cap[0]}.{cap[1]}: run without fp8")
    targets: list[tuple[nn.Module, str]] = []
    for blk in dit.blocks:
        for mod, name in FP8_BLOCK_LINEARS:
            targets.append((getattr(blk, mod), name))
    for inj in dit.audio_injector.injector:
        targets += [(inj, name) for name in FP8_INJECTOR_LINEARS]
    n = convert_linears_to_fp8(targets, device if to_device else None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        report.notes.append("fp8 on CPU runs the dequantised float32 reference (for error measurements)")
    total = sum(1 for m in dit.modules() if isinstance(m, FP8Linear))
    return f"{n} layers converted ({total} in the model; per-channel weight, per-token activation scales)"


def _install_fp8_attention(dit: nn.Module, device: torch.device) -> str:
    """Swap every block's self-attention for the fp8 one, after checking it on a small shape."""
    from kernels.fp8_attention import Fp8SelfAttention, cudnn_fp8_status, fp8_attention_reference

    if device.type != "cuda":
        dit.set_attention(self_attn=Fp8SelfAttention(reference_ok=True))
        return "float32 model of cuDNN's fp8 attention (CPU: for error measurements)"
    ok, why = cudnn_fp8_status(device)
    if not ok:
        raise ValueError(f"fp8 attention is not available: {why}; run without it, or pip install nvidia-cudnn-frontend")
    attn = Fp8SelfAttention()
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, 256, 2, 128, generator=g, device=device).bfloat16() for _ in range(3))
    out = attn(q, k, v)
    plan = attn.plans()[-1]
    err = attention.relative_error(out, fp8_attention_reference(q, k, v, out_fp8=plan["out_fp8"]))
    if not err < 5e-2:
        raise ValueError(f"fp8 attention: cuDNN disagrees with its float32 model (rel err {err:.2e}); run without it")
    if plan["out_fp8"]:
        log.warning("fp8 attention: ~6 %% error per attention call (e4m3 q, k, P and, on this GPU, e4m3 output); "
                    "measured on an H100 with fp8 linears: 21-27 %% flow error for 2-7 %% speed")
    dit.set_attention(self_attn=attn)
    return f"cuDNN fp8 SDPA ({why}; {plan['variant']}; self-test rel err {err:.1e} against its float32 model)"
