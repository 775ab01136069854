"""The tiny trained model's configuration and its checkpoint folder in the official layout.

The folder is exactly what ``render.model.components.S2VModels`` loads for the 14B release
(config.json + diffusion_pytorch_model.safetensors, Wan2.1_VAE.pth, the umT5 .pth + tokenizer
folder, the audio encoder folder); only the sizes differ, and the audio encoder slot holds the
log-mel front end (render/audio_logmel.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from render.model.audio_logmel import LogMelConfig
from render.model.checkpoint import VAE_FILE, W2V_DIR, DiTConfig
from render.model.vae.wrapper import LATENT_MEAN, LATENT_STD

# Where the trained model ships inside the repository (and the installed package).
SHIPPED_DIR = Path(__file__).resolve().parent / "tiny-s2v"
SIZE = 128  # training resolution (square); the model renders other multiples of 16 too
VAE_DIM = 8  # Wan2.1 VAE architecture at base width 8 (release: 96)
MEL_BINS = 32
TEXT_LEN = 32
# DiT: dim 192, 8 blocks, audio injected after blocks 0, 2, 4, 6, 7 (release: 12 of 40 blocks).
TRAINED_DIT = DiTConfig(dim=192, ffn_dim=768, num_heads=3, num_layers=8, audio_inject_layers=[0, 2, 4, 6, 7],
                        audio_dim=MEL_BINS, text_len=TEXT_LEN)
# umT5 stand-in: d_model must stay 4096 (the DiT's text projection input is fixed), all else tiny.
SHIPPED_T5 = dict(vocab_size=128, d_model=4096, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
PROMPTS = (
    "a cartoon character talks to the camera",
    "a cartoon person speaking",
    "an animated face says something",
    "a drawn character is talking, front view",
)


def shipped_checkpoint() -> Path | None:
    """The trained tiny model's folder, or None when this copy of the code has none."""
    d = SHIPPED_DIR
    return d if (d / "config.json").is_file() and (d / "diffusion_pytorch_model.safetensors").is_file() else None


def write_template(folder: str | Path, seed: int = 7) -> Path:
    """The parts that are not trained: text encoder + tokenizer and the log-mel front end."""
    from tinymodel.checkpoint import write_tiny_text_encoder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_text_encoder(folder, seed=seed, t5=SHIPPED_T5)
    (folder / W2V_DIR).mkdir(exist_ok=True)
    cfg = LogMelConfig(num_mel_bins=MEL_BINS)
    (folder / W2V_DIR / "config.json").write_text(json.dumps(cfg.to_json_dict(), indent=2) + "\n")
    return folder


def write_dit(folder: str | Path, cfg: DiTConfig, state: dict[str, torch.Tensor]) -> None:
    folder = Path(folder)
    (folder / "config.json").write_text(json.dumps(cfg.to_json_dict(), indent=2) + "\n")
    # bf16 like the release's safetensors shards.
    save_file({k: v.detach().to(torch.bfloat16).cpu().contiguous() for k, v in state.items()},
              folder / "diffusion_pytorch_model.safetensors")


def write_vae(folder: str | Path, state: dict[str, torch.Tensor]) -> None:
    torch.save({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, Path(folder) / VAE_FILE)


@torch.no_grad()
def fold_latent_normalisation(vae_model, data_mean: torch.Tensor, data_std: torch.Tensor) -> None:
    """Rescale a trained VAE so the official wrapper's fixed per-channel mean/std map its latents
    to zero mean / unit variance (what the diffusion model expects), without changing what it
    encodes or decodes.

    The encoder's last 1x1 conv (``conv1``, first z_dim outputs = mu) is changed to emit
    mu' = (mu - m) / s * STD + MEAN, so the wrapper's (mu' - MEAN) / STD = (mu - m) / s; the
    decoder's first 1x1 conv (``conv2``) is changed to undo it: conv2'(mu') = conv2(mu).
    """
    z = vae_model.z_dim
    dev = vae_model.conv1.weight.device
    m, s = data_mean.double().flatten().to(dev), data_std.double().flatten().to(dev)
    mean_o = torch.tensor(LATENT_MEAN, dtype=torch.float64, device=dev)
    std_o = torch.tensor(LATENT_STD, dtype=torch.float64, device=dev)
    a = std_o / s  # mu' = a * mu + b
    b = mean_o - a * m
    c1 = vae_model.conv1
    w = c1.weight.double()  # [2z, 2z, 1, 1, 1]
    w[:z] = w[:z] * a.view(z, 1, 1, 1, 1)
    c1.bias.data[:z] = (c1.bias.double()[:z] * a + b).to(c1.bias.dtype)
    c1.weight.data.copy_(w.to(c1.weight.dtype))
    # conv2(mu) = W mu + c with mu = (mu' - b) / a  ->  W' = W / a (per input channel), c' = c - W' b.
    c2 = vae_model.conv2
    w2 = c2.weight.double() / a.view(1, z, 1, 1, 1)
    c2.bias.data.copy_((c2.bias.double() - (w2.flatten(1) @ b)).to(c2.bias.dtype))
    c2.weight.data.copy_(w2.to(c2.weight.dtype))
