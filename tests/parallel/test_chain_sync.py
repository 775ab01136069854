"""The render group's hand-off (``ChainSync``, parallel/chain_sync.py) on gloo processes: only
the writer rank runs the VAE and writes; the clip loop gives the single-process frames on 2 and
4 ranks; an interrupted group render resumes to the same output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parallel.launch import spawn
from tests.parallel import workers

CLIPS = 3


@pytest.fixture(scope="module")
def media(demo_media):
    return tuple(str(p) for p in demo_media)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world, dims, settings", [
    (2, dict(ulysses=2), dict(start_from_ref=True)),  # clip 0 already needs the writer's motion latents
    (4, dict(cfg=2, ulysses=2), dict()),
])
def test_clip_loop_with_hook_gives_single_process_frames(tiny_ckpt, media, world, dims, settings):
    audio, image = media
    single = workers.render_clips(str(tiny_ckpt), audio, image, None, clips=CLIPS, settings_kw=settings)
    assert single.shape == (3, CLIPS * 16, 64, 64)
    per_rank = spawn(workers.group_clips_worker, world, str(tiny_ckpt), audio, image, dims, settings, CLIPS,
                     timeout_s=100)
    frames, vae_loaded, calls, no_pixels = per_rank[0]
    err = float(np.abs(frames - single).max())
    assert err <= 1e-4, f"writer: max-abs {err:.2e} against the single-process clip loop"
    assert float(np.abs(single[:, :16] - single[:, 16:32]).max()) > 1e-2  # the clips differ: not trivial
    # The writer decodes every clip and encodes the motion frames of every clip that uses them.
    assert vae_loaded and calls["decode"] == CLIPS and not no_pixels
    assert calls["encode"] == CLIPS - (0 if settings.get("start_from_ref") else 1)
    for rank, (f, loaded, c, none) in enumerate(per_rank[1:], 1):
        assert f is None and not loaded and c == {"encode": 0, "decode": 0} and none, rank


@pytest.mark.timeout(150)
def test_group_render_resumes_after_an_interruption_with_the_same_output(tiny_ckpt, media, tmp_path):
    audio, image = media
    per_rank = spawn(workers.group_resume_worker, 2, str(tiny_ckpt), audio, image, str(tmp_path), {},
                     timeout_s=130)
    writer, other = per_rank
    n0, n1 = writer["num_clips"]
    resumed = [(0, c) for c in range(1, n0)] + [(1, c) for c in range(n1)]
    # Both ranks resumed segment 0 at the writer's committed clip and sampled the same clips.
    assert writer["sampled"] == other["sampled"] == resumed
    assert writer["returned"] and not other["returned"] and not other["vae_loaded"]
    assert writer["frames"] == 48 and writer["wa"] == writer["wb"]
    assert writer["chain"] == 48 and other["chain"] is None


@pytest.mark.timeout(60)
def test_share_tensor_round_trips_every_kind():
    got = spawn(workers.share_round_trip_worker, 2, timeout_s=50)
    assert got[0] == got[1]
    assert [g and (str(g[0]), g[1]) for g in got[1]] == [
        ("torch.float32", (1, 16, 3, 4, 5)), ("torch.bfloat16", (2, 3)), ("torch.int64", ()),
        ("torch.float32", (0, 4)), ("torch.bool", (2,)), ("torch.int32", (10,)), None]
    assert torch.tensor(got[1][2][2]) == 7
