"""Quality curves of a shot (render/quality/curves.py, plots.py): synthetic videos with a known jump
at a known frame, a known colour drift, and a crossfade that hides a drift."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from render.media.video import Mp4Writer
from render.quality.curves import QualityThresholds, shot_curves
from render.quality.frame_measures import shot_layout
from render.quality.plots import contact_sheet, files_beside, format_table, plot_curves, write_qa_files
from render.quality.seams import crossfade_weight, rgb_to_lab, seam_report
from render.shot.plan import SegmentSpec, ShotPlan

FPS = 16
H, W = 64, 96


def _scene(n: int, speed: float = 1.0, start: int = 0) -> np.ndarray:
    """float [n, H, W, 3]: a still "face" (a disc that wobbles a little) on a gradient, and a
    bright bar sweeping across the picture ``speed`` pixels a frame (the motion inside clips).
    Frame t of the scene is frame ``start + t``."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = np.stack([60 + 100 * yy / H, 90 + 60 * xx / W, np.full((H, W), 120.0, np.float32)], -1)
    out = np.empty((n, H, W, 3), np.float32)
    for i in range(n):
        t = start + i
        cx, cy = W / 2 + 3 * np.sin(t / 6), H / 2 + 2 * np.cos(t / 9)
        img = base.copy()
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 200] = (200, 150, 120)
        img[:, (xx[0] - t * speed) % W < 5] = (235, 235, 90)
        out[i] = img
    return out


def _write(path, frames: np.ndarray):
    with Mp4Writer(path, W, H, fps=FPS) as w:
        w.write(np.clip(np.round(frames), 0, 255).astype(np.uint8))
    return path


def _reference() -> np.ndarray:
    return _scene(1)[0].astype(np.uint8)


# -- the layout of clips and seams ----------------------------------------------------------------


def test_layout_of_a_parallel_shot_and_a_converted_frame_rate():
    lay = shot_layout(320, 1.0, 80, [(160, 8)], official_frame_drop=True)
    # Segment 0: clips of 77 (the official drop), 80, then a clip that ends inside the overlap.
    assert [c[2:] for c in lay.clips] == [(0, 77), (77, 157), (157, 160), (168, 240), (240, 320)]
    assert [(s[0], s[3], s[4]) for s in lay.seams] == [("clip", 77, 0), ("clip", 157, 0), ("join", 160, 8),
                                                      ("clip", 240, 0)]
    assert lay.segments == [(0, 160), (168, 320)]
    # The same shot converted to 30 fps: the seams stay at the same times.
    lay30 = shot_layout(600, 30 / 16, 80, [(160, 8)], official_frame_drop=False)
    assert [(s[0], s[3], s[4]) for s in lay30.seams] == [("clip", 150, 0), ("join", 300, 15), ("clip", 450, 0)]


# -- a known jump at a known frame ----------------------------------------------------------------


@pytest.fixture(scope="module")
def jump_video(tmp_path_factory):
    """240 frames (3 clips): the picture brightens by 40 from frame 160 (a clip boundary) on."""
    f = _scene(240)
    f[160:] += 40
    return _write(tmp_path_factory.mktemp("jump") / "jump.mp4", f)


def test_a_jump_at_a_clip_boundary_is_found_and_flagged(jump_video):
    c = shot_curves(jump_video, _reference(), None, FPS, 80)
    assert [(s.kind, s.frame) for s in c.seams] == [("clip", 80), ("clip", 160)]
    quiet, jump = c.seams
    assert c.worst_seam is jump and jump.ratio > 3 * c.thresholds.seam_ratio
    assert quiet.ratio < c.thresholds.seam_ratio
    assert [f.kind for f in c.flags] == ["seam_jump"] and c.flags[0].time_s == 10.0
    assert int(np.nanargmax(c.picture_change)) == 160  # the per-frame curve peaks there too
    assert [cl.seam_ratio for cl in c.clips] == [None, quiet.ratio, jump.ratio]


