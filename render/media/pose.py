"""Optional pose-video condition: frames → per-clip pose latents.

Frames are taken from the start of the video with a stride of round(source fps / 16), resized and
centre-cropped like the reference image, padded with black (-1) frames past the end, and encoded
per clip with a copy of the clip's first frame in front (1 + infer_frames frames → 1 + F latents,
the first latent dropped), exactly as the official pipeline does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from render.media.image import _center_crop_box, _resized_size


class PoseVideoError(ValueError):
    """The pose video cannot be used (message names the file and the problem)."""


def _resize_crop(frame: Image.Image, height: int, width: int) -> np.ndarray:
    w0, h0 = frame.size
    new_h, new_w = _resized_size(h0, w0, height, width)
    if (new_h, new_w) != (h0, w0):
        frame = frame.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.asarray(frame.crop(_center_crop_box(new_h, new_w, height, width)), dtype=np.uint8)


def iter_pose_frames(path: str | Path, height: int, width: int, target_fps: int = 16) -> Iterator[np.ndarray]:
    """Yield [H, W, 3] uint8 frames of the pose video at the official stride, resized and cropped."""
    path = Path(path)
    if not path.is_file():
        raise PoseVideoError(f"pose video {str(path)!r}: file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise PoseVideoError(f"pose video {str(path)!r}: cannot open ({e})") from None
    with container:
        if not container.streams.video:
            raise PoseVideoError(f"pose video {str(path)!r}: no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or target_fps)
        stride = max(1, round(rate / target_fps))
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i % stride == 0:
                    yield _resize_crop(frame.to_image(), height, width)
        except av.error.FFmpegError as e:
            raise PoseVideoError(f"pose video {str(path)!r}: decoding failed at frame {i}: {e}") from None


@torch.inference_mode()
def pose_latents(vae, path: str | Path, height: int, width: int, num_clips: int, infer_frames: int,
                 target_fps: int = 16) -> torch.Tensor:
    """[1, 16, num_clips * infer_frames / 4, h, w] float32 pose latents (CPU)."""
    frames = iter_pose_frames(path, height, width, target_fps)
    out = []
    got_any = False
    for _ in range(num_clips):
        clip = np.full((infer_frames, height, width, 3), 0, np.uint8)
        valid = 0
        for j in range(infer_frames):
            f = next(frames, None)
            if f is None:
                break
            clip[j] = f
            valid += 1
        got_any |= valid > 0
        x = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 255.0 * 2 - 1  # [3, T, H, W]
        x[:, valid:] = -1.0  # official pads past the end with black frames
        x = torch.cat([x[:, :1], x], dim=1)  # the clip's first frame in front
        lat = vae.encode(x.to(vae.device, vae.dtype)).float().cpu()  # [16, 1 + F, h, w]
        out.append(lat[:, 1:])
    if not got_any:
        raise PoseVideoError(f"pose video {str(path)!r}: no decodable frames")
    return torch.cat(out, dim=1)[None]
