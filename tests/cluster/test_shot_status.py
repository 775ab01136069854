"""A shot's status as the ledger records it: only values results.parquet can carry are written."""

from __future__ import annotations

import pytest

from cluster.ledger import RunDir, ShotStatus
from manifests.results import FAILURE_STAGES


def test_every_failure_stage_the_engine_records_is_one_results_accept(tmp_path):
    run = RunDir(tmp_path)
    for stage in FAILURE_STAGES:
        run.write_status("s", ShotStatus(state="failed", failure_stage=stage))
        assert run.read_status("s").failure_stage == stage
    assert "output" in FAILURE_STAGES  # the engine's own stage for an unwritable output folder


def test_a_status_results_could_not_carry_is_refused_where_it_is_written(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match="shot s: failure stage 'somewhere' is not one of validation"):
        run.write_status("s", ShotStatus(state="failed", failure_stage="somewhere"))
    with pytest.raises(ValueError, match="shot s: state 'finished'"):
        run.write_status("s", ShotStatus(state="finished"))
    assert not run.status_file("s").exists()  # nothing that every later results write would trip on


def test_a_results_file_that_cannot_be_written_is_an_error_naming_shot_and_column(tmp_path, tiny_ckpt, capsys):
    import json

    from cluster import exit_codes as ec
    from cluster.driver import _prepare_run_dir, load_shots, run
    from tests.cluster.helpers import request, shot_rows, write_rows

    rows = shot_rows(tmp_path, [1.0, 1.0], tmp_path / "out")
    req = request(write_rows(rows, tmp_path / "m.parquet"), tmp_path / "run", tiny_ckpt)
    ledger = RunDir(req.run_dir)
    _prepare_run_dir(ledger, load_shots(req), req)  # the shots' keys, as a first start writes them
    for sid in ("shot00", "shot01"):
        ledger.status_file(sid).parent.mkdir(parents=True, exist_ok=True)
        # e.g. written by a newer version that knows a stage this one does not
        ledger.status_file(sid).write_text(json.dumps({"state": "failed", "error": "x", "failure_stage":
                                                       "render" if sid == "shot00" else "teleport"}))
    assert run(req) == ec.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "results.parquet not written" in err and "shot_id 'shot01'" in err and "'failure_stage'" in err
    assert f"s2v status --run-dir {ledger.path}" in err and "Traceback" not in err
    assert ledger.read_status("shot00").state == "failed"  # the ledger is untouched


def test_results_written_when_nothing_renders_call_a_running_shot_interrupted(tmp_path, tiny_ckpt):
    from cluster.driver import _prepare_run_dir, load_shots
    from cluster.results import write_run_results
    from manifests import read_results
    from tests.cluster.helpers import request, shot_rows, write_rows

    rows = shot_rows(tmp_path, [1.0, 1.0], tmp_path / "out")
    req = request(write_rows(rows, tmp_path / "m.parquet"), tmp_path / "run", tiny_ckpt)
    ledger = RunDir(req.run_dir)
    shots = load_shots(req)
    _prepare_run_dir(ledger, shots, req)
    ledger.write_status("shot00", ShotStatus(state="running", attempts=1))  # in flight when the run stopped
    write_run_results(ledger, shots, rendering=True)  # the live run's own writes
    assert [r.status for r in read_results(ledger.results_file)] == ["running", "pending"]
    write_run_results(ledger, shots)  # written after the stop (or by a later start)
    assert [r.status for r in read_results(ledger.results_file)] == ["interrupted", "pending"]