def test_a_jump_inside_a_clip_is_not_a_seam(tmp_path):
    f = _scene(160)
    f[40:] += 40
    c = shot_curves(_write(tmp_path / "inside.mp4", f), None, None, FPS, 80)
    assert int(np.nanargmax(c.picture_change)) == 40
    assert len(c.seams) == 1 and c.seams[0].ratio < c.thresholds.seam_ratio and not c.flags
    assert c.colour_de is None and c.clips[0].colour_de is None  # no reference: no drift measured


# -- a known colour drift -------------------------------------------------------------------------


def test_colour_drift_per_clip_matches_the_lab_distance(tmp_path):
    """Uniform frames moving linearly from the reference colour to another: each clip's ΔE76 is
    the distance of its mean Lab colour from the reference's."""
    n = 240
    start, end = np.array([120.0, 110.0, 100.0]), np.array([40.0, 160.0, 60.0])
    colours = start + (end - start) * (np.arange(n) / (n - 1))[:, None]
    frames = np.broadcast_to(colours[:, None, None, :], (n, H, W, 3)).copy()
    ref = np.broadcast_to(start, (H, W, 3)).astype(np.uint8)
    c = shot_curves(_write(tmp_path / "drift.mp4", frames), ref, None, FPS, 80)
    lab = rgb_to_lab(np.round(colours))
    want = [float(np.linalg.norm(lab[a:a + 80].mean(0) - rgb_to_lab(start))) for a in (0, 80, 160)]
    got = [cl.colour_de for cl in c.clips]
    assert np.allclose(got, want, atol=1.5), (got, want)
    assert got[0] < got[1] < got[2]
    drift = [f for f in c.flags if f.kind == "colour_drift"]
    assert want[2] > 20 > want[0] and drift and drift[0].time_s == 10.0  # the last clip is the worst
    assert c.summary()["max_colour_drift"] == got[2]
    assert not [f for f in c.flags if f.kind == "seam_jump"]  # a slow drift is not a jump


# -- a crossfade that hides a drift ---------------------------------------------------------------


def _drifted_join(drift: float) -> np.ndarray:
    """Two segments crossfaded over 8 frames at frame 160: segment 0 drifts towards green by
    ``drift`` (0..1) over its length, segment 1 starts again from the reference's colours."""
    seg0 = _scene(168, speed=6.0)
    seg1 = _scene(160, speed=6.0, start=160)
    a = (drift * np.linspace(0, 1, 168))[:, None, None, None]
    seg0 = seg0 * (1 - a) + np.array([20.0, 170.0, 40.0]) * a
    fade = [(1 - crossfade_weight(j, 8)) * seg0[160 + j] + crossfade_weight(j, 8) * seg1[j] for j in range(8)]
    return np.concatenate([seg0[:160], np.stack(fade), seg1[8:]])


def test_a_drift_hidden_by_a_crossfade_is_flagged(tmp_path):
    video = _write(tmp_path / "hidden.mp4", _drifted_join(0.8))
    plan = ShotPlan("parallel", FPS, 320, 20.0, (SegmentSpec(0, 0, 168, 0, 3), SegmentSpec(1, 160, 160, 8, 2)), 80)
    from render.quality.seams import decoded_frames

    old = seam_report(decoded_frames(video), plan)["joins"][0]["ratio_p95"]
    assert old < 2.0  # the frame-to-frame metric spreads the jump over the crossfade and misses it
    c = shot_curves(video, _reference(), None, plan.fps, plan.infer_frames, plan.joins)
    join = next(s for s in c.seams if s.kind == "join")
    assert (join.frame, join.span, join.time_s) == (160, 8, 10.0)
    assert join.ratio > 2 * c.thresholds.seam_ratio and c.worst_seam is join
    kinds = {f.kind: f for f in c.flags}
    assert "seam_jump" in kinds and "join 1 at 10.00 s" in kinds["seam_jump"].message
    assert "colour_drift" in kinds and c.segments[0].colour_de > 20 > c.segments[1].colour_de


