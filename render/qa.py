"""Seam and colour-drift metrics of a finished shot file (``s2v qa``); see render/seams.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .seams import decoded_frames, seam_report
from .segments import SegmentPlan, SegmentSpec


def reference_rgb(image_path: str | Path, height: int, width: int) -> np.ndarray:
    """The reference image as the model saw it (same resize/crop), uint8 [H, W, 3]."""
    from .image_io import load_reference_image

    ref = load_reference_image(image_path, height, width)  # [3, H, W] in [-1, 1]
    return ((ref.permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def qa_video(video: str | Path, plan: str | Path | SegmentPlan | None = None,
             image: str | Path | None = None, infer_frames: int = 80) -> dict:
    """Seam report of ``video``. Without a plan the whole video is one segment of clips of
    ``infer_frames`` (clip boundaries reported, no joins)."""
    from .video_writer import probe_video

    info = probe_video(video)
    if isinstance(plan, str | Path):
        plan = SegmentPlan.from_json(Path(plan).read_text())
    if plan is None:
        n = info.frames
        clips = -(-n // infer_frames)
        plan = SegmentPlan("sequential", int(round(info.fps)), n, n / info.fps,
                           (SegmentSpec(0, 0, n, 0, clips),), infer_frames)
    if plan.total_frames != info.frames:
        raise ValueError(f"{video}: {info.frames} frames, the plan describes {plan.total_frames} "
                         "(was the video converted to another frame rate?)")
    ref = reference_rgb(image, info.height, info.width) if image is not None else None
    rep = seam_report(decoded_frames(video), plan, ref)
    rep["video"] = str(video)
    return rep
