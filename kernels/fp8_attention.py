"""Opt-in fp8 self-attention: cuDNN's fp8 flash attention on Hopper and newer, per-tensor scales.

Why: with fp8 linear layers the self-attention is ~58 % of a forward at 480x832 (bf16 FA4 on an
H100: 1.5 of 2.65 s per sample), so the fp8 mode's speed target needs attention in fp8 too.
Like fp8 linears it changes numbers and is never on by default (``optimize_dit(fp8_attention=True)``,
``s2v render --fp8-attention``); its error is measured by ``benchmarks/bench_single_gpu.py``.

Numerics (what cuDNN's ``sdpa_fp8`` forward computes, modelled by :func:`fp8_attention_reference`):

* q, k, v -> e4m3 with one scale each: ``x8 = e4m3(x * 448 / amax|x|)``; the descale ``amax / 448``
  goes to the kernel as a device tensor (no host sync).
* ``S = (q8 k8^T) * dq * dk / sqrt(D)``; ``P = exp(S - rowmax)`` in fp32, quantised as
  ``e4m3(P * 448)`` for the second matmul (``descale_s = 1/448``); the row sums stay fp32.
* ``O = (P8 v8) * dv / 448 / rowsum``, written as bf16 on Blackwell; on Hopper cuDNN (9.19) writes
  only e4m3 ("sdpa fp8 forward with HALF/BFLOAT16 output is only supported on Blackwell"), so O is
  quantised once more with ``scale_o = 448 / amax|v|`` (a bound: every O row is a convex mix of v
  rows) and dequantised here. The error is mostly the e4m3 q, k, P themselves: at unit-variance
  logits (B=2, H=40, D=128) the float32 model is 5.3 % (relative L2) from exact attention with bf16
  output and 6.0 % with e4m3 output (``out_fp8``); cuDNN on an H100 measured 6.0 %.

On CPU (and wherever ``cudnn`` is missing) :class:`Fp8SelfAttention` refuses to build unless
``reference_ok`` is set, which runs the reference: that is what tests and CPU error measurements use.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

E4M3_MAX = 448.0
FP8 = torch.float8_e4m3fn


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 tensor of x's layout, float32 descale [1, 1, 1, 1] = amax / 448) - device-side only."""
    amax = x.abs().amax().float().clamp_min(1e-12)
    x8 = (x * (E4M3_MAX / amax)).to(FP8)
    return x8, (amax / E4M3_MAX).view(1, 1, 1, 1)


def fp8_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out_fp8: bool = False) -> torch.Tensor:
    """The fp8 attention's arithmetic in float32 torch ops, [B, L, H, D] -> q's dtype.

    ``out_fp8``: O rounded to e4m3 at ``scale_o = 448 / amax|v|`` as the Hopper engine writes it.
    Materialises the [B, H, Lq, Lk] score matrix: for tests and small shapes only.
    """
    q8, dq = quantize_per_tensor(q)
    k8, dk = quantize_per_tensor(k)
    v8, dv = quantize_per_tensor(v)
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q8, k8, v8))  # [B, H, L, D]
    s = (qf @ kf.transpose(-1, -2)) * (dq * dk).view(()) / math.sqrt(q.shape[-1])
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    row_sum = p.sum(dim=-1, keepdim=True)
    p8 = (p * E4M3_MAX).to(FP8).float()
    out = (p8 @ vf) * (dv.view(()) / E4M3_MAX) / row_sum
    if out_fp8:
        out = (out / dv.view(())).to(FP8).float() * dv.view(())
    return out.transpose(1, 2).to(q.dtype)


