"""The cluster's side of a shot's stages (render/shot/): the stage functions, called with a
manifest row's inputs, from the actor that runs each stage.

* plan (driver): ``render.shot.plan.plan_shot``; the ``ShotPlan`` is persisted in the run
  directory (``shots/<id>/plan.json``) and is the only description of the shot's segments;
* condition: prompts and audio features in the preparation actor (``cluster.prep``), the
  reference part on the group's writer rank (``segment_conditioning`` below);
* render: ``render_segment`` — ``render.shot.segment.render_segment`` on every rank of a group;
* publish: ``stitch_shot`` — ``render.shot.stitch.stitch_shot`` in a Ray CPU task.

Group ranks: every rank of a render group makes the same model calls through the group's
``ChainSync`` (``parallel.chain_sync``). The writer (rank 0) alone runs the VAE (reference and
pose latents, decode, motion re-encode) and reads and writes the run's work directory; it
broadcasts the conditioning, where a segment resumes, and each clip's motion latents. The
other ranks run only the DiT, and after every clip all ranks agree on a hash of the latents
they sampled (a diverged rank fails the segment before the clip is written).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from manifests import Shot
from render.media.atomic import file_sha256
from render.model.clip_loop import ChainSync, ShotConditioning, StepCallback, share_conditioning
from render.settings import RenderSettings
from render.shot.condition import assemble_conditioning, reference_conditioning, segment_audio_features
from render.shot.plan import SegmentOptions, ShotPlan, plan_shot
from render.shot.segment import read_record, segment_dir
from render.shot.segment import render_segment as render_segment_files

ClipDone = Callable[[int], None]  # every rank, after each clip: the clip's index


def plan_manifest_shot(shot: Shot, settings: RenderSettings, options: SegmentOptions) -> ShotPlan:
    return plan_shot(shot.audio, shot.image, settings, options, shot.pose_video)


def compute_features(models: Any, shot: Shot, plan: ShotPlan, index: int) -> dict[str, Any]:
    """Segment ``index``'s audio features, in the form the preparation actor stores them."""
    frames, start = segment_audio_features(models, plan, index, shot.audio)
    return {"audio_frames": frames, "audio_start_frame": torch.tensor(start)}


def segment_conditioning(models: Any, shot: Shot, plan: ShotPlan, index: int, settings: RenderSettings,
                         prompt_context: torch.Tensor, negative_context: torch.Tensor,
                         features: dict[str, Any]) -> ShotConditioning:
    """A segment's conditioning from the prepared embeddings and features; the reference (and
    pose) latents need the VAE: the writer's (see ``group_conditioning``)."""
    reference = reference_conditioning(models, plan, index, shot.image, settings, shot.pose_video)
    return assemble_conditioning(plan, prompt_context, negative_context, reference,
                                 (features["audio_frames"], int(features["audio_start_frame"])))


def group_conditioning(sync: ChainSync | None, make: Callable[[], ShotConditioning]) -> ShotConditioning:
    """``make()`` on the writer (a single rank: on it), its result on every rank of the group.

    ``make`` reads the prepared files and runs the VAE; the other ranks wait for the broadcast
    instead (``render.model.clip_loop.share_conditioning``), so they never load the VAE or read inputs.
    """
    if sync is None:
        return make()
    return share_conditioning(sync, make() if sync.is_writer else None)


@dataclass(frozen=True)
class SegmentOutcome:
    clips_rendered: int  # clips computed by this call
    resumed_from: int  # first clip computed by this call (the clips before it were committed earlier)
    frames: int
    seconds: float


def segment_finished(work_dir: Path, index: int) -> bool:
    try:
        return read_record(segment_dir(work_dir, index)) is not None
    except Exception:  # an unreadable record is not a finished segment
        return False


def render_segment(models: Any, cond: ShotConditioning, plan: ShotPlan, index: int, settings: RenderSettings,
                   work_dir: Path, *, sync: ChainSync | None = None, on_clip: ClipDone | None = None,
                   on_step: StepCallback | None = None,
                   before_commit: Callable[[], None] | None = None, inputs_key: str | None = None) -> SegmentOutcome:
    """Render (or resume) segment ``index`` into ``work_dir``.

    In a group every rank calls this with the group's ``sync``: the writer renders, writes and
    commits, the others sample the same clips and write nothing (``render.shot.segment``).
    ``on_clip`` runs on every rank after every clip; ``SegmentOutcome.frames`` is the writer's.
    ``inputs_key``: the shot key's frames half (``cluster.fingerprint``), which names the segment's
    work instead of the conditioning tensors: a resume on other threads or another card continues.
    """
    t0 = time.time()
    seen: list[int] = []

    def clip_done(seg: int, clip: int, clips: int) -> None:
        seen.append(clip)
        if on_clip is not None:
            on_clip(clip)

    renderer = models.chain_renderer(settings, on_step=on_step, progress=False, sync=sync)
    seg_dir = render_segment_files(renderer, cond, plan, index, settings, Path(work_dir), on_clip=clip_done,
                                   before_commit=before_commit, inputs_key=inputs_key)
    record = (read_record(seg_dir) if seg_dir is not None else None) or {}
    first = seen[0] if seen else plan.segments[index].num_clips
    return SegmentOutcome(len(seen), first, int(record.get("frames", 0)), time.time() - t0)


@dataclass(frozen=True)
class Published:
    output: str
    frames: int
    duration_s: float
    fps: float
    sha256: str
    bytes: int


def stitch_shot(shot: Shot, plan: ShotPlan, settings: RenderSettings, work_dir: Path) -> Published:
    """Blend the committed segments, mux the shot's original audio, verify, publish atomically."""
    from render.shot.stitch import stitch_shot as stitch_files

    out = Path(shot.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [segment_dir(work_dir, s.index) for s in plan.segments]
    result = stitch_files(plan, paths, shot.audio, out, settings)
    return Published(str(out), result.frames, result.duration_s, float(result.fps), file_sha256(out),
                     out.stat().st_size)
