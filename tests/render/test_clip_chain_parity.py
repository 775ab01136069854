"""The whole clip chain against the official ``WanS2V.generate()``.

``tests/data/wan_s2v/clip_chain/`` holds what the official pipeline produced on CPU in float32
(``benchmarks/official_clip_chain.py`` made it from an ignored checkout of the official repository)
for 3 clips x 2 UniPC steps at 64x64 with the tiny golden DiT, VAE and wav2vec2: its inputs (a 16
kHz waveform, a reference PNG, prompt embeddings), the decoded video, and per clip the audio window,
the initial noise, the sampled latents and the motion latents it was conditioned on. Here our
ChainRenderer renders the same chain with ``official_frame_drop=True`` (the official drops clip 0's
first 3 frames) and must give the same frames.

Tolerance: max-abs 1e-4 on pixels in [-1, 1]. Both sides are float32 on the CPU with identical
inputs and identical noise (our ``noise="cpu"`` draws ``randn`` from a CPU generator seeded
``seed + clip``, which is what the official code does on a CPU device), so the only differences are
float rounding of differently ordered but equal math; the per-model goldens agree to a few 1e-6,
and the chain compounds them through 3 decodes and 2 motion re-encodes (measured: see
``CHAIN_TOLERANCE``'s comment). A hand-off bug (a wrong motion window, audio window, noise or frame
drop) changes frames by 1e-2 or more.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from render.media.image import load_reference_image
from render.model.audio_features import frame_features, load_wav2vec2
from render.model.clip_loop import ChainRenderer, ShotConditioning, clip_noise
from render.model.dit import load_dit
from render.model.vae import load_vae
from render.settings import RenderSettings

# The chain both sides render (the official call's arguments in brackets).
CLIPS = 3  # [num_repeat]
STEPS = 2  # [sampling_steps]
INFER_FRAMES = 8  # [infer_frames]
GUIDANCE = 4.5  # [guide_scale]
SHIFT = 3.0  # [shift]
SEED = 42  # [seed]
HEIGHT = WIDTH = 64  # official size for a 64x64 max_area
FPS = 16

# Measured max-abs difference to the official frames: 5.1e-6 (motion latents 3.4e-6); 1e-4 leaves
# room for other CPUs' float kernels and is still 100x below a hand-off bug.
CHAIN_TOLERANCE = 1e-4

GOLDEN_FILE = "clip_chain_golden.safetensors"


def chain_settings() -> RenderSettings:
    return RenderSettings(steps=STEPS, guidance=GUIDANCE, shift=SHIFT, sampler="unipc", seed=SEED,
                          infer_frames=INFER_FRAMES, fps=FPS, official_frame_drop=True, noise="cpu")


class RecordingRenderer(ChainRenderer):
    """Our renderer, keeping what each clip's sampling was given (audio window, motion latents)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.given: dict[str, torch.Tensor] = {}

    def sample(self, shot, audio, pose, motion_latents, with_motion, segment, clip):
        self.given[f"clip{clip}_audio_input"] = audio.clone()
        if with_motion:
            self.given[f"clip{clip}_motion_latents"] = motion_latents.clone()
        return super().sample(shot, audio, pose, motion_latents, with_motion, segment, clip)


