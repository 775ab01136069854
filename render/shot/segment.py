"""Render one segment of a shot to an intermediate, with state persisted after every clip.

Layout of a segment's folder (``work_dir/segment_NNNN/``):

    clip_0000.mp4, clip_0001.mp4, ...   the segment's frames, one H.264 file per clip (high
                                       quality intermediate), each published atomically
    state.pt                           what the next clip needs (next clip index, motion latents,
                                       the pixel tail when a clip is shorter than the motion
                                       window, seeds and audio offsets so far), replaced
                                       atomically after each clip's file is durable
    segment.json                       the committed record, written last: the segment is done

A crash at any instant loses at most the clip in flight: ``render_segment`` resumes after the
last clip whose state was committed, and because a clip's noise is a pure function of (shot
seed, segment index, clip index) and the persisted state is exactly what the chain carries, the
resumed frames are identical to an uninterrupted run's.

In a render group only the writer rank (``ChainSync.is_writer``) touches the folder; the other
ranks run the DiT for the same clips, starting at the clip the writer resumes at.

Segment 0 is the official chain. A later segment has no previous clip: its first clip is
conditioned like the official clip 0 (reference image only, no motion frames) on the audio at
its own position, and the stitcher crossfades the overlap with the previous segment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from render.media.atomic import atomic_write, file_sha256, temp_path_for
from render.media.publish import publish_atomically, verify_video
from render.media.video import Mp4Writer
from render.model.clip_loop import ChainRenderer, ChainState, ShotConditioning, clip_seed, initial_chain_state
from render.settings import RenderSettings
from render.shot.plan import ShotPlan

log = logging.getLogger(__name__)

RECORD_FILE = "segment.json"
STATE_FILE = "state.pt"
RECORD_VERSION = 1
# Intermediates are re-encoded once more by the stitcher: near-lossless here (crf 8 is visually
# lossless for H.264; the official output quality is crf 10).
INTERMEDIATE_CRF = 8

OnClip = Callable[[int, int, int], None]  # (segment index, clip index just committed, clips in segment)


class SegmentStateError(ValueError):
    """Persisted segment state does not match this render (other plan, settings or inputs)."""


def segment_dir(work_dir: str | Path, index: int) -> Path:
    return Path(work_dir) / f"segment_{index:04d}"


def clip_file(seg_dir: Path, clip: int) -> Path:
    return seg_dir / f"clip_{clip:04d}.mp4"


# --- fingerprint and durable files ---------------------------------------------------------------


def _tensor_digest(h: hashlib._Hash, t: torch.Tensor | None) -> None:
    if t is None:
        h.update(b"none")
        return
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def segment_fingerprint(plan: ShotPlan, index: int, settings: RenderSettings, shot: ShotConditioning,
                        intermediate_crf: int = INTERMEDIATE_CRF, inputs_key: str | None = None) -> str:
    """What the segment's frames depend on (the model weights are the run's fingerprint's job).

    ``inputs_key``: a hash of the shot's sources (input file bytes, prompt texts, model and
    encoder options) made by the caller. With it the conditioning tensors are not hashed: they are
    computed from those sources, and a resume whose encoders round differently (another thread
    count, card model or cuDNN algorithm) must continue the segment, not refuse it. Without it
    (callers that hold only tensors) the tensors are hashed bit for bit.
    """
    h = hashlib.sha256()
    s = dataclasses.asdict(settings)
    s.pop("crf")  # the final encode only
    head = {"plan_fps": plan.fps, "infer": plan.infer_frames, "segment": plan.segments[index].to_dict(),
            "settings": s, "crf": intermediate_crf, "h": shot.height, "w": shot.width,
            "audio_start": shot.audio_start_frame}
    if inputs_key is not None:
        head["inputs_key"] = inputs_key
    h.update(json.dumps(head, sort_keys=True).encode())
    if inputs_key is None:
        for t in (shot.prompt_context, shot.negative_context, shot.ref_latents, shot.audio_frames, shot.pose_latents):
            _tensor_digest(h, t)
    return h.hexdigest()


def shot_sources_key(models, audio_path: str | Path, image_path: str | Path, pose_video: str | Path | None,
                     prompt: str) -> str | None:
    """The ``inputs_key`` of a shot rendered in one process (``s2v render-shot``): the bytes of its
    input files, the prompt, the checkpoint folder's listing and the numeric options of ``models``
    (the rest of the settings are in the fingerprint). None for models without a checkpoint folder
    (the segment then hashes its conditioning tensors)."""
    from render.media.atomic import file_sha256
    from render.model.checkpoint import checkpoint_digest

    ckpt = getattr(models, "ckpt", None)
    if ckpt is None:
        return None
    files = [None if p is None else file_sha256(p) for p in (audio_path, image_path, pose_video)]
    numerics = [str(getattr(models, k, None)) for k in ("dtype", "vae_dtype", "fp8", "fp8_attention")]
    numerics.append(str(getattr(getattr(models, "device", None), "type", None)))
    text = json.dumps([files, prompt, checkpoint_digest(ckpt), numerics])
    return hashlib.sha256(text.encode()).hexdigest()


def read_record(seg_dir: str | Path) -> dict | None:
    """The committed record of a finished segment, or None if it is not finished."""
    p = Path(seg_dir) / RECORD_FILE
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SegmentStateError(f"{p}: unreadable segment record ({e}); delete the folder to re-render") from e
    if rec.get("version") != RECORD_VERSION:
        raise SegmentStateError(f"{p}: record version {rec.get('version')!r}, expected {RECORD_VERSION}")
    return rec


def _write_clip(path: Path, frames: torch.Tensor, width: int, height: int, fps: int, crf: int) -> str:
    tmp = temp_path_for(path)
    try:
        with Mp4Writer(tmp, width, height, fps=fps, crf=crf) as w:
            w.write(frames)
            w.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    verify = functools.partial(verify_video, expected_frames=frames.shape[1], tolerance_frames=0)
    publish_atomically(tmp, path, verify)
    return file_sha256(path)


def _save_state(seg_dir: Path, payload: dict) -> None:
    atomic_write(seg_dir / STATE_FILE, lambda tmp: torch.save(payload, tmp))


def _load_state(seg_dir: Path, fingerprints: tuple[str, ...], settings: RenderSettings, shot: ShotConditioning,
                restart: bool) -> tuple[ChainState, dict] | None:
    p = seg_dir / STATE_FILE
    if not p.is_file():
        return None
    try:
        st = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable state is reported the same way
        if restart:
            return None
        raise SegmentStateError(f"{p}: unreadable segment state ({e}); pass restart=True or delete it") from e
    if st.get("fingerprint") not in fingerprints:
        if restart:
            return None
        raise SegmentStateError(
            f"{p}: state was written for different inputs (plan, settings, prompt, image or audio); "
            "pass restart=True (CLI: delete the work folder) to render this segment again")
    for c in range(st["next_clip"]):
        f = clip_file(seg_dir, c)
        if not f.is_file() or file_sha256(f) != st["clips"][c]["sha256"]:
            if restart:
                return None
            raise SegmentStateError(f"{f}: missing or changed since state {p} was committed; delete the folder")
    buf = torch.zeros(3, settings.motion_frames, shot.height, shot.width)
    tail = st.get("motion_tail")
    if tail is not None and tail.shape[1]:
        buf[:, -tail.shape[1]:] = tail
    return ChainState(st["next_clip"], buf, motion_latents=st["motion_latents"]), st


# --- rendering -----------------------------------------------------------------------------------


def _as_renderer(pipe_or_renderer, settings: RenderSettings) -> ChainRenderer:
    if isinstance(pipe_or_renderer, ChainRenderer) or hasattr(pipe_or_renderer, "render_clip"):
        return pipe_or_renderer
    return pipe_or_renderer.chain_renderer(settings, progress=False)


def render_segment(pipe_or_renderer, shot: ShotConditioning, plan: ShotPlan, index: int,
                   settings: RenderSettings, work_dir: str | Path, on_clip: OnClip | None = None, *,
                   restart: bool = False, intermediate_crf: int = INTERMEDIATE_CRF,
                   before_commit: Callable[[], None] | None = None, inputs_key: str | None = None) -> Path | None:
    """Render (or resume, or find finished) segment ``index``; returns its folder once committed.

    ``shot``: conditioning whose audio covers the segment (``render.shot.condition``). State from
    different inputs raises SegmentStateError unless ``restart``, which discards it.

    In a render group (a renderer with a ``ChainSync``) every rank calls this with the same
    arguments. The writer alone reads and writes the folder; it tells the others the clip the
    segment resumes at, and they sample the same clips, write nothing and return None.
    ``on_clip`` runs on every rank after each clip (on the writer once the clip is committed).
    ``before_commit`` runs on the writer right before each clip file, state and the record are
    written; raising there (a lost lease) leaves the folder as it was after the last commit.
    ``inputs_key``: the shot's source hash (``segment_fingerprint``); the writer's only.
    """
    fence = before_commit or (lambda: None)
    if not 0 <= index < len(plan.segments):
        raise IndexError(f"segment index {index} outside 0..{len(plan.segments) - 1}")
    if plan.fps != settings.fps or plan.infer_frames != settings.infer_frames:
        raise ValueError(f"plan (fps {plan.fps}, infer_frames {plan.infer_frames}) does not match settings "
                         f"(fps {settings.fps}, infer_frames {settings.infer_frames})")
    if shot.pose_latents is not None and len(plan.segments) > 1:
        raise ValueError("pose conditioning is only supported for one-segment (sequential) shots")
    seg = plan.segments[index]
    sync = getattr(pipe_or_renderer, "sync", None)  # only a group's ChainRenderer has one
    if sync is not None and not sync.is_writer:
        renderer = pipe_or_renderer
        start = int(sync.share(None, (1,), torch.int64))
        if start < 0:
            raise SegmentStateError(f"segment {index}: the writer rank could not open the segment (see its log)")
        state = renderer.initial_state(shot, start)
        for c in range(start, seg.num_clips):
            _, state = renderer.render_clip(shot, state, segment=index,
                                            audio_offset=seg.clip_audio_offset(c, settings.infer_frames))
            if on_clip is not None:
                on_clip(index, c, seg.num_clips)
        return None
    try:
        opened = _open_segment(shot, plan, index, settings, work_dir, restart, intermediate_crf, inputs_key)
    except BaseException:
        if sync is not None:  # release the other ranks, which wait for the resume point
            with contextlib.suppress(Exception):  # (the writer's own error is the one to report)
                sync.share(torch.tensor([-1]), (1,), torch.int64)
        raise
    seg_dir, fingerprint, state, meta = opened
    if sync is not None:
        # The resume point is the writer's: the others start there with no state of their own;
        # the motion latents follow when the first clip needs them (ChainRenderer.motion_latents).
        sync.share(torch.tensor([seg.num_clips if state is None else state.next_clip]), (1,), torch.int64)
    if state is None:  # finished earlier
        return seg_dir
    renderer = _as_renderer(pipe_or_renderer, settings)
    t0 = time.time()
    tail_frames = max(0, settings.motion_frames - settings.infer_frames)
    for c in range(state.next_clip, seg.num_clips):
        offset = seg.clip_audio_offset(c, settings.infer_frames)
        frames, nxt = renderer.render_clip(shot, state, segment=index, audio_offset=offset)
        take = min(frames.shape[1], seg.num_frames - meta["written"])
        if take <= 0:
            raise RuntimeError(f"segment {index}: clip {c} adds no frame (plan has too many clips)")
        path = clip_file(seg_dir, c)
        fence()
        digest = _write_clip(path, frames[:, :take], shot.width, shot.height, settings.fps, intermediate_crf)
        last = c + 1 == seg.num_clips
        meta["clips"].append({"clip": c, "file": path.name, "frames": take, "sha256": digest,
                              "seed": clip_seed(settings.seed, index, c), "audio_offset": offset})
        meta["written"] += take
        if not last:
            nxt.ensure_motion_latents(renderer.vae)
            payload = {"fingerprint": fingerprint, "next_clip": c + 1, "clips": meta["clips"],
                       "written": meta["written"], "wall_s": meta["wall_s"] + time.time() - t0,
                       "motion_latents": nxt.motion_latents,
                       "motion_tail": nxt.motion_pixels[:, nxt.motion_pixels.shape[1] - tail_frames:].clone()}
            fence()
            _save_state(seg_dir, payload)
        state = nxt
        if on_clip is not None:
            on_clip(index, c, seg.num_clips)
    if meta["written"] != seg.num_frames:
        raise RuntimeError(f"segment {index}: wrote {meta['written']} frames, plan says {seg.num_frames}")
    rec = {"version": RECORD_VERSION, "fingerprint": fingerprint, "segment": seg.to_dict(),
           "fps": settings.fps, "width": shot.width, "height": shot.height, "frames": meta["written"],
           "clips": meta["clips"], "wall_s": round(meta["wall_s"] + time.time() - t0, 3)}
    fence()
    atomic_write(seg_dir / RECORD_FILE, lambda tmp: tmp.write_text(json.dumps(rec, indent=1)))
    (seg_dir / STATE_FILE).unlink(missing_ok=True)
    return seg_dir


def _open_segment(shot: ShotConditioning, plan: ShotPlan, index: int, settings: RenderSettings,
                  work_dir: str | Path, restart: bool, intermediate_crf: int, inputs_key: str | None
                  ) -> tuple[Path, str, ChainState | None, dict]:
    """(folder, fingerprint, state to continue from or None when finished, progress so far).

    With an ``inputs_key``, work committed under the tensor fingerprint (before callers passed
    one, or by a caller without it) is accepted too: it is the stricter match."""
    seg = plan.segments[index]
    seg_dir = segment_dir(work_dir, index)
    seg_dir.mkdir(parents=True, exist_ok=True)
    from render.media.atomic import sweep_dead_temps

    sweep_dead_temps(seg_dir)  # half-written clip/state files of a killed earlier attempt
    fingerprint = segment_fingerprint(plan, index, settings, shot, intermediate_crf, inputs_key)
    accepted = (fingerprint,) if inputs_key is None else (
        fingerprint, segment_fingerprint(plan, index, settings, shot, intermediate_crf))
    record = read_record(seg_dir)
    if record is not None:
        if record["fingerprint"] in accepted and all(clip_file(seg_dir, c["clip"]).is_file()
                                                        for c in record["clips"]):
            return seg_dir, fingerprint, None, {}
        if not restart:
            raise SegmentStateError(f"{seg_dir / RECORD_FILE}: finished segment was rendered from different "
                                    "inputs; pass restart=True (CLI: delete the work folder) to render it again")
    if restart and record is not None:
        shutil.rmtree(seg_dir)
        seg_dir.mkdir(parents=True)
    loaded = _load_state(seg_dir, accepted, settings, shot, restart)
    if loaded is None:
        return seg_dir, fingerprint, initial_chain_state(settings, shot), {
            "fingerprint": fingerprint, "clips": [], "written": 0, "wall_s": 0.0}
    state, meta = loaded
    log.info("segment %d: resuming at clip %d of %d", index, state.next_clip, seg.num_clips)
    return seg_dir, fingerprint, state, meta


def segment_frames_digest(seg_dir: str | Path) -> str:
    """sha256 over the decoded frames of a finished segment (for identity checks in tests/QA)."""
    import av

    h = hashlib.sha256()
    rec = read_record(seg_dir)
    if rec is None:
        raise SegmentStateError(f"{seg_dir}: segment is not finished")
    for c in rec["clips"]:
        with av.open(str(Path(seg_dir) / c["file"])) as f:
            for fr in f.decode(video=0):
                h.update(np.ascontiguousarray(fr.to_ndarray(format="rgb24")).tobytes())
    return h.hexdigest()
