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
    from cluster.shot_work import group_conditioning, render_segment
    from parallel import ChainDivergedError, GroupChainSync, ParallelContext, ParallelDims, parallelize_dit
    from render.model.components import S2VModels
    from render.settings import RenderSettings
    from render.shot.condition import condition_segment
    from render.shot.plan import plan_shot
    from render.shot.segment import segment_dir

    sync = GroupChainSync.create(writer=0, timeout_s=60)
    pipe = S2VModels(ckpt, device="cpu")
    parallelize_dit(pipe.dit, ParallelContext.create(ParallelDims(ulysses=world)))
    if rank == bad_rank:
        # Replicated state off by one ulp-sized step: the DiT's sharded work is gathered, so
        # wrong weights would give every rank the same wrong output; what can diverge is
        # what every rank holds whole (noise, latents between steps, conditioning, sampler).
        import render.model.clip_loop

        noise = render.model.clip_loop.clip_noise
        render.model.clip_loop.clip_noise = lambda *a, **k: noise(*a, **k) + 1e-6
    s = RenderSettings(size="64*64", steps=1, infer_frames=CLIP_FRAMES, motion_frames=MOTION_FRAMES, seed=3)
    plan = plan_shot(audio, image, s)
    cond = group_conditioning(sync, lambda: condition_segment(pipe, plan, 0, audio, image, "a face", s))
    error = None
    outcome = None
    try:
        outcome = render_segment(pipe, cond, plan, 0, s, Path(work), sync=sync)
    except ChainDivergedError as exc:
        error = str(exc)
    seg = segment_dir(work, 0)
    files = sorted(p.name for p in seg.iterdir()) if rank == 0 and seg.is_dir() else []
    return {"error": error, "files": files, "clips": None if outcome is None else outcome.clips_rendered,
            "vae_loaded": pipe._vae is not None}