def cudnn_fp8_status(device: torch.device | str = "cuda") -> tuple[bool, str]:
    """(usable, why) for cuDNN's fp8 SDPA through ``nvidia-cudnn-frontend`` on ``device``."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, f"{device}: not a CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        return False, f"{torch.cuda.get_device_name(device)} is sm{major}{minor}: cuDNN fp8 attention needs sm90+"
    try:
        import cudnn  # noqa: F401  (nvidia-cudnn-frontend)
    except Exception as exc:
        return False, f"nvidia-cudnn-frontend not importable ({type(exc).__name__}: {str(exc)[:80]})"
    return True, f"cuDNN frontend {getattr(cudnn, '__version__', '?')}, backend {cudnn.backend_version()}"


@dataclass
class _Plan:
    graph: object
    tensors: dict  # name -> graph tensor (only the ones the graph reads or writes)
    workspace: int
    out_fp8: bool
    variant: str  # what was asked of cuDNN, for the log and the benchmark


# Graph variants, tried in order until cuDNN builds one: (e4m3 output, amax of S as an output, amax
# of O as an output). cuDNN >= 9.2x documents amax_s as deprecated: declaring it an output restricts
# the graph to the older backend engines, so the first variants leave it virtual.
_VARIANTS = ((False, False, False), (False, False, True), (False, True, True), (True, False, True),
             (True, True, True))


class Fp8SelfAttention:
    """``attn(q, k, v)`` for [B, L, H, D] bf16 tensors through cuDNN's fp8 flash attention.

    One cuDNN graph per shape, built at its first call (bf16 output; e4m3 output + dequantisation
    where the engine offers only that) and kept. ``reference_ok=True`` runs
    :func:`fp8_attention_reference` where cuDNN cannot be used (CPU tests, error measurements).
    """

    def __init__(self, reference_ok: bool = False) -> None:
        self.reference_ok = reference_ok
        self._plans: dict[tuple, _Plan] = {}
        self._handles: dict[int, object] = {}
        self._status: dict[torch.device, tuple[bool, str]] = {}  # decided once per device
        self._consts: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.device not in self._status:
            self._status[q.device] = cudnn_fp8_status(q.device) if q.is_cuda else (False, "not on a CUDA device")
        ok, why = self._status[q.device]
        if not ok:
            if self.reference_ok:
                return fp8_attention_reference(q, k, v)
            raise RuntimeError(f"fp8 attention: {why}")
        return self._cudnn(q, k, v)

    def plans(self) -> list[dict]:
        """The cuDNN graphs built so far: q shape, variant (output type, amax outputs), e4m3 output."""
        return [{"q": key[1], "k": key[2], "variant": p.variant, "out_fp8": p.out_fp8} for key, p in self._plans.items()]

    # -- cuDNN -----------------------------------------------------------------------------------
    def _handle(self, device: torch.device):
        import cudnn

        idx = device.index if device.index is not None else torch.cuda.current_device()
        if idx not in self._handles:
            with torch.cuda.device(idx):
                self._handles[idx] = cudnn.create_handle()
        handle = self._handles[idx]
        cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
        return handle

    def _plan(self, q: torch.Tensor, k: torch.Tensor, out_dtype: torch.dtype, handle) -> _Plan:
        key = (q.device, tuple(q.shape), tuple(k.shape), out_dtype)
        if key in self._plans:
            return self._plans[key]
        errors = []
        for out_fp8, amax_s, amax_o in _VARIANTS:
            try:
                plan = _build_plan(q, k, out_dtype, handle, out_fp8, amax_s, amax_o)
            except Exception as exc:  # cuDNN reports unsupported configurations by raising
                errors.append(f"{_variant_name(out_fp8, amax_s, amax_o, out_dtype)}: {str(exc).splitlines()[0][:160]}")
                continue
            log.info("fp8 attention: cuDNN graph for q %s k %s: %s, workspace %d B", tuple(q.shape),
                     tuple(k.shape), plan.variant, plan.workspace)
            if errors:
                log.info("fp8 attention: variants cuDNN refused first: %s", "; ".join(errors))
            self._plans[key] = plan
            return plan
        raise RuntimeError("fp8 attention: cuDNN has no fp8 SDPA plan for q "
                           f"{tuple(q.shape)}, k {tuple(k.shape)}: " + "; ".join(errors))

    def _cudnn(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.contiguous() for t in (q, k, v))
        return self.attend_quantized(*quantize_per_tensor(q), *quantize_per_tensor(k), *quantize_per_tensor(v),
                                     out_dtype=q.dtype)

    def attend_quantized(self, q8: torch.Tensor, dq: torch.Tensor, k8: torch.Tensor, dk: torch.Tensor,
                         v8: torch.Tensor, dv: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The cuDNN kernel alone on e4m3 [B, L, H, D] tensors and their descales (what the benchmark
        times apart from the quantisation)."""
        handle = self._handle(q8.device)
        plan = self._plan(q8, k8, out_dtype, handle)
        dev = q8.device
        if dev not in self._consts:  # (1, 1/448, 448) as the kernel's [1, 1, 1, 1] float32 inputs
            one = torch.ones(1, 1, 1, 1, device=dev)
            self._consts[dev] = (one, one / E4M3_MAX, one * E4M3_MAX)
        one, descale_s, scale_s = self._consts[dev]
        scale_o = (1.0 / dv) if plan.out_fp8 else one  # O <= amax|v| = 448 * dv
        out = torch.empty(q8.shape, device=dev, dtype=FP8 if plan.out_fp8 else out_dtype)
        t = plan.tensors
        pack = {t["q"]: q8, t["k"]: k8, t["v"]: v8, t["o"]: out,
                t["descale_q"]: dq, t["descale_k"]: dk, t["descale_v"]: dv,
                t["descale_s"]: descale_s, t["scale_s"]: scale_s, t["scale_o"]: scale_o}
        for name in ("amax_s", "amax_o"):  # written by the kernel, never read here
            if name in t:
                pack[t[name]] = torch.empty(1, 1, 1, 1, device=dev)
        workspace = torch.empty(max(plan.workspace, 1), device=dev, dtype=torch.uint8)
        plan.graph.execute(pack, workspace, handle=handle)  # the frontend (1.32) takes torch's float8 tensors
        if plan.out_fp8:
            return (out.float() * dv.view(())).to(out_dtype)
        return out


