"""Quality of a shot over its duration: per-clip curves, the jump at every seam, and flags.

Entry point: :func:`shot_curves` (or :func:`plan_curves` for a ``ShotPlan``; :func:`curves_of_frames`
for frames already in memory). The video is decoded
once, at a reduced size (longest side ``ANALYSIS_SIDE``), frame by frame; only a few numbers per
frame and a bounded number of seam frames (for the contact sheet) are kept, so a feature-length
shot does not have to fit in memory. Measured per frame, then summarised per clip and segment:

* colour drift: CIE Lab mean of the frame vs the reference image as the model saw it
  (``render.quality.qa.reference_rgb``), as ΔE76 of the means and per-channel differences;
* face similarity: zero-mean normalised correlation (NCC) of the luma of the central region,
  averaged down to ``FACE_GRID`` x ``FACE_GRID``, with the same region of the reference. Why this
  measure: it needs no face detector (no weights to download, and detectors do not see the tiny
  model's drawn characters); NCC ignores brightness and contrast, so it measures structure
  (pose, framing, identity falling apart) independently of colour drift, which is measured on its
  own; averaging down to a coarse grid makes blinks, mouth motion and codec noise nearly
  invisible to it. Portrait framing puts the face in the central region; a shot framed otherwise
  still scores how much of the reference's central picture survives;
* lip-sync (tiny-model characters only): mouth opening as the area of the mouth colour
  (``render.quality.lipsync``) correlated with the audio's loudness, per clip and for the shot.
  Real faces have no such colour: the score is reported as not measurable there;
* seams: for every clip boundary and segment join, the picture and colour change across it,
  compared over windows that skip the whole crossfade (see :class:`SeamJump`), divided by the
  95th percentile of the same measure at the same distance inside clips.

Thresholds live in :class:`QualityThresholds`; a shot that exceeds one is flagged, never failed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from render.quality.frame_measures import (
    ANALYSIS_SIDE,
    SeamFrameKeeper,
    ShotLayout,
    analysis_size,
    decoded_small,
    face_vector,
    frame_loudness_streaming,
    interval_of,
    mean_abs_diff,
    mean_lab,
    resize_like_frames,
    shot_layout,
    window_mean,
)

# Frames averaged on each side of a seam for its colour jump (fewer where clips are too short to
# measure the same windows inside them: see seam_windows).
SEAM_WINDOW_FRAMES = 8
LIPSYNC_MAX_LAG = 4  # frames; render.quality.lipsync.lipsync_score's search range
# Mouth colour covering less than this fraction of the picture in every frame: no tiny-model
# mouth in the shot, lip-sync is not measurable.
MIN_MOUTH_AREA = 0.0005
SHEET_SEAMS = 12  # seams on the contact sheet (the worst ones)


@dataclass(frozen=True)
class QualityThresholds:
    """When a shot is flagged (never failed). Defaults are the product's; ``s2v qa --help`` lists them."""

    # A seam's jump divided by the within-clip 95th percentile of the same measure at the same
    # frame distance, above which the seam is flagged.
    seam_ratio: float = 3.0
    # ΔE76 of a clip's mean Lab colour vs the reference's, above which the clip has drifted.
    colour_drift_de: float = 20.0
    # Mean face-region NCC of a clip vs the reference (-1..1), below which it no longer looks
    # like the reference.
    face_similarity: float = 0.5
    # Shot lip-sync correlation below which it is flagged (only where measurable: tiny-model characters).
    lipsync_corr: float = 0.3
    # Denominators are at least these, so that a nearly still shot (p95 ~ 0) does not turn an
    # invisible change into a large ratio: mean |dRGB| (0..255) and ΔE76.
    seam_picture_floor: float = 1.0
    seam_colour_floor: float = 1.0


