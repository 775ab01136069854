"""``render-shot --work-dir``: a one-segment shot (the default case) commits its clips to the work
folder too, so an interrupted render resumes after its last finished clip."""

from __future__ import annotations

import pytest

from render.media.video import probe_video
from render.model.components import S2VModels
from render.settings import RenderSettings
from render.shot.pipeline import default_work_dir, render_shot
from render.shot.plan import SegmentOptions

# 3 s of audio at 16 fps in clips of 16 frames: one segment of 3 clips.
SETTINGS = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9)


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return S2VModels(tiny_ckpt, device="cpu")


class StopAtClip:
    """on_step callback: records the clips sampled; Ctrl-C when clip ``stop`` starts."""

    def __init__(self, stop: int | None = None) -> None:
        self.stop, self.clips = stop, []

    def __call__(self, clip: int, step: int, steps: int) -> None:
        if clip == self.stop:
            raise KeyboardInterrupt
        if step == 0:
            self.clips.append(clip)


def test_an_interrupted_one_segment_shot_resumes_from_its_work_dir(pipe, demo_media, tmp_path):
    audio, image = demo_media
    out, work = tmp_path / "shot.mp4", tmp_path / "work"
    options = SegmentOptions(work_dir=work)
    first = StopAtClip(stop=1)
    with pytest.raises(KeyboardInterrupt):
        render_shot(pipe, audio, image, "a face talks", out, SETTINGS, on_step=first, progress=False,
                    segments=options)
    assert first.clips == [0] and not out.exists()
    assert (work / "plan.json").is_file()  # the folder holds the plan and clip 0, committed
    again = StopAtClip()
    r = render_shot(pipe, audio, image, "a face talks", out, SETTINGS, on_step=again, progress=False,
                    segments=options)
    assert again.clips == [1, 2]  # resumed after clip 0
    assert r.clips == 3 and abs(probe_video(out).frames - 3.0 * 16) <= 1
    assert not work.exists()  # removed after publishing (no --keep-work)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot.mp4"]


def test_keep_work_keeps_a_one_segment_shots_clips(pipe, demo_media, tmp_path):
    audio, image = demo_media
    out = tmp_path / "shot.mp4"
    render_shot(pipe, audio, image, "a face talks", out, SETTINGS, progress=False,
                segments=SegmentOptions(keep_work=True))
    assert (default_work_dir(out) / "plan.json").is_file()
    assert abs(probe_video(out).frames - 3.0 * 16) <= 1


def test_a_resume_whose_reference_latent_rounds_differently_continues(pipe, demo_media, tmp_path, monkeypatch):
    """The work is named by the shot's sources (files, prompt, checkpoint, numeric options), not by
    the bits of the conditioning: a resume on another thread count or cuDNN algorithm continues."""
    import render.shot.condition as condition

    audio, image = demo_media
    out, work = tmp_path / "shot.mp4", tmp_path / "work"
    options = SegmentOptions(work_dir=work)
    with pytest.raises(KeyboardInterrupt):
        render_shot(pipe, audio, image, "a face talks", out, SETTINGS, on_step=StopAtClip(stop=1), progress=False,
                    segments=options)
    real = condition.reference_conditioning

    def rounded(*args, **kwargs):
        ref, ref_lat, pose = real(*args, **kwargs)
        return ref, ref_lat + 1e-6, pose

    monkeypatch.setattr(condition, "reference_conditioning", rounded)
    again = StopAtClip()
    render_shot(pipe, audio, image, "a face talks", out, SETTINGS, on_step=again, progress=False, segments=options)
    assert again.clips == [1, 2]


def test_the_sources_key_follows_the_inputs_and_the_prompt(pipe, demo_media, tmp_path):
    from render.shot.segment import shot_sources_key

    audio, image = demo_media
    key = shot_sources_key(pipe, audio, image, None, "a face talks")
    assert key == shot_sources_key(pipe, audio, image, None, "a face talks")
    assert key != shot_sources_key(pipe, audio, image, None, "another prompt")
    other = tmp_path / "other.png"
    other.write_bytes(open(image, "rb").read() + b"\0")
    assert key != shot_sources_key(pipe, audio, other, None, "a face talks")
    assert shot_sources_key(object(), audio, image, None, "a face talks") is None  # no checkpoint folder


def test_a_work_dir_holding_the_output_and_other_files_keeps_them(pipe, demo_media, tmp_path):
    """Only the render's own plan and segment folders are removed after publishing."""
    audio, image = demo_media
    folder = tmp_path / "renders"
    folder.mkdir()
    (folder / "earlier_shot.mp4").write_bytes(b"an earlier render")
    out = folder / "shot.mp4"
    render_shot(pipe, audio, image, "a face talks", out, SETTINGS, progress=False,
                segments=SegmentOptions(work_dir=folder))
    assert sorted(p.name for p in folder.iterdir()) == ["earlier_shot.mp4", "shot.mp4"]
    assert (folder / "earlier_shot.mp4").read_bytes() == b"an earlier render"
    assert abs(probe_video(out).frames - 3.0 * 16) <= 1
