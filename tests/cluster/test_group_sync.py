"""The render group's consistency check without Ray: ranks that sampled different latents are
detected after the clip, before the writer decodes or writes anything of it; a healthy group
commits the segment with the VAE on the writer only."""

from __future__ import annotations

import pytest

from parallel.launch import spawn
from tests.cluster import group_workers


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from tests.cluster.helpers import make_media

    audios, images = make_media(tmp_path_factory.mktemp("group-media"), [2.0])
    return str(audios[0]), str(images[0])


@pytest.mark.timeout(90)
def test_a_diverged_rank_is_detected_before_the_clip_is_written(tiny_ckpt, media, tmp_path):
    audio, image = media
    per_rank = spawn(group_workers.diverged_segment_worker, 2, str(tiny_ckpt), audio, image, str(tmp_path), 1,
                     timeout_s=80)
    for rank, r in enumerate(per_rank):
        assert r["error"] is not None and "ranks [1] diverged from writer rank 0" in r["error"], (rank, r)
        assert "segment 0 clip 0: sampled latents" in r["error"]
    assert per_rank[0]["files"] == []  # nothing of the clip was committed


@pytest.mark.timeout(90)
def test_a_healthy_group_commits_with_the_vae_on_the_writer_only(tiny_ckpt, media, tmp_path):
    audio, image = media
    per_rank = spawn(group_workers.diverged_segment_worker, 2, str(tiny_ckpt), audio, image, str(tmp_path), None,
                     timeout_s=80)
    writer, other = per_rank
    assert writer["error"] is None and other["error"] is None
    assert writer["files"] == ["clip_0000.mp4", "clip_0001.mp4", "segment.json"]
    assert writer["clips"] == other["clips"] == 2
    assert writer["vae_loaded"] and not other["vae_loaded"]
