"""The training script end to end on the CPU (``--smoke``: a few steps of every stage)."""

from __future__ import annotations

import json

import pytest
import torch

from render.model.audio_logmel import LogMelFeatures
from render.model.checkpoint import VAE_FILE, W2V_DIR
from render.model.components import S2VModels
from tinymodel.export import TRAINED_DIT

# Size 64: the smallest the DiT's FramePack takes (its 4x motion bucket is an 8x8-latent conv;
# 32 px gives 4x4 latents and fails). Minutes large enough that smoke's 3-step caps, not the
# clock, end the VAE and DiT stages; --max-videos keeps the data stage to one group of videos.
ARGS = ["--smoke", "--device", "cpu", "--size", "64", "--minutes", "30", "--max-videos", "4",
        "--eval-samples", "1", "--vae-batch", "2", "--batch", "2", "--vae-pool", "4"]


@pytest.mark.slow  # ~45 s with one torch thread on 2 busy cores (17 s of it: evaluation at 128 px)
def test_train_smoke_writes_a_loadable_checkpoint_and_metrics(tmp_path):
    from tinymodel.train import main

    metrics = main(["--out", str(tmp_path), *ARGS])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("vae_steps", "vae_psnr_db", "videos", "dit_steps", "dit_loss_last500", "train_minutes",
                "total_minutes", "lipsync_g1.0", "lipsync_g4.5"):
        assert key in saved, key
    # Training steps really ran (with --minutes 0.05 the VAE's clock runs out before its first step).
    assert saved["vae_steps"] >= 1 and saved["dit_steps"] >= 1 and saved["videos"] == 4
    for g in ("lipsync_g1.0", "lipsync_g4.5"):
        assert set(saved[g]) == {"mean_corr", "min_corr"} and -1 <= saved[g]["min_corr"] <= 1
    assert (tmp_path / "train_log.txt").read_text().count("lip-sync (held-out") == 2
    assert (tmp_path / "sample_g1.0.png").is_file() and (tmp_path / "sample_g4.5.png").is_file()

    ckpt = tmp_path / "ckpt"
    assert (ckpt / VAE_FILE).is_file()
    pipe = S2VModels(ckpt, device="cpu")
    assert pipe.dit.cfg == TRAINED_DIT
    assert isinstance(pipe.wav2vec, LogMelFeatures)
    # The exported VAE is the trained one with its latents renormalised (not the random init).
    lat = pipe.vae.encode(torch.zeros(3, 1, 64, 64))
    assert lat.shape == (16, 1, 8, 8) and torch.isfinite(lat).all()
    (ctx,) = pipe.embed_prompts(["a cartoon character talks to the camera"])
    assert ctx.shape[-1] == 4096
    assert not (ckpt / W2V_DIR / "model.safetensors").exists()


def test_vae_only_run_writes_a_normalised_vae(tmp_path):
    import numpy as np

    from render.model.vae import load_vae
    from tinymodel.train import main
    from tinymodel.train_vae import snippets

    metrics = main(["--out", str(tmp_path), "--smoke", "--vae-only", "--device", "cpu", "--size", "64",
                    "--minutes", "30", "--vae-pool", "4", "--vae-batch", "2", "--vae-bf16"])
    assert metrics["vae_steps"] >= 1 and len(metrics["vae_psnr_per_16_frames"]) >= 1
    assert not (tmp_path / "ckpt").exists()  # no DiT stage
    vae = load_vae(tmp_path / VAE_FILE)
    with torch.no_grad():
        z = vae.encode(snippets(np.random.default_rng(1), 1, 37, 64, "cpu")[0])
    # Folded on generated clips: the official wrapper's normalisation gives roughly unit latents.
    assert 0.3 < float(z.std()) < 3.0
    # Trained chunk-local by default (the Adam steps left the masked taps at exactly 0), and the
    # per-16-frame PSNR the log prints is then flat by construction.
    assert vae.chunk_local


def test_vae_temporal_option_trains_the_past_taps(tmp_path):
    from render.model.vae import load_vae
    from tinymodel.train import main

    main(["--out", str(tmp_path), "--smoke", "--vae-only", "--vae-temporal", "--device", "cpu", "--size", "64",
          "--minutes", "30", "--vae-pool", "4", "--vae-batch", "2"])
    assert not load_vae(tmp_path / VAE_FILE).chunk_local


@pytest.mark.slow  # ~21 s with one torch thread
def test_dit_stage_on_renderer_hand_offs_runs(tmp_path):
    """--handoff renderer (perturbed hand-offs, boundary weight) trains from a given VAE and DiT."""
    from tinymodel.export import SHIPPED_DIR
    from tinymodel.train import main

    metrics = main(["--out", str(tmp_path), "--smoke", "--device", "cpu", "--size", "64", "--minutes", "30",
                    "--max-videos", "4", "--eval-samples", "0", "--batch", "2", "--vae-share", "0",
                    "--init-vae", str(SHIPPED_DIR / VAE_FILE),
                    "--init-dit", str(SHIPPED_DIR / "diffusion_pytorch_model.safetensors"),
                    "--handoff", "renderer", "--handoff-latent-noise", "0.3", "--handoff-colour", "0.05",
                    "--boundary-weight", "3"])
    assert metrics["videos"] == 4 and metrics["dit_steps"] >= 1
    assert torch.isfinite(torch.tensor(metrics["dit_loss_last500"]))
    assert (tmp_path / "ckpt" / "diffusion_pytorch_model.safetensors").is_file()


def test_handoff_perturbations_need_the_renderer_hand_off(tmp_path):
    from tinymodel.train import main

    with pytest.raises(SystemExit, match="--handoff renderer"):
        main(["--out", str(tmp_path), "--handoff-latent-noise", "0.3"])