def render_ours(golden_root: Path, chain_dir: Path, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Render the golden chain with our code: the frames, plus the per-clip inputs for diagnosis."""
    dit = load_dit(golden_root / "golden", dtype=torch.float32)
    vae = load_vae(golden_root / "golden_vae_t5" / "vae" / "Wan2.1_VAE.pth")
    w2v = load_wav2vec2(golden_root / "golden" / "tiny_wav2vec2")
    settings = chain_settings()
    audio = frame_features(w2v, inputs["in_waveform_16k"], CLIPS * INFER_FRAMES, FPS)
    ref = load_reference_image(chain_dir / "reference.png", HEIGHT, WIDTH)
    with torch.inference_mode():
        ref_latents = vae.encode(ref[:, None]).float()[None]
    shot = ShotConditioning(inputs["in_context"], inputs["in_context_null"], ref_latents, ref, audio, HEIGHT, WIDTH)
    renderer = RecordingRenderer(dit, vae, settings, "cpu", progress=False)
    state = renderer.initial_state(shot)
    out = {"audio_emb": audio, "ref_pixels": ref, "ref_latents": ref_latents}
    videos = []
    for clip in range(CLIPS):
        out[f"clip{clip}_noise"] = clip_noise(settings, (16, settings.latent_frames, HEIGHT // 8, WIDTH // 8),
                                              0, clip, torch.device("cpu"))
        video, state = renderer.render_clip(shot, state)
        videos.append(video)
    out["video"] = torch.cat(videos, dim=1)
    return {**out, **renderer.given}


@pytest.fixture(scope="module")
def chain(golden_root: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    chain_dir = golden_root / "clip_chain"
    golden = load_file(chain_dir / GOLDEN_FILE)
    meta = json.loads((chain_dir / "chain.json").read_text())
    return golden, render_ours(golden_root, chain_dir, golden), meta


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


def test_golden_was_made_with_these_settings(chain) -> None:
    _, _, meta = chain
    assert meta["call"] == {"num_repeat": CLIPS, "sampling_steps": STEPS, "infer_frames": INFER_FRAMES,
                            "guide_scale": GUIDANCE, "shift": SHIFT, "seed": SEED, "sample_solver": "unipc",
                            "max_area": HEIGHT * WIDTH}


def test_conditioning_matches(chain) -> None:
    golden, ours, _ = chain
    assert _max_abs(ours["audio_emb"], golden["official_audio_emb"]) <= 1e-5
    assert _max_abs(ours["ref_pixels"], golden["official_ref_pixels"][0, :, 0]) == 0
    assert _max_abs(ours["ref_latents"], golden["official_ref_latents"]) <= 1e-5


def test_audio_window_per_clip(chain) -> None:
    golden, ours, _ = chain
    for clip in range(CLIPS):  # the last clip runs past the end of the audio: zeros, as official
        assert _max_abs(ours[f"clip{clip}_audio_input"], golden[f"official_clip{clip}_audio_input"]) <= 1e-5, clip
    assert float(golden[f"official_clip{CLIPS - 1}_audio_input"][..., -1].abs().max()) == 0


def test_noise_per_clip_is_the_official_noise(chain) -> None:
    golden, ours, _ = chain
    for clip in range(CLIPS):
        assert torch.equal(ours[f"clip{clip}_noise"], golden[f"official_clip{clip}_noise"]), clip


def test_motion_latents_handed_to_each_clip(chain) -> None:
    golden, ours, _ = chain
    assert "clip0_motion_latents" not in ours  # clip 0 is conditioned on the reference only
    for clip in range(1, CLIPS):
        err = _max_abs(ours[f"clip{clip}_motion_latents"], golden[f"official_clip{clip}_motion_latents"])
        assert err <= CHAIN_TOLERANCE, (clip, err)


def test_decoded_frames_match_the_official_chain(chain) -> None:
    golden, ours, _ = chain
    want = golden["official_video"]
    # clip 0 keeps infer_frames - 3 frames (the official drop), later clips all of theirs
    assert want.shape == (3, CLIPS * INFER_FRAMES - 3, HEIGHT, WIDTH)
    assert ours["video"].shape == want.shape
    first = 0
    for clip in range(CLIPS):
        n = INFER_FRAMES - 3 if clip == 0 else INFER_FRAMES
        err = _max_abs(ours["video"][:, first:first + n], want[:, first:first + n])
        assert err <= CHAIN_TOLERANCE, f"clip {clip}: max-abs {err:.3g} > {CHAIN_TOLERANCE}"
        first += n
