"""End to end on a local Ray: 12 shots on 2 render groups of 2 gloo ranks, results consistent with
the files, the dashboard's metrics, a rerun that renders nothing, and the Jobs API."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from cluster import exit_codes as ec
from cluster.driver import run
from cluster.status import collect, status_dict
from manifests import derive_seed, read_results
from render.media.video import probe_video
from tests.cluster.helpers import decoded_frames, file_stamps, request, shot_rows, write_rows

pytestmark = pytest.mark.timeout(480)

# 1-2 s shots (1-2 clips of 16 frames), the last one 3.5 s in parallel mode (segments of ~1.5 s).
SECONDS = [1.0, 1.25, 1.5, 1.75, 2.0, 1.0, 1.25, 1.5, 1.75, 2.0, 1.0, 3.5]
SEGMENTS = {"segment_seconds": 1.5, "overlap_seconds": 0.25}


@pytest.fixture(scope="module")
def twelve(tmp_path_factory, tiny_ckpt):
    d = tmp_path_factory.mktemp("twelve")
    rows = shot_rows(d, SECONDS, d / "out")
    rows[3]["priority"] = rows[7]["priority"] = 5
    rows[11]["segment_mode"] = "parallel"
    rows[5]["seed"] = None  # derived from the run seed and recorded
    manifest = write_rows(rows, d / "manifest.parquet")
    return d, manifest, request(manifest, d / "run", tiny_ckpt, settings=SEGMENTS)


class MetricsScraper(threading.Thread):
    """Polls the node's metrics export port during the run; keeps the last value of each s2v series."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.seen: dict[str, float] = {}
        self.actor_names: set[str] = set()
        self.stop = threading.Event()

    def scrape(self) -> None:
        try:
            text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        except OSError:
            return
        for line in text.splitlines():
            m = re.match(r"(ray_s2v_\w+)\{(.*)\} ([0-9.eE+-]+)$", line)
            if m:
                tags = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                key = m.group(1) + "".join(f"[{k}={tags[k]}]" for k in ("state", "group") if k in tags)
                self.seen[key] = float(m.group(3))

    def actors(self) -> None:
        """Actors as the dashboard lists them (Ray's state API, served by the dashboard)."""
        from ray.util.state import list_actors

        try:
            for a in list_actors(filters=[("state", "=", "ALIVE")], raise_on_missing_output=False):
                if a.name:
                    self.actor_names.add(a.name)
        except Exception:  # the state API may be briefly unavailable on a loaded machine
            pass

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.scrape()
            self.actors()


