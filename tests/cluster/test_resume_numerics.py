"""A stopped run resumed with engine options that change the encoders' rounding (here the rank's
CPU thread count; on GPUs another card model or cuDNN algorithm) continues its segments: the
segment work is named by the shot's key, not by the conditioning tensors' bits."""

from __future__ import annotations

import json
import signal

import pytest

from cluster import exit_codes as ec
from manifests import read_results
from tests.cluster.helpers import cli_args, shot_rows, start_driver, wait_for, write_rows

pytestmark = pytest.mark.timeout(480)


def test_resume_with_other_rank_threads_continues_the_segment(local_ray, tmp_path, tiny_ckpt):
    rows = shot_rows(tmp_path, [3.0], tmp_path / "out", steps=3)
    manifest = write_rows(rows, tmp_path / "m.parquet")
    run_dir = tmp_path / "run"
    base = cli_args(manifest, run_dir, tiny_ckpt, local_ray["gcs_address"])
    base[base.index("--groups") + 1] = "1"
    base[base.index("--group-size") + 1] = "1"
    first = start_driver(base + ["--cpu-threads-per-rank", "1"], tmp_path / "d1.log")
    state = run_dir / "work" / "shot00" / "segment_0000" / "state.pt"
    wait_for(state.is_file, 300, "clip 0 committed")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == ec.EXIT_INTERRUPTED
    second = start_driver(base + ["--cpu-threads-per-rank", "2"], tmp_path / "d2.log")
    assert second.wait(timeout=400) == ec.EXIT_OK, (tmp_path / "d2.log").read_text()[-3000:]
    status = json.loads((run_dir / "shots" / "shot00" / "status.json").read_text())
    assert status["state"] == "done"
    log = (run_dir / "logs" / "shot00").glob("*.log")
    assert any("resuming at clip" in p.read_text() for p in log), "the second driver restarted the segment"
    assert read_results(run_dir / "results.parquet")[0].status == "done"
