"""Out of GPU memory in one shot on a local Ray (simulated through the rank's test hook): that
shot fails at its first attempt with a message naming the size and the options that fit, the
group that ran it stays and renders the next shot, and the run goes on. The ranks stream the
DiT's blocks (--offload, on the CPU), so the offloaded model renders whole shots here too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster import exit_codes as ec
from cluster.driver import run
from cluster.ledger import RunDir
from cluster.rank import SIMULATE_OOM_ENV
from manifests import read_results
from tests.cluster.helpers import attempt_pids, request, shot_rows, write_rows

pytestmark = pytest.mark.timeout(480)

OOM_SHOT = "shot01"


@pytest.fixture(scope="module", autouse=True)
def _simulated_oom_env():
    """Set before this module's Ray starts (autouse runs first): its workers inherit it."""
    old = os.environ.get(SIMULATE_OOM_ENV)
    os.environ[SIMULATE_OOM_ENV] = OOM_SHOT
    yield
    if old is None:
        os.environ.pop(SIMULATE_OOM_ENV, None)
    else:
        os.environ[SIMULATE_OOM_ENV] = old


def test_out_of_memory_fails_the_shot_once_and_the_group_renders_the_next(local_ray, tmp_path, tiny_ckpt):
    rows = shot_rows(tmp_path, [1.0, 1.0, 1.0], tmp_path / "out")
    manifest = write_rows(rows, tmp_path / "m.parquet")
    run_dir = RunDir(tmp_path / "run")
    req = request(manifest, run_dir.path, tiny_ckpt, engine={"groups": 1, "group_size": 1, "offload": True})
    assert run(req) == ec.EXIT_FAILED_SHOTS
    results = {r.shot_id: r for r in read_results(run_dir.results_file)}
    assert results["shot00"].status == "done" and results["shot02"].status == "done"
    assert Path(rows[0]["output"]).is_file() and Path(rows[2]["output"]).is_file()
    bad = results[OOM_SHOT]
    assert bad.status == "failed" and bad.attempts == 1, bad  # no retry: every attempt would repeat it
    assert bad.failure_type == "ShotOutOfMemory" and bad.output is None
    size = rows[1]["size"]
    for part in ("out of GPU memory rendering", "x", "needed 20.00 GiB more", "1.91 GiB free of 23.55 GiB",
                 f"a smaller size than {size}", "more GPUs per render group instead of --offload (--group-size 2"):
        assert part in bad.error, (part, bad.error)
    assert "--offload (DiT blocks" not in bad.error  # already on: not an option
    # the same rank process rendered all three shots: the group was not torn down and re-formed
    pids = {sid: attempt_pids(run_dir.path, sid, 1) for sid in ("shot00", OOM_SHOT, "shot02")}
    assert len({tuple(p) for p in pids.values()}) == 1, pids
    print(f"\n{OOM_SHOT}: {bad.error}")