@dataclass
class SeamJump:
    """The change across one clip boundary or segment join.

    The seam's transition covers frames [frame, frame + span) (span = the crossfade's length for a
    join, 0 for a clip boundary). ``picture``: mean |dRGB| (0..255) between the frame just before
    the transition and the first frame after it, ``lag`` = span + 1 frames apart. ``colour``: ΔE76
    between the mean Lab colours of up to ``SEAM_WINDOW_FRAMES`` frames before the transition and
    as many after it, so a drift that a crossfade spreads over its frames still shows in full.
    Each is divided by the within-clip p95 of the same measure at the same ``lag`` (at least the
    thresholds' floor); ``ratio`` is the larger of the two.
    """

    kind: str  # "clip" or "join"
    segment: int  # the segment the seam starts (join) or lies in (clip)
    index: int  # join number (1..) or the index of the clip the boundary starts
    frame: int  # first frame of the transition (video frames)
    span: int
    time_s: float
    picture: float
    colour: float
    picture_p95: float | None
    colour_p95: float | None
    ratio: float = 0.0

    @property
    def lag(self) -> int:
        return self.span + 1

    @property
    def label(self) -> str:
        return f"join {self.index}" if self.kind == "join" else f"segment {self.segment} clip {self.index}"


@dataclass
class ClipCurve:
    """One clip's numbers over its own frames [start_frame, end_frame) (crossfaded frames excluded)."""

    segment: int
    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    colour_de: float | None  # ΔE76 of the clip's mean Lab vs the reference's
    lab_minus_ref: list[float] | None
    face_similarity: float | None  # mean over the clip's frames
    face_similarity_min: float | None
    lipsync: float | None  # best-lag correlation (tiny-model characters only)
    motion_p95: float  # within-clip frame-to-frame change (mean |dRGB|), 95th percentile
    seam_ratio: float | None  # ratio of the seam the clip starts with (None for the shot's first clip)


@dataclass
class SegmentCurve:
    index: int
    start_frame: int
    end_frame: int
    colour_de: float | None
    face_similarity: float | None
    lipsync: float | None


@dataclass
class Flag:
    kind: str  # "seam_jump", "colour_drift", "face_similarity", "lipsync"
    message: str
    time_s: float | None
    value: float
    threshold: float

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class ShotCurves:
    video: str
    fps: float
    frames: int
    width: int
    height: int
    thresholds: QualityThresholds
    # Per frame (float32 [frames]); colour and face arrays are NaN-free only with a reference.
    colour_de: np.ndarray | None
    face_similarity: np.ndarray | None
    picture_change: np.ndarray  # vs the previous frame (first frame: NaN)
    mouth_opening: np.ndarray
    loudness_db: np.ndarray | None
    clips: list[ClipCurve]
    segments: list[SegmentCurve]
    seams: list[SeamJump]
    joins: list[tuple[int, int]]  # (first frame, crossfaded frames) per join, video frames
    lipsync: dict | None  # shot-level lip-sync (lipsync_score's dict + "note"), None if not measured
    lipsync_note: str
    flags: list[Flag]
    # For the contact sheet: the analysis-size reference and (before, after) frames of the worst
    # seams, by the seam's first frame (SeamJump.frame).
    reference_thumb: np.ndarray | None = None
    seam_frames: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    sheet_rows: int = SHEET_SEAMS  # seams the contact sheet shows
    decode_seconds: float = 0.0

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def worst_seam(self) -> SeamJump | None:
        return max(self.seams, key=lambda s: s.ratio, default=None)

    def summary(self) -> dict:
        """The few numbers a results row carries."""
        drift = [c.colour_de for c in self.clips if c.colour_de is not None]
        face = [c.face_similarity for c in self.clips if c.face_similarity is not None]
        worst = self.worst_seam
        return {"worst_seam_ratio": None if worst is None else round(worst.ratio, 3),
                "max_colour_drift": round(max(drift), 3) if drift else None,
                "min_face_similarity": round(min(face), 4) if face else None,
                "lipsync": None if self.lipsync is None else self.lipsync["corr"],
                "flags": [str(f) for f in self.flags]}

    def to_dict(self) -> dict:
        """JSON-ready: everything but the pictures (per-frame curves rounded to 4 decimals)."""
        def arr(a: np.ndarray | None) -> list | None:
            return None if a is None else [None if not math.isfinite(v) else round(float(v), 4) for v in a]

        return {"video": self.video, "fps": self.fps, "frames": self.frames, "width": self.width,
                "height": self.height, "thresholds": asdict(self.thresholds), "summary": self.summary(),
                "flags": [asdict(f) for f in self.flags],
                "clips": [asdict(c) for c in self.clips], "segments": [asdict(s) for s in self.segments],
                "seams": [{**asdict(s), "lag": s.lag, "label": s.label} for s in self.seams],
                "joins": [list(j) for j in self.joins], "lipsync": self.lipsync, "lipsync_note": self.lipsync_note,
                "decode_seconds": round(self.decode_seconds, 3),
                "per_frame": {"colour_de": arr(self.colour_de), "face_similarity": arr(self.face_similarity),
                              "picture_change": arr(self.picture_change), "mouth_opening": arr(self.mouth_opening),
                              "loudness_db": arr(self.loudness_db)}}


