"""A shot rendered as segments on one device: plan -> render each segment -> stitch -> publish.

The cluster scheduler runs the same three steps with the segments spread over render groups
(``render.segment_render.render_segment`` per segment, ``render.stitch.stitch_shot`` once all
are committed); this module is the single-process version behind ``s2v render-shot
--segment-mode``. Segment state lives in a work folder next to the output (hidden), so an
interrupted render resumes after the last finished clip of every segment when run again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .clip_loop import ChainSync, StepCallback, share_conditioning, share_tensor
from .config import RenderSettings
from .segments import (
    DEFAULT_MIN_PARALLEL_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    DEFAULT_TARGET_SECONDS,
    MODES,
    SegmentPlan,
    plan_shot_audio,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentOptions:
    """How a shot is split and finished (see render/segments.py and render/stitch.py)."""

    mode: str = "sequential"  # auto | sequential | parallel
    target_seconds: float = DEFAULT_TARGET_SECONDS
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS
    min_parallel_seconds: float = DEFAULT_MIN_PARALLEL_SECONDS
    work_dir: Path | None = None  # default: .<output name>.segments beside the output
    keep_work: bool = False  # keep segment intermediates after publishing
    output_fps: int | None = None  # 25 or 30: frame-blended conversion (default: model fps)
    codec: str = "libx264"  # or libx265
    colour_match: bool = False
    qa_report: Path | None = None  # write seam/colour metrics (JSON) here

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"segment mode {self.mode!r}: expected one of {', '.join(MODES)}")

    def plain_encode(self) -> bool:
        return self.output_fps is None and self.codec in ("libx264", "h264") and self.qa_report is None

    def needs_segment_path(self, pose_video) -> bool:
        if pose_video is not None:
            self.check_pose()
            return not self.plain_encode()
        return not (self.mode == "sequential" and self.plain_encode())

    def check_pose(self) -> None:
        if self.mode == "parallel":
            raise ValueError("a pose video needs segment mode 'sequential' (or 'auto', which then stays "
                             "sequential): pose conditioning of parallel segments is not supported")


def default_work_dir(out_path: Path) -> Path:
    return out_path.parent / f".{out_path.name}.segments"


def render_shot_segments(pipe, audio_path: str | Path, image_path: str | Path, prompt: str,
                         out_path: str | Path, settings: RenderSettings, options: SegmentOptions,
                         on_step: StepCallback | None = None, progress: bool = True,
                         pose_video: str | Path | None = None, sync: ChainSync | None = None):
    """Plan, render every segment (resuming committed work), stitch and publish; returns ShotResult.

    A pose video keeps the shot one segment (pose conditioning follows the official clip grid).
    ``sync``: in a render group every rank calls this with the same arguments; the writer rank
    plans, prepares each segment's conditioning, writes and publishes, the others receive the
    plan and the conditioning, sample the same clips and return None.
    """
    from .seams import decoded_frames, seam_report
    from .segment_render import render_segment, segment_conditioning
    from .shot import ShotResult, render_shot
    from .stitch import stitch_shot

    t0 = time.time()
    settings.validate()
    out_path = Path(out_path)
    writer = sync is None or sync.is_writer
    if writer and not out_path.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(out_path.parent)!r} does not exist")
    mode = options.mode
    if pose_video is not None:
        options.check_pose()
        mode = "sequential"
    plan = None
    if writer:
        plan = plan_shot_audio(audio_path, settings, mode, options.target_seconds, options.overlap_seconds,
                               options.min_parallel_seconds)
        log.info("shot %s: %s, %d segment(s), %d clips, %d frames", out_path.name, plan.mode,
                 len(plan.segments), plan.num_clips, plan.total_frames)
    if sync is not None:  # the others take the writer's plan (planning reads the whole audio)
        text = share_tensor(sync, torch.frombuffer(bytearray(plan.to_json().encode()), dtype=torch.uint8)
                            if writer else None)
        plan = SegmentPlan.from_json(text.numpy().tobytes().decode())
    if len(plan.segments) == 1 and options.plain_encode():
        return render_shot(pipe, audio_path, image_path, prompt, out_path, settings, on_step=on_step,
                           progress=progress, pose_video=pose_video, sync=sync)
    work = options.work_dir or default_work_dir(out_path)
    if writer:
        work.mkdir(parents=True, exist_ok=True)
        _write_plan(work, plan)
    renderer = pipe.chain_renderer(settings, on_step=on_step, progress=False, sync=sync)
    bar = tqdm(total=plan.num_clips, desc=out_path.name, unit="clip", disable=not progress or not writer)
    paths = []
    shot = None
    for spec in plan.segments:
        if writer:
            shot = segment_conditioning(pipe, plan, spec.index, audio_path, image_path, prompt, settings)
            if pose_video is not None:
                from .pose import pose_latents

                shot.pose_latents = pose_latents(pipe.vae, pose_video, shot.height, shot.width,
                                                 spec.num_clips, settings.infer_frames, settings.fps)
        if sync is not None:
            shot = share_conditioning(sync, shot)
        paths.append(render_segment(renderer, shot, plan, spec.index, settings, work,
                                    on_clip=lambda i, c, n: bar.update(1)))
        bar.n = sum(s.num_clips for s in plan.segments[: spec.index + 1])
        bar.refresh()
    bar.close()
    if not writer:
        return None
    result = stitch_shot(plan, paths, audio_path, out_path, settings, codec=options.codec,
                         output_fps=options.output_fps, colour_match=options.colour_match)
    if options.qa_report is not None:
        if result.fps != plan.fps:
            raise ValueError("qa_report needs the output at the model's fps (no output_fps conversion)")
        ref = ((shot.ref_pixels.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
        rep = seam_report(decoded_frames(out_path), plan, ref, settings.official_frame_drop)
        rep["plan"] = plan.to_dict()
        Path(options.qa_report).write_text(json.dumps(rep, indent=1))
    if not options.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return ShotResult(out_path, result.frames, result.fps, result.duration_s, shot.height, shot.width,
                      plan.num_clips, settings.seed, time.time() - t0)


def _write_plan(work: Path, plan: SegmentPlan) -> None:
    from .segment_render import _write_durably

    p = work / "plan.json"
    if p.is_file() and p.read_text() == plan.to_json():
        return
    _write_durably(p, lambda tmp: tmp.write_text(plan.to_json()))
