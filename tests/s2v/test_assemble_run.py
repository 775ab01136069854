"""`s2v assemble --run-dir`: a run's results as a film, slates for shots not rendered, sidecars
(EDL/CSV/OTIO) at the film's frame rate."""

from __future__ import annotations

import json
import math

import av
import numpy as np
import opentimelineio as otio
import pytest
import torch

from cluster.ledger import RunDir
from manifests import write_manifest
from manifests.results import ResultRow, write_results
from render.film_sidecars import timecode
from render.media.atomic import atomic_write_json
from render.media.video import AudioTrack, Mp4Writer, probe_video
from s2v.cli import main
from tinymodel.demo_assets import cartoon_face, write_wav

RATE = 16000
# shot_id, order, seconds, status; "late" was refused by validation (not in the run's manifest)
SPEC = [("open", 0, 1.0, "done"), ("broken", 1, 1.5, "failed"), ("close", 2, 0.75, "done"), ("late", 3, None, "failed")]


def _tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _frames(seconds: float, fps: int) -> int:
    return math.ceil(seconds * fps - 1e-6)


def _render(path, seconds: float, fps: int, level: float = 0.5):
    n = _frames(seconds, fps)
    with Mp4Writer(path, 64, 64, fps=fps) as w:
        w.write(torch.full((3, n, 64, 64), level))
        w.close(audio=AudioTrack(_tone(seconds), RATE))
    return path


def make_run(tmp, fps: int = 16):
    """A run directory as `s2v run` leaves it: ledger manifest, run.json, results.parquet."""
    tmp.mkdir(parents=True, exist_ok=True)
    image = cartoon_face(tmp / "face.png", (64, 64))
    run = RunDir(tmp / "run")
    run.path.mkdir()
    source_rows, planned, results = [], [], []
    for row, (sid, order, secs, status) in enumerate(SPEC):
        audio = write_wav(tmp / f"{sid}.wav", _tone(secs)) if secs else tmp / f"{sid}.wav"
        out = tmp / f"{sid}.mp4"
        source_rows.append({"shot_id": sid, "audio": str(audio), "image": str(image), "prompt": "p",
                            "output": str(out), "sequence": "film", "order": order})
        if sid != "late":
            planned.append(source_rows[-1])
        if status == "done":
            _render(out, secs, fps)
            results.append(ResultRow(sid, "done", 1, output=str(out), duration_s=_frames(secs, fps) / fps,
                                     frames=_frames(secs, fps), fps=float(fps), manifest_row=row))
        elif sid == "late":
            results.append(ResultRow(sid, "failed", 0, error="invalid manifest row: audio: file not found",
                                     manifest_row=row, failure_stage="validation"))
        else:
            results.append(ResultRow(sid, "failed", 3, error="RuntimeError: CUDA error\nmore", manifest_row=row,
                                     failure_stage="render", failure_type="RuntimeError"))
    source = write_manifest(source_rows, tmp / "shots.parquet")
    write_manifest(planned, run.manifest_file)
    atomic_write_json(run.run_file, {"run_id": "r1", "manifest_source": str(source)})
    write_results(results, run.results_file)
    return run.path


