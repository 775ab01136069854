"""Functions run inside the spawned gloo processes of the parallel tests (importable by spawn).

Each worker builds the same tiny model and inputs in every process (seeded), computes the
single-device result itself, and returns plain floats (max-abs errors), never tensors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from parallel import GroupCache, ParallelContext, ParallelDims, parallelize_dit
from render.model.checkpoint import DiTConfig
from render.model.dit.model import S2VDiT

# 4 heads (so Ulysses 2 and 4 divide them), head_dim 16, injectors after blocks 0 and 2.
CFG = DiTConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=3, audio_inject_layers=[0, 2], audio_dim=16,
                text_len=12)

# (name, batch, latent frames, latent h, latent w, drop_motion): token counts chosen so that
# the degrees 2 and 4 do not divide them, and so that with 4 ranks some hold no frame at all.
CASES = [
    ("motion_odd", 2, 3, 10, 14, False),  # 35 tokens/frame, L = 185
    ("clip0_no_motion", 2, 2, 10, 14, True),  # L = 105, a rank of only padding at degree 4
    ("batch1_motion", 1, 5, 8, 12, False),  # L = 178
]


def build_model(seed: int = 0) -> S2VDiT:
    torch.manual_seed(seed)
    m = S2VDiT(CFG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return m.eval()


def make_inputs(batch: int, frames: int, lat_h: int, lat_w: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    return dict(x=r(batch, 16, frames, lat_h, lat_w), t=torch.tensor(700.0),
                context=[r(5 + 3 * i, 4096) for i in range(batch)], ref=r(batch, 16, 1, lat_h, lat_w),
                motion=r(batch, 16, 19, lat_h, lat_w), pose=r(batch, 16, frames, lat_h, lat_w),
                audio=r(batch, 25, CFG.audio_dim, 4 * frames))


def forward(model, inp: dict, drop: bool) -> torch.Tensor:
    with torch.inference_mode():
        cond = model.prepare(inp["x"].shape, inp["context"], inp["ref"], inp["motion"], inp["pose"], inp["audio"],
                             drop_motion_frames=drop, cache_context_kv=True)
        return model.denoise(inp["x"], inp["t"], cond)


def references() -> dict[str, torch.Tensor]:
    m = build_model()
    return {name: forward(m, make_inputs(b, f, h, w), drop) for name, b, f, h, w, drop in CASES}


def forward_matrix(rank: int, world: int, plans: list[tuple[str, dict, list[int] | None]]) -> dict[str, float]:
    """For each (label, ParallelDims kwargs, member ranks or None = all): the max-abs error of
    every case against the single-device forward. Ranks outside a plan's members skip it."""
    refs = references()
    groups: dict[tuple, dist.ProcessGroup] = {}
    for _, _, members in plans:  # every rank makes every subgroup, in the same order
        if members is not None and tuple(members) not in groups:
            groups[tuple(members)] = dist.new_group(members)
    caches: dict[tuple | None, GroupCache] = {}  # one per parent: its contexts share sub-groups
    out: dict[str, float] = {}
    for label, kw, members in plans:
        if members is not None and rank not in members:
            continue
        group = groups[tuple(members)] if members is not None else None
        cache = caches.setdefault(tuple(members) if members is not None else None, GroupCache())
        ctx = ParallelContext.create(ParallelDims(**kw), group=group, groups=cache)
        model = parallelize_dit(build_model(), ctx)
        for name, b, f, h, w, drop in CASES:
            got = forward(model, make_inputs(b, f, h, w), drop)
            out[f"{label}/{name}"] = float((got - refs[name]).abs().max())
    dist.barrier()
    return out


def unmasked_padding_error(rank: int, world: int) -> float:
    """Negative control: the same Ulysses x ring forward with padding keys left in attention."""
    from parallel import layout

    refs = references()
    ctx = ParallelContext.create(ParallelDims(ulysses=2, ring=2))
    model = parallelize_dit(build_model(), ctx)
    original = layout.KeyPlan.valid_keys
    layout.KeyPlan.valid_keys = lambda self, chunk, k, v: (k, v)  # keep every key, padding included
    try:
        name, b, f, h, w, drop = CASES[0]
        got = forward(model, make_inputs(b, f, h, w), drop)
    finally:
        layout.KeyPlan.valid_keys = original
    return float((got - refs[name]).abs().max())