# --- the entry point -----------------------------------------------------------------------------


def shot_curves(video_path: str | Path, reference_image: str | Path | np.ndarray | None = None,
                audio_path: str | Path | None = None, fps: float | None = None, clip_frames: int = 80,
                segment_joins: Sequence[tuple[int, int]] = (), *, official_frame_drop: bool = False,
                thresholds: QualityThresholds | None = None, sheet_seams: int = SHEET_SEAMS,
                analysis_side: int = ANALYSIS_SIDE) -> ShotCurves:
    """Per-frame, per-clip and per-seam quality of a finished shot; one streaming decode.

    video_path: the shot's MP4. reference_image: the reference image file (resized and cropped
    as the model saw it) or that picture as uint8 [H, W, 3]; None: no colour drift or face
    similarity. audio_path: the shot's audio (lip-sync; None: not measured). fps: the frame rate
    ``clip_frames`` and ``segment_joins`` are counted in (the model's; default: the video's).
    segment_joins: (first frame, crossfaded frames) of every segment join, i.e. ``ShotPlan.joins``.
    official_frame_drop: the first clip is 3 frames shorter. sheet_seams: how many of the worst
    seams keep their frames for the contact sheet.
    """
    from render.media.video import probe_video

    info = probe_video(video_path, decode_video=False)  # the frames are decoded below
    ref_small = None
    if reference_image is not None:
        if isinstance(reference_image, np.ndarray):
            ref_full = reference_image
        else:
            from render.quality.qa import reference_rgb

            ref_full = reference_rgb(reference_image, info.height, info.width)
        ref_small = resize_like_frames(ref_full, *analysis_size(info.width, info.height, analysis_side))
    loudness = None
    if audio_path is not None:  # read first: a bad audio file fails before the long decode
        loudness = frame_loudness_streaming(audio_path, info.fps, info.frames)
    return curves_of_frames(decoded_small(video_path, analysis_side), info.frames, info.fps, ref_small, loudness,
                            fps, clip_frames, segment_joins, official_frame_drop=official_frame_drop,
                            thresholds=thresholds, sheet_seams=sheet_seams, name=str(video_path),
                            size=(info.width, info.height))


