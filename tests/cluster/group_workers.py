"""Functions run inside spawned gloo processes by the cluster's group tests (no Ray): one render
group's segment work through ``cluster.shot_work`` with the group's ``GroupChainSync``."""

from __future__ import annotations

from pathlib import Path

from tests.cluster.helpers import CLIP_FRAMES, MOTION_FRAMES


def diverged_segment_worker(rank: int, world: int, ckpt: str, audio: str, image: str, work: str,
                            bad_rank: int | None) -> dict:
    """Render segment 0 of a shot as a group of ``world``; rank ``bad_rank`` draws slightly
    different noise (a stand-in for any fault that makes one rank compute something else).
    Returns the error each rank raised (or None) and what the writer left on disk."""
    from cluster.shot_work import SegmentUnit, ShotLayout, group_conditioning, render_segment
    from parallel import ChainDivergedError, GroupChainSync, ParallelContext, ParallelDims, parallelize_dit
    from render.config import RenderSettings
    from render.pipeline import S2VPipeline
    from render.segment_render import segment_conditioning, segment_dir
    from render.segments import plan_shot_audio

    sync = GroupChainSync.create(writer=0, timeout_s=60)
    pipe = S2VPipeline(ckpt, device="cpu")
    parallelize_dit(pipe.dit, ParallelContext.create(ParallelDims(ulysses=world)))
    if rank == bad_rank:
        # Replicated state off by one ulp-sized step: the DiT's sharded work is gathered, so
        # wrong weights would give every rank the same wrong output; what can diverge is
        # what every rank holds whole (noise, latents between steps, conditioning, sampler).
        import render.clip_loop

        noise = render.clip_loop.clip_noise
        render.clip_loop.clip_noise = lambda *a, **k: noise(*a, **k) + 1e-6
    s = RenderSettings(size="64*64", steps=1, infer_frames=CLIP_FRAMES, motion_frames=MOTION_FRAMES, seed=3)
    plan = plan_shot_audio(audio, s, "sequential")
    units = tuple(SegmentUnit(x.index, x.start_frame, x.num_frames, x.num_clips) for x in plan.segments)
    layout = ShotLayout(64, 64, plan.to_json(), units)
    cond = group_conditioning(sync, lambda: segment_conditioning(pipe, plan, 0, audio, image, "a face", s))
    error = None
    outcome = None
    try:
        outcome = render_segment(pipe, cond, layout, 0, s, Path(work), sync=sync)
    except ChainDivergedError as exc:
        error = str(exc)
    seg = segment_dir(work, 0)
    files = sorted(p.name for p in seg.iterdir()) if rank == 0 and seg.is_dir() else []
    return {"error": error, "files": files, "clips": None if outcome is None else outcome.clips_rendered,
            "vae_loaded": pipe._vae is not None}