def sharded_weight_bytes(rank: int, world: int) -> tuple[int, int]:
    """(bytes this rank holds of the blocks and injectors, their whole size) with shard_weights."""
    from parallel.fsdp import local_parameter_bytes, sharded_units

    def units_bytes(m) -> int:
        return sum(local_parameter_bytes(u) for u in sharded_units(m))

    whole = units_bytes(build_model())
    ctx = ParallelContext.create(ParallelDims(cfg=2, ulysses=2, shard_weights=True))
    model = parallelize_dit(build_model(), ctx)
    return units_bytes(model), whole


def contexts_from_a_subgroup(rank: int, world: int) -> tuple[bool, float] | None:
    """Two contexts (ulysses 2 x ring 2) from a parent of ranks 0-3 inside a world of 5, with
    one GroupCache: (the second reuses the first one's sub-groups, an all-reduce over its ring
    group). Rank 4 is outside the parent and makes nothing."""
    parent = dist.new_group([0, 1, 2, 3])  # WORLD's protocol: every rank takes part
    if rank not in (0, 1, 2, 3):
        return None
    cache = GroupCache()
    first = ParallelContext.create(ParallelDims(ulysses=2, ring=2), group=parent, groups=cache)
    second = ParallelContext.create(ParallelDims(ring=2, ulysses=2), group=parent, groups=first.group_cache)
    shared = all(getattr(first, g) is getattr(second, g) and getattr(first, g) is not None
                 for g in ("ulysses_group", "ring_group"))
    x = torch.ones(1)
    dist.all_reduce(x, group=second.ring_group)
    return shared, float(x)


def attention_swap_and_undo(rank: int, world: int) -> dict[str, float]:
    """Ulysses 2: a self-attention kernel set after parallelize_dit becomes the local kernel of
    the sequence-parallel attention (still exact); deparallelize_dit gives back the very model:
    its forward bit-identical to the single-device one, nothing of the parallel forward left."""
    from kernels.attention import attention_reference
    from parallel import deparallelize_dit, is_parallelized

    refs = references()
    name, b, f, h, w, drop = CASES[0]
    inp = make_inputs(b, f, h, w)
    model = parallelize_dit(build_model(), ParallelContext.create(ParallelDims(ulysses=2)))
    model.set_attention(self_attn=attention_reference)
    kernels = {blk.self_attn.attn_fn.local_attn for blk in model.blocks}
    swapped = float((forward(model, inp, drop) - refs[name]).abs().max())
    deparallelize_dit(model)
    model.set_attention(self_attn=build_model().blocks[0].self_attn.attn_fn)  # the default kernel again
    leftovers = [n for n, m in model.named_modules() if "forward" in vars(m)]
    return {"swapped": swapped, "kernels": float(kernels != {attention_reference}),
            "undone": float((forward(model, inp, drop) - refs[name]).abs().max()),
            "leftovers": float(len(leftovers) + is_parallelized(model))}


def fail_on_rank(rank: int, world: int, bad_rank: int) -> None:
    """Rank ``bad_rank`` raises; the others block in a collective it never joins."""
    if rank == bad_rank:
        raise ValueError(f"planted failure on rank {rank}")
    dist.barrier()


CLIP_SETTINGS = dict(size="64*64", steps=2, infer_frames=16, motion_frames=9, seed=7)


