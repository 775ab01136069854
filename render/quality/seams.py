"""Joins between segments: the blend, and the metrics that judge it.

Blend: segment k's first ``overlap_before`` frames show the same moments as segment k - 1's last
frames (the planner puts the overlap in a pause). They are crossfaded with a smoothstep weight;
optionally the later segment's colours are first matched (per-channel mean/std) to the earlier
one's, with the correction fading out over the overlap so that segment k's own frames continue
unchanged.

Seam metric (the product's rule: "the frame-to-frame change across a join must stay within the range seen
inside clips"): the change between consecutive frames is the mean absolute difference of their
RGB values (0..255). Pairs inside one clip form the reference distribution (p50/p95); each join's
value is the largest change among the pairs that touch its overlap; clip boundaries inside a
chain are reported separately. Colour drift: mean and std of CIE Lab channels per segment (and
per clip) against the reference image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from render.shot.plan import ShotPlan


def crossfade_weight(j: int, overlap: int) -> float:
    """Weight of the later segment at overlap frame j (0..overlap-1): smoothstep, never 0 or 1."""
    x = (j + 0.5) / overlap
    return float(x * x * (3.0 - 2.0 * x))


def match_colour(head: Sequence[np.ndarray], tail: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Later-segment overlap frames ``head`` with per-channel mean/std moved toward the earlier
    segment's ``tail`` statistics; full correction at the first frame, none at the last."""
    h = np.stack(head).astype(np.float32)
    t = np.stack(tail).astype(np.float32)
    hm, hs = h.mean(axis=(0, 1, 2)), h.std(axis=(0, 1, 2)) + 1e-3
    tm, ts = t.mean(axis=(0, 1, 2)), t.std(axis=(0, 1, 2)) + 1e-3
    out = []
    n = len(head)
    for j in range(n):
        matched = (h[j] - hm) * (ts / hs) + tm
        a = 1.0 - (j + 1) / n  # correction strength, fading out
        out.append(np.clip(h[j] + a * (matched - h[j]), 0, 255).astype(np.float32))
    return out


def frame_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute RGB difference of two uint8 frames (0..255)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- CIE Lab (sRGB, D65) -------------------------------------------------------------------------

_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]], np.float64)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (or 0..255 float) RGB [..., 3] -> CIE Lab [..., 3] (L 0..100)."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _RGB_TO_XYZ.T / _WHITE_D65
    d = 6.0 / 29.0
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)


@dataclass
class _LabStats:
    n: int = 0
    s: np.ndarray = field(default_factory=lambda: np.zeros(3))
    s2: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def add(self, frame: np.ndarray) -> None:
        lab = rgb_to_lab(frame[::2, ::2]).reshape(-1, 3)  # every 2nd pixel: enough for statistics
        self.n += lab.shape[0]
        self.s += lab.sum(0)
        self.s2 += (lab * lab).sum(0)

    def mean_std(self) -> tuple[list[float], list[float]]:
        m = self.s / max(1, self.n)
        v = np.maximum(self.s2 / max(1, self.n) - m * m, 0.0)
        return [round(float(x), 3) for x in m], [round(float(x), 3) for x in np.sqrt(v)]


# --- the report ----------------------------------------------------------------------------------


def clip_starts(plan: ShotPlan, official_frame_drop: bool = False) -> list[set[int]]:
    """Shot frames where a new clip starts, per segment (its first frame included)."""
    out = []
    for s in plan.segments:
        starts, pos = set(), 0
        for c in range(s.num_clips):
            if pos >= s.num_frames:
                break
            starts.add(s.start_frame + pos)
            pos += plan.infer_frames - (3 if official_frame_drop and s.index == 0 and c == 0 else 0)
        out.append(starts)
    return out


