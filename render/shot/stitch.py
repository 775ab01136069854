"""Streaming stitcher: finished segments + the shot's original audio -> one verified MP4.

Memory does not grow with the shot's length: frames are decoded from the segments' clip files
one at a time (at most two segments are open, inside an overlap), blended (render/seams.py),
optionally converted to 25/30 fps, and encoded as they come; the soundtrack is decoded and
AAC-encoded in chunks alongside (``render.media.mp4.encode_film``: the same soundtrack rules as
``s2v render-shot``'s writer). The output is written under a hidden temporary name in the same
folder, then fsynced, verified (decodes, frame count, duration = audio +- 1 frame), renamed and
the folder fsynced (``render.media.publish``): a kill at any instant leaves the final path absent
or holding its previous complete version, never a partial file.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from render.media.atomic import sweep_stale_temps
from render.media.audio import soundtrack_info, stream_soundtrack
from render.media.mp4 import CODECS, encode_film
from render.media.publish import atomic_output, verify_video
from render.quality.seams import crossfade_weight, match_colour
from render.settings import RenderSettings
from render.shot.plan import ShotPlan

log = logging.getLogger(__name__)

OUTPUT_FPS = (16, 25, 30)


@dataclass(frozen=True)
class StitchResult:
    output: Path
    frames: int
    fps: int
    duration_s: float
    audio_samples: int
    audio_rate: int
    wall_s: float


class SegmentReader:
    """Decoded uint8 [H, W, 3] frames of one finished segment, in order, one at a time."""

    def __init__(self, seg_dir: str | Path):
        from render.shot.segment import read_record

        self.dir = Path(seg_dir)
        rec = read_record(self.dir)
        if rec is None:
            raise FileNotFoundError(f"{self.dir}: segment is not finished (no segment.json)")
        self.record = rec
        self.frames = int(rec["frames"])
        self.width, self.height = int(rec["width"]), int(rec["height"])

    def __iter__(self) -> Iterator[np.ndarray]:
        n = 0
        for c in self.record["clips"]:
            path = self.dir / c["file"]
            got = 0
            with av.open(str(path)) as f:
                for fr in f.decode(video=0):
                    got += 1
                    n += 1
                    yield fr.to_ndarray(format="rgb24")
            if got != c["frames"]:
                raise ValueError(f"{path}: decoded {got} frames, the segment record says {c['frames']}")
        if n != self.frames:
            raise ValueError(f"{self.dir}: decoded {n} frames, the record says {self.frames}")


def blended_frames(plan: ShotPlan, segment_paths: Sequence[str | Path], colour: bool = False
                   ) -> Iterator[np.ndarray]:
    """The shot's frames in order: each segment's own frames, overlaps crossfaded."""
    if len(segment_paths) != len(plan.segments):
        raise ValueError(f"{len(segment_paths)} segment paths for a plan of {len(plan.segments)} segments")
    readers = [SegmentReader(p) for p in segment_paths]
    for spec, r in zip(plan.segments, readers):
        if r.frames != spec.num_frames:
            raise ValueError(f"{r.dir}: segment has {r.frames} frames, plan segment {spec.index} needs "
                             f"{spec.num_frames}")
    sizes = {(r.width, r.height) for r in readers}
    if len(sizes) != 1:
        raise ValueError(f"segments have different frame sizes {sorted(sizes)}")
    cur = iter(readers[0])
    for k, spec in enumerate(plan.segments):
        nxt_spec = plan.segments[k + 1] if k + 1 < len(plan.segments) else None
        own_end = spec.num_frames - (nxt_spec.overlap_before if nxt_spec else 0)
        for _ in range(spec.overlap_before if k else 0, own_end):
            yield next(cur)
        if nxt_spec is None:
            break
        nxt = iter(readers[k + 1])
        ov = nxt_spec.overlap_before
        tail = [next(cur) for _ in range(ov)]  # overlap frames of the earlier segment (small)
        head = [next(nxt) for _ in range(ov)]
        if colour:
            head = match_colour(head, tail)
        for j in range(ov):
            w = crossfade_weight(j, ov)
            yield np.clip(np.rint(tail[j] * (1.0 - w) + head[j] * w), 0, 255).astype(np.uint8)
        _exhausted(cur, readers[k].dir)
        cur = nxt
    _exhausted(cur, readers[-1].dir)


def _exhausted(it: Iterator[np.ndarray], where: Path) -> None:
    extra = next(it, None)
    if extra is not None:
        raise ValueError(f"{where}: segment has more frames than the plan")


def resample_frames(frames: Iterator[np.ndarray], src_fps: int, dst_fps: int, n_out: int) -> Iterator[np.ndarray]:
    """Frame-rate conversion by linear blending of the two nearest source frames (no motion
    estimation). Output frame m shows time m / dst_fps."""
    if dst_fps == src_fps:
        for i, f in enumerate(frames):
            if i >= n_out:
                return
            yield f
        return
    it = iter(frames)
    a = next(it)
    b = next(it, a)
    ia = 0  # a is source frame ia, b is ia + 1 (or a repeat of a at the end)
    for m in range(n_out):
        pos = Fraction(m * src_fps, dst_fps)
        while pos >= ia + 1 and b is not a:
            a, b, ia = b, next(it, b), ia + 1
        t = float(pos - ia) if b is not a else 0.0
        if t <= 0.0:
            yield a
        else:
            yield np.clip(np.rint(a * (1.0 - t) + b * t), 0, 255).astype(np.uint8)


def stitch_shot(plan: ShotPlan, segment_paths: Sequence[str | Path], audio_path: str | Path,
                out_path: str | Path, settings: RenderSettings | None = None, *, crf: int | None = None, codec: str = "libx264",
                preset: str = "medium", output_fps: int | None = None, colour_match: bool = False) -> StitchResult:
    """Blend the segments, mux the shot's original audio (sample-exact AAC) and publish ``out_path``.

    crf: H.264/H.265 quality (default ``settings.crf`` or 18). output_fps: 25 or 30 converts by
    blending neighbouring frames (off by default: the model's 16 fps).
    """
    t0 = time.time()
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(out_path.parent)!r} does not exist")
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r}: expected one of {sorted(CODECS)}")
    fps_out = plan.fps if output_fps is None else output_fps
    if fps_out not in OUTPUT_FPS and fps_out != plan.fps:
        raise ValueError(f"output_fps={output_fps!r}: expected one of {OUTPUT_FPS}")
    if crf is None:
        crf = settings.crf if settings is not None else 18
    sweep_stale_temps(out_path)
    if not segment_paths:
        raise ValueError("stitch: no segments")
    first = SegmentReader(segment_paths[0])
    n_out = max(1, math.ceil(plan.duration_s * fps_out - 1e-6))
    rate, channels, layout = soundtrack_info(audio_path)
    frames = resample_frames(blended_frames(plan, segment_paths, colour=colour_match), plan.fps, fps_out, n_out)
    verify = functools.partial(verify_video, expected_frames=n_out, expected_duration_s=plan.duration_s)
    with atomic_output(out_path, verify) as tmp:
        written, samples = encode_film(frames, n_out, first.width, first.height, fps_out,
                                       stream_soundtrack(audio_path), rate, channels, layout, tmp, crf, codec, preset)
        if written != n_out:
            raise ValueError(f"stitch: the segments gave {written} frames, the shot needs {n_out}")
    return StitchResult(out_path, written, fps_out, written / fps_out, samples, rate, time.time() - t0)

