"""Per-frame measures of a shot's quality curves (render/quality/curves.py) and the shot's layout.

Frames are decoded once, scaled by FFmpeg to a small analysis size; each measure here reduces a
frame to a few numbers, so a long shot never has to be held in memory. The layout says, in video
frames, where each clip's own frames lie and where the seams are (clip boundaries and segment
joins, with the crossfaded frames of each join).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from render.quality.seams import rgb_to_lab

ANALYSIS_SIDE = 192  # longest side of the decoded frames the measures see, pixels
FACE_GRID = 32  # the face region is averaged down to FACE_GRID x FACE_GRID before NCC
# The face region: fractions of width (left, right) and height (top, bottom) of the frame, where
# portrait framing puts the face.
FACE_REGION = (0.2, 0.8, 0.1, 0.8)


# --- the shot's layout: clips, joins, clean intervals ----------------------------------------------


@dataclass(frozen=True)
class ShotLayout:
    """Where a shot's clips and seams lie, in video frames. A clip's own frames exclude the
    crossfaded frames of a join (they belong to the join); seams are sorted by frame."""

    clips: list[tuple[int, int, int, int]]  # (segment, clip index, own start, own end), video frames
    seams: list[tuple[str, int, int, int, int]]  # (kind, segment, index, frame, span)
    segments: list[tuple[int, int]]  # own frames per segment
    joins: list[tuple[int, int]]


def shot_layout(frames: int, scale: float, clip_frames: int, joins: Sequence[tuple[int, int]],
                official_frame_drop: bool) -> ShotLayout:
    """Clips, seams and segments in video frames from positions in model frames (``scale`` =
    video fps / model fps: a video converted to 25 or 30 fps keeps its seams at the same times)."""
    def v(f: float) -> int:
        return min(frames, int(round(f * scale)))

    model_total = int(round(frames / scale))
    starts = [0] + [int(s) for s, _ in joins]
    ends = [int(s) + int(o) for s, o in joins] + [model_total]  # segment k ends where join k+1's overlap ends
    own = [(starts[0], int(joins[0][0]) if joins else model_total)]
    for k in range(1, len(starts)):
        nxt = int(joins[k][0]) if k < len(joins) else model_total
        own.append((starts[k] + int(joins[k - 1][1]), nxt))
    clips, seams = [], []
    for k, (s, e) in enumerate(zip(starts, ends)):
        pos, c = s, 0
        while pos < e:
            length = clip_frames - (3 if official_frame_drop and k == 0 and c == 0 else 0)
            a, b = max(pos, own[k][0]), min(pos + length, own[k][1])
            if a < b:
                clips.append((k, c, v(a), v(b)))
                if c > 0 and a == pos:  # a boundary inside the segment (not hidden in an overlap)
                    seams.append(("clip", k, c, v(a), 0))
            pos += length
            c += 1
        if k > 0:
            j0, jn = joins[k - 1]
            seams.append(("join", k, k, v(j0), v(j0 + jn) - v(j0)))
    clips = [c for c in clips if c[2] < c[3]]
    seams.sort(key=lambda s: s[3])
    return ShotLayout(clips, seams, [(v(a), v(b)) for a, b in own], [(v(a), v(a + n) - v(a)) for a, n in joins])


# --- per-frame measures --------------------------------------------------------------------------


def face_vector(rgb: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm luma of the face region averaged down to FACE_GRID x FACE_GRID."""
    from PIL import Image

    h, w = rgb.shape[:2]
    x0, x1, y0, y1 = FACE_REGION
    crop = rgb[int(y0 * h): max(int(y0 * h) + 1, int(y1 * h)), int(x0 * w): max(int(x0 * w) + 1, int(x1 * w))]
    luma = crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    small = np.asarray(Image.fromarray(np.ascontiguousarray(luma)).resize((FACE_GRID, FACE_GRID), Image.Resampling.BOX))
    vec = small.ravel() - small.mean()
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 1e-6 else vec  # a flat region: correlation 0 with anything


def mean_lab(rgb: np.ndarray) -> np.ndarray:
    """Mean CIE Lab colour of a uint8 RGB frame (every 2nd pixel each way: enough for a mean)."""
    return rgb_to_lab(rgb[::2, ::2]).reshape(-1, 3).mean(0)


