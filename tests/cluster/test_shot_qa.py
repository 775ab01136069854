"""Quality curves of a published shot in a run (cluster.results.record_shot_qa): the files in the
ledger, the results row's qa_ columns, ``s2v status`` and the run report; a QA failure never
fails the shot. Built on a hand-made run directory (no Ray)."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from cluster import report
from cluster.ledger import RunDir, ShotStatus
from cluster.results import read_shot_qa, record_shot_qa, result_row
from cluster.status import collect, format_report
from manifests import Shot, read_results, write_results
from render.media.atomic import atomic_write_json, file_sha256
from render.shot.plan import SegmentSpec, ShotPlan
from tests.render.test_quality_curves import FPS, _drifted_join, _reference, _write

PLAN = ShotPlan("parallel", FPS, 320, 20.0, (SegmentSpec(0, 0, 168, 0, 3), SegmentSpec(1, 160, 160, 8, 2)), 80,
                height=64, width=96)


def _published_shot(tmp_path, video_bytes: bytes | None = None) -> tuple[RunDir, Shot, dict]:
    """A run whose one shot is published: a segment drifted before a crossfaded join (flagged)."""
    from tinymodel.demo_assets import speech_like_audio, write_wav

    run = RunDir(tmp_path / "run")
    image = tmp_path / "ref.png"
    Image.fromarray(_reference()).save(image)
    audio = write_wav(tmp_path / "a.wav", speech_like_audio(20.0, 16000, 1))
    video = tmp_path / "out" / "hero.mp4"
    video.parent.mkdir(parents=True)
    if video_bytes is None:
        _write(video, _drifted_join(0.8))
    else:
        video.write_bytes(video_bytes)
    shot = Shot("hero", audio, image, "a person talking", video, row=0)
    run.write_run({"run_id": "cafe0123", "created_at": time.time()})
    run.write_manifest([shot])
    run.write_plan("hero", PLAN.to_dict())
    run.write_status("hero", ShotStatus(state="done", attempts=1, started_at=time.time() - 60))
    published = {"output": str(video), "frames": 320, "duration_s": 20.0, "fps": 16.0,
                 "sha256": file_sha256(video), "bytes": video.stat().st_size, "published_at": time.time()}
    atomic_write_json(run.published_file("hero"), published)
    return run, shot, published


def test_a_flagged_shot_is_done_with_its_flags_in_results_status_and_report(tmp_path):
    run, shot, published = _published_shot(tmp_path)
    rec = record_shot_qa(run, shot, PLAN, published)
    assert "error" not in rec and rec["seconds"] > 0
    folder = run.shot_dir("hero")
    assert {p.name for p in folder.iterdir()} >= {"qa.json", "qa-curves.json", "qa.png", "seams.png"}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left

    row = result_row(run, shot, "cafe0123")
    assert row.status == "done" and row.qa_error is None
    assert row.qa_worst_seam_ratio > 3 and row.qa_max_colour_drift > 20 and row.qa_lipsync is None
    kinds = [f.split(":")[0] for f in row.qa_flags]
    assert kinds == ["seam_jump", "colour_drift"] and "join 1 at 10.00 s" in row.qa_flags[0]
    write_results([row], run.results_file)
    [back] = read_results(run.results_file)
    assert back.qa_flags == row.qa_flags and back.qa_worst_seam_ratio == row.qa_worst_seam_ratio

    text = format_report(collect(run.path))
    hero = next(ln for ln in text.splitlines() if ln.startswith("hero "))
    assert "done" in hero and "FLAGGED" in hero
    assert "quality flags (1 shot(s)" in text and "hero: seam_jump: " in text

    page = report.write_report(run).read_text()
    assert "FLAGGED seam_jump" in page and 'href="shots/hero/qa.png"' in page and 'href="shots/hero/seams.png"' in page


def test_a_qa_failure_is_recorded_and_the_shot_stays_done(tmp_path, caplog):
    run, shot, published = _published_shot(tmp_path, video_bytes=b"not a video at all")
    rec = record_shot_qa(run, shot, PLAN, published)
    assert "error" in rec and "quality curves of shot hero" in caplog.text
    row = result_row(run, shot)
    assert row.status == "done" and row.qa_error == rec["error"] and row.qa_flags is None
    line = next(s for s in collect(run.path).shots if s.shot_id == "hero")
    assert line.state == "done" and line.qa == "error"


def test_qa_of_an_earlier_render_is_ignored(tmp_path):
    run, shot, published = _published_shot(tmp_path)
    record_shot_qa(run, shot, PLAN, published)
    atomic_write_json(run.published_file("hero"), {**published, "sha256": "0" * 64})  # re-published since
    assert read_shot_qa(run, "hero") is None
    row = result_row(run, shot)
    assert row.qa_flags is None and row.qa_worst_seam_ratio is None
    assert "FLAGGED" not in report._qa_cell(run, "hero", run.read_published("hero"))


@pytest.mark.parametrize("bad", [{"qa_flags": "seam_jump"}, {"qa_lipsync": float("nan")}])
def test_results_refuse_bad_qa_values(tmp_path, bad):
    from manifests import ResultRow
    from manifests.results import ResultsError

    with pytest.raises(ResultsError, match=next(iter(bad))):
        write_results([ResultRow(shot_id="s", status="done", **bad)], tmp_path / "r.parquet")


def test_lipsync_is_measured_for_tiny_demo_models_only(tmp_path, tiny_ckpt):
    """The measure reads the tiny model's mouth colour: a release-width DiT's shots (real faces,
    where a burgundy shirt would score) get no lip-sync score or flag; an unreadable config none."""
    import json
    from pathlib import Path

    from cluster.results import measures_lipsync
    from tinymodel.export import SHIPPED_DIR

    assert measures_lipsync(SHIPPED_DIR) and measures_lipsync(tiny_ckpt)
    release = tmp_path / "release"
    release.mkdir()
    cfg = json.loads((Path(SHIPPED_DIR) / "config.json").read_text())
    (release / "config.json").write_text(json.dumps({**cfg, "dim": 5120, "num_heads": 40}))
    assert not measures_lipsync(release)
    assert not measures_lipsync(tmp_path / "missing")
