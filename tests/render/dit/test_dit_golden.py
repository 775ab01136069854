"""DiT parity with the official outputs (tests/data/wan_s2v/golden), fp32 max-abs <= 1e-4."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from render.model.dit import load_dit
from render.model.dit.rope import rope_cos_sin, token_segments

TOL = 1e-4


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_dit(golden_dir, dtype=torch.float32), load_file(golden_dir / "inputs_outputs.safetensors")


CASES = {
    "out_motion": dict(drop=False, ctx="in_context", audio_scale=1.0),
    "out_drop_motion": dict(drop=True, ctx="in_context", audio_scale=1.0),
    "out_uncond_motion": dict(drop=False, ctx="in_context_null", audio_scale=0.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_official_call_matches_golden(golden, name):
    model, io = golden
    c = CASES[name]
    with torch.inference_mode():
        out = model(
            [io["in_x"]], io["in_t"], [io[c["ctx"]]], io["in_ref_latents"], io["in_motion_latents"],
            io["in_cond_states"], c["audio_scale"] * io["in_audio_input"],
            motion_frames=[73, 19], drop_motion_frames=c["drop"],
        )
    err = (out - io[name]).abs().max().item()
    print(f"{name}: max-abs {err:.3g}")
    assert out.dtype == torch.float32 and out.shape == io[name].shape
    assert err <= TOL


def test_cfg_batch_of_two_equals_two_single_passes(golden):
    """Conditional and unconditional passes as one batch of 2 give the same numbers."""
    model, io = golden
    audio = io["in_audio_input"]
    with torch.inference_mode():
        cond = model.prepare(
            io["in_x"].shape, [io["in_context"], io["in_context_null"]],
            io["in_ref_latents"].expand(2, -1, -1, -1, -1), io["in_motion_latents"].expand(2, -1, -1, -1, -1),
            io["in_cond_states"].expand(2, -1, -1, -1, -1), torch.cat([audio, 0 * audio]),
        )
        out = model.denoise(io["in_x"][None].expand(2, -1, -1, -1, -1), io["in_t"], cond)
    assert (out[0] - io["out_motion"]).abs().max() <= TOL
    assert (out[1] - io["out_uncond_motion"]).abs().max() <= TOL


def test_cached_context_kv_is_the_same_math(golden):
    model, io = golden
    with torch.inference_mode():
        args = (io["in_x"].shape, [io["in_context"]], io["in_ref_latents"], io["in_motion_latents"],
                io["in_cond_states"], io["in_audio_input"])
        plain = model.denoise(io["in_x"], io["in_t"], model.prepare(*args))
        cached = model.denoise(io["in_x"], io["in_t"], model.prepare(*args, cache_context_kv=True))
    assert torch.equal(plain, cached)


@pytest.mark.parametrize("drop,key", [(False, "dbg_rope_freqs_motion"), (True, "dbg_rope_freqs_drop_motion")])
def test_rope_table_matches_golden(golden, drop, key):
    model, io = golden
    ref = io[key][0, :, 0]  # [L, pairs, (re, im)], identical for every head
    cos, sin = rope_cos_sin(token_segments(3, 8, 8, not drop, 16, 16), model.cfg.head_dim)
    assert cos.shape == ref.shape[:2]
    assert (cos.double() - ref[..., 0]).abs().max() < 1e-7
    assert (sin.double() - ref[..., 1]).abs().max() < 1e-7


def test_audio_encoder_matches_golden(golden):
    model, io = golden
    with torch.inference_mode():
        loc, glob = model.casual_audio_encoder(io["in_audio_input"], 73, 19)
    assert (loc - io["dbg_audio_emb_local_motion"]).abs().max() <= TOL
    assert (glob - io["dbg_audio_emb_global_motion"]).abs().max() <= TOL
