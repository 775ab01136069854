"""Sharded forwards on several gloo processes equal the single-process forward (fp32 max-abs ≤ 1e-4).

Cases (tests/parallel/workers.py): token counts the degrees do not divide, clip 0 (no motion
tokens, a rank holding only padding), batch 1 and 2, pose conditioning. One set of 4 processes
runs every plan: whole-world plans (Ulysses x ring 2 x 2, CFG x Ulysses, ring 4, Ulysses 4,
FSDP) and 2-rank plans on the halves [0, 1] and [2, 3] (Ulysses 2, ring 2, CFG 2).
"""

from __future__ import annotations

import time

import pytest

from parallel.launch import SpawnError, spawn
from tests.parallel import workers

TOL = 1e-4
PLANS = [
    ("ulysses2", dict(ulysses=2), [0, 1]),
    ("ring2", dict(ring=2), [2, 3]),
    ("cfg2", dict(cfg=2), [0, 1]),
    ("cfg2_fsdp", dict(cfg=2, shard_weights=True), [2, 3]),
    ("ulysses2_ring2", dict(ulysses=2, ring=2), None),
    ("cfg2_ulysses2_fsdp", dict(cfg=2, ulysses=2, shard_weights=True), None),
    ("cfg2_ring2", dict(cfg=2, ring=2), None),
    ("ring4", dict(ring=4), None),
    ("ulysses4", dict(ulysses=4), None),
    ("yunchang_ulysses2_ring2", dict(ulysses=2, ring=2, attention_engine="yunchang"), None),
    ("yunchang_ulysses4", dict(ulysses=4, attention_engine="yunchang"), None),
]


@pytest.fixture(scope="module")
def errors() -> dict[str, float]:
    per_rank = spawn(workers.forward_matrix, 4, PLANS, timeout_s=240)
    merged: dict[str, float] = {}
    for r in per_rank:
        for k, v in r.items():
            merged[k] = max(v, merged.get(k, 0.0))
    return merged


@pytest.mark.timeout(300)
@pytest.mark.parametrize("plan", [p[0] for p in PLANS])
def test_sharded_forward_equals_single_process(errors, plan):
    mine = {k: v for k, v in errors.items() if k.startswith(plan + "/")}
    assert len(mine) == len(workers.CASES), sorted(errors)
    bad = {k: v for k, v in mine.items() if not v <= TOL}
    assert not bad, f"max-abs above {TOL}: {bad}"


@pytest.mark.timeout(120)
def test_padding_keys_must_be_dropped():
    """Negative control: leaving the padding keys in attention changes the output, so the
    equality above depends on the key plan (the test can fail)."""
    err = spawn(workers.unmasked_padding_error, 4, timeout_s=100)
    assert min(err) > 1e-2


@pytest.mark.timeout(120)
def test_fsdp_holds_a_quarter_of_the_block_weights():
    held, whole = zip(*spawn(workers.sharded_weight_bytes, 4, timeout_s=100))
    assert all(0.2 * whole[0] < h < 0.3 * whole[0] for h in held), (held, whole[0])


@pytest.mark.timeout(120)
def test_attention_kernel_swap_and_deparallelize():
    for got in spawn(workers.attention_swap_and_undo, 2, timeout_s=100):
        assert got["kernels"] == 0 and got["leftovers"] == 0, got
        assert got["swapped"] <= TOL, got
        assert got["undone"] == 0, got  # the single-device forward again, bit for bit


@pytest.mark.timeout(120)
def test_contexts_from_one_parent_share_sub_groups():
    """A second context from a parent smaller than WORLD reuses the first one's sub-groups
    (passed as its GroupCache), and they work."""
    got = spawn(workers.contexts_from_a_subgroup, 5, timeout_s=100)
    assert got[4] is None
    assert all(g == (True, 2.0) for g in got[:4]), got


@pytest.mark.timeout(60)
def test_spawn_reports_a_failing_rank_without_hanging():
    t0 = time.monotonic()
    with pytest.raises(SpawnError, match="planted failure on rank 1"):
        spawn(workers.fail_on_rank, 2, 1, timeout_s=45, collective_timeout_s=30)
    assert time.monotonic() - t0 < 30