def render_clips(ckpt: str, audio: str, image: str, dims_kw: dict | None, clips: int = 2,
                 settings_kw: dict | None = None):
    """Frames [3, n, H, W] (numpy) of the first ``clips`` clips of a shot, single-device when
    ``dims_kw`` is None, else with the DiT parallelized over the current process group."""
    from render.model.clip_loop import initial_chain_state
    from render.model.components import S2VModels
    from render.settings import RenderSettings

    pipe = S2VModels(ckpt, device="cpu")
    s = RenderSettings(**{**CLIP_SETTINGS, **(settings_kw or {})})
    from render.shot.condition import condition_segment
    from render.shot.plan import plan_shot

    plan = plan_shot(audio, image, s)
    shot = condition_segment(pipe, plan, 0, audio, image, "a face talks", s)
    if dims_kw is not None:
        parallelize_dit(pipe.dit, ParallelContext.create(ParallelDims(**dims_kw)))
    renderer = pipe.chain_renderer(s, progress=False)
    state = initial_chain_state(s, shot)
    frames = []
    for _ in range(clips):
        video, state = renderer.render_clip(shot, state)
        frames.append(video)
    return torch.cat(frames, dim=1).numpy()


def render_clips_worker(rank: int, world: int, ckpt: str, audio: str, image: str, dims_kw: dict,
                        settings_kw: dict | None = None):
    return render_clips(ckpt, audio, image, dims_kw, settings_kw=settings_kw)


# --- the render group's hand-off (parallel.chain_sync) --------------------------------------------


def _forbid_vae_and_writes() -> None:
    """On a non-writer rank: loading the VAE or writing any segment file raises."""
    import render.model.components
    import render.shot.segment

    def forbidden(*a, **k):
        raise AssertionError("a non-writer rank tried to load the VAE or write a file")

    render.model.components.load_vae = forbidden
    for name in ("_write_clip", "_write_durably", "_save_state"):
        setattr(render.shot.segment, name, forbidden)


def _group(rank: int, ckpt: str, dims_kw: dict):
    """(pipe, sync) of a group rank: hand-off group first, then the DiT's groups (same order on
    every rank), the DiT parallelized; ranks > 0 may not touch the VAE or write."""
    from parallel import GroupChainSync
    from render.model.components import S2VModels

    sync = GroupChainSync.create(writer=0, timeout_s=60)
    if rank:
        _forbid_vae_and_writes()
    pipe = S2VModels(ckpt, device="cpu")
    parallelize_dit(pipe.dit, ParallelContext.create(ParallelDims(**dims_kw)))
    return pipe, sync


def group_clips_worker(rank: int, world: int, ckpt: str, audio: str, image: str, dims_kw: dict,
                       settings_kw: dict, clips: int):
    """The first ``clips`` clips with the hook: (frames or None, VAE loaded?, VAE calls by kind)."""
    from render.model.clip_loop import share_conditioning
    from render.settings import RenderSettings
    from render.shot.condition import condition_segment
    from render.shot.plan import plan_shot

    pipe, sync = _group(rank, ckpt, dims_kw)
    s = RenderSettings(**{**CLIP_SETTINGS, **settings_kw})
    shot = None
    if sync.is_writer:
        plan = plan_shot(audio, image, s)
        shot = condition_segment(pipe, plan, 0, audio, image, "a face talks", s)
    shot = share_conditioning(sync, shot)
    renderer = pipe.chain_renderer(s, progress=False, sync=sync)
    calls = {"encode": 0, "decode": 0}
    if renderer.vae is not None:
        for kind, attr in (("encode", "encode"), ("decode", "decode_stream")):  # every decode streams
            original = getattr(renderer.vae, attr)

            def counted(*a, _kind=kind, _f=original, **k):
                calls[_kind] += 1
                return _f(*a, **k)

            setattr(renderer.vae, attr, counted)
    state = renderer.initial_state(shot)
    frames = []
    for _ in range(clips):
        video, state = renderer.render_clip(shot, state)
        frames.append(video)
    out = None if frames[0] is None else torch.cat(frames, dim=1).numpy()
    assert all((f is None) == (out is None) for f in frames)
    return out, pipe._vae is not None, calls, state.motion_pixels is None


