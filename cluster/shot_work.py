"""The one place where the cluster calls render/: plan a shot, prepare its inputs, render one
segment resumably, stitch the finished segments into the published MP4.

The scheduler sees only ``ShotLayout`` / ``SegmentUnit`` (small, JSON-serialisable) and the
functions below; the work itself is render/'s segment API (issue 5): ``render.segments``
(planning), ``render.segment_render`` (one segment, committed clip by clip, resumable with
identical frames) and ``render.stitch`` (blend, mux, verify, publish).

Group ranks: every rank of a render group makes the same model calls through the group's
``ChainSync`` (``parallel.chain_sync``). The writer (rank 0) alone runs the VAE (reference and
pose latents, decode, motion re-encode) and reads and writes the run's work directory; it
broadcasts the conditioning, where a segment resumes, and each clip's motion latents. The
other ranks run only the DiT, and after every clip all ranks agree on a hash of the latents
they sampled (a diverged rank fails the segment before the clip is written).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from manifests import Shot
from render.clip_loop import ChainSync, ShotConditioning, StepCallback, share_conditioning
from render.config import RenderSettings
from render.segment_render import feature_window, read_record, segment_dir
from render.segment_render import render_segment as render_segment_files
from render.segments import PLANNER_SAMPLE_RATE, SegmentPlan, plan_shot_audio

ClipDone = Callable[[int], None]  # every rank, after each clip: the clip's index


@dataclass(frozen=True)
class SegmentOptions:
    """How shots whose manifest ``segment_mode`` is auto/parallel are split (fingerprinted)."""

    target_seconds: float = 30.0
    overlap_seconds: float = 0.5
    min_parallel_seconds: float = 60.0


@dataclass(frozen=True)
class SegmentUnit:
    index: int
    start_frame: int  # first video frame of the shot this segment covers (incl. overlap)
    num_frames: int
    num_clips: int


@dataclass(frozen=True)
class ShotLayout:
    height: int
    width: int
    plan_json: str  # render.segments.SegmentPlan, as persisted
    segments: tuple[SegmentUnit, ...]

    @property
    def plan(self) -> SegmentPlan:
        return SegmentPlan.from_json(self.plan_json)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ShotLayout:
        return ShotLayout(d["height"], d["width"], d["plan_json"], tuple(SegmentUnit(**s) for s in d["segments"]))


# --- planning and preparation (outside the render groups) ---------------------------------------


def plan_shot(shot: Shot, settings: RenderSettings, options: SegmentOptions) -> ShotLayout:
    """Segments from the audio (streamed, pauses found by energy) and the output geometry."""
    from render.image_io import image_size
    from render.sizing import output_size, parse_size

    mode = shot.segment_mode
    if shot.pose_video is not None:
        if mode == "parallel":
            raise ValueError(f"shot {shot.shot_id}: a pose video needs segment_mode 'sequential' or 'auto' "
                             "(pose conditioning of parallel segments is not supported)")
        mode = "sequential"
    plan = plan_shot_audio(shot.audio, settings, mode, options.target_seconds, options.overlap_seconds,
                           options.min_parallel_seconds)
    h0, w0 = image_size(shot.image)
    height, width = output_size(h0, w0, parse_size(settings.size))
    units = tuple(SegmentUnit(s.index, s.start_frame, s.num_frames, s.num_clips) for s in plan.segments)
    return ShotLayout(height, width, plan.to_json(), units)


def compute_features(pipe: Any, shot: Shot, layout: ShotLayout, index: int) -> dict[str, Any]:
    """wav2vec features of segment ``index``'s audio window (the whole audio for one segment),
    as ``render.segment_render.segment_conditioning`` computes them."""
    from render.audio_io import DecodedAudio
    from render.audio_stream import read_window

    plan = layout.plan
    f0, nf, s0, ns = feature_window(plan, index)
    samples = read_window(shot.audio, s0, s0 + ns, PLANNER_SAMPLE_RATE)
    audio = DecodedAudio(samples, PLANNER_SAMPLE_RATE, ns / PLANNER_SAMPLE_RATE, PLANNER_SAMPLE_RATE, 1, "window")
    return {"audio_frames": pipe.audio_frames(audio, nf, plan.fps), "audio_start_frame": torch.tensor(f0)}


def build_conditioning(pipe: Any, shot: Shot, layout: ShotLayout, settings: RenderSettings,
                       prompt_context: torch.Tensor, negative_context: torch.Tensor,
                       features: dict[str, Any]) -> ShotConditioning:
    """A segment's conditioning from embeddings and features computed elsewhere; only the
    reference latent (and pose latents) need the VAE: the writer's (see ``group_conditioning``)."""
    from render.image_io import load_reference_image

    ref = load_reference_image(shot.image, layout.height, layout.width)
    with torch.inference_mode():
        ref_lat = pipe.vae.encode(ref[:, None].to(pipe.device, pipe.vae_dtype)).float()[None].cpu()
    pose = None
    if shot.pose_video is not None:
        from render.pose import pose_latents

        pose = pose_latents(pipe.vae, shot.pose_video, layout.height, layout.width, layout.segments[0].num_clips,
                            settings.infer_frames, settings.fps)
    return ShotConditioning(prompt_context, negative_context, ref_lat, ref, features["audio_frames"],
                            layout.height, layout.width, pose,
                            audio_start_frame=int(features["audio_start_frame"]))