def test_the_same_join_without_a_drift_is_not_flagged(tmp_path):
    video = _write(tmp_path / "clean.mp4", _drifted_join(0.0))
    c = shot_curves(video, _reference(), None, FPS, 80, [(160, 8)])
    join = next(s for s in c.seams if s.kind == "join")
    assert join.ratio < c.thresholds.seam_ratio and not [f for f in c.flags if f.kind == "seam_jump"]


def test_frames_in_memory_give_the_numbers_of_the_file(jump_video):
    from render.quality.curves import curves_of_frames
    from render.quality.frame_measures import ANALYSIS_SIDE, decoded_small, resize_like_frames

    ref = resize_like_frames(_reference(), W, H)  # already below the analysis size: unchanged
    from_file = shot_curves(jump_video, _reference(), None, FPS, 80)
    frames = list(decoded_small(jump_video, ANALYSIS_SIDE))
    in_memory = curves_of_frames(iter(frames), len(frames), FPS, ref, None, FPS, 80)
    assert in_memory.summary() == from_file.summary() and in_memory.seams == from_file.seams
    assert in_memory.clips == from_file.clips
    with pytest.raises(ValueError, match="the container lists 241"):
        curves_of_frames(iter(frames), 241, FPS)


# -- face similarity and lip-sync -----------------------------------------------------------------


def test_face_similarity_follows_the_reference(tmp_path):
    ref = _reference()
    other = np.ascontiguousarray(ref[::-1, ::-1])  # the picture upside down: same colours, other structure
    frames = np.concatenate([np.repeat(ref[None], 80, 0), np.repeat(other[None], 80, 0)]).astype(np.float32)
    c = shot_curves(_write(tmp_path / "face.mp4", frames), ref, None, FPS, 80)
    same, flipped = c.clips
    assert same.face_similarity > 0.97 and flipped.face_similarity < c.thresholds.face_similarity
    assert same.colour_de < 2 and flipped.colour_de < 2  # colour alone does not tell them apart
    flag = next(f for f in c.flags if f.kind == "face_similarity")
    assert flag.time_s == 5.0 and "1 clip(s)" in flag.message


def test_lipsync_of_a_tiny_model_character_and_of_other_pictures(tmp_path):
    from tests.render.test_lipsync import _speaking_character_mp4
    from tinymodel.demo_assets import speech_like_audio, write_wav

    video, x = _speaking_character_mp4(tmp_path / "talk.mp4", 6.0, seed=3)
    own = shot_curves(video, None, write_wav(tmp_path / "own.wav", x), FPS, 48)
    assert own.lipsync["corr"] > 0.8 and all(cl.lipsync > 0.6 for cl in own.clips)
    assert not [f for f in own.flags if f.kind == "lipsync"]
    wrong = shot_curves(video, None, write_wav(tmp_path / "other.wav", speech_like_audio(6.0, 16000, 99)), FPS, 48)
    assert wrong.lipsync["corr"] < own.lipsync["corr"] - 0.3
    assert [f.kind for f in wrong.flags] == ["lipsync"]
    plain = shot_curves(_write(tmp_path / "plain.mp4", _scene(96)), None, tmp_path / "own.wav", FPS, 48)
    assert plain.lipsync is None and "not measurable" in plain.lipsync_note and not plain.flags


# -- pictures and files ---------------------------------------------------------------------------


def test_long_shots_keep_only_the_worst_seams_frames(tmp_path):
    f = _scene(400)
    f[200:] += 50  # one bad seam among 49 clip boundaries (clips of 8 frames)
    c = shot_curves(_write(tmp_path / "long.mp4", f), _reference(), None, FPS, 8, sheet_seams=2)
    assert len(c.seams) == 49 and 200 in c.seam_frames and len(c.seam_frames) <= 4
    assert c.worst_seam.frame == 200
    sheet = contact_sheet(c)
    assert sheet.height < 4 * 160  # reference + 2 rows