def seam_report(frames: Iterable[np.ndarray], plan: ShotPlan, reference_rgb: np.ndarray | None = None,
                official_frame_drop: bool = False, fps: int | None = None) -> dict:
    """Seam metrics of a stitched shot's frames (uint8 [H, W, 3], at the plan's fps).

    Returns {"inside": {p50, p95, max, pairs}, "clip_boundaries": [...], "joins": [{index,
    frame, value, ratio_p95}], "colour": {"reference": ..., "segments": [...], "clips": [...]}}.
    """
    starts = clip_starts(plan, official_frame_drop)
    new_clip = set().union(*starts)
    join_ranges = [(s.start_frame, s.start_frame + s.overlap_before) for s in plan.segments[1:]]
    join_of = {}
    for k, (a, b) in enumerate(join_ranges):
        for f in range(a, b + 1):  # pair (f-1, f) touches the overlap [a, b)
            join_of[f] = k
    inside: list[float] = []
    boundaries: list[dict] = []
    joins = [0.0] * len(join_ranges)
    seg_stats = [_LabStats() for _ in plan.segments]
    clip_stats: list[tuple[int, int, _LabStats]] = []
    own = []  # (first own frame, end) per segment: frames not shared with a neighbour
    for k, s in enumerate(plan.segments):
        nxt = plan.segments[k + 1].overlap_before if k + 1 < len(plan.segments) else 0
        own.append((s.start_frame + s.overlap_before, s.end_frame - nxt))
    clip_list = sorted((f, k) for k, st in enumerate(starts) for f in st)
    ci = -1
    prev = None
    n = 0
    for f, frame in enumerate(frames):
        n += 1
        while ci + 1 < len(clip_list) and clip_list[ci + 1][0] <= f:
            ci += 1
            clip_stats.append((clip_list[ci][1], clip_list[ci][0], _LabStats()))
        if f % 2 == 0:
            for k, (a, b) in enumerate(own):
                if a <= f < b:
                    seg_stats[k].add(frame)
            if clip_stats:
                clip_stats[-1][2].add(frame)
        if prev is not None:
            d = frame_change(prev, frame)
            if f in join_of:
                k = join_of[f]
                joins[k] = max(joins[k], d)
            elif f in new_clip:
                boundaries.append({"frame": f, "value": round(d, 4)})
            else:
                inside.append(d)
        prev = frame
    arr = np.asarray(inside) if inside else np.zeros(1)
    p50, p95, p99 = (float(np.percentile(arr, q)) for q in (50, 95, 99))
    report = {
        "frames": n,
        "inside": {"p50": round(p50, 4), "p95": round(p95, 4), "p99": round(p99, 4),
                   "max": round(float(arr.max()), 4), "pairs": len(inside)},
        "clip_boundaries": boundaries,
        "joins": [{"index": k + 1, "frame": join_ranges[k][0], "overlap": join_ranges[k][1] - join_ranges[k][0],
                   "value": round(v, 4), "ratio_p95": round(v / p95, 3) if p95 > 0 else None}
                  for k, v in enumerate(joins)],
    }
    colour: dict = {}
    ref = None
    if reference_rgb is not None:
        rs = _LabStats()
        rs.add(reference_rgb)
        ref = rs.mean_std()
        colour["reference"] = {"mean": ref[0], "std": ref[1]}

    def entry(st: _LabStats) -> dict:
        m, s = st.mean_std()
        e = {"mean": m, "std": s}
        if ref is not None:
            e["mean_minus_ref"] = [round(a - b, 3) for a, b in zip(m, ref[0])]
            e["std_minus_ref"] = [round(a - b, 3) for a, b in zip(s, ref[1])]
        return e

    colour["segments"] = [entry(st) for st in seg_stats]
    colour["clips"] = [{"segment": k, "frame": f, **entry(st)} for k, f, st in clip_stats]
    report["colour"] = colour
    return report


def decoded_frames(path, fps: int | None = None) -> Iterable[np.ndarray]:
    """uint8 RGB frames of a video file, one at a time."""
    import av

    with av.open(str(path)) as f:
        for fr in f.decode(video=0):
            yield fr.to_ndarray(format="rgb24")
