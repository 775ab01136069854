"""Run the official ``WanModel_S2V`` from a local copy of the Wan2.2 repository, for side-by-side
timing. Nothing of that repository is copied here; it is imported from the path given.

Two things differ from an official run, both as in the published official measurements: the repository's
package ``__init__`` files (which import every pipeline and need librosa, decord, ...) are
bypassed by registering bare package objects, and its ``flash_attention`` (flash-attn has no
wheel for the GPU machines' torch/CUDA) is routed to ``torch.nn.functional.scaled_dot_product_attention``
with torch's default backend selection and the same semantics for unpadded inputs.
"""

from __future__ import annotations

import sys
import types
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

_PACKAGES = ("wan", "wan.modules", "wan.modules.s2v", "wan.distributed")
_FLASH_USERS = ("wan.modules.attention", "wan.modules.model", "wan.modules.s2v.model_s2v",
                "wan.modules.s2v.motioner")


def sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                         causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16,
                         version=None):
    """The official ``flash_attention`` contract ([B, L, N, C], bf16 compute, varlen keys)."""
    half = (torch.float16, torch.bfloat16)
    out_dtype = q.dtype
    q, k, v = (t if t.dtype in half else t.to(dtype) for t in (q, k, v))
    if q_scale is not None:
        q = q * q_scale
    if q_lens is not None and bool((q_lens < q.shape[1]).any()):
        raise NotImplementedError("padded queries are not used by WanModel_S2V")
    if k_lens is not None and bool((k_lens < k.shape[1]).any()):
        outs = [F.scaled_dot_product_attention(q[i:i + 1].transpose(1, 2), k[i:i + 1, :n].transpose(1, 2),
                                               v[i:i + 1, :n].transpose(1, 2), scale=softmax_scale,
                                               is_causal=causal) for i, n in enumerate(k_lens.tolist())]
        out = torch.cat(outs).transpose(1, 2)
    else:
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=softmax_scale, is_causal=causal).transpose(1, 2)
    return out.to(out_dtype)


def import_official(repo: str | Path):
    """The official ``WanModel_S2V`` class from ``repo`` (its flash_attention routed to SDPA)."""
    root = Path(repo).resolve()
    if not (root / "wan" / "modules" / "s2v" / "model_s2v.py").is_file():
        raise FileNotFoundError(f"{root}: not a Wan2.2 checkout (wan/modules/s2v/model_s2v.py missing)")
    for name in _PACKAGES:
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*name.split(".")))]
            sys.modules[name] = pkg
    import importlib

    model_s2v = importlib.import_module("wan.modules.s2v.model_s2v")
    for name in _FLASH_USERS:
        mod = importlib.import_module(name)
        mod.flash_attention = sdpa_flash_attention
    return model_s2v.WanModel_S2V


def official_config(cfg) -> dict:
    """Constructor arguments of WanModel_S2V for our DiTConfig (same field names)."""
    keys = ("dim", "ffn_dim", "freq_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_len", "eps",
            "cond_dim", "audio_dim", "num_audio_token", "enable_adain", "adain_mode", "audio_inject_layers",
            "zero_init", "zero_timestep", "enable_motioner", "add_last_motion", "enable_tsm",
            "trainable_token_pos_emb", "motion_token_num", "enable_framepack", "framepack_drop_mode",
            "model_type", "patch_size", "text_dim", "qk_norm", "cross_attn_norm")
    return {k: getattr(cfg, k) for k in keys}


def build_official(repo: str | Path, cfg, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """A WanModel_S2V with its own initialisation, built directly on ``device`` in ``dtype``."""
    cls = import_official(repo)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**official_config(cfg))
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def official_forward(model, x, t, context, ref, motion, cond, audio, autocast: bool = True):
    """One official forward (batch 1) as the official pipeline calls it on a GPU: bf16 inputs (its
    latents, T5 output and wav2vec features are bf16), under bf16 autocast. On CPU (smoke runs of
    a float32 model) the inputs are passed as they are."""
    ctx = nullcontext()
    if autocast and x.is_cuda:
        x, context, ref, motion, cond, audio = (v.bfloat16() for v in (x, context, ref, motion, cond, audio))
        ctx = torch.autocast("cuda", dtype=torch.bfloat16)
    with ctx:
        return model([x], t=t, context=[context], seq_len=0, ref_latents=ref, motion_latents=motion,
                     cond_states=cond, audio_input=audio, motion_frames=[73, 19], drop_motion_frames=False)[0]
