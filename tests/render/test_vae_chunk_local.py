"""Chunk-local VAEs (all past temporal taps zero): detection, independence of chunks, and the
clip loop's short decode context for them (same pixels as the official full context)."""

from __future__ import annotations

import pytest
import torch

from render.model.vae.model import WanVAEModel, is_chunk_local, past_temporal_taps
from render.model.vae.wrapper import WanVAE
from render.settings import RenderSettings
from render.shot.condition import condition_segment
from render.shot.plan import plan_shot


def _chunk_local_vae(seed: int = 0) -> WanVAEModel:
    torch.manual_seed(seed)
    vae = WanVAEModel(dim=4).eval()
    with torch.no_grad():
        for w, taps in past_temporal_taps(vae):
            w[:, :, taps] = 0
    return vae


def test_taps_cover_every_temporal_conv_and_detection() -> None:
    torch.manual_seed(0)
    vae = WanVAEModel(dim=4)
    taps = past_temporal_taps(vae)
    # 3-tap convs of encoder + decoder, 2 downsample3d time convs (tap 0 only), 2 upsample3d (taps 0-1).
    assert sum(1 for _, s in taps if s == slice(0, 1)) == 2
    assert all(w.shape[2] == 3 for w, _ in taps)
    assert not is_chunk_local(vae)
    assert is_chunk_local(_chunk_local_vae())
    one = _chunk_local_vae()
    with torch.no_grad():
        past_temporal_taps(one)[-1][0][0, 0, 0, 0, 0] = 1e-6  # a single non-zero past tap
    assert not is_chunk_local(one)
    assert not WanVAE(WanVAEModel(dim=4)).chunk_local and WanVAE(_chunk_local_vae()).chunk_local


@torch.no_grad()
def test_chunk_local_decode_and_encode_ignore_history() -> None:
    vae = _chunk_local_vae()
    z = torch.randn(1, 16, 6, 4, 4)
    full = list(vae.decode_stream(z))
    for i in range(1, 6):
        # Latent i after a different single warm-up latent: the same 4 frames.
        short = list(vae.decode_stream(torch.cat([torch.randn(1, 16, 1, 4, 4), z[:, :, i:i + 1]], 2)))
        torch.testing.assert_close(short[1], full[i], rtol=0, atol=1e-6)
    video = torch.rand(1, 3, 1 + 4 * 5, 32, 32) * 2 - 1
    mu = vae.encode_mu(video)
    other = video.clone()
    other[:, :, :9] = torch.rand(1, 3, 9, 32, 32)  # change the first three chunks only
    mu2 = vae.encode_mu(other)
    torch.testing.assert_close(mu2[:, :, 3:], mu[:, :, 3:], rtol=0, atol=1e-6)
    assert not torch.allclose(mu2[:, :, :3], mu[:, :, :3])
    # The release-style VAE (temporal taps free) does depend on history: the test can fail.
    torch.manual_seed(0)
    free = WanVAEModel(dim=4).eval()
    assert not torch.allclose(free.encode_mu(other)[:, :, 3:], free.encode_mu(video)[:, :, 3:], atol=1e-4)


def test_clip_loop_decodes_one_context_latent_for_chunk_local_vae(tiny_ckpt, demo_media, monkeypatch) -> None:
    from render.model.clip_loop import initial_chain_state
    from render.model.components import S2VModels

    audio, image = demo_media
    pipe = S2VModels(tiny_ckpt, device="cpu")
    with torch.no_grad():
        for w, taps in past_temporal_taps(pipe.vae.model):
            w[:, :, taps] = 0
    del pipe.vae._chunk_local  # decided at load; these weights were edited after it
    assert pipe.vae.chunk_local
    decoded = []
    real_decode = pipe.vae.decode_stream  # what every decode runs
    monkeypatch.setattr(pipe.vae, "decode_stream", lambda z, **kw: decoded.append(z.shape[1]) or real_decode(z, **kw))
    outs = {}
    for k in (None, 4):  # 4 = every motion latent = the official full context
        s = RenderSettings(size="64*64", steps=2, infer_frames=16, motion_frames=13, decode_context_latents=k)
        plan = plan_shot(audio, image, s)
        shot = condition_segment(pipe, plan, 0, audio, image, "a face talks", s)
        r = pipe.chain_renderer(s, progress=False)
        st = initial_chain_state(s, shot)
        _, st = r.render_clip(shot, st)
        decoded.clear()
        outs[k], _ = r.render_clip(shot, st)
        assert decoded == [1 + 4 if k is None else 4 + 4]
    torch.testing.assert_close(outs[None], outs[4], rtol=0, atol=1e-5)


@torch.no_grad()
def test_frame_local_convs_equal_the_3d_convs_and_refuse_temporal_vaes() -> None:
    from render.model.vae.model import use_frame_local_convs

    vae = _chunk_local_vae(1)
    video = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    z = vae.encode_mu(video)
    rec = torch.cat(list(vae.decode_stream(z)), 2)
    assert use_frame_local_convs(vae) > 30
    torch.testing.assert_close(vae.encode_mu(video), z, rtol=0, atol=2e-5)
    torch.testing.assert_close(torch.cat(list(vae.decode_stream(z)), 2), rec, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="non-zero past temporal taps"):
        use_frame_local_convs(WanVAEModel(dim=4))
    # The wrapper switches a chunk-local VAE on load, and leaves a temporal one alone.
    from render.model.vae.layers import CausalConv3d

    wrapped = WanVAE(_chunk_local_vae(2))
    assert any(m.frame_local for m in wrapped.model.modules() if isinstance(m, CausalConv3d))
    free = WanVAE(WanVAEModel(dim=4))
    assert not any(m.frame_local for m in free.model.modules() if isinstance(m, CausalConv3d))


def test_frame_local_training_gradients_match_masked_3d_convs() -> None:
    from render.model.vae.model import use_frame_local_convs

    a = _chunk_local_vae(3)
    b = _chunk_local_vae(3)
    use_frame_local_convs(b)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    for m in (a, b):
        m.zero_grad()
        torch.cat(list(m.decode_stream(m.encode_mu(video))), 2).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        ga, gb = pa.grad, pb.grad
        if ga is None:
            assert gb is None or not gb.any(), name
            continue
        for w, taps in past_temporal_taps(a):
            if w is pa and w.shape[2] == 3 and taps == slice(0, 2):
                ga = ga[:, :, 2:]
                gb = gb[:, :, 2:]
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6, msg=name)