def curves_of_frames(frames: Iterable[np.ndarray], frame_count: int, fps: float,
                     reference: np.ndarray | None = None, loudness_db: np.ndarray | None = None,
                     model_fps: float | None = None, clip_frames: int = 80,
                     segment_joins: Sequence[tuple[int, int]] = (), *, official_frame_drop: bool = False,
                     thresholds: QualityThresholds | None = None, sheet_seams: int = SHEET_SEAMS,
                     name: str = "frames", size: tuple[int, int] | None = None) -> ShotCurves:
    """``shot_curves`` of frames already in hand (e.g. as rendered, before any encode).

    frames: ``frame_count`` uint8 [h, w, 3] frames at ``fps``, measured as they are (no scaling:
    pass them at analysis size, longest side about ``ANALYSIS_SIDE``, for the same numbers as
    ``shot_curves``). reference: the reference as the model saw it, at the frames' size.
    loudness_db: per-frame loudness (``render.quality.lipsync.frame_loudness_db``) for lip-sync.
    model_fps: the rate ``clip_frames`` and ``segment_joins`` count in (default ``fps``).
    name, size: the video's name and (width, height) for the record.
    """
    import time

    th = thresholds or QualityThresholds()
    scale = 1.0 if model_fps is None else fps / float(model_fps)
    layout = shot_layout(frame_count, scale, clip_frames, segment_joins, official_frame_drop)
    clean = [(a, b) for _, _, a, b in layout.clips]
    ref_lab = ref_face = None
    if reference is not None:
        ref_lab, ref_face = mean_lab(reference), face_vector(reference)
    t0 = time.time()
    measured = _FramePass(layout, frame_count, ref_face, sheet_seams)
    first_shape = None
    for frame in frames:
        if first_shape is None:
            first_shape = frame.shape
            if reference is not None and reference.shape != frame.shape:
                raise ValueError(f"reference of shape {reference.shape}, frames of {frame.shape}: expected the same")
        measured.add(frame)
    measured.finish()
    n = measured.n
    if n != frame_count:
        from render.media.video import frame_count_mismatch

        raise frame_count_mismatch(name, n, frame_count)
    decode_s = time.time() - t0
    lab_arr, change_arr = measured.labs, measured.change
    seams = _seam_jumps(layout, lab_arr, change_arr, measured.picture_jump, clean, fps, th)
    colour_de = None if ref_lab is None else np.linalg.norm(lab_arr - ref_lab, axis=1).astype(np.float32)
    face = None if ref_face is None else measured.faces
    mouth_arr = measured.mouth
    measurable = bool(mouth_arr.size and mouth_arr.max() >= MIN_MOUTH_AREA and mouth_arr.std() > 0)
    if loudness_db is None:
        note = "not measured (no audio given)"
    elif not measurable:
        note = "not measurable: no tiny-model mouth colour in the picture (the measure does not apply to real faces)"
    else:
        note = "loudness vs area of the mouth colour (render.quality.lipsync)"
    sync = np.asarray(loudness_db, np.float32) if measurable and loudness_db is not None else None
    clips = _clip_curves(layout, lab_arr, ref_lab, face, change_arr[1], mouth_arr, sync, seams, fps)
    segments = _segment_curves(layout, lab_arr, ref_lab, face, mouth_arr, sync)
    shot_sync = None
    if sync is not None and n >= 2 * LIPSYNC_MAX_LAG + 8:
        from render.quality.lipsync import lipsync_score

        shot_sync = {**lipsync_score(sync, mouth_arr, LIPSYNC_MAX_LAG), "note": note}
    width, height = size if size is not None else ((first_shape[1], first_shape[0]) if first_shape else (0, 0))
    curves = ShotCurves(
        video=name, fps=float(fps), frames=n, width=width, height=height, thresholds=th,
        colour_de=colour_de, face_similarity=face, picture_change=change_arr[1], mouth_opening=mouth_arr,
        loudness_db=None if loudness_db is None else np.asarray(loudness_db, np.float32), clips=clips,
        segments=segments, seams=seams, joins=list(layout.joins), lipsync=shot_sync, lipsync_note=note, flags=[],
        reference_thumb=reference, seam_frames=dict(measured.keeper.frames), sheet_rows=sheet_seams,
        decode_seconds=decode_s)
    curves.flags = flags_of(curves)
    return curves


