"""ParallelDims validation and the token layout (no processes needed)."""

from __future__ import annotations

import pytest
import torch

from kernels.attention import attention_reference
from parallel import ParallelDims, ShardLayout
from parallel.attention import attention_with_lse, merge_partial
from render.model.checkpoint import DiTConfig


def test_dims_world_size_and_mesh_order():
    d = ParallelDims(ulysses=2, ring=1, cfg=2)
    assert d.world_size == 4 and d.sp == 2
    seen = set()
    for i in range(d.world_size):
        c = d.coords(i)
        assert d.index(*c) == i
        seen.add(c)
    assert len(seen) == 4
    assert d.coords(1) == (0, 0, 0, 1)  # ulysses innermost: neighbours share a sample's heads
    assert d.coords(2) == (0, 1, 0, 0)


@pytest.mark.parametrize("kw, message", [
    (dict(ulysses=3), "ulysses=3 does not divide the model's num_heads=40: choose ulysses from [1, 2, 4, 5, 8]"),
    (dict(cfg=4), "cfg=4: expected 1 or 2"),
    (dict(ring=0), "ring=0: expected an integer >= 1"),
    (dict(attention_engine="flash"), "attention_engine='flash'"),
])
def test_dims_errors_say_what_to_change(kw, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ParallelDims(**kw).validate(DiTConfig())


def test_dims_world_size_mismatch():
    with pytest.raises(ValueError, match="= 4, but the process group has 8 ranks"):
        ParallelDims(ulysses=2, cfg=2).validate(DiTConfig(), world_size=8)
    ParallelDims(ulysses=8, ring=1).validate(DiTConfig(), world_size=8)


@pytest.mark.parametrize("frames, tpf, extra, degree", [
    (20, 1560, 3874, 4), (20, 1560, 3874, 8), (20, 2816, 7040, 2), (3, 35, 80, 4), (2, 35, 35, 4), (5, 24, 0, 3),
])
def test_layout_covers_every_token_once_on_frame_boundaries(frames, tpf, extra, degree):
    lay = ShardLayout.make(frames, tpf, extra, degree)
    idx = torch.cat([lay.token_index(p) for p in range(degree)])
    assert torch.equal(idx.sort().values, torch.arange(frames * tpf + extra))
    assert all(r.num_valid <= lay.local_len for r in lay.ranks)
    assert [r.frame_start for r in lay.ranks][0] == 0 and lay.ranks[-1].frame_end == frames
    assert max(r.frames for r in lay.ranks) - min(r.frames for r in lay.ranks) <= 1
    # balanced: the padded length is the larger of an even share and the biggest frame block
    assert lay.local_len == max(lay.max_frames * tpf, -(-(frames * tpf + extra) // degree))


def test_layout_480p_on_4_ranks_pads_two_tokens_at_the_end():
    lay = ShardLayout.make(20, 1560, 3874, 4)  # 480x832, F = 20, with motion: 35074 tokens
    assert lay.local_len == 8769 and lay.padding == 2
    plan = lay.key_plan(ulysses=2, ring=2)
    assert plan.chunks == (2 * 8769, 2 * 8769 - 2)  # ring chunk 1 ends in the padding: a prefix
    plan = lay.key_plan(ulysses=1, ring=4)
    assert plan.chunks == (8769, 8769, 8769, 8767)


def test_key_plan_prefix_and_index():
    lay = ShardLayout.make(3, 35, 80, 4)  # ranks hold 47, 47, 47, 44 valid of 47
    assert lay.key_plan(ulysses=4, ring=1).chunks == (3 * 47 + 44,)
    lay = ShardLayout.make(2, 35, 35, 4)  # 35, 35, 35, 0 valid of 35
    assert lay.key_plan(ulysses=2, ring=2).chunks == (70, 35)
    lay = ShardLayout.make(4, 10, 0, 3)  # frames 2, 1, 1 -> 20, 10, 10 valid of 20: padding inside
    (sel,) = lay.key_plan(ulysses=3, ring=1).chunks
    assert torch.equal(sel, torch.cat([torch.arange(0, 20), torch.arange(20, 30), torch.arange(40, 50)]))
    k = torch.arange(60.0).reshape(1, 60, 1, 1)
    kc, _ = lay.key_plan(ulysses=3, ring=1).valid_keys(0, k, k)
    assert kc.flatten().tolist() == sel.float().tolist()


def test_merge_of_two_key_halves_is_exact():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 16, generator=g) for _ in range(3))
    k2, v2 = torch.randn(2, 5, 3, 16, generator=g), torch.randn(2, 5, 3, 16, generator=g)
    o1, l1 = attention_with_lse(q, k, v)
    o2, l2 = attention_with_lse(q, k2, v2)
    out, _ = merge_partial(*merge_partial(None, None, o1, l1), o2, l2)
    ref = attention_reference(q, torch.cat([k, k2], 1), torch.cat([v, v2], 1))
    assert (out - ref).abs().max() < 1e-5
