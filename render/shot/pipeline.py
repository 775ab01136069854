"""A shot, start to finish, in one process: the stages in order.

    1. plan       render/shot/plan.py       geometry from the reference, segments from the audio
    2. condition  render/shot/condition.py  prompts, reference latent, audio features (per segment)
    3. render     render/shot/segment.py    a segment's chain of clips, committed clip by clip
    4. publish    render/shot/stitch.py     segments blended, original audio muxed, verified, renamed
                  (or render/shot/direct.py: a one-segment shot with a plain encode and no
                  work folder asked for streams its frames straight into the output — no
                  intermediates, one encode, nothing to resume from)

``s2v render-shot`` and ``s2v demo`` run ``render_shot``; the cluster runs the same stage
functions on its actors (cluster/prep.py: stage 2's prompts and features; cluster/rank.py:
stage 2's reference part and stage 3; cluster/results.py: stage 4).
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

from render.model.clip_loop import ChainSync, StepCallback, share_conditioning, share_tensor
from render.settings import RenderSettings
from render.shot.condition import condition_segment
from render.shot.plan import SegmentOptions, ShotPlan, plan_shot

log = logging.getLogger(__name__)


@dataclass
class ShotResult:
    output: Path
    frames: int
    fps: int
    duration_s: float
    height: int
    width: int
    clips: int
    seed: int
    wall_s: float


def default_work_dir(out_path: Path) -> Path:
    return out_path.parent / f".{out_path.name}.segments"


def render_shot(models, audio_path: str | Path, image_path: str | Path, prompt: str, out_path: str | Path,
                settings: RenderSettings, on_step: StepCallback | None = None, progress: bool = True,
                pose_video: str | Path | None = None, segments: SegmentOptions | None = None,
                sync: ChainSync | None = None) -> ShotResult | None:
    """Plan, condition, render and publish one shot; the MP4 appears at ``out_path`` only once it
    is complete and verified.

    ``segments``: how the shot is split and finished (default: one chain of clips, the official
    semantics, streamed into the output). A shot of several segments (or with a finishing step:
    other codec or fps, QA report; or of one segment when a work folder is asked for: ``work_dir``
    or ``keep_work``) renders each segment into a work folder — an interrupted render resumes
    after its last finished clip when run again — and stitches them.
    ``sync``: in a render group every rank calls this with the same arguments; the writer plans,
    conditions, writes and publishes, the others receive the plan and the conditioning, sample
    the same clips and return None.
    """
    t0 = time.time()
    options = segments or SegmentOptions()
    out_path = Path(out_path)
    writer = sync is None or sync.is_writer
    if writer and not out_path.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(out_path.parent)!r} does not exist")
    plan = None
    if writer:
        plan = plan_shot(audio_path, image_path, settings, options, pose_video)  # stage 1
        log.info("shot %s: %dx%d, %s, %d segment(s), %d clips, %d frames (%.2f s)", out_path.name, plan.width,
                 plan.height, plan.mode, len(plan.segments), plan.num_clips, plan.total_frames, plan.duration_s)
    if sync is not None:  # the others take the writer's plan (planning reads the whole audio)
        text = share_tensor(sync, torch.frombuffer(bytearray(plan.to_json().encode()), dtype=torch.uint8)
                            if writer else None)
        plan = ShotPlan.from_json(text.numpy().tobytes().decode())
    direct = len(plan.segments) == 1 and options.plain_encode() and not options.wants_work_folder()
    renderer = models.chain_renderer(settings, on_step=on_step, progress=False, sync=sync)
    bar = tqdm(total=plan.num_clips, desc=out_path.name, unit="clip", disable=not progress or not writer)
    work = options.work_dir or default_work_dir(out_path)
    if writer and not direct:
        work.mkdir(parents=True, exist_ok=True)
        _write_plan(work, plan)
    paths, cond, published = [], None, None
    inputs_key = None
    if writer and not direct:  # names the segments' work: a resume on other threads or cuDNN algorithms continues
        from render.shot.segment import shot_sources_key

        inputs_key = shot_sources_key(models, audio_path, image_path, pose_video, prompt)
    for spec in plan.segments:
        if writer:  # stage 2
            cond = condition_segment(models, plan, spec.index, audio_path, image_path, prompt, settings, pose_video)
        if sync is not None:
            cond = share_conditioning(sync, cond)
        if direct:  # stages 3 + 4 in one pass
            from render.shot.direct import render_direct

            published = render_direct(renderer, cond, plan, settings, audio_path, out_path,
                                      on_clip=lambda: bar.update(1))
        else:  # stage 3
            from render.shot.segment import render_segment

            paths.append(render_segment(renderer, cond, plan, spec.index, settings, work,
                                        on_clip=lambda i, c, n: bar.update(1), inputs_key=inputs_key))
            bar.n = sum(s.num_clips for s in plan.segments[: spec.index + 1])
            bar.refresh()
    bar.close()
    if not writer:
        return None
    if not direct:  # stage 4
        from render.shot.stitch import stitch_shot

        published = stitch_shot(plan, paths, audio_path, out_path, settings, codec=options.codec,
                                output_fps=options.output_fps, colour_match=options.colour_match)
        if options.qa_report is not None:
            _write_qa_report(options.qa_report, out_path, plan, cond, settings)
        if not options.keep_work:
            _remove_work(work, [spec.index for spec in plan.segments])
    return ShotResult(out_path, published.frames, published.fps, published.duration_s, plan.height, plan.width,
                      plan.num_clips, settings.seed, time.time() - t0)


def _write_qa_report(path: Path, out_path: Path, plan: ShotPlan, cond, settings: RenderSettings) -> None:
    from render.quality.seams import decoded_frames, seam_report

    ref = ((cond.ref_pixels.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    rep = seam_report(decoded_frames(out_path), plan, ref, settings.drops_first_frames)
    rep["plan"] = plan.to_dict()
    Path(path).write_text(json.dumps(rep, indent=1))


def _remove_work(work: Path, segments: list[int]) -> None:
    """Delete what the render wrote in ``work`` (its plan and segment folders) and the folder once
    empty; nothing else: ``--work-dir`` may name a folder that holds the output or other files."""
    from render.shot.segment import segment_dir

    (work / "plan.json").unlink(missing_ok=True)
    for index in segments:
        shutil.rmtree(segment_dir(work, index), ignore_errors=True)
    try:
        work.rmdir()
    except OSError:  # other files in it: the user's, kept
        pass


def _write_plan(work: Path, plan: ShotPlan) -> None:
    from render.media.atomic import atomic_write_text

    p = work / "plan.json"
    if p.is_file() and p.read_text() == plan.to_json():
        return
    atomic_write_text(p, plan.to_json())
