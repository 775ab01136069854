"""A whole clip loop (clip 0 without motion, clip 1 with motion, CFG, 2 sampling steps, VAE
decode and motion hand-off) gives the same frames on 1 process and on 4 (cfg 2 x Ulysses 2)."""

from __future__ import annotations

import numpy as np
import pytest

from parallel.launch import spawn
from tests.parallel import workers


@pytest.mark.timeout(300)
# cfg_until=0.5: the second step runs the conditional branch alone (fast mode's guidance schedule),
# which a cfg-parallel rank cannot take from its half of the CFG batch.
@pytest.mark.parametrize("settings_kw", [None, dict(cfg_until=0.5)], ids=["exact", "guidance-schedule"])
def test_clip_loop_same_frames_on_1_and_4_ranks(tiny_ckpt, demo_media, settings_kw):
    audio, image = (str(p) for p in demo_media)
    single = workers.render_clips(str(tiny_ckpt), audio, image, None, settings_kw=settings_kw)
    assert single.shape == (3, 32, 64, 64)
    per_rank = spawn(workers.render_clips_worker, 4, str(tiny_ckpt), audio, image,
                     dict(cfg=2, ulysses=2), settings_kw, timeout_s=240)
    for rank, frames in enumerate(per_rank):
        err = float(np.abs(frames - single).max())
        assert err <= 1e-4, f"rank {rank}: max-abs {err:.2e} against the single-process clip loop"
    assert float(np.abs(single[:, :16] - single[:, 16:]).max()) > 1e-2  # the clips differ: not trivial
