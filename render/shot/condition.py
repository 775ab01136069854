"""Stage 2 of a shot: the conditioning one segment's clips read.

Three parts, each made by one function here and nowhere else:

* prompt embeddings (umT5) of the prompt and the negative prompt (``shot_prompts``);
* audio features (wav2vec2, bucketed per video frame) of the segment's audio window
  (``segment_audio_features``) — only the window, so memory does not grow with the shot;
* the reference image and its latent, and pose latents when a pose video drives the shot
  (``reference_conditioning``) — these need the VAE.

``condition_segment`` runs all three in one process (``s2v render-shot``). The cluster runs the
same functions split over actors: the preparation actor the first two (umT5 and wav2vec2 never
sit in a render group), the render group's writer rank the third.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from render.model.clip_loop import ShotConditioning
from render.settings import S2V_NEGATIVE_PROMPT, RenderSettings
from render.shot.plan import PLANNER_SAMPLE_RATE, ShotPlan

# Audio context on each side of a segment's window for its wav2vec features (seconds): the
# encoder's receptive field makes features near a window edge depend on the audio beyond it.
FEATURE_CONTEXT_SECONDS = 5.0


def shot_prompts(prompt: str, negative: str | None) -> list[str]:
    """The two texts a shot embeds: [prompt, its negative prompt or the official S2V default]."""
    return [prompt, negative or S2V_NEGATIVE_PROMPT]


def feature_window(plan: ShotPlan, index: int, context_seconds: float = FEATURE_CONTEXT_SECONDS
                   ) -> tuple[int, int, int, int]:
    """(first shot frame, frames, first 16 kHz sample, samples) of segment ``index``'s audio window.

    The window starts on a whole second so that video frames, 30 fps feature frames and 50 Hz
    wav2vec frames fall on the same grids as for the whole shot (the bucketing repeats every
    second at 16 fps). A one-segment plan's window is the whole audio: identical features to the
    official whole-utterance run.
    """
    seg, fps = plan.segments[index], plan.fps
    n_audio = int(round(plan.duration_s * PLANNER_SAMPLE_RATE))
    end_frame = seg.start_frame + seg.num_clips * plan.infer_frames  # audio the clips read
    if len(plan.segments) == 1:
        return 0, end_frame, 0, n_audio
    start_s = max(0, math.floor(seg.start_frame / fps - context_seconds))
    start_frame = start_s * fps
    end_sample = min(n_audio, int(math.ceil((end_frame / fps + context_seconds) * PLANNER_SAMPLE_RATE)))
    start_sample = start_s * PLANNER_SAMPLE_RATE
    return start_frame, end_frame - start_frame, start_sample, max(0, end_sample - start_sample)


def segment_audio_features(models, plan: ShotPlan, index: int, audio_path: str | Path,
                           context_seconds: float = FEATURE_CONTEXT_SECONDS) -> tuple[torch.Tensor, int]:
    """(features [1, 25, C, frames], shot frame of the first feature) of segment ``index``."""
    from render.media.audio import read_window

    f0, nf, s0, ns = feature_window(plan, index, context_seconds)
    samples = read_window(audio_path, s0, s0 + ns, PLANNER_SAMPLE_RATE)
    return models.audio_frames(samples, nf, plan.fps), f0


def reference_conditioning(models, plan: ShotPlan, index: int, image_path: str | Path, settings: RenderSettings,
                           pose_video: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(reference pixels [3, H, W], reference latent [1, 16, 1, h, w], pose latents or None);
    runs ``models``' VAE."""
    from render.media.image import load_reference_image

    if plan.height is None or plan.width is None:
        raise ValueError("the plan has no output geometry (made by plan_segments, not plan_shot)")
    ref = load_reference_image(image_path, plan.height, plan.width)
    with torch.inference_mode():
        ref_lat = models.vae.encode(ref[:, None].to(models.device, models.vae_dtype)).float()[None].cpu()
    pose = None
    if pose_video is not None:
        if len(plan.segments) > 1:
            raise ValueError("pose conditioning is only supported for one-segment (sequential) shots")
        from render.media.pose import pose_latents

        pose = pose_latents(models.vae, pose_video, plan.height, plan.width, plan.segments[index].num_clips,
                            settings.infer_frames, settings.fps)
    return ref, ref_lat, pose


def assemble_conditioning(plan: ShotPlan, prompt_context: torch.Tensor, negative_context: torch.Tensor,
                          reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
                          features: tuple[torch.Tensor, int]) -> ShotConditioning:
    ref, ref_lat, pose = reference
    frames, audio_start = features
    return ShotConditioning(prompt_context, negative_context, ref_lat, ref, frames, plan.height, plan.width, pose,
                            audio_start_frame=int(audio_start))


def condition_segment(models, plan: ShotPlan, index: int, audio_path: str | Path, image_path: str | Path,
                      prompt: str, settings: RenderSettings, pose_video: str | Path | None = None,
                      context_seconds: float = FEATURE_CONTEXT_SECONDS) -> ShotConditioning:
    """The whole stage in one process: everything segment ``index`` of ``plan`` needs."""
    ctx, neg_ctx = models.embed_prompts(shot_prompts(prompt, settings.negative_prompt))
    reference = reference_conditioning(models, plan, index, image_path, settings, pose_video)
    features = segment_audio_features(models, plan, index, audio_path, context_seconds)
    return assemble_conditioning(plan, ctx, neg_ctx, reference, features)