def test_qa_files_are_written_atomically(jump_video, tmp_path, monkeypatch):
    import render.quality.plots as plots

    c = shot_curves(jump_video, _reference(), None, FPS, 80)
    files = files_beside(tmp_path / "shot.mp4")
    assert (files.json.name, files.plot.name, files.sheet.name) == ("shot.qa.json", "shot.qa.png", "shot.seams.png")
    write_qa_files(c, files)
    assert json.loads(files.json.read_text())["summary"]["flags"] == [str(f) for f in c.flags]
    assert Image.open(files.plot).size == plot_curves(c).size and Image.open(files.sheet).format == "PNG"
    before = {p: p.read_bytes() for p in (files.json, files.plot, files.sheet)}

    def broken(_curves):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "contact_sheet", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_qa_files(c, files)
    assert {p: p.read_bytes() for p in before} == before  # the old sheet and JSON are intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot.qa.json", "shot.qa.png", "shot.seams.png"]


def test_the_table_lists_clips_seams_and_flags(jump_video):
    c = shot_curves(jump_video, _reference(), None, FPS, 80, thresholds=QualityThresholds(seam_ratio=1e6))
    text = format_table(c)
    assert len([ln for ln in text.splitlines() if ln.strip().startswith("0 ")]) == 3
    assert "segment 0 clip 2 at 10.00 s" in text and text.rstrip().endswith("no flags")
    assert not c.flags  # thresholds are parameters: a huge one flags nothing


# -- s2v qa ---------------------------------------------------------------------------------------


def test_s2v_qa_prints_the_table_and_writes_the_pictures(tmp_path, capsys):
    from s2v.cli import main

    video = _write(tmp_path / "hidden.mp4", _drifted_join(0.8))
    plan = ShotPlan("parallel", FPS, 320, 20.0, (SegmentSpec(0, 0, 168, 0, 3), SegmentSpec(1, 160, 160, 8, 2)), 80)
    (tmp_path / "plan.json").write_text(plan.to_json())
    Image.fromarray(_reference()).save(tmp_path / "ref.png")
    args = ["qa", str(video), "--plan", str(tmp_path / "plan.json"), "--image", str(tmp_path / "ref.png"),
            "--json-out", str(tmp_path / "seams.json")]
    assert main(args) == 0  # flagged, not failed
    out = capsys.readouterr().out
    assert "join 1 at 10.00 s:" in out and "FLAG seam_jump: 1 seam(s) above 3x" in out and "FLAG colour_drift" in out
    files = files_beside(video)
    assert all(p.is_file() for p in (files.json, files.plot, files.sheet))
    assert json.loads(files.json.read_text())["summary"]["worst_seam_ratio"] > 3
    assert main(args + ["--seam-ratio", "1000", "--colour-drift", "1000", "--curves-dir", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "FLAG" not in out and "no flags" in out and (tmp_path / "q" / "hidden.seams.png").is_file()


def test_s2v_qa_help_documents_the_thresholds(capsys):
    from s2v.cli import main

    with pytest.raises(SystemExit):
        main(["qa", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    th = QualityThresholds()
    for option, default in (("--seam-ratio", th.seam_ratio), ("--colour-drift", th.colour_drift_de),
                            ("--face-similarity", th.face_similarity), ("--lipsync-corr", th.lipsync_corr)):
        assert f"{option} {default:g}:" in text
    assert "FLAGGED, not failed" in text


def test_a_join_whose_crossfade_ends_on_a_clip_boundary_is_still_measured():
    """A crossfade as long as a clip: the join's first frame after the transition is also where a
    clip of the next segment starts; both seams are measured (the join used to drop out)."""
    from render.quality.curves import curves_of_frames

    frames = _scene(200, speed=6.0)
    c = curves_of_frames(iter(frames), len(frames), FPS, None, None, FPS, 16, [(80, 16)])
    kinds = [(s.kind, s.frame) for s in c.seams]
    assert ("join", 80) in kinds and ("clip", 96) in kinds, kinds
