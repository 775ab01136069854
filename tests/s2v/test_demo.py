"""`s2v demo` end to end: manifest, local Ray run through cluster.driver.run, ledger, published
MP4 of the audio's duration, and a rerun that renders nothing."""

from __future__ import annotations

import json

import pytest

from manifests import read_manifest, read_results
from render.media.audio import decode_audio
from render.media.video import probe_video
from s2v.cli import main
from tinymodel.export import shipped_checkpoint

pytestmark = pytest.mark.timeout(300)

SECONDS = 3.0
FPS = 16


@pytest.fixture(autouse=True)
def _pinned_code_version(monkeypatch):
    # As tests/cluster/conftest.py: edits to the source tree during the test must not change the
    # run's fingerprint between the first run and its resume.
    from cluster.fingerprint import CODE_VERSION_ENV

    monkeypatch.setenv(CODE_VERSION_ENV, "tests")


def _demo(out, *extra):
    return main(["demo", "--out-dir", str(out), "--seconds", str(SECONDS), "--size", "64*64", "--steps", "1",
                 "--quiet", *extra])


def test_demo_runs_the_main_job_on_local_ray_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert _demo(out) == 0
    first = capsys.readouterr()
    assert "demo video:" in first.out and "— rendered;" in first.out
    assert "trained tiny model" in first.out  # tinymodel/tiny-s2v ships a trained checkpoint

    # The manifest: one shot on the cut bundled speech and the generated character.
    shots = read_manifest(out / "demo.parquet")
    assert len(shots) == 1
    shot = shots[0]
    assert shot.audio == out / "demo_speech-3s.wav" and shot.image == out / "demo_character-seed42.png"
    assert shot.output == out / "demo.mp4" and (shot.size, shot.steps, shot.seed) == ("64*64", 1, 42)
    assert abs(decode_audio(shot.audio).duration_s - SECONDS) < 1e-3

    # The run directory is a ledger of `s2v run`: run record, normalised manifest, plan, publication, results.
    run = out / "run"
    record = json.loads((run / "run.json").read_text())
    assert record["shots"] == 1 and record["settings"]["ckpt"] == str(shipped_checkpoint().resolve())
    assert (run / "manifest.parquet").is_file() and (run / "shots" / "demo" / "plan.json").is_file()
    published = json.loads((run / "shots" / "demo" / "published.json").read_text())
    results = read_results(run / "results.parquet")
    assert [(r.shot_id, r.status, r.frames) for r in results] == [("demo", "done", published["frames"])]
    attempt_logs = sorted(p.name for p in (run / "logs" / "demo").iterdir())
    assert attempt_logs == ["1.log"]

    # The video: 64x64, the audio's duration within one frame, the audio muxed in.
    info = probe_video(out / "demo.mp4")
    assert (info.width, info.height) == (64, 64)
    assert abs(info.duration_s - SECONDS) <= 1 / FPS + 1e-6
    assert info.frames == published["frames"] and info.audio_codec == "aac"
    assert abs(info.audio_duration_s - SECONDS) < 0.05
    stamp = (out / "demo.mp4").stat().st_mtime_ns

    # A second demo in the same folder resumes from the ledger: nothing is rendered.
    assert _demo(out) == 0
    second = capsys.readouterr()
    assert "nothing rendered" in second.out and "nothing to do" in second.err
    assert (out / "demo.mp4").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (run / "logs" / "demo").iterdir()) == attempt_logs
    assert json.loads((run / "shots" / "demo" / "published.json").read_text()) == published

    # Other options on the same folder: refused like `s2v run` (fingerprint changed, exit 5), nothing touched.
    manifest = (out / "demo.parquet").read_bytes()
    assert _demo(out, "--seed", "7") == 5
    err = capsys.readouterr().err
    assert "--restart" in err and "--seed 42 -> 7" in err and "another --out-dir" in err
    assert (out / "demo.mp4").stat().st_mtime_ns == stamp
    assert (out / "demo.parquet").read_bytes() == manifest


@pytest.mark.parametrize(("args", "needle"), [
    (["--seconds", "99"], "--seconds 99"),
    (["--seconds", "0"], "--seconds 0"),
    (["--size", "10*10"], "--size 10*10"),
    (["--steps", "0"], "--steps 0"),
])
def test_demo_input_errors_name_the_option(tmp_path, capsys, args, needle):
    assert main(["demo", "--out-dir", str(tmp_path / "d"), "--quiet", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "d" / "run").exists()


def test_demo_falls_back_to_a_random_weight_model_without_a_shipped_one(tmp_path, capsys, monkeypatch):
    import tinymodel.export

    monkeypatch.setattr(tinymodel.export, "shipped_checkpoint", lambda: None)
    out = tmp_path / "demo"
    assert _demo(out) == 0
    assert "random-weight" in capsys.readouterr().out
    record = json.loads((out / "run" / "run.json").read_text())
    assert record["settings"]["ckpt"] == str(out / "tiny-s2v-checkpoint")
    assert (out / "tiny-s2v-checkpoint" / "config.json").is_file()
    assert abs(probe_video(out / "demo.mp4").duration_s - SECONDS) <= 1 / FPS + 1e-6


def test_a_refused_demo_leaves_its_manifest_and_names_out_dir(tmp_path, capsys, monkeypatch):
    """Other options on a rendered demo folder: exit 5 naming --restart and --out-dir (demo has no
    --run-dir), before the run starts, and demo.parquet still describes the rendered video."""
    import cluster.driver
    from cluster import exit_codes as ec
    from cluster.ledger import RunDir

    out = tmp_path / "demo"
    monkeypatch.setattr(cluster.driver, "run", lambda req: ec.EXIT_FAILED_SHOTS)  # writes the manifest only
    assert _demo(out) == ec.EXIT_FAILED_SHOTS
    before = (out / "demo.parquet").read_bytes()
    assert read_manifest(out / "demo.parquet")[0].steps == 1
    capsys.readouterr()

    monkeypatch.setattr(RunDir, "is_published", lambda self, shot_id: True)  # as after a rendered demo
    monkeypatch.setattr(cluster.driver, "run", lambda req: pytest.fail("a refused demo must not start the run"))
    assert _demo(out, "--steps", "4") == ec.EXIT_FINGERPRINT_CHANGED
    err = capsys.readouterr().err
    assert "other options (--steps 1 -> 4)" in err and "--restart" in err and "another --out-dir" in err, err
    assert "--run-dir" not in err
    assert (out / "demo.parquet").read_bytes() == before

    # Refused by the run itself (same options, another model or code): the manifest is put back too.
    monkeypatch.setattr(cluster.driver, "run", lambda req: ec.EXIT_FINGERPRINT_CHANGED)
    (out / "demo.parquet").unlink()
    assert _demo(out) == ec.EXIT_FINGERPRINT_CHANGED
    assert not (out / "demo.parquet").exists()
