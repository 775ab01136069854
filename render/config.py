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


S2V_NEGATIVE_PROMPT = (
    # The S2V-specific default negative prompt of the official config (sample_neg_prompt).
    "画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，"
    "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


@dataclass
class RenderSettings:
    """How one shot is rendered. Defaults are the official S2V CLI defaults."""

    size: str = "832*480"  # a maximum area; the aspect ratio follows the reference image
    steps: int = 40
    guidance: float = 4.5
    shift: float = 3.0
    sampler: str = "unipc"
    seed: int = 42
    infer_frames: int = 80  # video frames per clip (multiple of 4)
    motion_frames: int = 73  # pixel frames handed to the next clip
    fps: int = 16
    negative_prompt: str | None = None  # None -> the official S2V negative prompt
    # The official output is 3 frames ahead of its audio (it drops clip 0's first 3 frames and
    # starts the audio at 0). True reproduces that; the default keeps every frame (zero offset).
    official_frame_drop: bool = False
    start_from_ref: bool = False
    # Motion latents decoded in front of a clip's new latents to warm the causal VAE decoder:
    # None = all of them (official, 19); k >= 1 decodes only the last k (faster, changes pixels).
    decode_context_latents: int | None = None
    cfg_batch: bool = True  # conditional + unconditional as one batch of 2 (same math)
    noise: str = "cpu"  # "cpu": pure function of (seed, segment, clip) on any device;
    # "official-cuda": the official bf16 CUDA generator stream seeded seed + clip
    crf: int = 18

    def validate(self) -> None:
        import math

        problems = []
        if not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps={self.steps!r}: expected an integer >= 1")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            problems.append(f"guidance={self.guidance!r}: expected a finite number >= 0")
        if not math.isfinite(self.shift) or self.shift <= 0:
            problems.append(f"shift={self.shift!r}: expected a finite number > 0")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            problems.append(f"seed={self.seed!r}: expected an integer in [0, 2^32)")
        if self.infer_frames % 4 or self.infer_frames < 4:
            problems.append(f"infer_frames={self.infer_frames}: expected a positive multiple of 4")
        if (self.motion_frames - 1) % 4 or self.motion_frames < 1:
            problems.append(f"motion_frames={self.motion_frames}: expected 1 + 4k")
        if self.decode_context_latents is not None and self.decode_context_latents < 1:
            problems.append(f"decode_context_latents={self.decode_context_latents}: expected None or >= 1")
        if self.noise not in ("cpu", "official-cuda"):
            problems.append(f"noise={self.noise!r}: expected 'cpu' or 'official-cuda'")
        if not 0 <= self.crf <= 51:
            problems.append(f"crf={self.crf}: expected 0..51")
        if problems:
            raise ValueError("invalid render settings: " + "; ".join(problems))

    @property
    def latent_frames(self) -> int:
        return self.infer_frames // 4

    @property
    def motion_latent_frames(self) -> int:
        return (self.motion_frames + 3) // 4