def _assemble(capsys, *args):
    rc = main(["assemble", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_failed_shots_become_slates_by_default(tmp_path, capsys):
    run = make_run(tmp_path)
    film = tmp_path / "film.mp4"
    rc, out, err = _assemble(capsys, "--run-dir", run, "--out", film, "--json")
    assert rc == 0, err
    assert "warning: shot broken: failed (render): RuntimeError: CUDA error: a 1.50 s slate" in err
    assert "warning: shot late: failed (validation)" in err and "default" in err
    report = json.loads(out)
    frames = [16, 24, 12, 48]  # open 1 s, broken 1.5 s (its audio), close 0.75 s, late 3 s (default)
    assert [e["shot_id"] for e in report["entries"]] == ["open", "broken", "close", "late"]
    assert [e["kind"] for e in report["entries"]] == ["shot", "slate", "shot", "slate"]
    assert [e["frames"] for e in report["entries"]] == frames
    assert report["slates"] == ["broken", "late"] and report["skipped"] == [] and report["shots"] == 2
    assert report["entries"][2]["record_in"] == "00:00:02:08" and report["entries"][2]["record_out"] == "00:00:03:04"
    info = probe_video(film)
    assert info.frames == report["frames"] == sum(frames)
    with av.open(str(film)) as c:
        pics = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        c.seek(0)
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        titles = [ch["metadata"]["title"] for ch in c.chapters()]
    slate, shot = pics[16 + 12], pics[8]
    assert slate.mean() < 30 and (slate > 120).sum() > 20  # dark card with text pixels
    assert abs(shot.mean() - 191) < 10  # the rendered grey (level 0.5)
    assert np.abs(audio[16 * 3000 + 2000: 40 * 3000 - 2000]).max() < 1e-3  # the slate is silent
    assert np.abs(audio[2000: 16 * 3000 - 2000]).max() > 0.1  # the shot keeps its sound
    assert titles[1] == "broken (slate: not rendered)"


def test_skip_failed_leaves_them_out_and_strict_stops(tmp_path, capsys):
    run = make_run(tmp_path)
    film = tmp_path / "film.mp4"
    rc, out, err = _assemble(capsys, "--run-dir", run, "--out", film, "--skip-failed", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert [e["shot_id"] for e in report["entries"]] == ["open", "close"] and report["slates"] == []
    assert [s["shot_id"] for s in report["skipped"]] == ["broken", "late"]
    assert "shot broken: failed (render)" in err and "left out of the film (--skip-failed)" in err
    assert probe_video(film).frames == 16 + 12
    film.unlink()
    rc, out, err = _assemble(capsys, "--run-dir", run, "--out", film, "--strict")
    assert rc == 2 and "Traceback" not in err
    assert "2 shot(s) not rendered (--strict): broken: failed (render)" in err and "late: failed" in err
    assert not film.exists()
    with pytest.raises(SystemExit) as usage:  # argparse: usage error, exit 2
        main(["assemble", "--run-dir", str(run), "--out", str(film), "--strict", "--skip-failed"])
    assert usage.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_edl_csv_and_otio_count_frames_at_the_film_rate(tmp_path, capsys):
    edls = {}
    for fps in (16, 25):
        run = make_run(tmp_path / str(fps), fps)
        film = tmp_path / str(fps) / "film.mp4"
        rc, _, err = _assemble(capsys, "--run-dir", run, "--out", film)
        assert rc == 0, err
        edls[fps] = film.with_suffix(".edl").read_text()
        frames = [_frames(1.0, fps), _frames(1.5, fps), _frames(0.75, fps), _frames(3.0, fps)]
        starts = np.cumsum([0, *frames]).tolist()
        for k in range(4):  # record in/out of every event, at this rate
            assert f"{timecode(starts[k], fps)} {timecode(starts[k + 1], fps)}" in edls[fps]
        assert probe_video(film).frames == starts[-1]
        csv_rows = film.with_suffix(".csv").read_text().splitlines()[1:]
        assert [r.split(",")[5] for r in csv_rows] == [timecode(s, fps) for s in starts[:4]]
        tl = otio.adapters.read_from_file(str(film.with_suffix(".otio")))
        assert len(tl.tracks) == 1
        items = list(tl.tracks[0])
        assert [type(i).__name__ for i in items] == ["Clip", "Gap", "Clip", "Gap"]
        assert [i.name for i in items] == ["open", "broken", "close", "late"]
        assert [i.duration().to_frames() for i in items] == frames
        assert all(i.duration().rate == fps for i in items)
        assert items[0].media_reference.target_url == (tmp_path / str(fps) / "open.mp4").resolve().as_uri()
        assert [m.name for m in items[2].markers] == ["close"] and items[1].metadata["s2v"]["slate"] is True
        assert tl.tracks[0].duration().to_frames() == starts[-1]
    # 1.5 s is 24 frames at 16 fps, 38 at 25: the slate after the 1 s shot ends at 2:08 vs 2:13
    assert "00:00:01:00 00:00:02:08" in edls[16] and "00:00:01:00 00:00:02:13" in edls[25]
    assert "* FRAME RATE: 16 FPS" in edls[16] and "not a CMX 3600 rate" in edls[16]
    assert "* FRAME RATE: 25 FPS" in edls[25] and "not a CMX 3600 rate" not in edls[25]
    assert "002  BL" in edls[16] and "* SLATE: not rendered: failed (render)" in edls[16]


def test_manifest_form_slates_a_missing_output_and_bad_invocations_are_one_line(tmp_path, capsys):
    run = make_run(tmp_path)
    film = tmp_path / "film.mp4"
    # open, broken (never rendered: no output file), close; beside their media (the allowed root)
    manifest = tmp_path / "three.parquet"
    manifest.write_bytes((run / "manifest.parquet").read_bytes())
    rc, out, err = _assemble(capsys, manifest, "--out", film)
    assert rc == 0, err
    assert "2 shots, 1 slates" in out and "film.otio" in out
    assert "shot broken: rendered output" in err and "does not exist" in err
    assert probe_video(film).frames == 16 + 24 + 12
    (tmp_path / "shots.parquet").unlink()  # the source manifest gone: refused row "late" has no known place
    film.unlink()
    rc, out, err = _assemble(capsys, "--run-dir", run, "--out", film, "--json")
    assert rc == 0, err
    assert "shot late: failed (validation)" in err and "sequence/order are unknown: left out" in err
    report = json.loads(out)
    assert report["slates"] == ["broken"] and [s["shot_id"] for s in report["skipped"]] == ["late"]
    assert probe_video(film).frames == 16 + 24 + 12
    rc, _, err = _assemble(capsys, manifest, "--run-dir", run, "--out", film)
    assert rc == 2 and "not both" in err
    rc, _, err = _assemble(capsys, "--out", film)
    assert rc == 2 and "give a manifest or --run-dir" in err
    rc, _, err = _assemble(capsys, "--run-dir", tmp_path, "--out", film)
    assert rc == 2 and "no results.parquet there" in err and "Traceback" not in err


@pytest.mark.parametrize("fps", [16, 30])
def test_timecode_digits(fps):
    assert timecode(fps * 3661 + fps - 1, fps) == f"01:01:01:{fps - 1:02d}"
