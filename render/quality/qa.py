"""Seam and colour-drift metrics of a finished shot file (``s2v qa``); see render/seams.py.

Optionally also lip-sync (render/lipsync.py: audio loudness vs the measured mouth opening per
frame), which is meaningful only for videos of the tiny trained model's procedural characters,
whose open mouth is drawn in one colour (``render.quality.lipsync.MOUTH_RGB``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from render.quality.seams import decoded_frames, seam_report
from render.shot.plan import SegmentSpec, ShotPlan


def reference_rgb(image_path: str | Path, height: int, width: int) -> np.ndarray:
    """The reference image as the model saw it (same resize/crop), uint8 [H, W, 3]."""
    from render.media.image import load_reference_image

    ref = load_reference_image(image_path, height, width)  # [3, H, W] in [-1, 1]
    return ((ref.permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def _measuring_mouth(frames: Iterable[np.ndarray], openings: list[float]) -> Iterator[np.ndarray]:
    """Pass frames through, appending each frame's mouth opening (one decode serves both reports)."""
    from render.quality.lipsync import measure_mouth_opening

    for frame in frames:
        openings.append(float(measure_mouth_opening(frame[None])[0]))
        yield frame


def lipsync_report(openings: np.ndarray, samples_16k: np.ndarray, fps: float, max_lag: int = 4) -> dict:
    """``render.quality.lipsync.lipsync_of_video`` from per-frame mouth openings and 16 kHz mono audio."""
    from render.quality.lipsync import frame_loudness_db, lipsync_score

    loud = frame_loudness_db(samples_16k, 16000, fps, len(openings))
    rep = lipsync_score(loud, np.asarray(openings, np.float32), max_lag)
    rep.update(max_lag=max_lag,
               note="meaningful only for the tiny model's characters (mouth colour render.quality.lipsync.MOUTH_RGB)")
    return rep


def read_plan_file(path: str | Path) -> ShotPlan:
    """A shot plan from ``path``: a plan JSON, e.g. a run directory's ``shots/<id>/plan.json``."""
    text = Path(path).read_text()
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    return ShotPlan.from_dict(d)


def qa_video(video: str | Path, plan: str | Path | ShotPlan | None = None,
             image: str | Path | None = None, infer_frames: int = 80, lipsync: bool = False,
             audio: str | Path | None = None) -> dict:
    """Seam report of ``video``. Without a plan the whole video is one segment of clips of
    ``infer_frames`` (clip boundaries reported, no joins).

    ``lipsync`` (implied by ``audio``) adds ``rep["lipsync"]``: correlation of the audio's loudness
    with the mouth opening per frame at the best lag (render/lipsync.py), against ``audio`` or by
    default the video's own audio track. Meaningful only for the tiny model's characters.
    """
    from render.media.video import frame_count_mismatch, probe_video

    info = probe_video(video, decode_video=False)  # the frames are decoded below
    if isinstance(plan, str | Path):
        plan = read_plan_file(plan)
    if plan is None:
        n = info.frames
        clips = -(-n // infer_frames)
        plan = ShotPlan("sequential", int(round(info.fps)), n, n / info.fps,
                           (SegmentSpec(0, 0, n, 0, clips),), infer_frames)
    if plan.total_frames != info.frames:
        raise ValueError(f"{video}: {info.frames} frames, the plan describes {plan.total_frames} "
                         "(was the video converted to another frame rate?)")
    ref = reference_rgb(image, info.height, info.width) if image is not None else None
    frames: Iterable[np.ndarray] = decoded_frames(video)
    openings: list[float] = []
    lipsync = lipsync or audio is not None
    if lipsync:
        from render.media.audio import decode_audio

        # Any format decode_audio reads (an MP4's own AAC track included), 16 kHz mono; decoded
        # first so a bad audio file fails before the video is read.
        audio = audio if audio is not None else video
        samples = decode_audio(audio, 16000).samples
        frames = _measuring_mouth(frames, openings)
    rep = seam_report(frames, plan, ref)
    if rep["frames"] != info.frames:  # the count came from the container, the report from decoding
        raise frame_count_mismatch(str(video), rep["frames"], info.frames)
    rep["video"] = str(video)
    if lipsync:
        for _ in frames:  # any frames the seam report did not read
            pass
        rep["lipsync"] = {**lipsync_report(np.asarray(openings, np.float32), samples, info.fps), "audio": str(audio)}
    return rep
