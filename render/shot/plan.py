"""Stage 1 of a shot: the plan — output geometry, and the audio split into segments.

``ShotPlan`` is the one description of a shot's work: ``render-shot`` renders from it and the
cluster persists it in the run directory (``shots/<id>/plan.json``) and schedules its segments.
A *segment* is a chain of consecutive clips rendered by one group (a shot is one or more
segments, a segment one or more clips). ``sequential`` mode makes the whole shot one segment
(the official semantics); ``parallel`` mode splits a long shot at pauses into segments of about ``target_seconds`` that
overlap by ``overlap_seconds``; the stitcher crossfades each overlap. ``auto`` is sequential for
shots up to ``min_parallel_seconds`` and parallel above.

Cut choice: for each join the planner looks, around the ideal (balanced) position, for the
overlap window with the lowest audio power (a pause), with two small tie-breakers: distance
from the ideal position and frames wasted in the last clip of the segment it closes. The plan is
a pure function of the audio samples and the settings, and a small JSON-serialisable object the
scheduler can persist.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from render.settings import (
    DEFAULT_MIN_PARALLEL_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    DEFAULT_TARGET_SECONDS,
    RenderSettings,
)
from render.settings import SEGMENT_MODES as MODES

# 2: the plan carries the output geometry (version 1 plans are still read).
PLAN_VERSION = 2
PLANNER_SAMPLE_RATE = 16000
# Power floor: digital silence reads as -100 dB instead of -inf.
_POWER_FLOOR = 1e-10
# Tie-breakers, in dB: a pause 40 dB below speech always wins over these.
_DISTANCE_PENALTY_DB_PER_S = 0.5
_WASTE_PENALTY_DB_PER_CLIP = 3.0
# How far from the balanced position a cut may move, as a fraction of the segment length.
_SEARCH_FRACTION = 0.25


class PlanError(ValueError):
    """A plan (or its JSON) is inconsistent; the message names the field and the value."""


@dataclass(frozen=True)
class SegmentSpec:
    """One schedulable unit of a shot: video frames [start_frame, start_frame + num_frames)."""

    index: int
    start_frame: int  # first video frame of the shot this segment covers (incl. overlap)
    num_frames: int  # frames covered, incl. the overlap with the previous segment
    overlap_before: int  # frames shared with the previous segment (0 for the first)
    num_clips: int  # clips the chain renders (the last one may run past num_frames)
    cut_energy_db: float | None = None  # audio power over the overlap before (None: first)

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.num_frames

    def clip_audio_offset(self, clip: int, infer_frames: int) -> int:
        """Shot video frame whose audio feature clip ``clip`` of this segment starts at."""
        return self.start_frame + clip * infer_frames

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SegmentSpec:
        if not isinstance(d, dict):
            raise PlanError(f"segment: expected an object, got {type(d).__name__}")
        ints = ("index", "start_frame", "num_frames", "overlap_before", "num_clips")
        missing = [k for k in ints if k not in d]
        if missing:
            raise PlanError(f"segment {d.get('index', '?')}: missing keys {missing}")
        unknown = sorted(set(d) - set(ints) - {"cut_energy_db"})
        if unknown:
            raise PlanError(f"segment {d.get('index', '?')}: unknown keys {unknown}")
        for k in ints:
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise PlanError(f"segment {d.get('index', '?')}: {k}={v!r}, expected an integer >= 0")
        e = d.get("cut_energy_db")
        if e is not None and (isinstance(e, bool) or not isinstance(e, int | float)):
            raise PlanError(f"segment {d['index']}: cut_energy_db={e!r}, expected a number or null")
        return cls(**{k: d[k] for k in ints}, cut_energy_db=None if e is None else float(e))


@dataclass(frozen=True)
class ShotPlan:
    """How a shot is split. Joins: segment k's first ``overlap_before`` frames are also the last
    frames of segment k - 1."""

    mode: str  # "sequential" or "parallel" (auto is resolved when planning)
    fps: int
    total_frames: int  # video frames of the finished shot: ceil(audio duration x fps)
    duration_s: float  # audio duration
    segments: tuple[SegmentSpec, ...]
    infer_frames: int = 80
    # Output geometry (pixels, multiples of 16 after the official size search). None only for an
    # audio-only plan (``plan_segments``); ``plan_shot`` always sets both.
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        self.validate()

    def with_geometry(self, height: int, width: int) -> ShotPlan:
        return dataclasses.replace(self, height=height, width=width)

    @property
    def num_clips(self) -> int:
        return sum(s.num_clips for s in self.segments)

    @property
    def joins(self) -> list[tuple[int, int]]:
        """(first frame, frames) of each overlap, in shot frames, one per segment after the first."""
        return [(s.start_frame, s.overlap_before) for s in self.segments[1:]]

    def validate(self) -> None:
        def bad(msg: str) -> PlanError:
            return PlanError(f"segment plan: {msg}")

        if self.mode not in ("sequential", "parallel"):
            raise bad(f"mode={self.mode!r}, expected 'sequential' or 'parallel'")
        for name in ("fps", "total_frames", "infer_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(f"{name}={v!r}, expected an integer >= 1")
        if not (isinstance(self.duration_s, int | float) and math.isfinite(self.duration_s) and self.duration_s > 0):
            raise bad(f"duration_s={self.duration_s!r}, expected a positive number")
        if (self.height is None) != (self.width is None):
            raise bad(f"height={self.height!r}, width={self.width!r}: expected both or neither")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise bad(f"{name}={v!r}, expected an integer >= 1")
        if not self.segments:
            raise bad("no segments")
        if self.mode == "sequential" and len(self.segments) != 1:
            raise bad(f"sequential mode has {len(self.segments)} segments, expected 1")
        prev_end = 0
        for i, s in enumerate(self.segments):
            if s.index != i:
                raise bad(f"segment at position {i} has index {s.index}")
            expected_start = 0 if i == 0 else prev_end - s.overlap_before
            if s.start_frame != expected_start:
                raise bad(f"segment {i}: start_frame={s.start_frame}, expected {expected_start} "
                          f"(previous end {prev_end} minus overlap_before {s.overlap_before})")
            if i == 0 and s.overlap_before:
                raise bad(f"segment 0: overlap_before={s.overlap_before}, expected 0")
            if s.num_frames <= s.overlap_before:
                raise bad(f"segment {i}: num_frames={s.num_frames} must exceed overlap_before={s.overlap_before}")
            if i > 0 and s.overlap_before > self.segments[i - 1].num_frames - self.segments[i - 1].overlap_before:
                raise bad(f"segment {i}: overlap_before={s.overlap_before} is longer than segment {i - 1}'s "
                          "own frames (three segments would share a frame)")
            if s.num_clips * self.infer_frames < s.num_frames:
                raise bad(f"segment {i}: {s.num_clips} clips of {self.infer_frames} frames cannot cover "
                          f"num_frames={s.num_frames}")
            prev_end = s.end_frame
        if prev_end != self.total_frames:
            raise bad(f"segments end at frame {prev_end}, expected total_frames={self.total_frames}")

    def to_dict(self) -> dict:
        return {"version": PLAN_VERSION, "mode": self.mode, "fps": self.fps, "total_frames": self.total_frames,
                "duration_s": self.duration_s, "infer_frames": self.infer_frames,
                "height": self.height, "width": self.width,
                "segments": [s.to_dict() for s in self.segments]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ShotPlan:
        if not isinstance(d, dict):
            raise PlanError(f"segment plan: expected an object, got {type(d).__name__}")
        if "plan_json" in d:  # a run directory written before plans carried their geometry
            return cls.from_json(d["plan_json"]).with_geometry(d["height"], d["width"])
        if d.get("version") not in (1, PLAN_VERSION):
            raise PlanError(f"segment plan: version={d.get('version')!r}, this code reads versions 1 and "
                            f"{PLAN_VERSION}")
        keys = ("mode", "fps", "total_frames", "duration_s", "infer_frames", "segments")
        missing = [k for k in keys if k not in d]
        if missing:
            raise PlanError(f"segment plan: missing keys {missing}")
        if not isinstance(d["segments"], list):
            raise PlanError(f"segment plan: segments must be a list, got {type(d['segments']).__name__}")
        segs = tuple(SegmentSpec.from_dict(s) for s in d["segments"])
        return cls(d["mode"], d["fps"], d["total_frames"], d["duration_s"], segs, d["infer_frames"],
                   d.get("height"), d.get("width"))

    @classmethod
    def from_json(cls, s: str) -> ShotPlan:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise PlanError(f"segment plan: not valid JSON ({e})") from None
        return cls.from_dict(d)


def shot_frames(duration_s: float, fps: int) -> int:
    """Video frames of a shot: enough to cover the audio (same rule as ``ShotPlan.make``)."""
    return max(1, math.ceil(duration_s * fps - 1e-6))


def clips_for(num_frames: int, settings: RenderSettings, first_segment: bool) -> int:
    """Clips a chain needs to cover ``num_frames`` (the official 3-frame drop shortens clip 0)."""
    first = settings.infer_frames
    if first_segment and settings.drops_first_frames:
        first -= 3
    return 1 + max(0, math.ceil((num_frames - first) / settings.infer_frames))


class FrameEnergy:
    """Mean power (dB) of the audio under each video frame, fed chunk by chunk.

    Frame i covers samples [round(i * rate / fps), round((i + 1) * rate / fps)). Each frame's
    power is computed from one contiguous copy of its samples, so the result is the same however
    the audio is chunked (a streamed decode and a whole array give identical plans).
    """

    def __init__(self, fps: int, sample_rate: int = PLANNER_SAMPLE_RATE):
        self.fps, self.rate = fps, sample_rate
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # sample index of _buf[0]
        self._frame = 0
        self.power: list[float] = []
        self.samples = 0

    def _bound(self, i: int) -> int:
        return (i * self.rate * 2 + self.fps) // (2 * self.fps)  # round(i * rate / fps), half up

    def push(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self.samples += chunk.size
        self._buf = np.concatenate([self._buf, chunk]) if self._buf.size else chunk.copy()
        self._drain(final=False)

    def _drain(self, final: bool) -> None:
        while True:
            a, b = self._bound(self._frame), self._bound(self._frame + 1)
            if b > self._buf_start + self._buf.size and not (final and a < self.samples):
                break
            seg = self._buf[a - self._buf_start: b - self._buf_start].astype(np.float64)
            self.power.append(float(np.dot(seg, seg) / max(1, seg.size)))
            self._frame += 1
        keep_from = self._bound(self._frame) - self._buf_start
        self._buf = self._buf[keep_from:]
        self._buf_start += keep_from

    def finish(self) -> np.ndarray:
        """Per-frame power in dB, one entry per video frame of the shot."""
        self._drain(final=True)
        n = shot_frames(self.samples / self.rate, self.fps)
        p = np.asarray(self.power[:n] + [0.0] * max(0, n - len(self.power)), np.float64)
        return 10.0 * np.log10(np.maximum(p, _POWER_FLOOR))


def frame_energy_db(samples_16k: np.ndarray, fps: int, sample_rate: int = PLANNER_SAMPLE_RATE) -> np.ndarray:
    fe = FrameEnergy(fps, sample_rate)
    fe.push(samples_16k)
    return fe.finish()


def _window_power_db(energy_db: np.ndarray, width: int) -> np.ndarray:
    """dB of the mean power over every window of ``width`` frames; entry c is the window
    starting at frame c."""
    p = np.power(10.0, energy_db / 10.0)
    cs = np.concatenate([[0.0], np.cumsum(p)])
    mean = (cs[width:] - cs[:-width]) / width
    return 10.0 * np.log10(np.maximum(mean, _POWER_FLOOR))


def plan_from_energy(energy_db: np.ndarray, duration_s: float, settings: RenderSettings, mode: str = "auto",
                     target_seconds: float = DEFAULT_TARGET_SECONDS,
                     overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
                     min_parallel_seconds: float = DEFAULT_MIN_PARALLEL_SECONDS) -> ShotPlan:
    """Plan from per-video-frame power (see ``FrameEnergy``); ``plan_segments`` for samples."""
    if mode not in MODES:
        raise PlanError(f"segment mode {mode!r}: expected one of {', '.join(MODES)}")
    for name, v, lo in (("target_seconds", target_seconds, 0.0), ("overlap_seconds", overlap_seconds, -1e-12),
                        ("min_parallel_seconds", min_parallel_seconds, -1e-12)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > lo):
            raise PlanError(f"{name}={v!r}: expected a finite number {'> 0' if lo == 0 else '>= 0'}")
    fps, infer = settings.fps, settings.infer_frames
    total = shot_frames(duration_s, fps)
    if mode == "auto":
        mode = "parallel" if duration_s > min_parallel_seconds else "sequential"
    if mode == "parallel" and settings.official_frame_drop:
        raise PlanError("official_frame_drop shifts the whole shot by 3 frames; it is only supported "
                        "with segment mode 'sequential'")
    overlap = int(round(overlap_seconds * fps))
    target = max(1, int(round(target_seconds * fps)))
    n = max(1, int(round(total / target)))
    # Each segment must keep at least 2 overlaps + 1 frame of its own.
    while n > 1 and total / n < 2 * overlap + fps:
        n -= 1
    if mode == "sequential" or n == 1:
        seg = SegmentSpec(0, 0, total, 0, clips_for(total, settings, True))
        return ShotPlan(mode, fps, total, float(duration_s), (seg,), infer)
    if energy_db.shape != (total,):
        raise PlanError(f"energy has {energy_db.shape} entries, expected ({total},) (one per video frame)")
    width = max(1, overlap)
    win = _window_power_db(energy_db, width)  # win[c] = power over frames [c, c + width)
    segs: list[SegmentSpec] = []
    start, prev_overlap, prev_energy = 0, 0, None
    for k in range(1, n):
        remaining = total - start
        ideal = start + remaining / (n - k + 1)  # balanced overlap start for the rest
        reach = _SEARCH_FRACTION * remaining / (n - k + 1)
        lo = max(start + prev_overlap + 1, int(math.floor(ideal - reach)))
        hi = min(total - width - 1, int(math.ceil(ideal + reach)))
        cands = np.arange(lo, hi + 1)
        if cands.size == 0:
            cands = np.asarray([min(max(int(round(ideal)), start + prev_overlap + 1), total - width - 1)])
        length = cands + overlap - start  # frames of the segment this cut closes
        clips = 1 + np.maximum(0, np.ceil((length - infer) / infer))
        waste_clips = (clips * infer - length) / infer
        score = (win[cands] + _DISTANCE_PENALTY_DB_PER_S * np.abs(cands - ideal) / fps
                 + _WASTE_PENALTY_DB_PER_CLIP * waste_clips)
        c = int(cands[int(np.argmin(score))])  # argmin: first minimum, deterministic
        num = c + overlap - start
        segs.append(SegmentSpec(k - 1, start, num, prev_overlap, clips_for(num, settings, k == 1), prev_energy))
        start, prev_overlap, prev_energy = c, overlap, round(float(win[c]), 3)
    num = total - start
    segs.append(SegmentSpec(n - 1, start, num, prev_overlap, clips_for(num, settings, False), prev_energy))
    return ShotPlan("parallel", fps, total, float(duration_s), tuple(segs), infer)


def plan_segments(samples_16k: np.ndarray, settings: RenderSettings, mode: str = "auto",
                  target_seconds: float = DEFAULT_TARGET_SECONDS,
                  overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
                  min_parallel_seconds: float = DEFAULT_MIN_PARALLEL_SECONDS,
                  sample_rate: int = PLANNER_SAMPLE_RATE) -> ShotPlan:
    """Plan a shot from its mono samples (16 kHz, as ``decode_audio`` returns them)."""
    samples = np.asarray(samples_16k)
    if samples.ndim != 1 or samples.size == 0:
        raise PlanError(f"plan_segments: expected mono samples [N > 0], got shape {samples.shape}")
    energy = frame_energy_db(samples, settings.fps, sample_rate)
    return plan_from_energy(energy, samples.size / sample_rate, settings, mode, target_seconds,
                            overlap_seconds, min_parallel_seconds)


def plan_segments_from_chunks(chunks: Iterable[np.ndarray], settings: RenderSettings, mode: str = "auto",
                              target_seconds: float = DEFAULT_TARGET_SECONDS,
                              overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
                              min_parallel_seconds: float = DEFAULT_MIN_PARALLEL_SECONDS,
                              sample_rate: int = PLANNER_SAMPLE_RATE) -> ShotPlan:
    """Same plan as ``plan_segments`` on the concatenated chunks, in memory bounded by one chunk."""
    fe = FrameEnergy(settings.fps, sample_rate)
    for c in chunks:
        fe.push(c)
    if fe.samples == 0:
        raise PlanError("plan_segments: the audio has no samples")
    return plan_from_energy(fe.finish(), fe.samples / sample_rate, settings, mode, target_seconds,
                            overlap_seconds, min_parallel_seconds)


def plan_shot_audio(audio_path: str | Path, settings: RenderSettings, mode: str = "auto",
                    target_seconds: float = DEFAULT_TARGET_SECONDS,
                    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
                    min_parallel_seconds: float = DEFAULT_MIN_PARALLEL_SECONDS) -> ShotPlan:
    """Plan a shot straight from its audio file, streaming (the samples equal ``decode_audio``'s)."""
    from render.media.audio import stream_audio

    return plan_segments_from_chunks(stream_audio(audio_path, PLANNER_SAMPLE_RATE), settings, mode,
                                     target_seconds, overlap_seconds, min_parallel_seconds)


@dataclass(frozen=True)
class SegmentOptions:
    """How a shot is split (``mode``, sizes) and finished (encode, work folder, QA)."""

    mode: str = "sequential"  # auto | sequential | parallel
    target_seconds: float = DEFAULT_TARGET_SECONDS
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS
    min_parallel_seconds: float = DEFAULT_MIN_PARALLEL_SECONDS
    work_dir: Path | None = None  # default: .<output name>.segments beside the output
    keep_work: bool = False  # keep segment intermediates after publishing
    output_fps: int | None = None  # 25 or 30: frame-blended conversion (default: model fps)
    codec: str = "libx264"  # or libx265
    colour_match: bool = False
    qa_report: Path | None = None  # write seam/colour metrics (JSON) here

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"segment mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.qa_report is not None and self.output_fps is not None:
            raise ValueError("a QA report measures the model's frames: it needs the output at the model's fps "
                             "(drop the output fps conversion)")

    def plain_encode(self) -> bool:
        """True when the output is the model's frames at the model's fps in H.264, nothing else: a
        one-segment shot can then stream its frames straight into the output."""
        return self.output_fps is None and self.codec in ("libx264", "h264") and self.qa_report is None

    def wants_work_folder(self) -> bool:
        """A work folder was asked for (``work_dir`` given, or ``keep_work``): a one-segment shot
        then commits its clips there too, so an interrupted render resumes after its last finished
        clip (at the cost of one more encode), instead of streaming into the output."""
        return self.work_dir is not None or self.keep_work

    def mode_for(self, pose_video: object | None) -> str:
        """The mode a shot is planned with: a pose video keeps it one chain (pose latents follow
        the clip grid of one chain)."""
        if pose_video is None:
            return self.mode
        if self.mode == "parallel":
            raise ValueError("a pose video needs segment mode 'sequential' (or 'auto', which then stays "
                             "sequential): pose conditioning of parallel segments is not supported")
        return "sequential"


def plan_shot(audio_path: str | Path, image_path: str | Path, settings: RenderSettings,
              options: SegmentOptions = SegmentOptions(), pose_video: object | None = None) -> ShotPlan:
    """Stage 1 of a shot: output geometry from the reference image and the size, segments from the
    audio (streamed; joins placed in pauses)."""
    from render.media.image import image_size
    from render.shot.sizing import output_size, parse_size

    h0, w0 = image_size(image_path)
    height, width = output_size(h0, w0, parse_size(settings.size))
    plan = plan_shot_audio(audio_path, settings, options.mode_for(pose_video), options.target_seconds,
                           options.overlap_seconds, options.min_parallel_seconds)
    return plan.with_geometry(height, width)


__all__ = [
    "DEFAULT_MIN_PARALLEL_SECONDS", "DEFAULT_OVERLAP_SECONDS", "DEFAULT_TARGET_SECONDS", "FrameEnergy",
    "PlanError", "SegmentOptions", "SegmentSpec", "ShotPlan", "clips_for", "plan_shot", "frame_energy_db", "plan_from_energy",
    "plan_segments", "plan_segments_from_chunks", "plan_shot_audio", "shot_frames",
]
