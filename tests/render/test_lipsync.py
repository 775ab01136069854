"""Lip-sync metric: per-frame loudness, mouth target, mouth-area measurement, lagged correlation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from render.quality.lipsync import (
    LOUDNESS_FLOOR_DB,
    LOUDNESS_SPAN_DB,
    MOUTH_RGB,
    MOUTH_TOLERANCE,
    frame_loudness_db,
    lipsync_of_video,
    lipsync_score,
    measure_mouth_opening,
    mouth_target,
)

SR, FPS = 16000, 16
HOP = SR // FPS  # 1000 samples per video frame


def _tone(n: int, amp: float = 0.5, hz: float = 256.0) -> np.ndarray:
    """A whole number of periods in every half frame (256 Hz = 8 per 500 samples): constant frame RMS."""
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / SR)).astype(np.float32)


def test_loudness_of_silence_is_the_floor():
    db = frame_loudness_db(np.zeros(SR * 2, np.float32), SR, FPS, 32)
    assert db.dtype == np.float32 and db.shape == (32,)
    assert np.all(db == LOUDNESS_FLOOR_DB)


def test_loudness_of_a_tone_burst():
    """Frame i covers samples [i*HOP - HOP/2, i*HOP + HOP/2): a burst over samples
    [10*HOP, 20*HOP) is at full level in frames 11..19, half power (-3 dB) in frames 10 and 20,
    and silent elsewhere."""
    x = np.zeros(40 * HOP, np.float32)
    x[10 * HOP:20 * HOP] = _tone(10 * HOP)
    db = frame_loudness_db(x, SR, FPS, 40)
    loud = np.flatnonzero(db > -1.0)
    assert loud.tolist() == list(range(11, 20))
    np.testing.assert_allclose(db[11:20], 0.0, atol=0.1)  # the 95th-percentile frame is the reference
    np.testing.assert_allclose(db[[10, 20]], -3.01, atol=0.2)
    quiet = np.r_[0:10, 21:40]
    assert np.all(db[quiet] == LOUDNESS_FLOOR_DB)


def test_loudness_is_relative_to_the_utterance():
    """Scaling the whole signal changes nothing (dB relative to its own loud level)."""
    rng = np.random.default_rng(0)
    x = np.zeros(30 * HOP, np.float32)
    x[5 * HOP:12 * HOP] = _tone(7 * HOP, 0.5)
    x[18 * HOP:25 * HOP] = _tone(7 * HOP, 0.05)  # 20 dB quieter
    x += rng.normal(0, 1e-4, len(x)).astype(np.float32)
    a = frame_loudness_db(x, SR, FPS, 30)
    b = frame_loudness_db(0.1 * x, SR, FPS, 30)
    np.testing.assert_allclose(a, b, atol=1e-3)
    assert abs(float(np.median(a[6:11])) - 0.0) < 0.1
    assert abs(float(np.median(a[19:24])) + 20.0) < 0.2


def test_loudness_past_the_end_of_the_audio_is_the_floor():
    x = _tone(30 * HOP)
    db = frame_loudness_db(x, SR, FPS, 45)
    assert db.shape == (45,)
    np.testing.assert_allclose(db[1:30], 0.0, atol=0.1)
    assert np.all(db[31:] == LOUDNESS_FLOOR_DB)


def test_loudness_rejects_multichannel():
    with pytest.raises(ValueError, match="mono"):
        frame_loudness_db(np.zeros((2, SR), np.float32), SR, FPS, 16)


def test_mouth_target_range_and_monotonicity():
    levels = np.linspace(LOUDNESS_FLOOR_DB - 10, 10, 200)
    const = np.array([mouth_target(np.full(8, v))[4] for v in levels])
    assert const.min() == 0.0 and const.max() == pytest.approx(1.0)
    assert np.all(np.diff(const) >= 0)
    # Closed at the floor, fully open at floor + span and above.
    assert mouth_target(np.full(5, LOUDNESS_FLOOR_DB)).max() == 0.0
    np.testing.assert_allclose(mouth_target(np.full(5, LOUDNESS_FLOOR_DB + LOUDNESS_SPAN_DB)), 1.0)
    # Elementwise louder -> elementwise at least as open (the smoothing has positive weights).
    rng = np.random.default_rng(1)
    a = rng.uniform(-40, 5, 100)
    b = a + rng.uniform(0, 10, 100)
    ta, tb = mouth_target(a), mouth_target(b)
    assert ta.dtype == np.float32 and ta.shape == (100,)
    assert np.all((ta >= 0) & (ta <= 1) & (tb >= ta - 1e-6))


def test_mouth_target_smooths_over_neighbours():
    db = np.full(9, LOUDNESS_FLOOR_DB)
    db[4] = 0.0  # one loud frame
    t = mouth_target(db)
    np.testing.assert_allclose(t, [0, 0, 0, 0.25, 0.5, 0.25, 0, 0, 0], atol=1e-6)


def _frames_with_mouth(areas: list[int], h: int = 20, w: int = 20, other=(0.9, 0.7, 0.6)) -> np.ndarray:
    """Float frames [T, h, w, 3] of colour ``other`` with the first areas[t] pixels in MOUTH_RGB."""
    f = np.empty((len(areas), h * w, 3), np.float32)
    f[:] = other
    for t, a in enumerate(areas):
        f[t, :a] = MOUTH_RGB
    return f.reshape(len(areas), h, w, 3)


def test_measure_mouth_opening_float_and_uint8():
    areas = [0, 10, 40, 400]
    f = _frames_with_mouth(areas)
    got = measure_mouth_opening(f)
    assert got.dtype == np.float32 and got.shape == (4,)
    np.testing.assert_allclose(got, np.array(areas) / 400, atol=1e-6)
    # uint8 (MOUTH_RGB rounds to 1/255 steps: within 0.01 of exact, about 1 % less weight).
    u8 = np.round(f * 255).astype(np.uint8)
    np.testing.assert_allclose(measure_mouth_opening(u8), np.array(areas) / 400, rtol=0.02, atol=1e-6)


def test_measure_mouth_opening_ignores_other_colours():
    rng = np.random.default_rng(2)
    cols = rng.uniform(0, 1, (2000, 3))
    far = cols[np.linalg.norm(cols - np.asarray(MOUTH_RGB), axis=1) >= MOUTH_TOLERANCE]
    frames = far[: 400].reshape(1, 20, 20, 3).astype(np.float32)
    assert measure_mouth_opening(frames)[0] == 0.0
    # A colour halfway to the tolerance counts half.
    direction = np.array([1.0, 1.0, 1.0]) / np.sqrt(3)
    half = (np.asarray(MOUTH_RGB) + 0.5 * MOUTH_TOLERANCE * direction).astype(np.float32)
    np.testing.assert_allclose(measure_mouth_opening(np.broadcast_to(half, (1, 4, 4, 3))), 0.5, atol=1e-5)


def test_measure_mouth_opening_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        measure_mouth_opening(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        measure_mouth_opening(np.zeros((2, 3, 4, 4), np.float32))


def _smooth_signal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.convolve(rng.normal(size=n + 4), np.ones(5) / 5, mode="valid")[:n]


@pytest.mark.parametrize("lag", [2, -3, 0])
def test_lipsync_score_finds_a_known_lag(lag):
    n = 200
    a = _smooth_signal(n + 10, 3)
    loud = a[5:5 + n]
    mouth = a[5 - lag:5 - lag + n]  # mouth[t] = loud[t - lag]: the mouth is `lag` frames late
    r = lipsync_score(loud, 0.02 * mouth + 0.01)  # scale/offset do not matter
    assert r["lag"] == lag
    assert r["corr"] > 0.999
    assert r["frames"] == n
    if lag:
        assert r["corr_lag0"] < r["corr"] - 0.05
    else:
        assert r["corr_lag0"] == r["corr"]


def test_lipsync_score_of_unrelated_signals_is_near_zero():
    r = lipsync_score(np.random.default_rng(4).normal(size=2000), np.random.default_rng(5).normal(size=2000))
    assert abs(r["corr"]) < 0.1 and abs(r["corr_lag0"]) < 0.1


def test_lipsync_score_constant_mouth_is_zero_and_lengths_are_cut():
    r = lipsync_score(np.arange(50.0), np.zeros(40))
    assert r["corr"] == 0.0 and r["frames"] == 40


def test_lipsync_score_needs_enough_frames():
    with pytest.raises(ValueError, match="at least 16 frames, got 15"):
        lipsync_score(np.zeros(15), np.zeros(30))
    with pytest.raises(ValueError, match="at least 8 frames"):
        lipsync_score(np.zeros(7), np.zeros(7), max_lag=0)
    lipsync_score(np.zeros(16), np.zeros(16))


def test_lipsync_of_video_end_to_end():
    """Bursts of tone; mouth area follows them one frame late."""
    n = 48
    x = np.zeros(n * HOP, np.float32)
    for s, e in ((4, 10), (16, 19), (26, 36), (40, 44)):
        x[s * HOP:e * HOP] = _tone((e - s) * HOP)
    target = mouth_target(frame_loudness_db(x, SR, FPS, n))
    late = np.r_[0.0, target[:-1]]
    frames = np.round(_frames_with_mouth([int(round(200 * v)) for v in late]) * 255).astype(np.uint8)
    r = lipsync_of_video(frames, x, SR, FPS)
    assert r["lag"] == 1 and r["corr"] > 0.95 and r["frames"] == n


# -- s2v qa --lipsync --------------------------------------------------------------------------
def _speaking_character_mp4(path, seconds: float, seed: int, size: int = 96, audio: bool = True):
    """A generated character speaking procedural speech, H.264 + AAC (the audio muxed in)."""
    from render.media.video import Mp4Writer
    from tinymodel.demo_assets import speech_like_audio
    from tinymodel.faces import motion_for_audio, random_character, render_character, to_uint8

    rng = np.random.default_rng(seed)
    ch = random_character(rng)
    x = speech_like_audio(seconds, SR, seed)
    n = int(round(seconds * FPS))
    frames = to_uint8(render_character(ch, motion_for_audio(ch, x, SR, n, rng), size, size))
    with Mp4Writer(path, size, size, fps=FPS) as w:
        w.write(frames)
        w.close(audio=(x, SR) if audio else None)
    return path, x


@pytest.fixture(scope="module")
def speaking_mp4(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa_lipsync")
    return _speaking_character_mp4(d / "talk.mp4", 6.0, seed=3)


def test_qa_lipsync_against_the_videos_own_audio(speaking_mp4, tmp_path, capsys):
    from s2v.cli import main

    video, _ = speaking_mp4
    assert main(["qa", str(video), "--lipsync", "--json-out", str(tmp_path / "qa.json")]) == 0
    out = capsys.readouterr().out
    assert "lip-sync: corr" in out and "tiny-model characters only" in out
    assert "p99" in out and "clip seams: 1, largest" in out  # 96 frames = clips of 80 + 16
    rep = json.loads((tmp_path / "qa.json").read_text())
    ls = rep["lipsync"]
    assert ls["corr"] >= 0.8 and ls["lag"] == 0 and ls["frames"] == 96
    assert ls["audio"] == str(video) and "inside" in rep  # the seam report is still there
    # Same numbers as lipsync_of_video on the decoded frames and the decoded AAC track.
    from render.media.audio import decode_audio
    from render.quality.seams import decoded_frames

    frames = np.stack(list(decoded_frames(video)))
    want = lipsync_of_video(frames, decode_audio(video).samples, SR, FPS)
    assert {k: ls[k] for k in want} == want


def test_qa_lipsync_with_an_audio_file(speaking_mp4, tmp_path, capsys):
    from render.quality.qa import qa_video
    from s2v.cli import main
    from tinymodel.demo_assets import speech_like_audio, write_wav

    video, x = speaking_mp4
    own = qa_video(video, lipsync=True)["lipsync"]
    same = qa_video(video, audio=write_wav(tmp_path / "same.wav", x))["lipsync"]  # --audio implies lip-sync
    assert abs(same["corr"] - own["corr"]) < 0.02 and same["lag"] == own["lag"]
    other = write_wav(tmp_path / "other.wav", speech_like_audio(6.0, SR, 99))
    assert main(["qa", str(video), "--audio", str(other), "--json-out", str(tmp_path / "o.json")]) == 0
    wrong = json.loads((tmp_path / "o.json").read_text())["lipsync"]
    assert wrong["corr"] < own["corr"] - 0.3 and wrong["audio"] == str(other)
    assert "lipsync" not in qa_video(video)  # off unless asked for


def test_qa_lipsync_needs_an_audio_track(tmp_path, capsys):
    from s2v.cli import main

    video, _ = _speaking_character_mp4(tmp_path / "silent.mp4", 2.0, seed=4, size=64, audio=False)
    assert main(["qa", str(video)]) == 0  # the seam report needs no audio
    capsys.readouterr()
    assert main(["qa", str(video), "--lipsync"]) != 0
    err = capsys.readouterr().err
    assert "no audio stream" in err and str(video) in err


def test_qa_reads_a_run_directorys_plan_file(speaking_mp4, tmp_path):
    """`s2v qa VIDEO --plan RUN/shots/ID/plan.json`: the ledger stores the shot's layout, whose
    ``plan_json`` is the segment plan."""
    from render.quality.qa import qa_video
    from render.shot.plan import SegmentSpec, ShotPlan

    video, _ = speaking_mp4
    plan = ShotPlan("sequential", FPS, 96, 96 / FPS, (SegmentSpec(0, 0, 96, 0, 2),), 80)
    layout = tmp_path / "plan.json"
    layout.write_text(json.dumps({"height": 64, "width": 64, "plan_json": plan.to_json(),
                                  "segments": [{"index": 0, "start_frame": 0, "num_frames": 96, "num_clips": 2}]}))
    bare = tmp_path / "bare.json"
    bare.write_text(plan.to_json())
    rep = qa_video(video, layout)
    assert rep == {**qa_video(video, bare), "video": rep["video"]}
    assert [b["frame"] for b in rep["clip_boundaries"]] == [80]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not JSON"):
        qa_video(video, tmp_path / "bad.json")
