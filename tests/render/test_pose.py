"""Pose-video condition: stride sampling, padding, per-clip latents, and its effect on the render."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from render.media.pose import PoseVideoError, iter_pose_frames, pose_latents
from render.model.components import S2VModels
from render.model.vae import load_vae
from render.settings import RenderSettings
from render.shot.condition import condition_segment
from render.shot.plan import plan_shot


def _write_video(path, frames: int, fps: int, size=(48, 64)) -> None:
    h, w = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "0"}
        for i in range(frames):
            img = np.full((h, w, 3), (i * 7) % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def test_stride_follows_source_fps(tmp_path):
    v = tmp_path / "pose32.mp4"
    _write_video(v, 20, 32)
    got = list(iter_pose_frames(v, 32, 32))
    assert len(got) == 10  # stride round(32 / 16) = 2
    assert got[0].shape == (32, 32, 3)
    assert abs(int(got[1][0, 0, 0]) - 14) <= 2  # the 3rd source frame (value 2 * 7)


def test_pose_latents_shape_and_padding(tmp_path, tiny_ckpt):
    vae = load_vae(tiny_ckpt / "Wan2.1_VAE.pth")
    v = tmp_path / "pose.mp4"
    _write_video(v, 6, 16)
    lat = pose_latents(vae, v, 64, 64, num_clips=2, infer_frames=8)
    assert lat.shape == (1, 16, 4, 8, 8)
    # The second clip has no frames: it encodes black (-1) frames, same as an all -1 clip.
    black = torch.full((3, 9, 64, 64), -1.0)
    ref = vae.encode(black)[:, 1:]
    assert torch.allclose(lat[0, :, 2:], ref, atol=1e-5)


def test_bad_pose_video_is_named(tmp_path, tiny_ckpt):
    vae = load_vae(tiny_ckpt / "Wan2.1_VAE.pth")
    bad = tmp_path / "pose.mp4"
    bad.write_text("nope")
    with pytest.raises(PoseVideoError, match="pose.mp4"):
        pose_latents(vae, bad, 64, 64, 1, 8)
    with pytest.raises(PoseVideoError, match="not found"):
        pose_latents(vae, tmp_path / "missing.mp4", 64, 64, 1, 8)


def test_pose_changes_the_render(tmp_path, tiny_ckpt, demo_media):
    audio, image = demo_media
    v = tmp_path / "pose.mp4"
    _write_video(v, 40, 16)
    pipe = S2VModels(tiny_ckpt)
    s = RenderSettings(size="64*64", steps=1, infer_frames=8, motion_frames=5)
    plan = plan_shot(audio, image, s)
    with_pose = condition_segment(pipe, plan, 0, audio, image, "p", s, pose_video=v)
    without = condition_segment(pipe, plan, 0, audio, image, "p", s)
    assert with_pose.pose_latents.shape[2] == plan.num_clips * 2
    r = pipe.chain_renderer(s, progress=False)
    from render.model.clip_loop import initial_chain_state

    a, _ = r.render_clip(with_pose, initial_chain_state(s, with_pose))
    b, _ = r.render_clip(without, initial_chain_state(s, without))
    assert not torch.allclose(a, b)
