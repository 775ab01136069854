"""The run directory without Ray: lease, per-shot keys, scheduling policy, exit codes, status."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import exit_codes as ec
from cluster.driver import _prepare_run_dir, load_shots, run
from cluster.fingerprint import FRAME_PARTS, InputHashes, changed_parts, environment, shot_key
from cluster.lease import LEASE_FILE, Lease, LeaseHeld, LeaseLost, check_fence, read_lease
from cluster.ledger import Failure, RunDir, ShotStatus
from cluster.scheduler import (
    ERROR,
    INFRA,
    NodeHealth,
    SegmentQueue,
    SegmentTask,
    failure_signature,
    judge_failure,
)
from cluster.status import collect, format_report
from cluster.submit import build_entrypoint
from tests.cluster.helpers import REPO_ROOT, request, shot_rows, write_rows

# --- lease ---------------------------------------------------------------------------------------


def test_second_lease_is_refused_and_released_lease_can_be_taken(tmp_path):
    with Lease(tmp_path, heartbeat_s=0.2) as first:
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
            Lease(tmp_path).acquire()
        info = read_lease(tmp_path)
        assert info.token == first.token and info.host == socket.gethostname()
        beat = info.heartbeat_at
        time.sleep(0.6)
        assert read_lease(tmp_path).heartbeat_at > beat  # the heartbeat thread refreshes it
    assert not (tmp_path / LEASE_FILE).exists()
    with Lease(tmp_path):
        pass


def test_lease_of_a_killed_process_is_taken_over(tmp_path):
    code = (f"import sys, time; sys.path.insert(0, {str(REPO_ROOT)!r}); from cluster.lease import Lease; "
            f"Lease({str(tmp_path)!r}, heartbeat_s=0.2).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld):
            Lease(tmp_path).acquire()
        proc.kill()  # SIGKILL: no release; the kernel drops the flock, lease.json stays behind
        proc.wait(timeout=10)
        assert read_lease(tmp_path).pid == proc.pid
        with Lease(tmp_path) as lease:
            assert read_lease(tmp_path).token == lease.token
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _foreign_lease(run_dir: Path, age_s: float) -> None:
    now = time.time()
    (run_dir / LEASE_FILE).write_text(json.dumps({
        "host": "another-host", "pid": 1, "token": "x", "acquired_at": now - age_s, "heartbeat_at": now - age_s,
        "heartbeat_s": 1.0}))


def test_lease_of_another_host_counts_until_its_heartbeat_is_stale(tmp_path):
    _foreign_lease(tmp_path, age_s=2.0)  # within 6 heartbeats of 1 s
    with pytest.raises(LeaseHeld, match="another-host"):
        Lease(tmp_path).acquire()
    _foreign_lease(tmp_path, age_s=30.0)
    with Lease(tmp_path) as lease:
        assert read_lease(tmp_path).token == lease.token


def test_lease_notices_a_takeover(tmp_path):
    lease = Lease(tmp_path, heartbeat_s=0.1).acquire()
    try:
        raw = json.loads((tmp_path / LEASE_FILE).read_text())
        (tmp_path / LEASE_FILE).write_text(json.dumps({**raw, "token": "someone-else"}))
        assert lease.lost.wait(5.0)
    finally:
        lease.release()


# --- fingerprint, run directory, exit codes before any rendering ---------------------------------


@pytest.fixture
def small_manifest(tmp_path, tiny_ckpt):
    rows = shot_rows(tmp_path, [1.0, 1.0], tmp_path / "out")
    return write_rows(rows, tmp_path / "m.parquet"), rows


def _keys(req, shots, hashes=None):
    env = environment(req.settings)
    hashes = hashes or InputHashes(req.run_dir / "hashes.json")
    return {s.shot_id: shot_key(s, req.settings, env, hashes) for s in shots}


def test_shot_keys_name_what_changed_per_shot(tmp_path, tiny_ckpt, small_manifest):
    manifest, rows = small_manifest
    req = request(manifest, tmp_path / "run", tiny_ckpt)
    shots = load_shots(req)
    base = _keys(req, shots)
    assert _keys(req, shots) == base

    def diff(new_rows=None, **settings):
        m = write_rows(new_rows or rows, tmp_path / "m2.parquet")
        r = request(m, tmp_path / "run", settings.pop("ckpt", tiny_ckpt), settings=settings)
        keys = _keys(r, load_shots(r))
        return {sid: changed_parts(base[sid], k) for sid, k in keys.items()}

    # a render column of one row: that shot's frames only; priority schedules and changes nothing
    assert diff([{**rows[0], "steps": 2, "priority": 9}, rows[1]]) == {"shot00": ["render"], "shot01": []}
    # crf: the encode half only, for every shot
    assert diff(crf=20) == {"shot00": ["encode"], "shot01": ["encode"]}
    assert diff(segment_seconds=5.0) == {"shot00": ["render"], "shot01": ["render"]}
    # inputs by content: a renamed copy changes nothing, new bytes change the inputs part
    copy = shutil.copy(rows[1]["audio"], tmp_path / "renamed.wav")
    assert diff([rows[0], {**rows[1], "audio": str(copy)}]) == {"shot00": [], "shot01": []}
    from tinymodel.demo_assets import cartoon_face

    cartoon_face(Path(rows[0]["image"]), (80, 64), seed=7)  # the same file, another face
    changed = diff()
    assert changed == {"shot00": ["inputs"], "shot01": []}
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt-copy")
    os.utime(ckpt / "config.json", ns=(1, 1))  # e.g. a re-downloaded file
    assert set(diff(ckpt=ckpt)["shot00"]) & set(FRAME_PARTS) == {"inputs", "model"}


def test_input_hashes_are_cached_by_size_mtime_and_inode(tmp_path):
    f = tmp_path / "a.wav"
    f.write_bytes(b"x" * 3_000_000)
    h = InputHashes(tmp_path / "hashes.json")
    first = h.digest(f)
    h.save()
    again = InputHashes(tmp_path / "hashes.json")
    assert again.digest(f) == first and again.hashed == 0  # a cron firing reads nothing
    f.write_bytes(b"y" * 3_000_000)  # same size, new mtime
    assert again.digest(f) != first and again.hashed == 1


def _fake_publish(run: RunDir, sid: str, output: str, with_work: bool) -> None:
    """The ledger of a published one-segment shot (what the engine and the stitch task write)."""
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_bytes(b"video")
    run.write_plan(sid, {"segments": [{"index": 0}]})
    run.segment_record(sid, 0).parent.mkdir(parents=True, exist_ok=True)
    run.segment_record(sid, 0).write_text("{}")
    (run.path / "shots" / sid / "published.json").write_text(json.dumps({"output": output, "bytes": 5}))
    run.write_status(sid, ShotStatus(state="done", attempts=1))
    if with_work:
        (run.work_dir(sid) / "segment_0000").mkdir(parents=True)


def test_prepare_follows_the_manifest_shot_by_shot(tmp_path, tiny_ckpt, small_manifest, capsys):
    manifest, rows = small_manifest
    req = request(manifest, tmp_path / "run", tiny_ckpt)
    run_dir = RunDir(req.run_dir)
    run_id, code, _ = _prepare_run_dir(run_dir, load_shots(req), req)
    assert code is None and json.loads(run_dir.run_file.read_text())["last_start"]["new"] == ["shot00", "shot01"]
    assert run_dir.read_key("shot00") and run_dir.read_key("shot01")
    _fake_publish(run_dir, "shot00", rows[0]["output"], with_work=False)
    _fake_publish(run_dir, "shot01", rows[1]["output"], with_work=False)

    # unchanged + an appended row: only the new one is touched; inputs come from the hash cache
    extra = {**rows[1], "shot_id": "shot02", "output": rows[1]["output"].replace("shot01", "shot02")}
    m2 = write_rows([*rows, extra], tmp_path / "m2.parquet")
    req2 = request(m2, req.run_dir, tiny_ckpt)
    run_id2, code, _ = _prepare_run_dir(run_dir, load_shots(req2), req2)
    last = json.loads(run_dir.run_file.read_text())["last_start"]
    assert (run_id2, code, last["new"], last["unchanged"], last["inputs_hashed"]) == (run_id, None, ["shot02"], 2, 0)
    assert run_dir.is_published("shot00") and run_dir.is_published("shot01")

    # crf: re-stitch; with the intermediates gone (no --keep-work) its segments render again
    req3 = request(m2, req.run_dir, tiny_ckpt, settings={"crf": 20})
    _, code, notes = _prepare_run_dir(run_dir, load_shots(req3), req3)
    assert code is None and not run_dir.is_published("shot00") and run_dir.read_plan("shot00") is not None
    assert any("shot00" in n and "rendered again" in n and "--keep-work" in n for n in notes)
    assert run_dir.read_status("shot00").state == "pending"

    # the refusing mode (s2v demo) exits 5 before touching anything; a changed row otherwise re-renders
    _fake_publish(run_dir, "shot01", rows[1]["output"], with_work=True)
    m4 = write_rows([rows[0], {**rows[1], "prompt": "another prompt"}, extra], tmp_path / "m4.parquet")
    strict = request(m4, req.run_dir, tiny_ckpt, settings={"crf": 20}, refuse_changed=True)
    assert _prepare_run_dir(run_dir, load_shots(strict), strict)[1] == ec.EXIT_FINGERPRINT_CHANGED
    assert "--restart" in capsys.readouterr().err and run_dir.is_published("shot01")
    req4 = request(m4, req.run_dir, tiny_ckpt, settings={"crf": 20})
    _, code, notes = _prepare_run_dir(run_dir, load_shots(req4), req4)
    assert code is None and run_dir.read_plan("shot01") is None and not run_dir.is_published("shot01")
    assert any("shot01: render changed" in n for n in notes) and Path(rows[1]["output"]).is_file()

    # a removed row: reported (run.json, status), nothing deleted
    m5 = write_rows([rows[0], extra], tmp_path / "m5.parquet")
    req5 = request(m5, req.run_dir, tiny_ckpt, settings={"crf": 20})
    _, code, notes = _prepare_run_dir(run_dir, load_shots(req5), req5)
    assert code is None and any("no longer in the manifest" in n and "shot01" in n for n in notes)
    assert Path(rows[1]["output"]).is_file() and run_dir.read_key("shot01") is not None
    states = {line.shot_id: line.state for line in collect(req.run_dir).shots}
    assert states == {"shot00": "pending", "shot02": "pending", "shot01": "removed"}

    # --rerender of an unknown shot is a usage error; --restart starts over with a new run id
    bad = request(m5, req.run_dir, tiny_ckpt, settings={"crf": 20}, rerender=["nope"])
    assert _prepare_run_dir(run_dir, load_shots(bad), bad)[1] == ec.EXIT_INVALID
    again = request(m5, req.run_dir, tiny_ckpt, restart=True)
    run_id6, code, _ = _prepare_run_dir(run_dir, load_shots(again), again)
    assert code is None and run_id6 != run_id


def test_an_edited_row_of_a_failed_shot_gives_it_new_attempts(tmp_path, tiny_ckpt, small_manifest):
    from cluster.driver import _finished_already

    manifest, rows = small_manifest
    req = request(manifest, tmp_path / "run", tiny_ckpt)
    run_dir = RunDir(req.run_dir)
    _prepare_run_dir(run_dir, load_shots(req), req)
    for sid in ("shot00", "shot01"):
        run_dir.write_status(sid, ShotStatus(state="failed", attempts=2, error="output directory not writable: x",
                                             failure_stage="output", failure_type="OSError"))
    # the user moves shot00's output to a folder that can be written; shot01's row stays as it was
    m2 = write_rows([{**rows[0], "output": str(tmp_path / "out2" / "shot00.mp4")}, rows[1]], tmp_path / "m2.parquet")
    req2 = request(m2, req.run_dir, tiny_ckpt)
    shots = load_shots(req2)
    _, code, notes = _prepare_run_dir(run_dir, shots, req2)
    assert code is None and notes == ["shot shot00: encode settings (crf, output path) changed: it had failed "
                                      "(output directory not writable: x); it is tried again"]
    st = run_dir.read_status("shot00")
    assert (st.state, st.attempts, st.error, st.failure_stage) == ("pending", 2, None, None)
    assert run_dir.read_status("shot01").state == "failed"
    assert _finished_already(req2, run_dir, shots) is None  # the run renders it

    # a run-wide encode change (--crf) is an edit of every row: every failed shot is tried again
    req3 = request(m2, req.run_dir, tiny_ckpt, settings={"crf": 20})
    _, code, notes = _prepare_run_dir(run_dir, load_shots(req3), req3)
    assert code is None and [n.split(":")[0] for n in notes] == ["shot shot01"]
    assert run_dir.read_status("shot01").state == "pending"


def test_invalid_and_unreadable_manifests_exit_2_and_3_with_row_and_column(tmp_path, tiny_ckpt, small_manifest,
                                                                           capsys):
    _, rows = small_manifest
    bad = write_rows([rows[0], {**rows[1], "steps": 0}], tmp_path / "bad.parquet")
    assert run(request(bad, tmp_path / "run", tiny_ckpt, strict=True)) == ec.EXIT_INVALID  # --strict
    err = capsys.readouterr().err
    assert "steps" in err and "shot01" in err
    # manifest-level problems refuse the run without --strict too; the hint names the x_ prefix
    unknown = write_rows([{**r, "take": 1} for r in rows], tmp_path / "unknown.parquet")
    assert run(request(unknown, tmp_path / "run", tiny_ckpt)) == ec.EXIT_INVALID
    err = capsys.readouterr().err
    assert "unknown-column" in err and "x_take" in err
    dup = write_rows([rows[0], {**rows[1], "shot_id": rows[0]["shot_id"]}], tmp_path / "dup.parquet")
    assert run(request(dup, tmp_path / "run", tiny_ckpt)) == ec.EXIT_INVALID
    assert "duplicate-id" in capsys.readouterr().err
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    assert run(request(tmp_path / "junk.parquet", tmp_path / "run", tiny_ckpt)) == ec.EXIT_UNREADABLE
    assert not (tmp_path / "run").exists()  # nothing is created for a manifest that cannot run


def test_held_lease_exits_4_before_touching_the_run_dir(tmp_path, tiny_ckpt, small_manifest):
    manifest, _ = small_manifest
    (tmp_path / "run").mkdir()
    with Lease(tmp_path / "run"):
        assert run(request(manifest, tmp_path / "run", tiny_ckpt)) == ec.EXIT_LEASE_HELD
    assert not (tmp_path / "run" / "run.json").exists()


def test_engine_options_are_checked(tmp_path, tiny_ckpt, small_manifest, capsys):
    manifest, _ = small_manifest
    assert run(request(manifest, tmp_path / "run", tiny_ckpt, engine={"group_size": 0})) == ec.EXIT_INVALID
    assert run(request(manifest, tmp_path / "run", tiny_ckpt, engine={"parallel": "ulysses=4"})) == ec.EXIT_INVALID
    assert "ulysses x ring x cfg = 4, but --group-size is 2" in capsys.readouterr().err
    assert run(request(manifest, tmp_path / "run", tiny_ckpt, engine={"handoff_timeout_s": 0})) == ec.EXIT_INVALID
    assert "--handoff-timeout 0: expected > 0 seconds" in capsys.readouterr().err
    from cluster.settings import parallel_kwargs

    assert parallel_kwargs("ulysses=2, cfg=2,shard_weights=1", 4) == {"ulysses": 2, "cfg": 2, "shard_weights": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parallel_kwargs("replicas=2", 2)


# --- scheduling policy ---------------------------------------------------------------------------


def test_queue_orders_by_priority_then_length_and_skips_unprepared():
    q = SegmentQueue([
        SegmentTask.make("short", 0, priority=0, num_frames=10, row=0),
        SegmentTask.make("long", 0, priority=0, num_frames=99, row=1),
        SegmentTask.make("urgent", 0, priority=5, num_frames=1, row=2),
        SegmentTask.make("long", 1, priority=0, num_frames=50, row=1),
    ])
    assert q.shot_order() == ["urgent", "long", "short"]
    assert q.pop_ready(lambda s: s != "urgent").shot_id == "long"  # urgent is not prepared yet
    assert q.pop_ready(lambda s: True).shot_id == "urgent"
    q.push(SegmentTask.make("urgent", 1, priority=5, num_frames=1, row=2))  # a requeued segment
    assert [(t.shot_id, t.index) for t in q] == [("urgent", 1), ("long", 1), ("short", 0)]
    assert q.drop_shot("long") == 1 and len(q) == 2


def _failure(attempt: int, kind: str, message: str) -> Failure:
    return Failure(attempt, kind, failure_signature(kind, "RuntimeError", message), message, time.time())


def test_same_error_twice_fails_the_shot_infrastructure_failures_use_the_budget():
    st = ShotStatus()
    assert judge_failure(st, _failure(1, ERROR, "NaN in clip 3 (pid 1234)"), 3).retry
    verdict = judge_failure(st, _failure(2, ERROR, "NaN in clip 3 (pid 5678)"), 3)  # same, other numbers
    assert not verdict.retry and "same way twice" in verdict.reason
    st = ShotStatus()
    assert judge_failure(st, _failure(1, INFRA, "rank died"), 3).retry
    assert judge_failure(st, _failure(2, INFRA, "rank died"), 3).retry  # a flaky node is not the shot's fault
    assert not judge_failure(st, _failure(3, INFRA, "rank died"), 3).retry
    st = ShotStatus()
    assert judge_failure(st, _failure(1, ERROR, "a"), 3).retry and judge_failure(st, _failure(2, ERROR, "b"), 3).retry


def test_node_is_excluded_after_repeated_failures():
    health = NodeHealth(max_failures=2)
    assert not health.record("n1") and health.excluded == set()
    assert health.record("n1") and health.excluded == {"n1"}
    assert not health.record(None)


# --- status, submit, security --------------------------------------------------------------------


def test_status_of_a_fabricated_run(tmp_path, tiny_ckpt, small_manifest):
    manifest, _ = small_manifest
    req = request(manifest, tmp_path / "run", tiny_ckpt)
    rd = RunDir(req.run_dir)
    _prepare_run_dir(rd, load_shots(req), req)
    rd.write_status("shot01", ShotStatus(state="failed", attempts=2, error="failed the same way twice: boom"))
    report = collect(rd.path)
    assert report.counts == {"pending": 1, "failed": 1} and not report.live
    text = format_report(report)
    assert "shot01" in text and "boom" in text and "not running" in text
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        collect(tmp_path / "nothing")


def test_submit_entrypoint_quotes_every_argument(tmp_path):
    odd = tmp_path / "we ird; $(touch x)" / "m.parquet"
    entry = build_entrypoint(odd, tmp_path / "run dir", ["--ckpt", "/a b/c"], "/usr/bin/python3")
    argv = shlex.split(entry)
    assert argv[:5] == ["/usr/bin/python3", "-m", "s2v", "run", str(odd)] and argv[-2:] == ["--ckpt", "/a b/c"]


def test_public_binding_requires_token_auth(monkeypatch):
    from cluster.ray_runtime import RaySecurityError, connect

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        pytest.skip("ray already connected in this process")
    with pytest.raises(RaySecurityError, match="token"):
        connect("local", bind_public=True)
    with pytest.raises(RaySecurityError, match="not on loopback"):
        connect("10.1.2.3:6379")


def test_code_part_follows_the_source_unless_pinned(monkeypatch):
    from cluster.fingerprint import CODE_VERSION_ENV, code_digest

    monkeypatch.setenv(CODE_VERSION_ENV, "v1")
    v1 = code_digest()
    monkeypatch.setenv(CODE_VERSION_ENV, "v2")
    assert code_digest() != v1
    monkeypatch.delenv(CODE_VERSION_ENV)
    assert code_digest() == code_digest() != v1


def test_cron_wrapper_logs_and_passes_the_lease_exit_code_through(tmp_path, tiny_ckpt, small_manifest):
    manifest, _ = small_manifest
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "S2V_BIN": str(Path(sys.executable).parent / "s2v")}
    script = REPO_ROOT / "scripts" / "s2v-cron.sh"
    with Lease(run_dir):
        proc = subprocess.run([str(script), str(manifest), str(run_dir), "--ckpt", str(tiny_ckpt)],
                              capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == ec.EXIT_LEASE_HELD and proc.stderr == ""  # nothing for cron to mail
    log = (run_dir / "logs" / "cron.log").read_text()
    assert "start pid" in log and "leased by another run" in log and "exit 4: another run holds the lease" in log
    proc = subprocess.run([str(script), str(manifest)], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_stale_group_stores_are_swept(tmp_path, monkeypatch):
    import tempfile

    from cluster.rank import STALE_STORE_S, store_path, sweep_stale_stores

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old, fresh, other = Path(store_path("old")), Path(store_path("fresh")), tmp_path / "unrelated.store"
    for p in (old, fresh, other):
        p.write_text("x")
    past = time.time() - STALE_STORE_S - 10
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert sweep_stale_stores() == 1
    assert not old.exists() and fresh.exists() and other.exists()


def test_commit_fence_passes_only_for_the_lease_holders_token(tmp_path):
    with Lease(tmp_path) as lease:
        check_fence(tmp_path, lease.token)  # the holder's ranks commit
        with pytest.raises(LeaseLost, match="not by this rank's run") as exc:
            check_fence(tmp_path, "0123456789abcdef")  # a rank of an earlier (dead or stale) run
        assert socket.gethostname() in str(exc.value) and "0123456789abcdef" in str(exc.value)
    with pytest.raises(LeaseLost, match="lease file is gone"):
        check_fence(tmp_path, lease.token)  # released: nobody may commit any more


def test_the_engine_hands_its_lease_token_to_every_rank_which_checks_it(tmp_path):
    from cluster.engine import RunEngine
    from cluster.rank import RankWorker
    from cluster.settings import EngineOptions, RunSettings

    settings = RunSettings(ckpt=str(tmp_path / "ckpt"))
    run = RunDir(tmp_path / "run")
    engine = RunEngine(run, "r1", [], settings, EngineOptions(), "CPU", lease_token="feedfacecafebeef")
    assert engine.spec.lease_token == "feedfacecafebeef"
    with Lease(run.path) as lease:
        mine = RankWorker(str(run.path), settings.to_dict(), "r1", "g0", 0, 1, "cpu", 1, lease.token)
        mine._fence()  # the holder's rank may commit
        orphan = RankWorker(str(run.path), settings.to_dict(), "r0", "g0", 0, 1, "cpu", 1, engine.spec.lease_token)
        with pytest.raises(LeaseLost):
            orphan._fence()
        RankWorker(str(run.path), settings.to_dict(), "r0", "g0", 0, 1, "cpu", 1)._fence()  # no token: no fencing


def test_stitch_retries_count_as_attempts_so_status_agrees_with_the_failure_message(tmp_path, monkeypatch):
    import cluster.engine as engine_mod
    from cluster.engine import RunEngine
    from cluster.settings import EngineOptions

    def failing_get(ref):  # a different error each time (the same one twice ends it at once)
        raise {"a": RuntimeError, "b": OSError, "c": ValueError}[ref]("encoder broke")

    monkeypatch.setattr(engine_mod.ray, "get", failing_get)
    eng = RunEngine.__new__(RunEngine)
    eng.run, eng.opts, eng.stitching = RunDir(tmp_path / "run"), EngineOptions(shot_max_failures=3), set()
    eng.status = {"s": ShotStatus(state="running", attempts=1)}
    eng.queue = engine_mod.SegmentQueue()
    restarts = []
    eng._start_stitch = restarts.append
    for ref in "abc":
        eng._stitch_returned("s", ref)
    st = eng.status["s"]
    assert st.state == "failed" and "3 failed attempts" in st.error and len(restarts) == 2
    assert st.attempts == 3 == len(st.failures)
    assert [f.attempt for f in st.failures] == [1, 2, 3]


def test_a_stopped_run_ends_its_stitches_and_counts_the_publishes_that_landed(tmp_path, monkeypatch):
    """SIGTERM while a shot was being stitched: the publish may land during the stop; the results
    file written next must list the shot as done (the chaos test's race, made deterministic)."""
    import json

    import cluster.engine as engine_mod
    from cluster.engine import RunEngine

    run = RunDir(tmp_path / "run")
    out = tmp_path / "s1.mp4"
    cancelled, waited = [], []

    def publish_while_waiting(refs, num_returns, timeout):
        waited.append(list(refs))
        out.write_bytes(b"x" * 10)  # the stitch task's atomic publish lands during the stop
        run.published_file("s1").parent.mkdir(parents=True, exist_ok=True)
        run.published_file("s1").write_text(json.dumps({"output": str(out), "bytes": 10, "published_at": 5.0}))
        return refs, []

    monkeypatch.setattr(engine_mod.ray, "cancel", lambda ref, force: cancelled.append((ref, force)))
    monkeypatch.setattr(engine_mod.ray, "wait", publish_while_waiting)
    eng = RunEngine.__new__(RunEngine)
    eng.run, eng.order = run, ["s1", "s2"]
    eng.status = {"s1": ShotStatus(state="running", attempts=1), "s2": ShotStatus(state="running", attempts=1)}
    eng.inflight = {"stitch-ref": ("stitch", "s1"), "prep-ref": ("prep", ["s2"])}
    eng._settle_stitches()
    assert cancelled == [("stitch-ref", True)] and waited == [["stitch-ref"]]
    assert eng.status["s1"].state == "done" and eng.status["s1"].finished_at == 5.0
    assert run.read_status("s1").state == "done"
    assert eng.status["s2"].state == "running"


def test_the_code_part_covers_the_cluster_modules_that_shape_the_conditioning(monkeypatch, tmp_path):
    """Segment work is named by the shot key; the modules of cluster/ that make the prepared
    embeddings, features and the segment's conditioning are part of it."""
    import importlib
    from pathlib import Path

    import cluster.fingerprint as fingerprint

    monkeypatch.delenv(fingerprint.CODE_VERSION_ENV, raising=False)
    before = fingerprint.code_digest()
    for module in ("cluster.shot_work", "cluster.prep"):
        original = Path(importlib.import_module(module).__file__).read_bytes()
        copy = tmp_path / f"{module}.py"
        copy.write_bytes(original + b"\n# changed\n")
        real_import = importlib.import_module

        def fake_import(name, _module=module, _copy=copy, _real=real_import):
            mod = _real(name)
            if name == _module:
                return type("M", (), {"__file__": str(_copy)})
            return mod

        monkeypatch.setattr(importlib, "import_module", fake_import)
        assert fingerprint.code_digest() != before, module
        monkeypatch.setattr(importlib, "import_module", real_import)
    assert fingerprint.code_digest() == before


def test_a_run_puts_the_callers_sigterm_handler_back():
    import signal
    import threading

    from cluster.driver import _stop_on_signals

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        stop = threading.Event()
        restore = _stop_on_signals(stop)
        assert signal.getsignal(signal.SIGTERM) is not mine
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert stop.is_set()
        restore()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_no_ray_cluster_at_the_address_is_the_environment_exit_7(tmp_path, tiny_ckpt, small_manifest, monkeypatch,
                                                                  capsys):
    """`--address auto` with no head running (a cron firing after a reboot): one line saying how to
    start one, exit 7, not an internal error; the run directory stays resumable."""
    import ray

    import cluster.ray_runtime as rr

    manifest, _ = small_manifest
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to ...")

    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(rr.RayUnreachable, match="ray start --head"):
        rr.connect("auto")
    code = run(request(manifest, tmp_path / "run", tiny_ckpt, address="auto"))
    err = capsys.readouterr().err
    assert code == ec.EXIT_ENVIRONMENT, err
    assert "no Ray cluster at --address auto" in err and "--address local" in err and "Traceback" not in err


def test_cron_wrapper_names_every_exit_code_and_mails_an_unchanged_night_once(tmp_path):
    """A fake `s2v`: the environment (7) and a killed driver (137) are named, not "internal error";
    the same "nothing to do" ending with failed shots is mailed by the first firing only."""
    script = REPO_ROOT / "scripts" / "s2v-cron.sh"
    fake = tmp_path / "fake-s2v"
    run_dir = tmp_path / "run"

    def fire(code: int, says: str) -> subprocess.CompletedProcess:
        fake.write_text(f"#!/bin/sh\necho '{says}'\nexit {code}\n")
        fake.chmod(0o755)
        return subprocess.run([str(script), str(tmp_path / "m.parquet"), str(run_dir)], capture_output=True,
                              text=True, env={**os.environ, "S2V_BIN": str(fake), "TMPDIR": str(tmp_path)}, timeout=30)

    p = fire(7, "no Ray cluster at --address auto")
    assert p.returncode == 7 and "no Ray cluster" in p.stderr and "internal error" not in p.stderr
    p = fire(137, "")
    assert p.returncode == 137 and "killed by signal 9" in p.stderr
    nothing = "nothing to do: 3 done, 1 failed of 4 shots (results: r)"
    assert fire(6, nothing).stderr != ""  # first time: mailed
    assert fire(6, nothing).stderr == ""  # the same ending again: logged only
    assert fire(6, "nothing to do: 3 done, 2 failed of 5 shots (results: r)").stderr != ""  # changed: mailed
    log = (run_dir / "logs" / "cron.log").read_text()
    assert log.count("exit 6: finished with failed or unrendered shots") == 3
    assert not list(tmp_path.glob("s2v-cron.*"))  # the firing's temporary output is removed