class _FramePass:
    """The one pass over the decoded frames: a few numbers per frame, the picture change at every
    lag a seam needs, and the frames either side of each seam (kept for the worst ones only)."""

    def __init__(self, layout: ShotLayout, frames: int, ref_face: np.ndarray | None, sheet_seams: int):
        from render.quality.lipsync import measure_mouth_opening

        self.measure_mouth = measure_mouth_opening
        self.layout, self.ref_face = layout, ref_face
        self.clean = [(a, b) for _, _, a, b in layout.clips]
        self.lags = sorted({1} | {s[4] + 1 for s in layout.seams})
        self.windows = seam_windows(self.clean, self.lags)
        self.ring: deque[np.ndarray] = deque(maxlen=max(self.lags) + 1)
        # Per-frame numbers in arrays sized from the container's frame count (~50 bytes a frame).
        self.n = 0
        self.change = {g: np.full(frames, np.nan, np.float32) for g in self.lags}
        self.labs = np.zeros((frames, 3), np.float64)
        self.faces = np.zeros(frames, np.float32)
        self.mouth = np.zeros(frames, np.float32)
        self.keeper = SeamFrameKeeper(sheet_seams)
        # first frame after each transition -> its seams (a join whose crossfade ends where a clip of
        # the next segment starts shares that frame with the clip boundary)
        self.seam_at: dict[int, list[int]] = {}
        for i, s in enumerate(layout.seams):
            self.seam_at.setdefault(s[3] + s[4], []).append(i)
        # Seams waiting for the frames after them: (due frame, seam, picture jump, (before, after)).
        self.pending: list[tuple[int, int, float, tuple[np.ndarray, np.ndarray]]] = []
        self.picture_jump: dict[int, float] = {}

    def add(self, frame: np.ndarray) -> None:
        f = self.n
        if f >= len(self.labs):
            raise ValueError(f"the video has more frames than its container says ({len(self.labs)})")
        self.n += 1
        ring = self.ring
        ring.append(frame)
        for g in self.lags:
            if len(ring) > g:
                self.change[g][f] = mean_abs_diff(ring[-1 - g], frame)
        self.labs[f] = mean_lab(frame)
        if self.ref_face is not None:
            self.faces[f] = float(face_vector(frame) @ self.ref_face)
        self.mouth[f] = float(self.measure_mouth(frame[None])[0])
        for i in self.seam_at.get(f, ()):
            if f > 0 and len(ring) > self.layout.seams[i][4] + 1:
                pair = (ring[-2 - self.layout.seams[i][4]], frame)
                self.picture_jump[i] = mean_abs_diff(*pair)
                due = min(f + self.windows[self.layout.seams[i][4] + 1], interval_of(self.clean, f)[1])
                self.pending.append((due, i, self.picture_jump[i], pair))
        if self.pending:
            ready = [p for p in self.pending if p[0] <= f + 1]
            self.pending = [p for p in self.pending if p[0] > f + 1]
            for item in ready:
                self._offer(*item)

    def finish(self) -> None:
        """Seams whose window after them the video's end cut short."""
        for item in self.pending:
            self._offer(*item)
        self.pending = []

    def _offer(self, _due: int, i: int, picture: float, pair: tuple[np.ndarray, np.ndarray]) -> None:
        seam = self.layout.seams[i]
        colour = _seam_colour(self.labs[: self.n], seam, self.clean, self.windows[seam[4] + 1])
        self.keeper.offer(seam[3], seam[4] + 1, {"picture": picture, "colour": colour}, pair)


def plan_curves(video_path: str | Path, plan, reference_image: str | Path | np.ndarray | None = None,
                audio_path: str | Path | None = None, **kwargs) -> ShotCurves:
    """``shot_curves`` with the clip length, joins and frame rate of a ``render.shot.plan.ShotPlan``."""
    return shot_curves(video_path, reference_image, audio_path, plan.fps, plan.infer_frames, plan.joins, **kwargs)


