"""What a run leaves for each shot when a shot cannot be rendered (local Ray, tiny model): a shot
that fails alone, and shots left for the next run because the infrastructure was not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import exit_codes as ec
from cluster.driver import run
from manifests import read_results
from tests.cluster.helpers import request, shot_rows, write_rows

pytestmark = pytest.mark.timeout(480)
ONE_GROUP = {"groups": 1, "group_size": 1}


def test_a_shot_whose_output_folder_cannot_be_created_fails_alone(local_ray, tmp_path, tiny_ckpt, capsys):
    rows = shot_rows(tmp_path, [1.0, 1.0], tmp_path / "out")
    (tmp_path / "blocker").write_text("a file where shot01's output folder should be")
    rows[1]["output"] = str(tmp_path / "blocker" / "shot01.mp4")  # its folder cannot be made: EEXIST
    req = request(write_rows(rows, tmp_path / "m.parquet"), tmp_path / "run", tiny_ckpt, engine=ONE_GROUP)
    assert run(req) == ec.EXIT_FAILED_SHOTS
    assert "1 done, 1 failed of 2 shots" in capsys.readouterr().err
    results = {r.shot_id: r for r in read_results(req.run_dir / "results.parquet")}
    good, bad = results["shot00"], results["shot01"]
    assert good.status == "done" and Path(good.output).is_file()
    assert (bad.status, bad.failure_stage, bad.failure_type, bad.attempts, bad.output) == (
        "failed", "output", "OSError", 0, None)
    assert "output directory not writable" in bad.error and "EEXIST" in bad.error and "blocker" in bad.error
    # The next firing (cron) has nothing to do and says so, instead of failing on the results file.
    assert run(req) == ec.EXIT_FAILED_SHOTS
    assert "nothing to do: 1 done, 1 failed of 2 shots" in capsys.readouterr().err
    # The user moves the output to a folder that can be written: that edit renders it.
    rows[1]["output"] = str(tmp_path / "out" / "shot01.mp4")
    req = request(write_rows(rows, tmp_path / "m2.parquet"), req.run_dir, tiny_ckpt, engine=ONE_GROUP)
    assert run(req) == ec.EXIT_OK
    assert "shot shot01: encode settings (crf, output path) changed: it had failed" in capsys.readouterr().err
    assert [r.status for r in read_results(req.run_dir / "results.parquet")] == ["done", "done"]


def test_shots_the_busy_cluster_left_unrendered_are_rendered_by_the_next_run(local_ray, tmp_path, tiny_ckpt, capsys):
    import ray

    from cluster.status import collect

    @ray.remote(num_cpus=0, resources={"render_slot": 4})
    class Hog:  # another job holds every render slot for a while
        def ping(self) -> int:
            return 1

    hog = Hog.remote()
    ray.get(hog.ping.remote())
    rows = shot_rows(tmp_path, [1.0, 1.0], tmp_path / "out")
    req = request(write_rows(rows, tmp_path / "m.parquet"), tmp_path / "run", tiny_ckpt,
                  engine={**ONE_GROUP, "group_start_timeout_s": 5.0, "group_start_retries": 2})
    try:
        assert run(req) == ec.EXIT_FAILED_SHOTS
    finally:
        ray.kill(hog)  # the cluster is free again
    assert "0 done, 0 failed of 2 shots; 2 not rendered this time" in capsys.readouterr().err
    for r in read_results(req.run_dir / "results.parquet"):
        assert (r.status, r.failure_stage, r.output is not None) == ("pending", None, True)
        assert r.error.startswith("not rendered: no render group could be started")
    lines = {line.shot_id: line for line in collect(req.run_dir).shots}
    assert lines["shot00"].state == "pending" and "no render group could be started" in lines["shot00"].error

    # The next cron firing, with the default group start timeout (the 5 s above only makes the busy
    # cluster show quickly; on a loaded machine a free cluster can take longer than 5 s to form a group).
    req = request(req.manifest, req.run_dir, tiny_ckpt, engine=ONE_GROUP)
    assert run(req) == ec.EXIT_OK
    results = read_results(req.run_dir / "results.parquet")
    assert [(r.status, r.error) for r in results] == [("done", None), ("done", None)]