def test_twelve_shots_on_two_groups_of_two(local_ray, twelve):
    d, manifest, req = twelve
    scraper = MetricsScraper(local_ray["metrics_export_port"])
    scraper.start()
    t0 = time.time()
    code = run(dataclasses.replace(req, progress_interval_s=2.0))
    wall = time.time() - t0
    # Ray exports metric values every few seconds; keep scraping until the final ones appear.
    deadline = time.time() + 30
    while time.time() < deadline and scraper.seen.get("ray_s2v_shots[state=done]") != 12:
        time.sleep(1.0)
    scraper.stop.set()
    scraper.join()
    print(f"\n12-shot run: {wall:.1f} s wall (2 groups x 2 gloo ranks, tiny model, 64x64, 1 step)")
    print("metrics seen:", json.dumps(scraper.seen, indent=1, sort_keys=True))
    (d / "measurements.json").write_text(json.dumps({"wall_s": wall, "metrics": scraper.seen}, indent=1))
    assert code == ec.EXIT_OK

    # results.parquet: every shot, consistent with the files on disk
    results = {r.shot_id: r for r in read_results(req.run_dir / "results.parquet")}
    assert sorted(results) == [f"shot{i:02d}" for i in range(12)]
    for i, seconds in enumerate(SECONDS):
        r = results[f"shot{i:02d}"]
        out = Path(r.output)
        assert r.status == "done" and r.error is None and r.attempts >= 1
        assert hashlib.sha256(out.read_bytes()).hexdigest() == r.sha256
        info = probe_video(out)
        assert info.frames == r.frames == round(seconds * 16) and info.audio_codec == "aac"
        assert abs(r.duration_s - seconds) <= 1 / 16
        assert r.segments_done == r.segments_total and r.finished_at >= r.started_at
        assert r.resolved_seed == (100 + i if i != 5 else derive_seed(0, "shot05"))
        assert r.gpu_seconds is None and r.wall_s > 0  # CPU ranks: no GPU time to report
        assert r.manifest_row == i and r.width == r.height == 64 and Path(r.log_path).is_file()
    parallel_segments = len(json.loads((req.run_dir / "shots" / "shot11" / "plan.json").read_text())["segments"])
    assert results["shot11"].segments_total == parallel_segments >= 2  # the parallel-mode shot
    assert not any(p.name.startswith(".") for p in (d / "out").iterdir())  # no temp files left
    assert not (d / "pwned").exists() and not (d / "pwned2").exists()  # no manifest value reached a shell
    assert not (req.run_dir / "work").exists() or not any((req.run_dir / "work").iterdir())  # cleaned

    # both groups rendered, each a real 2-rank process group; attempt logs survive
    groups = [json.loads(p.read_text()) for p in (req.run_dir / "groups").glob("*.json")]
    assert sorted(g["group"] for g in groups) == ["g0", "g1"]
    assert all(len(set(g["pids"])) == 2 and g["backend"] == "gloo" for g in groups)
    logs = "".join(p.read_text() for p in (req.run_dir / "logs").glob("shot*/*.log"))
    assert "on group g0." in logs and "on group g1." in logs
    assert "committed" in logs

    # the dashboard's metrics (Prometheus export of the node)
    seen = scraper.seen
    assert seen["ray_s2v_shots[state=done]"] == 12 and seen["ray_s2v_shots[state=failed]"] == 0
    assert seen["ray_s2v_segments_done_total"] == 11 + parallel_segments
    assert seen["ray_s2v_queue_depth"] == 0
    assert any(k.startswith("ray_s2v_seconds_per_step[group=") and v > 0 for k, v in seen.items())
    assert any(k.startswith("ray_s2v_frames_per_second[group=") and v > 0 for k, v in seen.items())
    # clips counted by the ranks (a torn-down rank's last increments may never be exported)
    assert any(k.startswith("ray_s2v_clips_done_total[group=") and v > 0 for k, v in seen.items())
    assert seen.get("ray_s2v_shot_wall_seconds_count", 0) >= 1

    # the run's actors as the dashboard shows them: 2 groups x 2 named ranks and the prep actor
    run_id = json.loads((req.run_dir / "run.json").read_text())["run_id"]
    print("actors seen:", sorted(scraper.actor_names))
    assert {f"s2v-{run_id}-g{g}.1-r{r}" for g in (0, 1) for r in (0, 1)} <= scraper.actor_names
    assert f"s2v-{run_id}-prep" in scraper.actor_names

    report = collect(req.run_dir)
    assert report.counts == {"done": 12} and not report.live

    # live progress: clips of every shot done, elapsed measured, nothing left to wait for
    status = json.loads(json.dumps(status_dict(req.run_dir)))
    assert status["clips_done"] == status["clips_total"] >= 12 + parallel_segments - 1
    assert status["elapsed_s"] > 0 and status["eta_s"] == 0
    assert all(s["clips_done"] == s["clips_total"] > 0 and s["elapsed_s"] > 0 and s["eta_s"] == 0
               for s in status["shots"])
    assert all((req.run_dir / "shots" / f"shot{i:02d}" / "progress-0.json").is_file() for i in range(12))
    # ...and `s2v run` said so as it went (no terminal here: log lines, also in logs/driver.log)
    lines = re.findall(r"shots (\d+)/12, clips (\d+)/(\d+), \S+ s/step, ETA [\d:?]+", req.run_dir.joinpath(
        "logs", "driver.log").read_text())
    assert len(lines) >= 2 and lines[-1] == ("12", str(status["clips_total"]), str(status["clips_total"]))
    assert int(lines[0][1]) < status["clips_total"]


