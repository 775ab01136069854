"""Wan2.1 causal 3-D VAE (used by Wan2.2-S2V for the reference image, motion frames and decoding)."""

from __future__ import annotations

from render.model.vae.model import WanVAEModel, build_vae_skeleton
from render.model.vae.wrapper import LATENT_MEAN, LATENT_STD, WanVAE, load_vae

__all__ = ["LATENT_MEAN", "LATENT_STD", "WanVAE", "WanVAEModel", "build_vae_skeleton", "load_vae"]
