"""Strict loading of the DiT: key set of the real 14B checkpoint, single/sharded folders, bad folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from render.model.checkpoint import CheckpointError, DiTConfig
from render.model.dit import build_dit_skeleton, load_dit
from render.model.dit.loader import INDEX_FILE, SINGLE_FILE


def test_14b_key_set_and_shapes_on_meta(golden_root):
    entries = json.loads((golden_root / "dit_14b_state_dict.json").read_text())
    assert len(entries) == 1260
    model = build_dit_skeleton(DiTConfig())  # defaults are the 14B release values
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {e["key"]: list(e["shape"]) for e in entries}
    assert set(ours) == set(theirs)
    assert ours == theirs
    assert sum(v.numel() for v in model.state_dict().values()) == 16_295_755_609


def _copy_golden(golden_dir, tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(golden_dir / "config.json", d / "config.json")
    return d, load_file(golden_dir / SINGLE_FILE)


def test_sharded_folder_loads_identically(golden_dir, tmp_path):
    d, sd = _copy_golden(golden_dir, tmp_path)
    keys = sorted(sd)
    shards = [keys[: len(keys) // 3], keys[len(keys) // 3: 2 * len(keys) // 3], keys[2 * len(keys) // 3:]]
    weight_map = {}
    for i, ks in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: sd[k] for k in ks}, d / name)
        weight_map.update({k: name for k in ks})
    (d / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    a = load_dit(golden_dir, dtype=torch.float32).state_dict()
    b = load_dit(d, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_load_keeps_float32_output_and_stays_close(golden_dir):
    io = load_file(golden_dir / "inputs_outputs.safetensors")
    model = load_dit(golden_dir, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.inference_mode():
        out = model([io["in_x"]], io["in_t"], [io["in_context"]], io["in_ref_latents"],
                    io["in_motion_latents"], io["in_cond_states"], io["in_audio_input"])
    assert out.dtype == torch.float32
    rel = (out - io["out_motion"]).norm() / io["out_motion"].norm()
    assert rel < 0.05


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda sd: sd.pop("head.head.weight"), "missing keys: head.head.weight"),
        (lambda sd: sd.__setitem__("blocks.9.ffn.0.weight", torch.zeros(1)), "unexpected keys: blocks.9.ffn.0.weight"),
        (lambda sd: sd.__setitem__("head.modulation", torch.zeros(1, 3, 64)), r"head.modulation \[1, 3, 64\] \(expected \[1, 2, 64\]\)"),
    ],
)
def test_bad_weights_name_the_keys(golden_dir, tmp_path, mutate, match):
    d, sd = _copy_golden(golden_dir, tmp_path)
    mutate(sd)
    save_file(sd, d / SINGLE_FILE)
    with pytest.raises(CheckpointError, match=match):
        load_dit(d, dtype=torch.float32)


def test_missing_shard_is_named(golden_dir, tmp_path):
    d, sd = _copy_golden(golden_dir, tmp_path)
    save_file(sd, d / "diffusion_pytorch_model-00001-of-00002.safetensors")
    wm = {k: "diffusion_pytorch_model-00001-of-00002.safetensors" for k in sd}
    wm["head.head.weight"] = "diffusion_pytorch_model-00002-of-00002.safetensors"
    (d / INDEX_FILE).write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors"):
        load_dit(d, dtype=torch.float32)


def test_folder_problems(golden_dir, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_dit(tmp_path / "nope")
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_dit(d)
    shutil.copy(golden_dir / "config.json", d / "config.json")
    with pytest.raises(CheckpointError, match="no DiT weights found"):
        load_dit(d)
    (d / SINGLE_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        load_dit(d)
    (d / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_dit(d)


def test_unsupported_config_is_explained(golden_dir, tmp_path):
    d, _ = _copy_golden(golden_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(num_heads=3, enable_framepack=False)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not divisible by num_heads=3.*enable_framepack=false"):
        load_dit(d)