def test_rerun_renders_nothing_and_touches_no_output(twelve):
    d, manifest, req = twelve
    outputs = sorted((d / "out").glob("*.mp4"))
    stamps = file_stamps(outputs)
    logs_before = sorted(p.name for p in (req.run_dir / "logs").rglob("*.log"))
    t0 = time.time()
    assert run(req) == ec.EXIT_OK
    assert time.time() - t0 < 30  # no Ray start, no model load
    assert file_stamps(outputs) == stamps
    assert sorted(p.name for p in (req.run_dir / "logs").rglob("*.log")) == logs_before
    assert [r.status for r in read_results(req.run_dir / "results.parquet")] == ["done"] * 12


def test_submit_through_the_jobs_api(local_ray, tmp_path, tiny_ckpt):
    from cluster.submit import main_submit

    rows = shot_rows(tmp_path, [1.0, 1.25], tmp_path / "out")
    manifest = write_rows(rows, tmp_path / "m.parquet")
    code = main_submit(str(manifest), str(tmp_path / "run"), [
        "--", "--ckpt", str(tiny_ckpt), "--groups", "1", "--group-size", "2", "--infer-frames", "16",
        "--motion-frames", "9", "--slot-resource", "render_slot", "--collective-timeout", "10", "--prep-threads", "1",
    ], f"http://{local_ray['dashboard']}", wait=True, python=None)
    assert code == ec.EXIT_OK
    assert [r.status for r in read_results(tmp_path / "run" / "results.parquet")] == ["done", "done"]
    assert len(decoded_frames(tmp_path / "out" / "shot01.mp4")) == 20


def test_shot_failing_the_same_way_twice_is_marked_failed_and_the_run_goes_on(local_ray, tmp_path, tiny_ckpt):
    from cluster.ledger import RunDir

    rows = shot_rows(tmp_path, [1.0, 1.0], tmp_path / "out")
    rows[0]["prompt"] = "a prompt whose embedding file is corrupt"
    manifest = write_rows(rows, tmp_path / "m.parquet")
    run_dir = RunDir(tmp_path / "run")
    run_dir.prompt_file(rows[0]["prompt"]).parent.mkdir(parents=True)
    run_dir.prompt_file(rows[0]["prompt"]).write_bytes(b"garbage")  # every attempt fails the same way
    req = request(manifest, run_dir.path, tiny_ckpt, engine={"groups": 1, "group_size": 1})
    assert run(req) == ec.EXIT_FAILED_SHOTS
    results = {r.shot_id: r for r in read_results(run_dir.results_file)}
    assert results["shot01"].status == "done"
    bad = results["shot00"]
    assert bad.status == "failed" and bad.attempts == 2 and "failed the same way twice" in bad.error
    assert bad.failure_stage == "render" and bad.failure_type and bad.output is None
    assert bad.log_path == str(run_dir.path / "logs" / "shot00" / "2.log")
    assert sorted(p.name for p in (run_dir.path / "logs" / "shot00").glob("*.log")) == ["1.log", "2.log"]
    assert "Traceback" in (run_dir.path / "logs" / "shot00" / "1.log").read_text()  # the rank's own log
    assert not Path(rows[0]["output"]).exists()
    page = (run_dir.path / "index.html").read_text()  # the run report, rewritten at the end of the run
    assert 'id="count-done">1 done' in page and 'id="count-failed">1 failed' in page
    assert "failed the same way twice" in page and len(list((run_dir.path / "report").glob("*.jpg"))) == 1
    # A rerun does not retry it (exit 6 again, nothing rendered); --retry-failed would.
    assert run(req) == ec.EXIT_FAILED_SHOTS
    assert len(list((run_dir.path / "logs" / "shot00").glob("*.log"))) == 2