# --- one segment -----------------------------------------------------------------------------------


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


def group_conditioning(sync: ChainSync | None, make: Callable[[], ShotConditioning]) -> ShotConditioning:
    """``make()`` on the writer (a single rank: on it), its result on every rank of the group.

    ``make`` reads the prepared files and runs the VAE; the other ranks wait for the broadcast
    instead (``render.clip_loop.share_conditioning``), so they never load the VAE or read inputs.
    """
    if sync is None:
        return make()
    return share_conditioning(sync, make() if sync.is_writer else None)


def render_segment(pipe: Any, cond: ShotConditioning, layout: ShotLayout, index: int, settings: RenderSettings,
                   work_dir: Path, *, sync: ChainSync | None = None, on_clip: ClipDone | None = None,
                   on_step: StepCallback | None = None,
                   before_commit: Callable[[], None] | None = None) -> SegmentOutcome:
    """Render (or resume) segment ``index`` into ``work_dir``.

    In a group every rank calls this with the group's ``sync``: the writer renders, writes and
    commits, the others sample the same clips and write nothing (``render.segment_render``).
    ``on_clip`` runs on every rank after every clip; ``SegmentOutcome.frames`` is the writer's.
    """
    t0 = time.time()
    seen: list[int] = []

    def clip_done(seg: int, clip: int, clips: int) -> None:
        seen.append(clip)
        if on_clip is not None:
            on_clip(clip)

    renderer = pipe.chain_renderer(settings, on_step=on_step, progress=False, sync=sync)
    seg_dir = render_segment_files(renderer, cond, layout.plan, index, settings, Path(work_dir), on_clip=clip_done,
                                   before_commit=before_commit)
    record = (read_record(seg_dir) if seg_dir is not None else None) or {}
    first = seen[0] if seen else layout.segments[index].num_clips
    return SegmentOutcome(len(seen), first, int(record.get("frames", 0)), time.time() - t0)


# --- stitch and publish ---------------------------------------------------------------------------


def _sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


@dataclass(frozen=True)
class Published:
    output: str
    frames: int
    duration_s: float
    fps: float
    sha256: str
    bytes: int


def stitch_shot(shot: Shot, layout: ShotLayout, settings: RenderSettings, work_dir: Path) -> Published:
    """Blend the committed segments, mux the shot's original audio, verify, publish atomically."""
    from render.stitch import stitch_shot as stitch_files

    out = Path(shot.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [segment_dir(work_dir, s.index) for s in layout.segments]
    result = stitch_files(layout.plan, paths, shot.audio, out, settings)
    return Published(str(out), result.frames, result.duration_s, float(result.fps), _sha256(out).hex(),
                     out.stat().st_size)
