"""Loading the S2V DiT from an official checkpoint folder, strictly.

The folder holds ``config.json`` plus either ``diffusion_pytorch_model.safetensors`` or the
sharded ``diffusion_pytorch_model-0000N-of-0000M.safetensors`` files with their
``diffusion_pytorch_model.safetensors.index.json``. The model is built on the meta device and
every tensor is assigned from the files, so a 32 GB checkpoint never exists twice in memory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from render.model.checkpoint import CheckpointError, DiTConfig
from render.model.checkpoint_keys import short_list
from render.model.dit.model import S2VDiT

log = logging.getLogger(__name__)

SINGLE_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"


def build_dit_skeleton(cfg: DiTConfig) -> S2VDiT:
    """The model with every parameter on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return S2VDiT(cfg)


def checkpoint_files(ckpt_dir: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file holding it."""
    single, index = ckpt_dir / SINGLE_FILE, ckpt_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index (expected a 'weight_map' object): {e}") from None
        files = {}
        missing_shards = sorted({f for f in weight_map.values() if not (ckpt_dir / f).is_file()})
        if missing_shards:
            raise CheckpointError(
                f"{ckpt_dir}: {len(missing_shards)} shard file(s) named in {INDEX_FILE} are missing: "
                + ", ".join(missing_shards)
            )
        for key, fname in weight_map.items():
            files[key] = ckpt_dir / fname
        return files
    if single.is_file():
        try:
            with safe_open(single, "pt") as f:
                return {k: single for k in f.keys()}
        except Exception as e:  # safetensors raises several error types for a corrupt file
            raise CheckpointError(f"{single}: cannot read safetensors file: {e}") from None
    raise CheckpointError(
        f"{ckpt_dir}: no DiT weights found; expected {SINGLE_FILE} or {INDEX_FILE} with its shards"
    )


def load_state_strict(model: torch.nn.Module, files: dict[str, Path], device: torch.device,
                      dtype: torch.dtype | None, source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(files))
    unexpected = sorted(set(files) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys: {short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {short_list(unexpected)}")
    by_file: dict[Path, list[str]] = {}
    for k, f in files.items():
        if k in expected:
            by_file.setdefault(f, []).append(k)
    tensors: dict[str, torch.Tensor] = {}
    bad_shapes = []
    for f, keys in by_file.items():
        try:
            handle = safe_open(f, "pt", device="cpu")
        except Exception as e:  # safetensors raises several error types for a corrupt file
            raise CheckpointError(f"{f}: cannot read safetensors file: {e}") from None
        with handle:
            present = set(handle.keys())
            for k in keys:
                if k not in present:
                    problems.append(f"{f.name} does not contain {k} although the index says so")
                    continue
                shape = tuple(handle.get_slice(k).get_shape())
                if shape != expected[k]:
                    bad_shapes.append(f"{k} {list(shape)} (expected {list(expected[k])})")
                    continue
                t = handle.get_tensor(k)
                tensors[k] = t.to(device=device, dtype=dtype or t.dtype)
    if bad_shapes:
        problems.append(f"wrong shapes: {short_list(bad_shapes)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the model config: " + "; ".join(problems))
    model.load_state_dict(tensors, strict=True, assign=True)


def load_dit(
    checkpoint_dir: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
) -> S2VDiT:
    """Build the DiT from ``checkpoint_dir/config.json`` and load its weights strictly.

    dtype None keeps the stored dtype (bf16 for the release); the official GPU run uses bf16
    weights with float32 norms/modulation, which this model reproduces in any weight dtype.
    """
    ckpt_dir = Path(checkpoint_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir}: checkpoint folder not found")
    cfg = DiTConfig.from_json(ckpt_dir / "config.json")
    files = checkpoint_files(ckpt_dir)
    model = build_dit_skeleton(cfg)
    load_state_strict(model, files, torch.device(device), dtype, str(ckpt_dir))
    model.eval().requires_grad_(False)
    log.info("loaded S2V DiT from %s: %d layers, dim %d, %.2f B params, %s on %s", ckpt_dir,
             cfg.num_layers, cfg.dim, sum(p.numel() for p in model.parameters()) / 1e9,
             next(model.parameters()).dtype, device)
    return model
