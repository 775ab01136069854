"""Model construction for ``bench_parallel.py``: ours and the official ``WanModel_S2V``, both with
random weights, built on the meta device and materialised on the target device (a 14B model is
never initialised on the CPU).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path


def random_init_(model, seed: int) -> None:
    """Fill every parameter with scaled noise (in place, on its device)."""
    import torch

    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in ** -0.5, generator=g)
            elif "norm" in name:
                p.normal_(1.0, 0.05, generator=g)
            else:
                p.normal_(0.0, 0.05, generator=g)


def build_ours(cfg, device, dtype):
    import torch

    from render.model.dit.model import S2VDiT

    with torch.device("meta"):
        m = S2VDiT(cfg)
    m = m.to(dtype=dtype).to_empty(device=device)
    random_init_(m, 0)
    return m.eval()


def import_official(root: Path):
    """WanModel_S2V and sp_attn_forward_s2v from a local copy of the official repository."""
    import importlib

    import torch
    import torch.nn.functional as F

    wan = root / "wan"
    if not (wan / "modules" / "s2v" / "model_s2v.py").is_file():
        raise FileNotFoundError(f"{root}: not a Wan2.2 checkout (wan/modules/s2v/model_s2v.py missing)")
    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: 0  # wan/modules/t5.py default argument (never imported)
    for name, path in [("wan", wan), ("wan.modules", wan / "modules"), ("wan.modules.s2v", wan / "modules/s2v")]:
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
    mods = [importlib.import_module(n) for n in ("wan.modules.attention", "wan.modules.model",
                                                 "wan.modules.s2v.model_s2v", "wan.modules.s2v.motioner",
                                                 "wan.distributed.ulysses")]

    def sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None,
                             q_scale=None, causal=False, window_size=(-1, -1), deterministic=False,
                             dtype=torch.bfloat16, version=None):
        # The official varlen call with k_lens, on SDPA (one sample per call, as flash varlen does).
        half = (torch.float16, torch.bfloat16)
        out_dtype = q.dtype
        cast = (lambda x: x if x.dtype in half else x.to(dtype)) if q.is_cuda else (lambda x: x)
        outs = []
        for i in range(q.size(0)):
            kl = k.size(1) if k_lens is None else int(k_lens[i])
            qi = cast(q[i]) if q_scale is None else cast(q[i] * q_scale)
            o = F.scaled_dot_product_attention(qi.transpose(0, 1)[None], cast(k[i, :kl]).transpose(0, 1)[None],
                                               cast(v[i, :kl]).transpose(0, 1)[None], scale=softmax_scale)
            outs.append(o[0].transpose(0, 1))
        return torch.stack(outs).to(out_dtype)

    for m in mods:
        if hasattr(m, "flash_attention"):
            m.flash_attention = sdpa_flash_attention
    s2v = sys.modules["wan.modules.s2v.model_s2v"]
    return s2v.WanModel_S2V, s2v.sp_attn_forward_s2v


def build_official(root: Path, cfg, device, dtype):
    import torch

    WanModel_S2V, sp_attn = import_official(root)
    kwargs = {k: v for k, v in cfg.to_json_dict().items() if k != "_class_name"}
    with torch.device("meta"):
        m = WanModel_S2V(**kwargs)
    m = m.to(dtype=dtype).to_empty(device=device)
    # Plain tensor attributes (RoPE tables, FramePack buckets) are made on the meta device too:
    # take them from a one-block CPU copy (they depend on the head size only).
    small = WanModel_S2V(**dict(kwargs, dim=cfg.head_dim * 2, num_heads=2, ffn_dim=8, num_layers=1,
                                audio_inject_layers=[0], audio_dim=8))
    small_mods = dict(small.named_modules())
    for name, mod in m.named_modules():
        for attr, val in list(vars(mod).items()):
            if isinstance(val, torch.Tensor) and val.is_meta and name in small_mods:
                setattr(mod, attr, getattr(small_mods[name], attr))
    random_init_(m, 0)
    return m.eval(), sp_attn


def enable_official_sp(model, sp_attn, float32_smoke: bool = False) -> None:
    """What the official pipeline does for --ulysses_size N (wan/speech2video.py).

    float32_smoke (CPU only): its Ulysses attention returns bf16 whatever the model dtype, which
    only bf16 CUDA autocast absorbs; cast the result back so a float32 CPU run works.
    """
    for blk in model.blocks:
        blk.self_attn.forward = types.MethodType(sp_attn, blk.self_attn)
    model.use_context_parallel = True
    if float32_smoke:
        s2v = sys.modules["wan.modules.s2v.model_s2v"]
        inner = s2v.distributed_attention
        s2v.distributed_attention = lambda *a, **k: inner(*a, **k).float()
