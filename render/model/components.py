"""The S2V models of a checkpoint folder, loaded lazily: DiT, VAE, umT5 and the audio encoder.

The folder is the official ``Wan-AI/Wan2.2-S2V-14B`` layout as downloaded:

    config.json + diffusion_pytorch_model*.safetensors[.index.json]   the DiT
    Wan2.1_VAE.pth                                                      the VAE
    models_t5_umt5-xxl-enc-bf16.pth + google/umt5-xxl/                  text encoder + tokenizer
    wav2vec2-large-xlsr-53-english/                                     the audio encoder
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kernels.select import OptimizationReport, optimize_dit
from render.model.audio_features import frame_features, load_wav2vec2
from render.model.checkpoint import (
    T5_FILE,
    TOKENIZER_DIR,
    VAE_FILE,
    W2V_DIR,
    check_checkpoint_folder,
)
from render.model.clip_loop import ChainRenderer, ChainSync, StepCallback
from render.model.dit import S2VDiT, load_dit
from render.model.offload import offload_dit
from render.model.text_encoder import load_text_encoder
from render.model.vae import load_vae
from render.settings import RenderSettings

log = logging.getLogger(__name__)

# File names of the official folder (defined in render/model/checkpoint.py, which needs no media libraries).
__all__ = ["T5_FILE", "TOKENIZER_DIR", "VAE_FILE", "W2V_DIR", "S2VModels", "check_checkpoint_folder", "load_render_dit"]


def load_render_dit(ckpt_dir: str | Path, device: torch.device, dtype: torch.dtype, fp8: bool = False,
                    fp8_attention: bool = False, offload: bool = False) -> tuple[S2VDiT, OptimizationReport]:
    """The DiT as every render path runs it on ``device``, and what kernels.select installed."""
    # Offloaded, the whole model never has to fit the card: it is loaded into host memory and only
    # the non-block parts move to the device. fp8 on a GPU: loaded into host memory too and
    # quantised layer by layer onto the card, so the fp8 weights are allocated back to back rather
    # than between freed bf16 ones (optimize_dit's fp8_to_device).
    staged = fp8 and device.type == "cuda" and not offload
    dit = load_dit(ckpt_dir, device="cpu" if offload or staged else device, dtype=dtype)
    # Attention backend, fused glue kernels (GPU) and optional fp8, chosen once and logged; on the
    # CPU this keeps the torch reference path.
    report = optimize_dit(dit, device, fp8=fp8, fp8_attention=fp8_attention, fp8_to_device=staged)
    if offload:
        offload_dit(dit, device)
    elif staged:
        dit.to(device)
    return dit, report


class S2VModels:
    """Loads components lazily; the text encoder is loaded only to embed prompts and then freed."""

    def __init__(self, ckpt_dir: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, vae_dtype: torch.dtype = torch.float32,
                 fp8: bool = False, fp8_attention: bool = False, offload: bool = False):
        self.ckpt = check_checkpoint_folder(ckpt_dir)
        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self.fp8 = fp8  # opt-in fp8 e4m3 linears (GPU, sm89+); changes numbers, see kernels/fp8.py
        self.fp8_attention = fp8_attention  # opt-in fp8 self-attention (cuDNN, sm90+); kernels/fp8_attention.py
        # opt-in: DiT blocks in pinned host memory, streamed to the device (render/model/offload.py);
        # same frames, for cards smaller than the model
        self.offload = offload
        self._dit = self._vae = self._w2v = None
        self._prompt_cache: dict[str, torch.Tensor] = {}

    @property
    def dit(self):
        if self._dit is None:
            self._dit, _ = load_render_dit(self.ckpt, self.device, self.dtype, fp8=self.fp8,
                                           fp8_attention=self.fp8_attention, offload=self.offload)
        return self._dit

    @property
    def vae(self):
        if self._vae is None:
            self._vae = load_vae(self.ckpt / VAE_FILE, device=self.device, dtype=self.vae_dtype)
        return self._vae

    @property
    def wav2vec(self):
        if self._w2v is None:
            # The official code runs wav2vec2 on the CPU in float32; features feed every clip.
            self._w2v = load_wav2vec2(self.ckpt / W2V_DIR, device="cpu", dtype=torch.float32)
        return self._w2v

    def embed_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        """T5 embeddings (CPU, float32, unpadded) for each prompt; each unique prompt once."""
        todo = sorted({p for p in prompts if p not in self._prompt_cache})
        if todo:
            t5_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            enc = load_text_encoder(self.ckpt / T5_FILE, self.ckpt / TOKENIZER_DIR, device=self.device,
                                    dtype=t5_dtype, text_len=self.dit.cfg.text_len)
            try:
                for p, e in zip(todo, enc.encode(todo)):
                    self._prompt_cache[p] = e.float().cpu()
            finally:
                enc.release()  # never resident while the DiT samples
        return [self._prompt_cache[p] for p in prompts]

    def audio_frames(self, samples_16k, num_video_frames: int, fps: int) -> torch.Tensor:
        """[1, 25, C, num_video_frames] wav2vec features per video frame (zeros past the end) of
        16 kHz mono samples."""
        return frame_features(self.wav2vec, samples_16k, num_video_frames, fps)

    def chain_renderer(self, settings: RenderSettings, on_step: StepCallback | None = None,
                       progress: bool = True, sync: ChainSync | None = None) -> ChainRenderer:
        """``sync``: a render group's hook; the VAE is then loaded on its writer rank only."""
        vae = self.vae if sync is None or sync.is_writer else None
        return ChainRenderer(self.dit, vae, settings, self.device, on_step=on_step, progress=progress, sync=sync)
