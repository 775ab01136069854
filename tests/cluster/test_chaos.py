"""Chaos on a local Ray: kill -9 of one rank mid-segment, kill -9 of the driver mid-run and a
restart, and a second start while a run holds the lease."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cluster import exit_codes as ec
from cluster.driver import run
from cluster.lease import read_lease
from manifests import read_results
from tests.cluster.helpers import (
    attempt_pids,
    cli_args,
    decoded_frames,
    file_stamps,
    kill9,
    request,
    shot_rows,
    start_driver,
    wait_for,
    write_rows,
)

pytestmark = pytest.mark.timeout(480)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _segment_dir(run_dir: Path, shot_id: str, index: int = 0) -> Path:
    return run_dir / "work" / shot_id / f"segment_{index:04d}"


def _clip_digests(tmp_path: Path) -> str:
    """The victim's per-clip file digests in both runs (what to look at when the frames differ)."""
    out = []
    for name in ("run-a", "run-b"):
        record = _segment_dir(tmp_path / name, "victim") / "segment.json"
        clips = json.loads(record.read_text())["clips"] if record.is_file() else []
        out.append(f"{name}: " + ", ".join(f"clip {c['clip']} {c['sha256'][:12]}" for c in clips))
    return "; ".join(out)


def test_kill_9_of_a_rank_mid_segment_resumes_with_identical_frames(local_ray, tmp_path, tiny_ckpt):
    # The victim: 3 s = 3 clips of 16 frames, 3 sampling steps (slow enough to kill mid-segment).
    rows = shot_rows(tmp_path, [3.0, 1.0], tmp_path / "out-undisturbed", steps=3)
    rows[0]["shot_id"], rows[1]["shot_id"] = "victim", "bystander"
    undisturbed = write_rows(rows, tmp_path / "undisturbed.parquet")
    chaos_rows = [{**r, "output": r["output"].replace("out-undisturbed", "out-chaos")} for r in rows]
    chaos = write_rows(chaos_rows, tmp_path / "chaos.parquet")
    one_group = {"groups": 1, "keep_work": True}  # kept: a mismatch names the first clip that differs

    assert run(request(undisturbed, tmp_path / "run-a", tiny_ckpt, engine=one_group)) == ec.EXIT_OK

    req = request(chaos, tmp_path / "run-b", tiny_ckpt, engine=one_group)
    outcome: dict[str, int] = {}
    driver = threading.Thread(target=lambda: outcome.setdefault("code", run(req)), daemon=True)
    driver.start()
    run_dir = req.run_dir
    # Kill as soon as the victim's clip 0 is committed (its chain state is on disk), i.e. while
    # clip 1 is being sampled: the segment is in flight on both ranks.
    wait_for(lambda: (_segment_dir(run_dir, "victim") / "state.pt").is_file(), 240, "the victim's first clip")
    pids = attempt_pids(run_dir, "victim", 1)
    clips_on_disk = len(list(_segment_dir(run_dir, "victim").glob("clip_*.mp4")))
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.time()
    driver.join(timeout=400)
    assert not driver.is_alive() and outcome["code"] == ec.EXIT_OK

    status = json.loads((run_dir / "shots" / "victim" / "status.json").read_text())
    assert [f["kind"] for f in status["failures"]] == ["infrastructure"], status
    assert "died" in status["failures"][0]["message"]
    assert status["failures"][0]["at"] - killed_at < 15  # detected in seconds, not at the 30-min default
    record = json.loads((run_dir / "segments" / "victim" / "0.json").read_text())
    # Resumed after the last committed clip: at most the clip in flight was computed twice.
    assert record["attempt"] == 2 and record["resumed_from_clip"] >= max(1, clips_on_disk - 1)
    assert record["clips_rendered"] == 3 - record["resumed_from_clip"]
    assert (run_dir / "groups" / "g0.2.json").is_file()  # the whole group was re-formed
    # The bystander's segment was never recomputed.
    assert json.loads((run_dir / "shots" / "bystander" / "status.json").read_text())["attempts"] == 1
    # Frames identical to the undisturbed run's.
    a, b = Path(rows[0]["output"]), Path(chaos_rows[0]["output"])
    assert decoded_frames(a) == decoded_frames(b) and len(decoded_frames(b)) == 48, _clip_digests(tmp_path)
    assert _sha(a) == _sha(b)
    print(f"\nrank kill: pid {pids[1]} killed with {clips_on_disk} clip file(s) on disk; attempt 2 resumed "
          f"from clip {record['resumed_from_clip']} and rendered {record['clips_rendered']} clip(s); failure "
          f"seen {status['failures'][0]['at'] - killed_at:.1f} s after the kill; frames identical")


