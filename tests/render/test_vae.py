"""Wan2.1 VAE: golden parity (tiny dim-8 checkpoint), key inventory, streaming, loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from render.model.checkpoint import CheckpointError
from render.model.vae import LATENT_STD, WanVAE, build_vae_skeleton, load_vae

TOL = 1e-4


@pytest.fixture(scope="module")
def vae_ckpt(golden_vae_t5_dir: Path) -> Path:
    return golden_vae_t5_dir / "vae" / "Wan2.1_VAE.pth"


@pytest.fixture(scope="module")
def golden(golden_vae_t5_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_vae_t5_dir / "vae" / "vae_golden.safetensors"))


@pytest.fixture(scope="module")
def vae(vae_ckpt: Path) -> WanVAE:
    return load_vae(vae_ckpt)


def _max_abs(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != golden {tuple(want.shape)}"
    assert got.dtype == torch.float32
    err = (got - want).abs().max().item()
    print(f"{name}: max-abs {err:.3e}")
    return err


def test_scale_constants_match_official(vae: WanVAE, golden: dict[str, torch.Tensor]) -> None:
    assert torch.equal(vae.mean, golden["scale_mean"])
    assert torch.equal(torch.tensor(LATENT_STD, dtype=torch.float32), golden["std"])
    # Official scale[1] is the float32 reciprocal of std: bit-exact.
    assert torch.equal(vae.inv_std, golden["scale_inv_std"])
    assert torch.equal(1.0 / vae.inv_std, 1.0 / golden["scale_inv_std"])


@pytest.mark.parametrize(
    "case, normalize",
    # enc73: the S2V motion buffer, 73 pixel frames -> 19 latents; 24 px high -> 3 latent rows.
    [("enc13_out_latent", True), ("enc13_out_mu_unnormalised", False), ("enc73_out_latent", True)],
)
def test_encode_golden(vae: WanVAE, golden: dict[str, torch.Tensor], case: str, normalize: bool) -> None:
    video = golden[case.split("_out_")[0] + "_in_video"]
    got = vae.encode(video, normalize=normalize)
    assert _max_abs(case, got, golden[case]) <= TOL


@pytest.mark.parametrize(
    "case, clamp",
    [("dec5_out_video_raw", False), ("dec8_out_video_raw", False), ("dec8_out_video_clamped", True)],
)
def test_decode_golden(vae: WanVAE, golden: dict[str, torch.Tensor], case: str, clamp: bool) -> None:
    latents = golden[case.split("_out_")[0] + "_in_latent"]
    got = vae.decode(latents, clamp=clamp)
    assert _max_abs(case, got, golden[case]) <= TOL
    if clamp:
        assert got.abs().max().item() <= 1.0


def test_decode_stream_equals_decode(vae: WanVAE) -> None:
    latents = torch.randn(16, 4, 2, 3)
    chunks = list(vae.decode_stream(latents))
    assert [c.shape[1] for c in chunks] == [1] + [4] * (latents.shape[1] - 1)
    whole = vae.decode(latents)
    assert torch.equal(torch.cat(chunks, dim=1), whole)
    # Caches are per call: a second call (and one interleaved with another stream) is identical.
    other = vae.decode_stream(latents[:, :3])
    next(other)
    assert torch.equal(vae.decode(latents), whole)


@pytest.mark.parametrize("frames", [1, 3, 4, 8, 11, 13])
def test_decode_tail_equals_the_end_of_decode(vae: WanVAE, frames: int) -> None:
    latents = torch.randn(16, 4, 2, 3)  # 13 frames: chunks of 1, 4, 4, 4
    tail = vae.decode_tail(latents, frames)
    assert tail.device.type == "cpu" and torch.equal(tail, vae.decode(latents)[:, -frames:])


def test_batched_equals_unbatched(vae: WanVAE) -> None:
    videos = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    batched = vae.encode(videos)
    assert batched.shape == (2, 16, 2, 2, 3)
    for i in range(2):
        torch.testing.assert_close(batched[i], vae.encode(videos[i]), atol=1e-5, rtol=1e-5)
    latents = torch.randn(2, 16, 2, 2, 3)
    decoded = vae.decode(latents)
    assert decoded.shape == (2, 3, 5, 16, 24)
    for i in range(2):
        torch.testing.assert_close(decoded[i], vae.decode(latents[i]), atol=1e-5, rtol=1e-5)


def test_single_frame_round_trip_shapes(vae: WanVAE) -> None:
    # Reference image path: one frame -> one latent -> one frame.
    z = vae.encode(torch.zeros(3, 1, 8, 16))
    assert z.shape == (16, 1, 1, 2)
    assert vae.decode(z).shape == (3, 1, 8, 16)


@pytest.mark.parametrize("shape", [(3, 12, 16, 16), (4, 5, 16, 16), (3, 5, 12, 16), (3, 16, 16)])
def test_encode_rejects_bad_video(vae: WanVAE, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        vae.encode(torch.zeros(shape))


def test_decode_rejects_bad_latents(vae: WanVAE) -> None:
    with pytest.raises(ValueError, match="16 channels"):
        vae.decode_stream(torch.zeros(8, 2, 2, 2))


def test_bf16_close_to_fp32_golden(vae_ckpt: Path, golden: dict[str, torch.Tensor]) -> None:
    vae16 = load_vae(vae_ckpt, dtype=torch.bfloat16)
    assert vae16.dtype == torch.bfloat16
    # Both directions are causal in time, so a prefix of the input gives a prefix of the golden
    # output (keeps slow CPU bf16 convs short).
    for name, got, want in [
        ("enc13_out_latent", vae16.encode(golden["enc13_in_video"][:, :5]), golden["enc13_out_latent"][:, :2]),
        (
            "dec8_out_video_raw",
            vae16.decode(golden["dec8_in_latent"][:, :3], clamp=False),
            golden["dec8_out_video_raw"][:, :9],
        ),
    ]:
        rel = ((got - want).norm() / want.norm()).item()
        print(f"bf16 {name}: max-abs {(got - want).abs().max().item():.3e}, rel-L2 {rel:.3e}")
        assert rel < 0.05


def test_to_moves_and_casts(vae_ckpt: Path) -> None:
    v = load_vae(vae_ckpt).to(torch.bfloat16)
    assert v.dtype == torch.bfloat16 and v.device.type == "cpu"
    assert v.mean.dtype == torch.float32


def test_skeleton_matches_release_inventory(golden_root: Path) -> None:
    entries = json.loads((golden_root / "vae_wan21_state_dict.json").read_text())
    want = {e["key"]: tuple(e["shape"]) for e in entries}
    assert len(want) == 194
    model = build_vae_skeleton()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(v.is_meta for v in model.state_dict().values())
    assert sorted(got) == sorted(want)
    assert got == want
    assert sum(v.numel() for v in model.state_dict().values()) == 126_892_531


def test_infers_tiny_width(vae: WanVAE) -> None:
    assert vae.model.encoder.conv1.weight.shape[0] == 8
    assert sum(p.numel() for p in vae.model.parameters()) == 924_491


def _save_modified(vae_ckpt: Path, tmp_path: Path, edit) -> Path:
    state = torch.load(vae_ckpt, map_location="cpu", weights_only=True)
    edit(state)
    out = tmp_path / "Wan2.1_VAE.pth"
    torch.save(state, out)
    return out


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("decoder.head.2.bias"), r"missing keys: decoder\.head\.2\.bias"),
        (lambda s: s.__setitem__("encoder.extra.weight", torch.zeros(1)), r"unexpected keys: encoder\.extra"),
        (
            lambda s: s.__setitem__("conv2.weight", torch.zeros(16, 16, 3, 1, 1)),
            r"wrong shapes: conv2\.weight \[16, 16, 3, 1, 1\] \(expected \[16, 16, 1, 1, 1\]\)",
        ),
        (lambda s: s.pop("encoder.conv1.weight"), r"'encoder\.conv1\.weight' is missing"),
    ],
    ids=["missing", "extra", "shape", "no-dim-key"],
)
def test_bad_checkpoint_raises(vae_ckpt: Path, tmp_path: Path, edit, message: str) -> None:
    bad = _save_modified(vae_ckpt, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_vae(bad)
    assert str(bad) in str(info.value)


def test_not_a_file_raises(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        load_vae(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vae(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_vae(garbage)
