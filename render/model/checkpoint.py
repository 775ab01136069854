"""Typed configuration (omegaconf structured configs).

``DiTConfig`` mirrors the fields the official ``WanModel_S2V`` records in its checkpoint's
``config.json``; the architecture is always read from that file, never assumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import OmegaConf

# Files of the official Wan2.2-S2V-14B checkpoint folder besides the DiT's.
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
W2V_DIR = "wav2vec2-large-xlsr-53-english"


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, incomplete or inconsistent (message says which)."""


def checkpoint_digest(ckpt_dir: str | Path) -> str:
    """sha256 of the folder's listing: every file's relative path, size and mtime. Hashing 60 GB of
    weights on every start would take minutes; a re-download or an edit changes size or mtime."""
    import hashlib
    import os

    root = Path(ckpt_dir)
    listing = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.stat()
            listing.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    # the canonical JSON that run directories' shot keys were made with (cluster.fingerprint)
    return hashlib.sha256(json.dumps(listing, sort_keys=True, default=str).encode()).hexdigest()


def check_checkpoint_folder(ckpt_dir: str | Path) -> Path:
    """Fail early, listing every missing part of the folder at once (the files ``S2VModels`` loads;
    here, without torch, so ``s2v run`` can check before it starts Ray)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint folder not found")
    missing = []
    if not (d / "config.json").is_file():
        missing.append("config.json (DiT config)")
    if not any(d.glob("diffusion_pytorch_model*.safetensors")):
        missing.append("diffusion_pytorch_model.safetensors or its shards + index (DiT weights)")
    for name, what in ((VAE_FILE, "VAE"), (T5_FILE, "umT5 encoder")):
        if not (d / name).is_file():
            missing.append(f"{name} ({what})")
    for name, what in ((TOKENIZER_DIR, "umT5 tokenizer folder"), (W2V_DIR, "wav2vec2 folder")):
        if not (d / name).is_dir():
            missing.append(f"{name}/ ({what})")
    if missing:
        # The usual slip is naming the folder above the checkpoint (--ckpt tinymodel): say which one.
        inside = [str(sub) for sub in sorted(d.iterdir()) if (sub / "config.json").is_file()
                  and any(sub.glob("diffusion_pytorch_model*.safetensors"))]
        hint = f" (checkpoint folders inside it: {', '.join(inside)})" if inside else ""
        raise CheckpointError(f"{d}: incomplete S2V checkpoint folder; missing: " + "; ".join(missing) + hint)
    return d


@dataclass
class DiTConfig:
    # Fields written to config.json by the official class (names as there).
    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 16
    out_dim: int = 16
    text_len: int = 512
    eps: float = 1e-6
    cond_dim: int = 16
    audio_dim: int = 1024
    num_audio_token: int = 4
    enable_adain: bool = True
    adain_mode: str = "attn_norm"
    audio_inject_layers: list[int] = field(
        default_factory=lambda: [0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39]
    )
    zero_init: bool = True
    zero_timestep: bool = True
    enable_motioner: bool = False
    add_last_motion: bool = True
    enable_tsm: bool = False
    trainable_token_pos_emb: bool = False
    motion_token_num: int = 1024
    enable_framepack: bool = True
    framepack_drop_mode: str = "padd"
    model_type: str = "s2v"
    # Not stored in config.json by the official class (ignore_for_config): fixed defaults.
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    qk_norm: bool = True
    cross_attn_norm: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def validate(self, source: str = "config") -> None:
        problems = []
        if self.dim % self.num_heads:
            problems.append(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if self.model_type != "s2v":
            problems.append(f"model_type={self.model_type!r}, expected 's2v'")
        if self.enable_motioner:
            problems.append("enable_motioner=true is not supported (the S2V release uses FramePack)")
        if not self.enable_framepack:
            problems.append("enable_framepack=false is not supported (the S2V release uses FramePack)")
        if self.enable_tsm:
            problems.append("enable_tsm=true is not supported")
        if not self.enable_adain or self.adain_mode != "attn_norm":
            problems.append(
                f"enable_adain={self.enable_adain}, adain_mode={self.adain_mode!r}; expected true / 'attn_norm'"
            )
        if not self.zero_timestep:
            problems.append("zero_timestep=false is not supported (the S2V release uses true)")
        if self.framepack_drop_mode != "padd":
            problems.append(f"framepack_drop_mode={self.framepack_drop_mode!r}, expected 'padd'")
        bad = [i for i in self.audio_inject_layers if not 0 <= i < self.num_layers]
        if bad:
            problems.append(f"audio_inject_layers {bad} outside 0..{self.num_layers - 1}")
        if sorted(set(self.audio_inject_layers)) != list(self.audio_inject_layers):
            problems.append("audio_inject_layers must be strictly increasing")
        if problems:
            raise CheckpointError(f"{source}: unsupported DiT configuration: " + "; ".join(problems))

    @classmethod
    def from_json(cls, path: str | Path) -> DiTConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: config.json not found (expected the official WanModel_S2V config)") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in known}
        for k in ("patch_size",):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k])
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), kwargs))
        cfg.patch_size = tuple(cfg.patch_size)
        cfg.validate(str(path))
        return cfg

    def to_json_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("patch_size", "text_dim", "qk_norm", "cross_attn_norm"):
            d.pop(k)
        d["_class_name"] = "WanModel_S2V"
        d["audio_inject_layers"] = list(self.audio_inject_layers)
        return d
