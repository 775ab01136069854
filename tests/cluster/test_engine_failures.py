"""How the engine judges a failure, without Ray (``ray.get`` replaced): what the shot's own fault
ends, and what the cluster's trouble leaves for another try."""

from __future__ import annotations

from collections import Counter

import pytest
import ray.exceptions

import cluster.engine as engine_mod
from cluster.engine import GroupSlot, RunEngine
from cluster.engine_prep import PREP_RETRY_PAUSE_S
from cluster.ledger import RunDir, ShotStatus
from cluster.scheduler import INFRA, SegmentQueue, SegmentTask
from cluster.settings import EngineOptions


def _engine(tmp_path, ids, **opts) -> RunEngine:
    eng = RunEngine.__new__(RunEngine)
    eng.run, eng.opts = RunDir(tmp_path / "run"), EngineOptions(**opts)
    eng.order = list(ids)
    eng.status = {s: ShotStatus() for s in ids}
    eng.queue, eng.prepared, eng.inflight, eng.stitching = SegmentQueue(), set(), {}, set()
    eng.prep_actor, eng.prep_tries, eng.prep_retry_due = None, Counter(), []
    return eng



def _raise(exc):
    def get(ref):
        raise exc
    return get


def test_a_preparation_call_that_raised_is_tried_again_before_its_shots_fail(tmp_path, monkeypatch):
    ids = [f"s{i}" for i in range(3)]
    eng = _engine(tmp_path, ids, prep_retries=2)
    sent = []
    eng._submit_prep = sent.append
    monkeypatch.setattr(engine_mod.ray, "get", _raise(RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")))
    for n in range(2):  # the card is full for a while
        eng._prep_returned(ids, "ref")
        assert all(eng.status[s].state == "pending" for s in ids)
        eng._submit_due_prep()
        assert len(sent) == n  # not at once: after a pause
        assert eng._progress_possible()  # a paused retry keeps the run going
        pause = [t for t, _ in eng.prep_retry_due]
        assert pause and min(pause) > engine_mod.time.time() + 0.5 * PREP_RETRY_PAUSE_S * (n + 1)
        with monkeypatch.context() as m:
            m.setattr(engine_mod.time, "time", lambda: 10**12)
            eng._submit_due_prep()
        # the whole call raised: each shot alone, so one bad prompt cannot spend the others' tries
        assert sent[-1] == [[s] for s in ids] and eng.prep_retry_due == []
    eng._prep_returned(ids, "ref")  # third time: the budget is spent
    assert len(sent) == 2 and eng.prep_retry_due == []
    for s in ids:
        st = eng.status[s]
        assert (st.state, st.failure_stage, st.failure_type) == ("failed", "preparation", "RuntimeError")
        assert st.error.startswith("preparation failed 3 times: RuntimeError: CUDA out of memory")


def test_a_prepared_retry_succeeds_and_a_shot_s_own_preparation_error_fails_it_alone(tmp_path, monkeypatch):
    eng = _engine(tmp_path, ["a", "b"], prep_retries=1)
    eng._submit_prep = lambda chunks: None
    outcomes = iter([{"a": None, "b": "ValueError: audio has no samples"}, {"b": "ValueError: audio has no samples"}])
    monkeypatch.setattr(engine_mod.ray, "get", lambda ref: next(outcomes))
    eng._prep_returned(["a", "b"], "r1")
    assert "a" in eng.prepared and eng.status["b"].state == "pending"
    eng._prep_returned(["b"], "r2")
    assert eng.status["a"].state == "pending" and eng.status["b"].state == "failed"
    assert eng.status["b"].failure_type == "ValueError"


@pytest.mark.parametrize("death", [ray.exceptions.WorkerCrashedError(), ray.exceptions.NodeDiedError("node lost"),
                                   ray.exceptions.OutOfMemoryError("the memory monitor killed the worker")])
def test_a_stitch_whose_worker_died_is_retried_within_the_budget(tmp_path, monkeypatch, death):
    monkeypatch.setattr(engine_mod.ray, "get", _raise(death))
    eng = _engine(tmp_path, ["s"], shot_max_failures=3)
    eng.status["s"] = ShotStatus(state="running", attempts=1)
    restarts = []
    eng._start_stitch = restarts.append
    eng._stitch_returned("s", "a")
    eng._stitch_returned("s", "b")  # the same message twice: not "failed the same way twice"
    st = eng.status["s"]
    assert st.state == "running" and restarts == ["s", "s"] and [f.kind for f in st.failures] == [INFRA, INFRA]
    eng._stitch_returned("s", "c")  # the budget still bounds it
    assert st.state == "failed" and st.failure_stage == "stitch" and "3 failed attempts (limit 3)" in st.error


def test_a_stitch_error_of_the_shot_itself_still_fails_the_second_time(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_mod.ray, "get", _raise(ValueError("frame count 19 != 20")))
    eng = _engine(tmp_path, ["s"], shot_max_failures=3)
    eng.status["s"] = ShotStatus(state="running", attempts=1)
    eng._start_stitch = lambda sid: None
    eng._stitch_returned("s", "a")
    eng._stitch_returned("s", "b")
    assert eng.status["s"].state == "failed" and "failed the same way twice" in eng.status["s"].error


def test_shots_left_when_no_render_group_can_start_stay_pending_with_the_reason(tmp_path):
    eng = _engine(tmp_path, ["a", "b"])
    eng.slots = [GroupSlot("g0", given_up="placement group not ready after 5 s")]
    eng.status["a"] = ShotStatus(state="running", attempts=1)  # requeued after a failed attempt
    for sid in ("a", "b"):
        eng.queue.push(SegmentTask.make(sid, 0, 0, 16, 0))
    assert not eng._progress_possible()
    for sid in ("a", "b"):
        st = eng.run.read_status(sid)
        assert (st.state, st.failure_stage, st.error) == ("pending", None, None)
        assert st.pending_reason == "not rendered: no render group could be started: placement group not ready after 5 s"
    assert eng.run.read_status("a").attempts == 1 and len(eng.queue) == 0


def test_a_run_whose_lease_was_taken_over_leaves_the_run_directory_alone_on_its_way_out(tmp_path, tiny_ckpt,
                                                                                        monkeypatch):
    import json
    import threading
    from types import SimpleNamespace

    from cluster.driver import _prepare_run_dir, load_shots
    from manifests import read_results
    from tests.cluster.helpers import request, shot_rows, write_rows

    rows = shot_rows(tmp_path, [1.0, 1.0], tmp_path / "out")
    req = request(write_rows(rows, tmp_path / "m.parquet"), tmp_path / "run", tiny_ckpt)
    ledger = RunDir(req.run_dir)
    shots = load_shots(req)
    _prepare_run_dir(ledger, shots, req)
    lost = threading.Event()
    eng = RunEngine(ledger, "r1", shots, req.settings, req.engine, "CPU", lease_lost=lost)
    eng.metrics = SimpleNamespace(set_shots=lambda counts: None, set_queue=lambda depth, ready: None)
    eng.status = {"shot00": ShotStatus(state="running", attempts=1), "shot01": ShotStatus(state="running", attempts=1)}
    ledger.write_status("shot00", eng.status["shot00"])
    ledger.write_status("shot01", eng.status["shot01"])
    out = tmp_path / "out" / "shot01.mp4"

    def publish_lands_during_the_stop(refs, num_returns, timeout):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"x" * 10)
        ledger.published_file("shot01").write_text(json.dumps({"output": str(out), "bytes": 10, "published_at": 5.0,
                                                               "sha256": "ab" * 32, "frames": 16, "fps": 16.0,
                                                               "duration_s": 1.0}))
        return refs, []

    monkeypatch.setattr(engine_mod.ray, "cancel", lambda ref, force: None)
    monkeypatch.setattr(engine_mod.ray, "wait", publish_lands_during_the_stop)

    lost.set()  # another run took the lease over as stale: the directory is its now
    eng.inflight = {"stitch-ref": ("stitch", "shot01")}
    eng._wind_down()
    assert not ledger.results_file.exists() and not (ledger.path / "index.html").exists()
    assert ledger.read_status("shot01").state == "running"  # the new run's ledger is not rewritten

    lost.clear()  # a run that was merely stopped writes what it knows, calling the in-flight shot interrupted
    eng.status["shot01"] = ShotStatus(state="running", attempts=1)
    eng.inflight = {"stitch-ref": ("stitch", "shot01")}
    eng._wind_down()
    assert [r.status for r in read_results(ledger.results_file)] == ["interrupted", "done"]
    assert ledger.read_status("shot01").state == "done" and (ledger.path / "index.html").is_file()


def test_a_new_start_writes_the_states_it_changes_and_retries_shots_no_group_took(tmp_path):
    """A shot the last run left running reads pending on disk at once (not until it is dispatched),
    and a shot an earlier version failed only because no render group started is pending again."""
    ids = ["left_running", "no_group", "own_failure", "fresh"]
    eng = _engine(tmp_path, ids)
    eng.retry_failed = False
    eng.run.write_status("left_running", ShotStatus(state="running", attempts=2))
    eng.run.write_status("no_group", ShotStatus(state="failed", attempts=0, error="no render group could be started: x",
                                                failure_stage="render", failure_type="GroupStartError"))
    eng.run.write_status("own_failure", ShotStatus(state="failed", attempts=2, error="boom", failure_stage="render",
                                                   failure_type="RuntimeError"))
    eng.status = {}
    eng._load_states()
    assert {s: eng.status[s].state for s in ids} == {
        "left_running": "pending", "no_group": "pending", "own_failure": "failed", "fresh": "pending"}
    on_disk = {s: eng.run.read_status(s) for s in ids}
    assert on_disk["left_running"].state == "pending" and on_disk["left_running"].attempts == 2
    assert on_disk["no_group"].state == "pending" and on_disk["no_group"].error is None
    assert on_disk["own_failure"].state == "failed"
    assert not eng.run.status_file("fresh").exists()  # nothing to change: nothing written