def _variant_name(out_fp8: bool, amax_s: bool, amax_o: bool, dtype: torch.dtype) -> str:
    outs = [n for n, on in (("amax S", amax_s), ("amax O", amax_o)) if on]
    return (f"{'e4m3' if out_fp8 else str(dtype).replace('torch.', '')} output"
            + (f" + {', '.join(outs)}" if outs else ""))


def _build_plan(q: torch.Tensor, k: torch.Tensor, out_dtype: torch.dtype, handle, out_fp8: bool,
                amax_s_out: bool, amax_o_out: bool) -> _Plan:
    import cudnn

    b, lq, h, d = q.shape
    lk = k.shape[1]
    # Our [B, L, H, D] memory seen as cuDNN's [B, H, L, D] with strides (no transposes).
    dims = lambda n: [b, h, n, d]  # noqa: E731
    strides = lambda n: [n * h * d, d, h * d, 1]  # noqa: E731
    g = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
                      compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    t = {}
    for name, n in (("q", lq), ("k", lk), ("v", lk)):
        t[name] = g.tensor(name=name, dim=dims(n), stride=strides(n), data_type=cudnn.data_type.FP8_E4M3)
    for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"):
        t[name] = g.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.FLOAT)
    kwargs = dict(q=t["q"], k=t["k"], v=t["v"], descale_q=t["descale_q"], descale_k=t["descale_k"],
                  descale_v=t["descale_v"], descale_s=t["descale_s"], scale_s=t["scale_s"], scale_o=t["scale_o"],
                  attn_scale=1.0 / math.sqrt(d))
    try:
        o, _stats, amax_s, amax_o = g.sdpa_fp8(generate_stats=False, **kwargs)
    except TypeError:  # older frontends name it is_inference
        o, _stats, amax_s, amax_o = g.sdpa_fp8(is_inference=True, **kwargs)
    out_type = cudnn.data_type.FP8_E4M3 if out_fp8 else (
        cudnn.data_type.BFLOAT16 if out_dtype == torch.bfloat16 else cudnn.data_type.HALF)
    o.set_output(True).set_dim(dims(lq)).set_stride(strides(lq)).set_data_type(out_type)
    t["o"] = o
    for name, a, on in (("amax_s", amax_s, amax_s_out), ("amax_o", amax_o, amax_o_out)):
        if on:
            a.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
            t[name] = a
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return _Plan(g, t, int(g.get_workspace_size()), out_fp8, _variant_name(out_fp8, amax_s_out, amax_o_out, out_dtype))