def analysis_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled down to longest side ``side`` (never up), both even."""
    s = min(1.0, side / max(width, height))
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def decoded_small(path: str | Path, side: int) -> Iterator[np.ndarray]:
    """uint8 RGB frames of a video, scaled by FFmpeg (area averaging) to longest side ``side``."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        size = None
        for fr in container.decode(stream):
            if size is None:
                size = analysis_size(fr.width, fr.height, side)
            yield fr.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="AREA")


def resize_like_frames(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """A picture (the reference) scaled by the same FFmpeg scaler as the decoded frames."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(width=width, height=height, interpolation="AREA").to_ndarray()


def frame_loudness_streaming(audio: str | Path, fps: float, frames: int) -> np.ndarray:
    """``render.quality.lipsync.frame_loudness_db`` of a file, read in chunks (bounded memory):
    energy per frame period centred on each frame, relative to the 95th-percentile frame."""
    from render.media.audio import stream_audio
    from render.quality.lipsync import LOUDNESS_FLOOR_DB

    rate = 16000
    step = rate / fps
    energy = np.zeros(frames + 1, np.float64)
    count = np.zeros(frames + 1, np.float64)
    pos = 0
    for chunk in stream_audio(audio, rate):
        idx = np.floor((np.arange(pos, pos + chunk.size) + step / 2) / step).astype(np.int64)
        keep = idx < frames
        x = chunk[keep].astype(np.float64)
        energy += np.bincount(idx[keep], weights=x * x, minlength=frames + 1)[: frames + 1]
        count += np.bincount(idx[keep], minlength=frames + 1)[: frames + 1]
        pos += chunk.size
        if not keep.any() and idx.size and idx[0] >= frames:
            break
    rms = np.sqrt(energy[:frames] / np.maximum(count[:frames], 1))
    loud = np.percentile(rms, 95) if rms.size else 0.0
    if loud <= 1e-8:
        return np.full(frames, LOUDNESS_FLOOR_DB, np.float32)
    return np.clip(20.0 * np.log10(np.maximum(rms, 1e-8) / loud), LOUDNESS_FLOOR_DB, 6.0).astype(np.float32)


class SeamFrameKeeper:
    """The (before, after) frames of the worst ``cap`` seams by each measure and lag: within one
    lag the ratio grows with the raw value, so the worst seams overall are among these."""

    def __init__(self, cap: int):
        self.cap = cap
        self.heaps: dict[tuple[str, int], list[tuple[float, int]]] = {}
        self.frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.refs: dict[int, int] = {}

    def offer(self, seam: int, lag: int, values: dict[str, float], pair: tuple[np.ndarray, np.ndarray]) -> None:
        for measure, value in values.items():
            heap = self.heaps.setdefault((measure, lag), [])
            if len(heap) < self.cap:
                heapq.heappush(heap, (value, seam))
            elif value > heap[0][0]:
                _, dropped = heapq.heapreplace(heap, (value, seam))
                self._release(dropped)
            else:
                continue
            self.frames[seam] = pair
            self.refs[seam] = self.refs.get(seam, 0) + 1

    def _release(self, seam: int) -> None:
        self.refs[seam] -= 1
        if not self.refs[seam]:
            del self.refs[seam], self.frames[seam]


def window_mean(lab: list[np.ndarray] | np.ndarray, a: int, b: int) -> np.ndarray:
    """Mean of per-frame values [a, b)."""
    return np.mean(np.asarray(lab[a:b]), axis=0)


def interval_of(intervals: Sequence[tuple[int, int]], f: int) -> tuple[int, int]:
    """The interval of ``intervals`` (sorted, disjoint [a, b)) that holds frame ``f``; a frame in
    none of them (a crossfaded one) stands alone: (f, f + 1)."""
    k = bisect.bisect_right(intervals, (f, math.inf)) - 1
    if k >= 0 and intervals[k][0] <= f < intervals[k][1]:
        return intervals[k]
    return f, f + 1


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute RGB difference of two uint8 frames (0..255)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
