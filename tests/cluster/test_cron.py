"""Cron on a growing manifest: the same `s2v run` fired again and again on one run directory while
rows are appended, a crf change, an edited input, a removed row and --rerender — each firing does
only what changed (per-shot keys, cluster.fingerprint)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import exit_codes as ec
from cluster.driver import run
from cluster.status import collect
from manifests import read_results
from tests.cluster.helpers import (
    CLIP_FRAMES,
    MOTION_FRAMES,
    REPO_ROOT,
    file_stamps,
    request,
    shot_rows,
    write_rows,
)

pytestmark = pytest.mark.timeout(480)

ENGINE = {"groups": 1, "group_size": 1, "keep_work": True}


def _attempt_logs(run_dir: Path) -> dict[str, set[str]]:
    logs = run_dir / "logs"
    return {p.name: {q.name for q in p.glob("*.log")} for p in logs.iterdir() if p.is_dir() and p.name != "previous"} \
        if logs.is_dir() else {}


def _rendered_since(before: dict[str, set[str]], run_dir: Path) -> list[str]:
    """Shots with a new attempt log: a segment went to a render group (the DiT ran for them)."""
    return sorted(sid for sid, logs in _attempt_logs(run_dir).items() if logs - before.get(sid, set()))


def _published(run_dir: Path) -> dict[str, str]:
    out = {}
    for p in (run_dir / "shots").glob("*/published.json"):
        out[p.parent.name] = json.loads(p.read_text())["sha256"]
    return out


def _segment_records(run_dir: Path) -> dict[str, tuple[int, int, int]]:
    return file_stamps(sorted((run_dir / "segments").rglob("*.json")))


def test_cron_firings_on_an_append_only_manifest(local_ray, tmp_path, tiny_ckpt):
    from tinymodel.demo_assets import cartoon_face

    rows = shot_rows(tmp_path, [1.0] * 5, tmp_path / "out")
    for i, row in enumerate(rows):  # one image per shot, so editing one touches one shot
        row["image"] = str(cartoon_face(tmp_path / "media" / f"own{i}.png", (80, 64), seed=10 + i))
    manifest = tmp_path / "manifest.parquet"
    run_dir = tmp_path / "run"
    walls: dict[str, float] = {}

    def fire(name: str, n_rows: int, **kw) -> tuple[int, list[str]]:
        write_rows(rows[:n_rows], manifest)
        before = _attempt_logs(run_dir)
        t0 = time.time()
        code = run(request(manifest, run_dir, tiny_ckpt, engine=ENGINE, **kw))
        walls[name] = time.time() - t0
        return code, _rendered_since(before, run_dir)

    # firing 1: two rows; firing 2: one appended; both in this process on the fixture's Ray
    assert fire("firing 1 (2 rows)", 2) == (ec.EXIT_OK, ["shot00", "shot01"])
    first = _published(run_dir)
    assert fire("firing 2 (+1 row)", 3) == (ec.EXIT_OK, ["shot02"])
    assert {k: v for k, v in _published(run_dir).items() if k in first} == first  # published shots untouched
    assert json.loads((run_dir / "run.json").read_text())["last_start"]["new"] == ["shot02"]

    # firing 3: two more rows, through the crontab line's wrapper as cron runs it
    write_rows(rows, manifest)
    before, published = _attempt_logs(run_dir), _published(run_dir)
    env = {**os.environ, "S2V_BIN": str(Path(sys.executable).parent / "s2v")}
    t0 = time.time()
    proc = subprocess.run([str(REPO_ROOT / "scripts" / "s2v-cron.sh"), str(manifest), str(run_dir),
                           "--ckpt", str(tiny_ckpt), "--address", local_ray["gcs_address"], "--groups", "1",
                           "--group-size", "1", "--infer-frames", str(CLIP_FRAMES), "--motion-frames",
                           str(MOTION_FRAMES), "--slot-resource", "render_slot", "--prep-threads", "1", "--keep-work"],
                          capture_output=True, text=True, env=env, timeout=400)
    walls["firing 3 (+2 rows, s2v-cron.sh)"] = time.time() - t0
    cron_log = (run_dir / "logs" / "cron.log").read_text()
    assert proc.returncode == ec.EXIT_OK and proc.stderr == "", cron_log  # cron mails nothing
    assert _rendered_since(before, run_dir) == ["shot03", "shot04"]
    assert {k: v for k, v in _published(run_dir).items() if k in published} == published
    assert cron_log.count(" start pid ") == 1 and "exit 0: all shots done" in cron_log

    # a firing with nothing new: no Ray work at all
    assert fire("firing 4 (unchanged)", 5) == (ec.EXIT_OK, [])

    # crf: every shot stitched again from its committed segments; no segment went to a group
    segments, groups = _segment_records(run_dir), sorted((run_dir / "groups").iterdir())
    published = _published(run_dir)
    assert fire("crf 20 (re-stitch)", 5, settings={"crf": 20}) == (ec.EXIT_OK, [])
    assert _segment_records(run_dir) == segments and sorted((run_dir / "groups").iterdir()) == groups
    restitched = _published(run_dir)
    assert sorted(restitched) == sorted(published) and all(restitched[s] != published[s] for s in published)
    for r in read_results(run_dir / "results.parquet"):
        assert r.status == "done" and hashlib.sha256(Path(r.output).read_bytes()).hexdigest() == r.sha256

    # an edited image: that shot alone is rendered again (its old segments discarded)
    cartoon_face(Path(rows[1]["image"]), (80, 64), seed=99)
    assert fire("edited image of shot01", 5, settings={"crf": 20}) == (ec.EXIT_OK, ["shot01"])
    after = _published(run_dir)
    assert after["shot01"] != restitched["shot01"]
    assert {k: v for k, v in after.items() if k != "shot01"} == {k: v for k, v in restitched.items() if k != "shot01"}

    # a removed row and --rerender: shot02 reported and left on disk, shot00 rendered again
    removed_out = Path(rows[2]["output"])
    stamp = file_stamps([removed_out])
    rows_without = [r for r in rows if r["shot_id"] != "shot02"]
    write_rows(rows_without, manifest)
    before = _attempt_logs(run_dir)
    t0 = time.time()
    code = run(request(manifest, run_dir, tiny_ckpt, engine=ENGINE, settings={"crf": 20}, rerender=["shot00"]))
    walls["row shot02 removed + --rerender shot00"] = time.time() - t0
    assert (code, _rendered_since(before, run_dir)) == (ec.EXIT_OK, ["shot00"])
    assert file_stamps([removed_out]) == stamp and (run_dir / "shots" / "shot02" / "published.json").is_file()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["last_start"]["removed"] == ["shot02"] and record["removed"]["shot02"]["published"]
    states = {line.shot_id: line.state for line in collect(run_dir).shots}
    assert states == {"shot00": "done", "shot01": "done", "shot03": "done", "shot04": "done", "shot02": "removed"}
    assert "no longer in the manifest" in (run_dir / "logs" / "driver.log").read_text()
    assert [r.shot_id for r in read_results(run_dir / "results.parquet")] == ["shot00", "shot01", "shot03", "shot04"]

    print("\ncron firings on one run directory (1 group x 1 rank, tiny model, 64x64, 1 step):")
    for name, wall in walls.items():
        print(f"  {name}: {wall:.1f} s")
    (tmp_path / "walls.json").write_text(json.dumps(walls, indent=1))