def seam_windows(clean: Sequence[tuple[int, int]], lags: Sequence[int]) -> dict[int, int]:
    """Frames averaged each side of a seam of each lag: SEAM_WINDOW_FRAMES, fewer when no clip is
    long enough to hold two such windows that far apart (the within-clip baseline needs them)."""
    longest = max((b - a for a, b in clean), default=0)
    return {g: max(1, min(SEAM_WINDOW_FRAMES, (longest - g + 1) // 2)) for g in lags}


def _seam_colour(labs: np.ndarray, seam: tuple, clean: Sequence[tuple[int, int]], w: int) -> float:
    """ΔE76 between the mean Lab of up to ``w`` frames before the seam's transition and after it
    (never reaching into the clip before or after those)."""
    _, _, _, a, span = seam
    b = a + span
    lo = interval_of(clean, a - 1)[0]
    hi = min(interval_of(clean, b)[1], len(labs))
    pre = window_mean(labs, max(lo, a - w), a)
    post = window_mean(labs, b, max(b + 1, min(hi, b + w)))
    return float(np.linalg.norm(pre - post))


def _p95(values: list[float] | np.ndarray) -> float | None:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(np.percentile(v, 95)) if v.size else None


def _baselines(lab: np.ndarray, change: dict[int, np.ndarray], clean: Sequence[tuple[int, int]],
               windows: dict[int, int]) -> dict[int, tuple[float | None, float | None]]:
    """Per lag g: within-clip p95 of the picture change between frames g apart, and of the ΔE76
    between mean colours of ``windows[g]`` frames whose nearest frames are g apart. A lag no clip
    is long enough for takes the nearest shorter lag's (a smaller change: the ratio errs high)."""
    csum = np.concatenate([np.zeros((1, 3)), np.cumsum(lab, axis=0)])
    out: dict[int, tuple[float | None, float | None]] = {}
    for g, ch in sorted(change.items()):
        w = windows[g]
        pics, cols = [], []
        for s, e in clean:
            pics.append(ch[s + g: e])
            q = np.arange(s + g - 1 + w, e - w + 1)  # first frame of the later window
            if q.size:
                pre = (csum[q - g + 1] - csum[q - g + 1 - w]) / w
                post = (csum[q + w] - csum[q]) / w
                cols.append(np.linalg.norm(pre - post, axis=1))
        shorter = out[max(out)] if out else (None, None)
        pic = _p95(np.concatenate(pics)) if pics else None
        col = _p95(np.concatenate(cols)) if cols else None
        out[g] = (shorter[0] if pic is None else pic, shorter[1] if col is None else col)
    return out


def _seam_jumps(layout: ShotLayout, lab: np.ndarray, change: dict[int, np.ndarray], picture: dict[int, float],
                clean: Sequence[tuple[int, int]], fps: float, th: QualityThresholds) -> list[SeamJump]:
    windows = seam_windows(clean, sorted(change))
    base = _baselines(lab, change, clean, windows)
    out = []
    for i, (kind, seg, idx, a, span) in enumerate(layout.seams):
        if i not in picture:  # the seam lies at the very start of the video: nothing before it
            continue
        pic_p95, col_p95 = base[span + 1]
        colour = _seam_colour(lab, layout.seams[i], clean, windows[span + 1])
        ratio = max(picture[i] / max(pic_p95 or 0.0, th.seam_picture_floor),
                    colour / max(col_p95 or 0.0, th.seam_colour_floor))
        out.append(SeamJump(kind, seg, idx, a, span, round(a / fps, 3), round(picture[i], 4), round(colour, 4),
                            None if pic_p95 is None else round(pic_p95, 4),
                            None if col_p95 is None else round(col_p95, 4), round(ratio, 3)))
    return out


def _region_numbers(a: int, b: int, lab: np.ndarray, ref_lab: np.ndarray | None, face: np.ndarray | None,
                    mouth: np.ndarray, loudness: np.ndarray | None) -> dict:
    d: dict = {"colour_de": None, "lab_minus_ref": None, "face_similarity": None, "face_similarity_min": None,
               "lipsync": None}
    if ref_lab is not None:
        diff = lab[a:b].mean(0) - ref_lab
        d["colour_de"] = round(float(np.linalg.norm(diff)), 3)
        d["lab_minus_ref"] = [round(float(x), 3) for x in diff]
    if face is not None:
        d["face_similarity"] = round(float(face[a:b].mean()), 4)
        d["face_similarity_min"] = round(float(face[a:b].min()), 4)
    if loudness is not None and b - a >= 2 * LIPSYNC_MAX_LAG + 8:
        from render.quality.lipsync import lipsync_score

        d["lipsync"] = lipsync_score(loudness[a:b], mouth[a:b], LIPSYNC_MAX_LAG)["corr"]
    return d


def _clip_curves(layout: ShotLayout, lab, ref_lab, face, change1, mouth, loudness, seams: list[SeamJump],
                 fps: float) -> list[ClipCurve]:
    ratio_at = {s.frame + s.span: s.ratio for s in seams}
    out = []
    for seg, idx, a, b in layout.clips:
        d = _region_numbers(a, b, lab, ref_lab, face, mouth, loudness)
        out.append(ClipCurve(seg, idx, a, b, round(a / fps, 3), round(b / fps, 3), d["colour_de"],
                             d["lab_minus_ref"], d["face_similarity"], d["face_similarity_min"], d["lipsync"],
                             round(_p95(change1[a + 1: b]) or 0.0, 4), ratio_at.get(a)))
    return out


def _segment_curves(layout: ShotLayout, lab, ref_lab, face, mouth, loudness) -> list[SegmentCurve]:
    out = []
    for k, (a, b) in enumerate(layout.segments):
        d = _region_numbers(a, b, lab, ref_lab, face, mouth, loudness)
        out.append(SegmentCurve(k, a, b, d["colour_de"], d["face_similarity"], d["lipsync"]))
    return out


def flags_of(curves: ShotCurves) -> list[Flag]:
    """One flag per exceeded threshold, naming the worst place and how many places exceed it."""
    th, flags = curves.thresholds, []
    bad = [s for s in curves.seams if s.ratio > th.seam_ratio]
    if bad:
        w = max(bad, key=lambda s: s.ratio)
        flags.append(Flag("seam_jump", f"{len(bad)} seam(s) above {th.seam_ratio:g}x the within-clip p95; worst "
                          f"{w.label} at {w.time_s:.2f} s: {w.ratio:.1f}x (colour ΔE76 {w.colour:.1f}, "
                          f"picture {w.picture:.1f})", w.time_s, w.ratio, th.seam_ratio))
    drift = [c for c in curves.clips if c.colour_de is not None and c.colour_de > th.colour_drift_de]
    if drift:
        w = max(drift, key=lambda c: c.colour_de)
        flags.append(Flag("colour_drift", f"{len(drift)} clip(s) above ΔE76 {th.colour_drift_de:g} vs the reference; "
                          f"worst segment {w.segment} clip {w.index} at {w.start_s:.2f} s: {w.colour_de:.1f}",
                          w.start_s, w.colour_de, th.colour_drift_de))
    face = [c for c in curves.clips if c.face_similarity is not None and c.face_similarity < th.face_similarity]
    if face:
        w = min(face, key=lambda c: c.face_similarity)
        flags.append(Flag("face_similarity", f"{len(face)} clip(s) below {th.face_similarity:g}; lowest segment "
                          f"{w.segment} clip {w.index} at {w.start_s:.2f} s: {w.face_similarity:.2f}",
                          w.start_s, w.face_similarity, th.face_similarity))
    if curves.lipsync is not None and curves.lipsync["corr"] < th.lipsync_corr:
        flags.append(Flag("lipsync", f"correlation {curves.lipsync['corr']:.2f} below {th.lipsync_corr:g} "
                          "(tiny-model characters)", None, curves.lipsync["corr"], th.lipsync_corr))
    return flags
