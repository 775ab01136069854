"""The tiny model's checkpoint folder: latent renormalisation of the VAE and the official layout."""

from __future__ import annotations

import json

import pytest
import torch

from render.model.audio_logmel import LogMelFeatures
from render.model.checkpoint import T5_FILE, TOKENIZER_DIR, VAE_FILE, W2V_DIR
from render.model.components import S2VModels, check_checkpoint_folder
from render.model.dit import load_dit
from render.model.dit.init import fill_random_
from render.model.dit.model import S2VDiT
from render.model.vae import load_vae
from render.model.vae.model import WanVAEModel
from render.model.vae.wrapper import WanVAE
from tinymodel import export
from tinymodel.export import (
    MEL_BINS,
    TRAINED_DIT,
    VAE_DIM,
    fold_latent_normalisation,
    write_dit,
    write_template,
    write_vae,
)


def _channel_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std of latents [B, C, F, h, w]."""
    flat = z.transpose(0, 1).flatten(1)
    return flat.mean(1), flat.std(1)


@pytest.fixture(scope="module")
def videos() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 9, 32, 32, generator=g) * 2 - 1
    # Some structure so the channels' statistics differ.
    return (x + torch.linspace(-0.5, 0.5, 32).view(1, 1, 1, 1, 32)).clamp(-1, 1)


def test_fold_keeps_reconstruction_and_standardises_the_wrappers_latents(videos):
    torch.manual_seed(1)
    vae = WanVAEModel(dim=VAE_DIM).eval()
    with torch.no_grad():
        mu = vae.encode_mu(videos)
        rec = torch.cat(list(vae.decode_stream(mu)), dim=2)
        before = WanVAE(vae).encode(videos)
        m, s = _channel_stats(mu)
        # Before folding the official fixed mean/std do not standardise this VAE's latents.
        bm, bs = _channel_stats(before)
        assert bm.abs().max() > 0.5 or (bs - 1).abs().max() > 0.5

        fold_latent_normalisation(vae, m, s)
        wrapper = WanVAE(vae)
        z = wrapper.encode(videos)
        zm, zs = _channel_stats(z)
        torch.testing.assert_close(zm, torch.zeros(16), rtol=0, atol=1e-4)
        torch.testing.assert_close(zs, torch.ones(16), rtol=0, atol=1e-4)
        # The wrapper's latents are exactly (mu - m) / s of the unfolded VAE.
        torch.testing.assert_close(z, (mu - m.view(1, -1, 1, 1, 1)) / s.view(1, -1, 1, 1, 1), rtol=0, atol=1e-4)
        # Decoding what was encoded gives the unfolded VAE's reconstruction.
        torch.testing.assert_close(wrapper.decode(z, clamp=False), rec, rtol=0, atol=1e-4)


def test_fold_survives_write_and_load(videos, tmp_path):
    torch.manual_seed(2)
    vae = WanVAEModel(dim=VAE_DIM).eval()
    with torch.no_grad():
        mu = vae.encode_mu(videos)
        m, s = _channel_stats(mu)
        fold_latent_normalisation(vae, m, s)
    write_vae(tmp_path, vae.state_dict())
    loaded = load_vae(tmp_path / VAE_FILE)
    z = loaded.encode(videos)
    zm, zs = _channel_stats(z)
    assert zm.abs().max() < 1e-4 and (zs - 1).abs().max() < 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """write_template + write_dit + write_vae: the folder the training script exports."""
    folder = write_template(tmp_path_factory.mktemp("tiny_s2v"))
    torch.manual_seed(3)
    dit = fill_random_(S2VDiT(TRAINED_DIT), 3)
    state = {k: v.clone() for k, v in dit.state_dict().items()}
    write_dit(folder, TRAINED_DIT, state)
    torch.manual_seed(4)
    vae_state = WanVAEModel(dim=VAE_DIM).state_dict()
    write_vae(folder, vae_state)
    return folder, state, vae_state


def test_exported_folder_has_the_official_layout(exported):
    folder, state, vae_state = exported
    assert check_checkpoint_folder(folder) == folder
    for name in ("config.json", "diffusion_pytorch_model.safetensors", VAE_FILE, T5_FILE, W2V_DIR + "/config.json",
                 TOKENIZER_DIR + "/tokenizer.json"):
        assert (folder / name).is_file(), name
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["dim"] == TRAINED_DIT.dim and cfg["audio_dim"] == MEL_BINS
    assert json.loads((folder / W2V_DIR / "config.json").read_text())["num_mel_bins"] == MEL_BINS


def test_exported_folder_loads_with_the_product_loaders(exported):
    folder, state, vae_state = exported
    dit = load_dit(folder, dtype=None)
    assert dit.cfg == TRAINED_DIT
    loaded = dit.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():  # stored bf16 like the release
        assert loaded[k].dtype == torch.bfloat16
        assert torch.equal(loaded[k], v.to(torch.bfloat16)), k
    vae = load_vae(folder / VAE_FILE)
    for k, v in vae.model.state_dict().items():
        assert torch.equal(v, vae_state[k]), k

    pipe = S2VModels(folder, device="cpu")
    assert isinstance(pipe.wav2vec, LogMelFeatures) and pipe.wav2vec.hidden_size == TRAINED_DIT.audio_dim
    assert pipe.dit.cfg == TRAINED_DIT
    (ctx,) = pipe.embed_prompts([export.PROMPTS[0]])
    assert ctx.ndim == 2 and ctx.shape[1] == 4096 and ctx.shape[0] <= TRAINED_DIT.text_len
    assert pipe.vae.encode(torch.zeros(3, 5, 32, 32)).shape == (16, 2, 4, 4)


def test_shipped_checkpoint_needs_config_and_weights(exported, tmp_path, monkeypatch):
    folder, _, _ = exported
    monkeypatch.setattr(export, "SHIPPED_DIR", folder)
    assert export.shipped_checkpoint() == folder
    part = write_template(tmp_path / "partial")  # untrained parts only, as in the repository today
    monkeypatch.setattr(export, "SHIPPED_DIR", part)
    assert export.shipped_checkpoint() is None