def group_resume_worker(rank: int, world: int, ckpt: str, audio: str, image: str, work: str, settings_kw: dict):
    """A shot in 2 parallel segments on the group, twice: uninterrupted, and interrupted after
    segment 0's clip 0 was committed, then resumed by ``render_shot``. Returns the clips
    each rank sampled in the resumed run and (writer) the decoded frames of both outputs."""
    from pathlib import Path

    from render.model.clip_loop import ChainRenderer, share_conditioning
    from render.settings import RenderSettings
    from render.shot.condition import condition_segment
    from render.shot.pipeline import render_shot
    from render.shot.plan import SegmentOptions, plan_shot
    from render.shot.segment import render_segment

    pipe, sync = _group(rank, ckpt, dict(ulysses=2))
    s = RenderSettings(**{**CLIP_SETTINGS, **settings_kw})
    work = Path(work)
    opts = dict(mode="parallel", target_seconds=1.5, overlap_seconds=0.25, keep_work=True)
    whole = render_shot(pipe, audio, image, "a face talks", work / "a.mp4", s, progress=False, sync=sync,
                        segments=SegmentOptions(**opts, work_dir=work / "wa"))

    class Interrupted(Exception):
        pass

    def stop(seg, clip, clips):
        raise Interrupted

    plan = plan_shot(audio, image, s, SegmentOptions(**opts))  # as render_shot plans it
    shot = condition_segment(pipe, plan, 0, audio, image, "a face talks", s) if sync.is_writer else None
    shot = share_conditioning(sync, shot)
    try:  # every rank stops after clip 0 (a group torn down after the writer committed it)
        render_segment(pipe.chain_renderer(s, progress=False, sync=sync), shot, plan, 0, s, work / "wb",
                       on_clip=stop)
    except Interrupted:
        pass
    sampled = []
    original = ChainRenderer.render_clip

    def recording(self, shot, state, segment=0, audio_offset=None):
        sampled.append((segment, state.next_clip))
        return original(self, shot, state, segment, audio_offset)

    ChainRenderer.render_clip = recording
    try:
        resumed = render_shot(pipe, audio, image, "a face talks", work / "b.mp4", s, progress=False, sync=sync,
                              segments=SegmentOptions(**opts, work_dir=work / "wb"))
    finally:
        ChainRenderer.render_clip = original
    # The one-chain path (streamed into the output) in the group as well: the writer publishes,
    # the others return None.
    chain = render_shot(pipe, audio, image, "a face talks", work / "c.mp4", s, progress=False, sync=sync)
    result = {"sampled": sampled, "vae_loaded": pipe._vae is not None, "returned": resumed is not None,
              "chain": None if chain is None else chain.frames}
    if sync.is_writer:
        from render.shot.segment import read_record, segment_dir, segment_frames_digest

        assert whole is not None and resumed is not None and whole.frames == resumed.frames
        result["frames"] = resumed.frames
        # The segments' clip files (what resume is about); the stitched MP4 itself is not
        # compared, as the stitcher's H.264 encode is not bit-reproducible run to run.
        for run in ("wa", "wb"):
            dirs = [segment_dir(work / run, seg.index) for seg in plan.segments]
            result[run] = [(segment_frames_digest(d), [c["sha256"] for c in read_record(d)["clips"]]) for d in dirs]
        result["num_clips"] = [seg.num_clips for seg in plan.segments]
    return result


def share_round_trip_worker(rank: int, world: int) -> list:
    """Tensors of every kind the hand-off carries, shared from rank 0."""
    from parallel import GroupChainSync
    from render.model.clip_loop import share_tensor

    sync = GroupChainSync.create(writer=0, timeout_s=30)
    g = torch.Generator().manual_seed(5)
    cases = [torch.randn(1, 16, 3, 4, 5, generator=g), torch.randn(2, 3, generator=g).to(torch.bfloat16),
             torch.tensor(7), torch.zeros(0, 4), torch.tensor([True, False]), torch.arange(10, dtype=torch.int32),
             None]
    got = [share_tensor(sync, c if rank == 0 else None) for c in cases]
    return [(None if c is None else (c.dtype, tuple(c.shape), c.float().tolist())) for c in got]
