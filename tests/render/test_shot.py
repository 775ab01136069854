"""End-to-end single-shot rendering on the tiny model, clip-loop semantics, and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from render.media.video import probe_video
from render.model.checkpoint import CheckpointError
from render.model.clip_loop import ChainState, clip_seed, initial_chain_state
from render.model.components import S2VModels
from render.settings import RenderSettings
from render.shot.condition import condition_segment
from render.shot.pipeline import render_shot
from render.shot.plan import plan_segments, plan_shot
from render.shot.sizing import output_size, parse_size
from s2v.cli import main

FAST = dict(size="64*64", steps=2)


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return S2VModels(tiny_ckpt, device="cpu")


def test_render_shot_writes_verified_mp4_with_audio(pipe, demo_media, tmp_path):
    audio, image = demo_media
    out = tmp_path / "shot.mp4"
    r = render_shot(pipe, audio, image, "a face talks", out, RenderSettings(**FAST), progress=False)
    info = probe_video(out)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert abs(info.frames - 3.0 * 16) <= 1 and abs(info.duration_s - 3.0) <= 1 / 16
    assert info.audio_duration_s == pytest.approx(3.0, abs=0.07)  # AAC pads to whole 1024-sample frames
    assert (r.height, r.width) == (64, 64) and r.clips == 1
    assert [p.name for p in tmp_path.iterdir()] == ["shot.mp4"]  # no temporary files left


def test_same_seed_same_video_and_resume_mid_chain_is_identical(pipe, demo_media):
    audio, image = demo_media
    s = RenderSettings(**FAST, infer_frames=16, motion_frames=9)
    plan = plan_shot(audio, image, s)
    assert plan.num_clips == 3
    shot = condition_segment(pipe, plan, 0, audio, image, "a face talks", s)
    r = pipe.chain_renderer(s, progress=False)
    st = initial_chain_state(s, shot)
    clips = []
    for _ in range(3):
        v, st = r.render_clip(shot, st)
        clips.append(v)
    # Resume after clip 1 from a persisted state (motion latents only, as a segment checkpoint).
    st = initial_chain_state(s, shot)
    _, st = r.render_clip(shot, st)
    lat = st.ensure_motion_latents(pipe.vae).clone()
    resumed = ChainState(st.next_clip, torch.zeros_like(st.motion_pixels), motion_latents=lat)
    v1, _ = r.render_clip(shot, resumed)
    assert torch.equal(v1, clips[1])
    assert all(c.shape[1] == 16 for c in clips)


def _sequential_plan(h0, w0, seconds, s):
    silence = np.zeros(int(round(seconds * 16000)), np.float32)
    return plan_segments(silence, s, mode="sequential").with_geometry(*output_size(h0, w0, parse_size(s.size)))


def test_frame_offset_and_clip_count():
    s = RenderSettings()
    # 10 s of audio at 16 fps = 160 frames = exactly 2 clips of 80 (the official count renders 3).
    assert _sequential_plan(480, 832, 10.0, s).num_clips == 2
    assert _sequential_plan(480, 832, 10.01, s).num_clips == 3
    assert _sequential_plan(480, 832, 0.5, s).num_clips == 1
    # Official frame drop: clip 0 keeps 77 frames, so 80 frames need 2 clips.
    s_off = RenderSettings(official_frame_drop=True)
    assert _sequential_plan(480, 832, 5.0, s_off).num_clips == 2
    assert _sequential_plan(480, 832, 77 / 16, s_off).num_clips == 1
    plan = _sequential_plan(1080, 1920, 3.3, s)
    assert (plan.height, plan.width) == (448, 832) and plan.total_frames == math.ceil(3.3 * 16)


def test_clip_seeds():
    assert clip_seed(42, 0, 0) == 42 and clip_seed(42, 0, 3) == 45  # official seed + clip
    assert clip_seed(42, 1, 0) != clip_seed(42, 2, 0) != clip_seed(43, 1, 0)


def test_zero_offset_keeps_every_frame_official_drop_keeps_77(pipe):
    from render.model.clip_loop import ChainRenderer

    r = ChainRenderer(pipe.dit, pipe.vae, RenderSettings(), "cpu")
    assert r.frames_kept(0) == 80 and r.frames_kept(1) == 80
    r_off = ChainRenderer(pipe.dit, pipe.vae, RenderSettings(official_frame_drop=True), "cpu")
    assert r_off.frames_kept(0) == 77 and r_off.frames_kept(1) == 80


def _cli(tiny_ckpt, audio, image, out, *extra):
    return main(["render-shot", "--ckpt", str(tiny_ckpt), "--audio", str(audio), "--image", str(image),
                 "--prompt", "p", "--out", str(out), "--quiet", "--size", "64*64", "--steps", "1", *extra])


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--steps", "0"], "steps=0"),
        (["--guidance", "nan"], "guidance=nan"),
        (["--guidance", "inf"], "guidance=inf"),
        (["--seed", "-1"], "seed=-1"),
        (["--seed", str(2**32)], "seed=4294967296"),
        (["--size", "banana"], "size 'banana'"),
        (["--size", "10*10"], "below the minimum"),
        (["--device", "cpu", "--fp8"], "--fp8 needs a CUDA device"),
        (["--device", "cpu", "--fp8-attention"], "--fp8-attention needs a CUDA device"),
    ],
)
def test_cli_rejects_bad_values_without_output(tiny_ckpt, demo_media, tmp_path, capsys, extra, needle):
    audio, image = demo_media
    out = tmp_path / "o.mp4"
    assert _cli(tiny_ckpt, audio, image, out, *extra) == 2
    assert needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_name_the_bad_file(tiny_ckpt, demo_media, tmp_path, capsys):
    audio, image = demo_media
    out = tmp_path / "o.mp4"
    empty = tmp_path / "empty.wav"
    from tinymodel.demo_assets import write_wav

    write_wav(empty, torch.zeros(0).numpy())
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    bad_img = tmp_path / "bad.png"
    bad_img.write_bytes(b"\x89PNG garbage")
    for args, needle in [
        ((tiny_ckpt, empty, image), "empty.wav"),
        ((tiny_ckpt, text, image), "notes.wav"),
        ((tiny_ckpt, audio, bad_img), "bad.png"),
        ((tiny_ckpt, tmp_path / "missing.wav", image), "missing.wav"),
    ]:
        assert _cli(*args, out) == 2
        assert needle in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "empty.wav", "notes.wav"]


def test_incomplete_checkpoint_lists_missing_parts(tiny_ckpt, tmp_path):
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, d)
    (d / "Wan2.1_VAE.pth").unlink()
    shutil.rmtree(d / "google")
    with pytest.raises(CheckpointError, match=r"Wan2.1_VAE.pth \(VAE\).*google/umt5-xxl/"):
        S2VModels(d)


def test_demo_command_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path), "--seconds", "1.5", "--size", "64*64", "--steps", "1",
                 "--quiet"]) == 0
    assert "demo video:" in capsys.readouterr().out
    info = probe_video(tmp_path / "demo.mp4")
    assert abs(info.frames - 24) <= 1 and info.audio_codec == "aac"


def test_decode_context_option(pipe, demo_media):
    """Warming the decoder with all motion latents is the official path; fewer is an option."""
    audio, image = demo_media
    base = dict(**FAST, infer_frames=16, motion_frames=13)  # 4 motion latents
    outs = {}
    for k in (None, 4, 1):
        s = RenderSettings(**base, decode_context_latents=k)
        plan = plan_shot(audio, image, s)
        shot = condition_segment(pipe, plan, 0, audio, image, "a face talks", s)
        r = pipe.chain_renderer(s, progress=False)
        st = initial_chain_state(s, shot)
        _, st = r.render_clip(shot, st)
        outs[k], _ = r.render_clip(shot, st)  # clip 1 decodes with motion context
    assert torch.equal(outs[None], outs[4])
    assert outs[1].shape == outs[None].shape
    assert not torch.equal(outs[1], outs[None])
    with pytest.raises(ValueError, match="decode_context_latents=0"):
        RenderSettings(decode_context_latents=0)