def test_driver_killed_mid_run_restarts_without_rerendering_and_second_start_exits_4(local_ray, tmp_path,
                                                                                     tiny_ckpt):
    seconds = [2.0, 2.5, 3.0, 2.0, 2.5, 3.0]
    rows = shot_rows(tmp_path, seconds, tmp_path / "out", steps=2)
    manifest = write_rows(rows, tmp_path / "m.parquet")
    run_dir = tmp_path / "run"
    args = cli_args(manifest, run_dir, tiny_ckpt, local_ray["gcs_address"])
    first = start_driver(args, tmp_path / "driver1.log")
    try:
        wait_for(lambda: read_lease(run_dir) is not None and (run_dir / "run.json").is_file(), 120, "the lease")
        # A second start while the first holds the lease: exit 4, nothing rendered or recorded.
        second = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert second.returncode == ec.EXIT_LEASE_HELD, second.stderr
        assert "leased by another run" in second.stderr and "nothing was rendered" in second.stderr
        assert len(json.loads((run_dir / "run.json").read_text())["starts"]) == 1

        def published() -> list[str]:
            return sorted(p.parent.name for p in (run_dir / "shots").glob("*/published.json"))

        wait_for(lambda: len(published()) >= 2, 300, "two published shots")
        kill9(first)
    finally:
        if first.poll() is None:
            first.kill()
    done_before = published()
    assert len(done_before) < len(rows), "the run finished before the kill; nothing to test"
    outputs = [Path(r["output"]) for r in rows if r["shot_id"] in done_before]
    stamps = file_stamps(outputs)
    records = {p: p.read_bytes() for p in (run_dir / "segments").rglob("*.json")}
    logs_before = {p.parent.name: sorted(q.name for q in p.parent.glob("*.log"))
                   for p in (run_dir / "logs").glob("*/1.log")}
    in_flight = {p.parent.name: len(list(p.glob("clip_*.mp4")))
                 for p in (run_dir / "work").glob("*/segment_0000")}

    restarted = start_driver(args, tmp_path / "driver2.log")
    assert restarted.wait(timeout=400) == ec.EXIT_OK, (tmp_path / "driver2.log").read_text()

    results = {r.shot_id: r for r in read_results(run_dir / "results.parquet")}
    assert all(r.status == "done" for r in results.values()) and len(results) == len(rows)
    for r in results.values():
        assert _sha(Path(r.output)) == r.sha256
    # Nothing committed was rendered again: published outputs untouched, their logs unchanged,
    # commit records unchanged, in-flight segments resumed after their committed clips.
    assert file_stamps(outputs) == stamps
    for sid in done_before:
        assert sorted(q.name for q in (run_dir / "logs" / sid).glob("*.log")) == logs_before[sid]
    for path, content in records.items():
        assert path.read_bytes() == content, path
    resumed = {}
    for sid, clips in in_flight.items():
        rec = json.loads((run_dir / "segments" / sid / "0.json").read_text())
        resumed[sid] = (clips, rec["resumed_from_clip"])
        if rec["attempt"] == 1:
            # The killed run's rank finished and committed this segment before Ray tore it down
            # (a driver's death reaches its actors a moment later): the restart had nothing to redo.
            assert rec["clips_rendered"] == rec["clips"], (sid, rec)
            continue
        assert rec["resumed_from_clip"] >= max(0, clips - 1), (sid, clips, rec)
    driver_log = (run_dir / "logs" / "driver.log").read_text()
    assert f"{len(done_before)} shots already published: skipped" in driver_log
    print(f"\ndriver kill: {len(done_before)} shots published before the kill were skipped; in-flight "
          f"segments (clip files on disk, resumed from clip): {resumed}")


def _prep_worker_pids() -> list[int]:
    """Pids of live processes whose Ray process title names the preparation actor."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::PrepWorker"):
            pids.append(int(entry.name))
    return pids


def test_kill_9_of_the_prep_actor_restarts_it_and_every_shot_publishes(local_ray, tmp_path, tiny_ckpt):
    rows = shot_rows(tmp_path, [1.0, 1.0, 1.0, 1.0], tmp_path / "out")
    manifest = write_rows(rows, tmp_path / "m.parquet")
    req = request(manifest, tmp_path / "run", tiny_ckpt, engine={"groups": 1, "prep_chunk": 1})
    outcome: dict[str, int] = {}
    driver = threading.Thread(target=lambda: outcome.setdefault("code", run(req)), daemon=True)
    driver.start()
    # Kill the actor as soon as it exists: all its chunks are queued or in flight.
    pids = wait_for(_prep_worker_pids, 240, "the preparation actor", interval=0.05)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    driver.join(timeout=400)
    assert not driver.is_alive() and outcome["code"] == ec.EXIT_OK
    run_dir = req.run_dir
    for r in rows:
        status = json.loads((run_dir / "shots" / r["shot_id"] / "status.json").read_text())
        assert status["state"] == "done", status
        assert Path(r["output"]).is_file()
    assert "preparation actor died" in (run_dir / "logs" / "driver.log").read_text()


def test_sigterm_stops_gracefully_and_the_results_file_shows_the_published_shots(local_ray, tmp_path, tiny_ckpt):
    """SIGTERM (cron's timeout, a scheduler's pre-emption): exit 130 and a results file that lists
    every shot published before the stop as done, although results are otherwise rewritten only
    every 30 s."""
    rows = shot_rows(tmp_path, [1.0, 1.0, 3.0, 3.0, 3.0, 3.0], tmp_path / "out", steps=2)
    rows[0]["priority"] = rows[1]["priority"] = 5  # the short ones first
    manifest = write_rows(rows, tmp_path / "m.parquet")
    run_dir = tmp_path / "run"
    proc = start_driver(cli_args(manifest, run_dir, tiny_ckpt, local_ray["gcs_address"]), tmp_path / "driver.log")
    try:
        wait_for(lambda: list((run_dir / "shots").glob("*/published.json")), 300, "a published shot")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == ec.EXIT_INTERRUPTED, (tmp_path / "driver.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    published = {p.parent.name for p in (run_dir / "shots").glob("*/published.json")}
    results = {r.shot_id: r.status for r in read_results(run_dir / "results.parquet")}
    assert published and len(published) < len(rows), "the run finished before the stop; nothing to test"
    assert {sid for sid, status in results.items() if status == "done"} == published
    # nothing runs any more: the shots that were in flight say so, as `s2v status` does
    assert "running" not in results.values(), results
