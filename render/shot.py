"""Render one shot (audio + reference image + prompt) to a verified, audio-muxed MP4."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .audio_io import decode_audio_channels
from .clip_loop import ChainSync, StepCallback, share_conditioning
from .config import RenderSettings
from .pipeline import S2VPipeline
from .publish import atomic_output, verify_video
from .shot_segments import SegmentOptions, render_shot_segments
from .video_writer import AudioTrack, Mp4Writer

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


def render_shot(pipe: S2VPipeline, audio_path: str | Path, image_path: str | Path, prompt: str,
                out_path: str | Path, settings: RenderSettings, on_step: StepCallback | None = None,
                progress: bool = True, pose_video: str | Path | None = None,
                segments: SegmentOptions | None = None, sync: ChainSync | None = None) -> ShotResult | None:
    """Render a whole shot as one chain of clips (the official semantics) and publish the MP4.

    Frames are encoded as each clip finishes (memory does not grow with the audio length); the
    file appears at ``out_path`` only once it is complete and verified.
    ``segments``: segment mode and sizes (default: sequential, as above); a shot planned into
    several segments goes through ``render_shot_segments``.
    ``sync``: in a render group every rank calls this with the same arguments; the writer rank
    prepares the inputs, decodes and publishes, the others only sample and return None.
    """
    if segments is not None and segments.needs_segment_path(pose_video):
        return render_shot_segments(pipe, audio_path, image_path, prompt, out_path, settings, segments,
                                    on_step=on_step, progress=progress, pose_video=pose_video, sync=sync)
    if sync is not None and not sync.is_writer:
        shot = share_conditioning(sync, None)
        clips = int(sync.share(None, (1,), torch.int64))
        renderer = pipe.chain_renderer(settings, on_step=on_step, progress=False, sync=sync)
        state = renderer.initial_state(shot)
        for _ in range(clips):
            _, state = renderer.render_clip(shot, state)
        return None
    t0 = time.time()
    out_path = Path(out_path)
    plan, audio16k = pipe.plan_shot(audio_path, image_path, settings)
    log.info("shot %s: %dx%d, %d frames (%.2f s), %d clips", out_path.name, plan.width, plan.height,
             plan.num_frames, plan.duration_s, plan.num_clips)
    shot = pipe.prepare_shot(plan, audio16k, image_path, prompt, settings, pose_video=pose_video)
    if sync is not None:  # the other ranks wait for these (the branch above)
        share_conditioning(sync, shot)
        sync.share(torch.tensor([plan.num_clips]), (1,), torch.int64)
    # The soundtrack is the original audio, all channels at its own sample rate (48 kHz if AAC
    # cannot carry that rate), not the model's 16 kHz mono copy.
    original = decode_audio_channels(audio_path)
    renderer = pipe.chain_renderer(settings, on_step=on_step, progress=progress, sync=sync)
    state = renderer.initial_state(shot)
    verify = functools.partial(verify_video, expected_frames=plan.num_frames,
                               expected_duration_s=plan.duration_s)
    with atomic_output(out_path, verify=verify) as tmp:
        with Mp4Writer(tmp, plan.width, plan.height, fps=settings.fps, crf=settings.crf) as writer:
            written = 0
            clips = tqdm(range(plan.num_clips), desc=f"{out_path.name}", unit="clip", disable=not progress)
            for _ in clips:
                frames, state = renderer.render_clip(shot, state)
                take = min(frames.shape[1], plan.num_frames - written)
                if take > 0:
                    writer.write(frames[:, :take])
                    written += take
            result = writer.close(audio=AudioTrack(original.samples, original.sample_rate, original.layout))
    return ShotResult(out_path, result.frames, settings.fps, result.duration_s, plan.height, plan.width,
                      plan.num_clips, settings.seed, time.time() - t0)