def test_group_start_budget_then_shots_stay_pending_with_the_reason(local_ray, tmp_path, tiny_ckpt):
    import shutil

    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    (ckpt / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")  # the groups cannot load
    rows = shot_rows(tmp_path, [1.0], tmp_path / "out")
    req = request(write_rows(rows, tmp_path / "m.parquet"), tmp_path / "run", ckpt,
                  engine={"groups": 1, "group_size": 1, "group_start_retries": 2, "node_max_failures": 2})
    t0 = time.time()
    assert run(req) == ec.EXIT_FAILED_SHOTS
    assert time.time() - t0 < 120
    (r,) = read_results(tmp_path / "run" / "results.parquet")
    # not the shot's fault: it stays pending (the next run, with the model fixed, renders it)
    assert r.status == "pending" and "no render group could be started" in r.error and "safetensors" in r.error
    assert (r.failure_stage, r.failure_type, r.width) == (None, None, 64)


def test_invalid_rows_fail_alone_and_x_columns_pass_through(local_ray, tmp_path, tiny_ckpt, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = shot_rows(tmp_path, [1.0, 1.0, 1.0], tmp_path / "out")
    rows[1]["audio"] = str(tmp_path / "media" / "missing.wav")
    for i, row in enumerate(rows):
        row["x_take"] = 10 + i
    manifest = write_rows(rows, tmp_path / "m.parquet")
    engine = {"groups": 1, "group_size": 1}

    # --strict: all or nothing, as before
    assert run(request(manifest, tmp_path / "run", tiny_ckpt, engine=engine, strict=True)) == ec.EXIT_INVALID
    assert "missing.wav" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()

    req = request(manifest, tmp_path / "run", tiny_ckpt, engine=engine)
    assert run(req) == ec.EXIT_FAILED_SHOTS
    err = capsys.readouterr().err
    assert "1 of 3 rows" in err and "1 invalid manifest rows" in err and "2 done, 0 failed of 2 shots" in err
    run_id = json.loads((req.run_dir / "run.json").read_text())["run_id"]

    table = pq.read_table(req.run_dir / "results.parquet")
    assert table.schema.field("x_take").type == pa.int64() and table.column("x_take").to_pylist() == [10, 11, 12]
    assert table.schema.field("manifest_row").type == pa.int64() and table.schema.field("width").type == pa.int32()
    assert table.schema.field("gpu_seconds").type == pa.float64()
    results = read_results(req.run_dir / "results.parquet")
    assert [(r.shot_id, r.manifest_row, r.status) for r in results] == [
        ("shot00", 0, "done"), ("shot01", 1, "failed"), ("shot02", 2, "done")]
    for r in (results[0], results[2]):
        assert Path(r.output).is_file() and r.run_id == run_id and (r.width, r.height) == (64, 64)
        assert Path(r.log_path).is_file() and r.log_path.startswith(str(req.run_dir / "logs" / r.shot_id))
        assert r.gpu_seconds is None and r.wall_s > 0 and r.failure_stage is r.failure_type is None
    bad = results[1]
    assert (bad.output, bad.attempts, bad.run_id, bad.width, bad.log_path, bad.gpu_seconds) == (
        None, 0, run_id, None, None, None)
    assert (bad.failure_stage, bad.failure_type) == ("validation", "missing-file")
    assert [(e["column"], e["rule"]) for e in bad.validation_errors] == [("audio", "missing-file")]
    assert "missing.wav" in bad.validation_errors[0]["message"] and "audio" in bad.error
    assert not (tmp_path / "out" / "shot01.mp4").exists()
    states = {line.shot_id: (line.state, line.error) for line in collect(req.run_dir).shots}
    assert states["shot01"][0] == "failed" and "missing-file" in states["shot01"][1]
    assert states["shot00"][0] == states["shot02"][0] == "done"

    # a rerun renders nothing (no Ray) and reports the same
    assert run(req) == ec.EXIT_FAILED_SHOTS
    assert "1 invalid manifest rows" in capsys.readouterr().err
    again = pq.read_table(req.run_dir / "results.parquet")
    assert again.column("status").to_pylist() == ["done", "failed", "done"]
    assert again.column("x_take").to_pylist() == [10, 11, 12]


def test_groups_avoid_excluded_nodes(local_ray, tmp_path, tiny_ckpt):
    import ray

    from cluster.group import GroupSpec, GroupStartError, form_group, teardown
    from cluster.settings import RunSettings

    spec = GroupSpec(str(tmp_path), "t", RunSettings(ckpt=str(tiny_ckpt)).to_dict(), 1, "render_slot", 10.0, 60.0, 1)
    node = ray.get_runtime_context().get_node_id()
    with pytest.raises(GroupStartError, match="no healthy node"):
        form_group(spec, "gx", 1, excluded={node})
    group = form_group(spec, "gy", 1, excluded={"a-failed-node"})  # pinned to a healthy node
    try:
        assert group.node_id == node and len(group.pids) == 1
    finally:
        teardown(group)
