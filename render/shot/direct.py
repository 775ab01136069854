"""Stages 3 + 4 in one pass for a one-segment shot with a plain encode: each clip's frames go
straight into the output MP4 as they are decoded (memory does not grow with the audio length,
no intermediates, one encode), then the original audio is muxed and the file verified and
published under its final name."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from render.media.atomic import sweep_stale_temps
from render.media.audio import decode_audio_channels
from render.media.publish import atomic_output, verify_video
from render.media.video import AudioTrack, Mp4Writer
from render.model.clip_loop import ChainRenderer, ShotConditioning
from render.settings import RenderSettings
from render.shot.plan import ShotPlan


@dataclass(frozen=True)
class DirectResult:
    frames: int
    fps: int
    duration_s: float


def render_direct(renderer: ChainRenderer, cond: ShotConditioning, plan: ShotPlan, settings: RenderSettings,
                  audio_path: str | Path, out_path: Path,
                  on_clip: Callable[[], None] | None = None) -> DirectResult | None:
    """Render the plan's one chain into ``out_path``. In a render group the other ranks sample
    the same clips and return None."""
    if len(plan.segments) != 1:
        raise ValueError(f"render_direct renders one segment; the plan has {len(plan.segments)}")
    clips = plan.segments[0].num_clips
    state = renderer.initial_state(cond)
    sync = renderer.sync
    if sync is not None and not sync.is_writer:
        for _ in range(clips):
            _, state = renderer.render_clip(cond, state)
            if on_clip is not None:
                on_clip()
        return None
    # The soundtrack is the original audio, all channels at its own sample rate (48 kHz if AAC
    # cannot carry that rate), not the model's 16 kHz mono copy.
    original = decode_audio_channels(audio_path)
    sweep_stale_temps(out_path)  # temporaries of a render of this output that was killed (SIGKILL)
    verify = functools.partial(verify_video, expected_frames=plan.total_frames,
                               expected_duration_s=plan.duration_s)
    with atomic_output(out_path, verify=verify) as tmp:
        with Mp4Writer(tmp, plan.width, plan.height, fps=settings.fps, crf=settings.crf) as writer:
            written = 0
            for _ in range(clips):
                frames, state = renderer.render_clip(cond, state)
                take = min(frames.shape[1], plan.total_frames - written)
                if take > 0:
                    writer.write(frames[:, :take])
                    written += take
                if on_clip is not None:
                    on_clip()
            result = writer.close(audio=AudioTrack(original.samples, original.sample_rate, original.layout))
    return DirectResult(result.frames, settings.fps, result.duration_s)
