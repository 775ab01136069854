"""Loading the Wan2.1 VAE checkpoint and the public encode/decode API (normalised latents).

Latent normalisation follows the official wrapper exactly: encode returns (mu - mean) * (1/std)
with the float32 reciprocal of std, decode starts from z / (1/std) + mean; both in fp32. Outputs
are always float32 whatever the compute dtype (the S2V pipeline keeps latents and pixels in fp32).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from render.model.checkpoint import CheckpointError
from render.model.checkpoint_keys import key_mismatches, short_list
from render.model.vae.model import (
    FRAMES_PER_LATENT,
    SPATIAL_FACTOR,
    WanVAEModel,
    build_vae_skeleton,
    is_chunk_local,
    use_frame_local_convs,
)

# Per-channel latent statistics of the Wan2.1 VAE (constants of the official wrapper, not stored
# in the checkpoint).
LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
Z_DIM = len(LATENT_MEAN)
# The key whose shape reveals the base width: encoder.conv1 maps 3 RGB channels to `dim`.
_DIM_KEY = "encoder.conv1.weight"


class WanVAE:
    """Wan2.1 VAE with normalised latents. Videos are [3, T, H, W] (or [B, 3, T, H, W]) in [-1, 1]."""

    def __init__(self, model: WanVAEModel) -> None:
        self.model = model.eval().requires_grad_(False)
        device = self.device
        self.mean = torch.tensor(LATENT_MEAN, dtype=torch.float32, device=device)
        # Official: scale = [mean, 1.0 / std], the reciprocal taken in float32.
        self.inv_std = (1.0 / torch.tensor(LATENT_STD, dtype=torch.float32)).to(device)
        if device.type != "meta":
            self.chunk_local  # noqa: B018 - decide once, and switch such a VAE to its 2-D convs
        # Opt-in spatial tiling of the decode: (tile, overlap) in latent pixels, None = whole frames.
        self.decode_tiles: tuple[int, int] | None = None

    def set_decode_tiles(self, tile: int | None, overlap: int | None = None) -> None:
        """Decode in spatial tiles of ``tile`` x ``tile`` latents (``overlap`` shared and blended;
        default 8, at most half a tile); None decodes whole frames (the default, the official
        decode). Tiled pixels differ slightly from whole-frame ones; the decode's peak memory is
        that of one tile."""
        if tile is None:
            self.decode_tiles = None
            return
        if overlap is None:
            overlap = min(8, tile // 2)
        from render.model.vae.tiling import tile_spans

        tile_spans(tile + 1, tile, overlap)  # checks the values
        self.decode_tiles = (tile, overlap)

    @property
    def chunk_local(self) -> bool:
        """Whether each latent decodes independently of the latents before it (all past temporal
        taps zero, as in the bundled tiny model; never the release VAE). Checked once; such a VAE
        then runs its 3-tap causal convs as per-frame 2-D convs (same values, 1/3 of the work)."""
        if not hasattr(self, "_chunk_local"):
            self._chunk_local = is_chunk_local(self.model)
            if self._chunk_local:
                use_frame_local_convs(self.model)
        return self._chunk_local

    @property
    def device(self) -> torch.device:
        return self.model.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.conv1.weight.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> WanVAE:
        """Move (and/or cast) the weights; the latent statistics stay float32. Returns self."""
        if isinstance(device, torch.dtype):  # allow vae.to(torch.bfloat16)
            device, dtype = None, device
        self.model.to(device=device, dtype=dtype)
        self.mean = self.mean.to(self.device)
        self.inv_std = self.inv_std.to(self.device)
        return self

    def _channel_view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, Z_DIM, 1, 1, 1)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Video with T = 1 + 4k frames -> float32 latents [16, 1 + k, H/8, W/8] (batched if input is).

        ``normalize=False`` returns the raw posterior mean (for debugging / parity checks).
        """
        batched = _check_video(video)
        x = video if batched else video.unsqueeze(0)
        mu = self.model.encode_mu(x.to(device=self.device, dtype=self.dtype)).float()
        if normalize:
            mu = (mu - self._channel_view(self.mean)) * self._channel_view(self.inv_std)
        return mu if batched else mu[0]

    def decode_stream(self, latents: torch.Tensor, *, clamp: bool = True) -> Iterator[torch.Tensor]:
        """Yield float32 pixel chunks in order: 1 frame for the first latent, then 4 per latent.

        Chunks are [3, n, 8h, 8w] (or [B, 3, n, 8h, 8w]); concatenated along time they equal
        ``decode(latents)``. Only the decoder's small per-layer history is held between chunks.
        """
        batched = _check_latents(latents)  # eagerly, so bad input fails at the call, not at next()
        z = latents if batched else latents.unsqueeze(0)
        z = z.to(device=self.device, dtype=torch.float32)
        z = z / self._channel_view(self.inv_std) + self._channel_view(self.mean)
        return self._decode_chunks(z.to(self.dtype), batched, clamp)

    @torch.no_grad()
    def _decode_chunks(self, z: torch.Tensor, batched: bool, clamp: bool) -> Iterator[torch.Tensor]:
        if self.decode_tiles is None:
            stream = self.model.decode_stream(z)
        else:
            from render.model.vae.tiling import decode_stream_tiled

            stream = decode_stream_tiled(self.model, z, *self.decode_tiles)
        for chunk in stream:
            chunk = chunk.float()
            if clamp:
                chunk = chunk.clamp_(-1.0, 1.0)
            yield chunk if batched else chunk[0]

    def decode_tail(self, latents: torch.Tensor, frames: int) -> torch.Tensor:
        """The last ``frames`` frames of ``decode(latents)`` (unbatched), float32 on the CPU.

        Chunks before them are dropped as they come and the kept ones leave the device at once,
        so the device holds one chunk of pixels, not the whole decode (a clip with its motion
        context is 153 frames: 1.7 GB in float32 at 1280x704).
        """
        if latents.dim() != 4:
            raise ValueError(f"decode_tail takes unbatched latents [{Z_DIM}, F, h, w], got {tuple(latents.shape)}")
        start = 1 + FRAMES_PER_LATENT * (latents.shape[1] - 1) - frames
        kept, pos = [], 0
        for chunk in self.decode_stream(latents):
            n = chunk.shape[1]
            if pos + n > start:
                kept.append(chunk[:, max(0, start - pos):].cpu())
            pos += n
        return torch.cat(kept, dim=1)

    def decode(self, latents: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Latents [16, F, h, w] (or batched) -> float32 video [3, 1 + 4(F-1), 8h, 8w] in [-1, 1].

        ``clamp=False`` returns the raw decoder output (for parity checks).
        """
        chunks = list(self.decode_stream(latents, clamp=clamp))
        return torch.cat(chunks, dim=chunks[0].dim() - 3)


def _check_video(video: torch.Tensor) -> bool:
    """Validate a pixel video; return whether it has a batch dimension."""
    if not isinstance(video, torch.Tensor) or video.dim() not in (4, 5) or not video.is_floating_point():
        raise ValueError(
            f"VAE encode expects a float video [3, T, H, W] or [B, 3, T, H, W], got "
            f"{type(video).__name__} {tuple(getattr(video, 'shape', ()))} {getattr(video, 'dtype', '')}"
        )
    c, t, h, w = video.shape[-4:]
    if c != 3:
        raise ValueError(f"VAE encode: video has {c} channels at dim -4, expected 3 (RGB), shape {tuple(video.shape)}")
    if t < 1 or (t - 1) % FRAMES_PER_LATENT:
        # The official encoder silently drops trailing frames; refuse instead of losing them.
        raise ValueError(
            f"VAE encode: {t} frames; expected 1 + {FRAMES_PER_LATENT}k frames (e.g. 1, 73, 81), "
            f"shape {tuple(video.shape)}"
        )
    if h % SPATIAL_FACTOR or w % SPATIAL_FACTOR or h == 0 or w == 0:
        raise ValueError(f"VAE encode: frame size {h}x{w} must be a positive multiple of {SPATIAL_FACTOR}")
    return video.dim() == 5


def _check_latents(latents: torch.Tensor) -> bool:
    """Validate latents; return whether they have a batch dimension."""
    if not isinstance(latents, torch.Tensor) or latents.dim() not in (4, 5) or not latents.is_floating_point():
        raise ValueError(
            f"VAE decode expects float latents [{Z_DIM}, F, h, w] or [B, {Z_DIM}, F, h, w], got "
            f"{type(latents).__name__} {tuple(getattr(latents, 'shape', ()))}"
        )
    c, f, h, w = latents.shape[-4:]
    if c != Z_DIM or f < 1 or h < 1 or w < 1:
        raise ValueError(
            f"VAE decode: latents of shape {tuple(latents.shape)}; expected {Z_DIM} channels at dim -4 "
            "and at least one frame"
        )
    return latents.dim() == 5


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(f"{path}: VAE checkpoint {what}; expected the Wan2.1_VAE.pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            try:
                # mmap: tensors are paged in only when copied to the target device/dtype.
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # corrupt file, pickle with objects, ...: say which file
        raise CheckpointError(f"{path}: cannot read as a VAE state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a plain {{key: tensor}} state dict, got {type(state).__name__}")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor) or not v.is_floating_point()]
    if not_tensors:
        raise CheckpointError(f"{path}: values that are not floating-point tensors: {short_list(not_tensors)}")
    return dict(state)


def _infer_dim(path: Path, state: Mapping[str, torch.Tensor]) -> int:
    if _DIM_KEY not in state:
        raise CheckpointError(f"{path}: key {_DIM_KEY!r} is missing; cannot infer the VAE width (dim)")
    shape = tuple(state[_DIM_KEY].shape)
    if len(shape) != 5 or shape[1] != 3 or shape[0] < 1:
        raise CheckpointError(f"{path}: key {_DIM_KEY!r} has shape {shape}, expected (dim, 3, 3, 3, 3)")
    return shape[0]


def _check_keys(path: Path, model: WanVAEModel, state: Mapping[str, torch.Tensor], dim: int) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = key_mismatches(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CheckpointError(
            f"{path}: not a Wan2.1 VAE checkpoint for the inferred width dim={dim} "
            f"({len(expected)} tensors expected): " + "; ".join(problems)
        )


def load_vae(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> WanVAE:
    """Load ``Wan2.1_VAE.pth`` (official key names) as a :class:`WanVAE` on ``device`` in ``dtype``.

    The width (96 for the release) is read from the checkpoint. Raises ``CheckpointError`` naming
    the file and the offending keys if the file is missing, unreadable or does not match.
    """
    path = Path(path)
    state = _read_state_dict(path)
    dim = _infer_dim(path, state)
    model = build_vae_skeleton(dim)
    _check_keys(path, model, state, dim)
    for key in list(state):
        # One tensor at a time to the target device/dtype (a no-op for matching mmapped tensors), so
        # memory never holds the checkpoint twice.
        state[key] = state[key].to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return WanVAE(model)
