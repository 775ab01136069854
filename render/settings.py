"""How a shot is rendered: the one settings type, its defaults, its limits and the size rule.

Every entry point (``s2v render-shot``, ``s2v run``, the manifest schema, ``RunSettings``) takes
its defaults and its rules from here, so a value accepted by one is accepted by all of them.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

S2V_NEGATIVE_PROMPT = (
    # The S2V-specific default negative prompt of the official config (sample_neg_prompt).
    "画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，"
    "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)

# --- size -----------------------------------------------------------------------------------------
#
# A size is a *maximum area*, as the official ``--size``: only the product of the two numbers
# matters, the aspect ratio follows the reference image. Accepted: two positive whole numbers
# joined by ``*`` (the official spelling) or ``x``/``X`` (the common one), spaces allowed around
# them; values are stored in the canonical ``W*H`` form so that the spelling never changes a
# fingerprint. Neither side has to be a multiple of anything: the output sides are chosen by the
# size search (multiples of 64), the numbers here only bound its area.

#: the ``--size`` choices of the official generate.py for S2V (max areas).
OFFICIAL_SIZES: tuple[str, ...] = (
    "1280*720", "720*1280", "832*480", "480*832", "1024*704", "704*1024", "1280*704", "704*1280",
)
# The size search rounds sides up to multiples of 64, so no output fits an area below one
# 64x64 tile: a smaller area could only fail later.
MIN_AREA = 64 * 64
# The model is trained around 480P/720P (0.4-0.9 MPx), but render groups can spread larger areas
# over several GPUs, so the upper bound only catches typos (an extra digit gives 10x the area).
MAX_AREA = 4096 * 4096
_SIZE_RE = re.compile(r"\s*([0-9]+)\s*[*xX]\s*([0-9]+)\s*", re.ASCII)
# Sides with more digits than this exceed MAX_AREA whatever the other side is (>= 1); checking
# the length first keeps int() away from absurdly long digit strings.
_MAX_SIDE_DIGITS = 9
_SIZE_FORM = (
    "'<width>*<height>' or '<width>x<height>' with two positive whole numbers, e.g. '832*480' or '1280*720'"
)


def size_dims(text: str) -> tuple[int, int]:
    """The one size parser: ``"832*480"`` (or ``"832x480"``) -> ``(832, 480)``.

    Raises ValueError naming the value and the expected form (TypeError for a non-string).
    """
    if not isinstance(text, str):
        raise TypeError(f"size {text!r}: expected a string such as '832*480', got {type(text).__name__}")
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"size {text!r}: expected {_SIZE_FORM}")
    if max(len(m.group(1)), len(m.group(2))) > _MAX_SIDE_DIGITS:
        raise ValueError(f"size {text!r}: area exceeds the maximum {MAX_AREA} (4096*4096)")
    w, h = int(m.group(1)), int(m.group(2))
    if w <= 0 or h <= 0:
        raise ValueError(
            f"size {text!r}: width and height must be positive, got {w} and {h}; expected {_SIZE_FORM}"
        )
    area = w * h
    if area < MIN_AREA:
        raise ValueError(
            f"size {text!r}: area {area} is below the minimum {MIN_AREA} (64*64); no output fits it"
        )
    if area > MAX_AREA:
        raise ValueError(
            f"size {text!r}: area {area} exceeds the maximum {MAX_AREA} (4096*4096); the model is meant "
            "for areas around 832*480 to 1280*720"
        )
    return w, h


def parse_size(text: str) -> int:
    """A size string -> its maximum area in pixels (what the size search uses)."""
    w, h = size_dims(text)
    return w * h


def normalize_size(text: str) -> str:
    """A size string in its canonical ``W*H`` spelling (``" 832 x 480"`` -> ``"832*480"``)."""
    w, h = size_dims(text)
    return f"{w}*{h}"


# --- limits and choices ---------------------------------------------------------------------------

STEPS_RANGE = (1, 1000)  # beyond 1000 steps the schedule is as fine as it gets; likely a typo
GUIDANCE_RANGE = (0.0, 50.0)  # CFG far above ~10 only burns the image; 50 leaves room to experiment
SEED_LIMIT = 2**32  # seeds live in [0, SEED_LIMIT): the official generator takes 32-bit seeds
CRF_RANGE = (0, 51)  # libx264/libx265 quality scale
SAMPLERS: tuple[str, ...] = ("unipc", "dpm++")
# "cpu": noise is a pure function of (seed, segment, clip) on any device; "official-cuda": the
# official bf16 CUDA generator stream seeded seed + clip (bit parity with the official code).
NOISE_MODES: tuple[str, ...] = ("cpu", "official-cuda")
# Step caching (render.model.fast.step_cache): "off" runs every DiT forward; "residual" reuses the
# blocks' last residual on steps where the input barely changed; "audio" does the same but
# recomputes the conditional row's audio injections on the skipped steps.
STEP_CACHE_MODES: tuple[str, ...] = ("off", "residual", "audio")
# What the next clip of a chain is conditioned on (render.model.handoff): "pixels" re-encodes the
# last decoded motion frames (official); "latents" takes them from the sampled latents (no lossy
# decode -> encode round trip; needs a clip's kept frames to cover motion_frames - 1).
MOTION_HANDOFFS: tuple[str, ...] = ("pixels", "latents")

# --- long shots (segments) ------------------------------------------------------------------------

SEGMENT_MODES: tuple[str, ...] = ("auto", "sequential", "parallel")
DEFAULT_SEGMENT_MODE = "auto"  # sequential (official) for short shots, parallel above the threshold
DEFAULT_TARGET_SECONDS = 30.0  # segment length: long enough that joins are rare
DEFAULT_OVERLAP_SECONDS = 0.5  # crossfaded overlap: hides a join without wasting many frames
DEFAULT_MIN_PARALLEL_SECONDS = 60.0  # auto mode splits only shots longer than this


# --- the settings ---------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class RenderSettings:
    """How one shot is rendered; checked on construction, immutable afterwards.

    Defaults are the official S2V CLI defaults. Derive a variant with ``dataclasses.replace``,
    which validates the result again.
    """

    size: str = "832*480"  # a maximum area; the aspect ratio follows the reference image
    steps: int = 40
    guidance: float = 4.5
    shift: float = 3.0
    sampler: str = "unipc"
    seed: int = 42
    infer_frames: int = 80  # video frames per clip (multiple of 4)
    motion_frames: int = 73  # pixel frames handed to the next clip
    fps: int = 16
    negative_prompt: str | None = None  # None -> the official S2V negative prompt
    # The official output is 3 frames ahead of its audio (it drops clip 0's first 3 frames and
    # starts the audio at 0). True reproduces that; the default keeps every frame (zero offset).
    official_frame_drop: bool = False
    start_from_ref: bool = False
    # Motion latents decoded in front of a clip's new latents to warm the causal VAE decoder:
    # None = all of them (official, 19); k >= 1 decodes only the last k (faster, changes pixels).
    decode_context_latents: int | None = None
    cfg_batch: bool = True  # conditional + unconditional as one batch of 2 (same math)
    noise: str = "cpu"  # one of NOISE_MODES
    crf: int = 18
    # --- fast mode (render.model.fast); the defaults run every forward (the exact path) ---
    step_cache: str = "off"  # one of STEP_CACHE_MODES
    # Accumulated relative change of the first block's modulated input above which a step is
    # computed again; 0 computes every step (the cache then only records).
    step_cache_threshold: float = 0.0
    step_cache_max_skips: int = 2  # longest run of skipped steps (binds at high step counts)
    # The unconditional branch runs on the first cfg_until fraction of the steps, every
    # cfg_every-th step there; other steps reuse its last cond-uncond difference. 1.0 / 1 = exact.
    cfg_until: float = 1.0
    cfg_every: int = 1
    # --- long-form countermeasures (render.model.handoff); the defaults are the official hand-off ---
    motion_handoff: str = "pixels"  # one of MOTION_HANDOFFS
    # Fraction (0..1) by which each clip's Lab colour mean/std move toward the reference's.
    colour_anchor: float = 0.0
    # Fraction (0..1) by which the oldest motion latents move toward a still reference's.
    identity_anchor: float = 0.0

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("invalid render settings: " + "; ".join(problems))
        # Canonical spelling, so equal sizes compare (and fingerprint) equal.
        object.__setattr__(self, "size", normalize_size(self.size))

    def _problems(self) -> list[str]:
        """Every invalid field as 'name=value: expected ...'."""
        problems = []

        def bad(name: str, expected: str) -> None:
            problems.append(f"{name}={getattr(self, name)!r}: expected {expected}")

        try:
            size_dims(self.size)
        except (TypeError, ValueError) as exc:
            problems.append(str(exc))
        lo, hi = STEPS_RANGE
        if not (_is_int(self.steps) and lo <= self.steps <= hi):
            bad("steps", f"an integer in [{lo}, {hi}]")
        lo, hi = GUIDANCE_RANGE
        if not (_is_real(self.guidance) and math.isfinite(self.guidance) and lo <= self.guidance <= hi):
            bad("guidance", f"a finite number in [{lo:g}, {hi:g}]")
        if not (_is_real(self.shift) and math.isfinite(self.shift) and self.shift > 0):
            bad("shift", "a finite number > 0")
        if self.sampler not in SAMPLERS:
            bad("sampler", f"one of {', '.join(SAMPLERS)}")
        if not (_is_int(self.seed) and 0 <= self.seed < SEED_LIMIT):
            bad("seed", "an integer in [0, 2^32)")
        if not (_is_int(self.infer_frames) and self.infer_frames >= 4 and self.infer_frames % 4 == 0):
            bad("infer_frames", "a positive multiple of 4 (the VAE packs 4 frames into one latent)")
        mf = self.motion_frames
        if not (_is_int(mf) and mf >= 1 and (mf - 1) % 4 == 0):
            bad("motion_frames", "1 + 4k (one latent for the first frame, one per 4 after it)")
        if not (_is_int(self.fps) and self.fps >= 1):
            bad("fps", "an integer >= 1")
        if not (self.negative_prompt is None or isinstance(self.negative_prompt, str)):
            bad("negative_prompt", "None or a string")
        for name in ("official_frame_drop", "start_from_ref", "cfg_batch"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "True or False")
        if not (self.decode_context_latents is None
                or (_is_int(self.decode_context_latents) and self.decode_context_latents >= 1)):
            bad("decode_context_latents", "None (all motion latents) or an integer >= 1")
        if self.noise not in NOISE_MODES:
            bad("noise", f"one of {', '.join(repr(m) for m in NOISE_MODES)}")
        lo, hi = CRF_RANGE
        if not (_is_int(self.crf) and lo <= self.crf <= hi):
            bad("crf", f"an integer in [{lo}, {hi}]")
        if self.step_cache not in STEP_CACHE_MODES:
            bad("step_cache", f"one of {', '.join(repr(m) for m in STEP_CACHE_MODES)}")
        t = self.step_cache_threshold
        if not (_is_real(t) and math.isfinite(t) and 0 <= t <= 10):
            bad("step_cache_threshold", "a finite number in [0, 10] (0 = compute every step)")
        if not (_is_int(self.step_cache_max_skips) and 1 <= self.step_cache_max_skips <= STEPS_RANGE[1]):
            bad("step_cache_max_skips", f"an integer in [1, {STEPS_RANGE[1]}]")
        if not (_is_real(self.cfg_until) and math.isfinite(self.cfg_until) and 0 < self.cfg_until <= 1):
            bad("cfg_until", "a fraction of the steps in (0, 1] (1 = every step)")
        if not (_is_int(self.cfg_every) and 1 <= self.cfg_every <= STEPS_RANGE[1]):
            bad("cfg_every", f"an integer in [1, {STEPS_RANGE[1]}] (1 = every step)")
        if self.motion_handoff not in MOTION_HANDOFFS:
            bad("motion_handoff", f"one of {', '.join(repr(m) for m in MOTION_HANDOFFS)}")
        elif (self.motion_handoff == "latents" and _is_int(self.infer_frames) and _is_int(self.motion_frames)
              and self.infer_frames - 3 * bool(self.official_frame_drop) < self.motion_frames - 1):
            bad("motion_handoff", "'pixels' when a clip keeps fewer than motion_frames - 1 frames (the latent "
                "hand-off takes all but the first motion frame from one clip's sampled latents)")
        for name in ("colour_anchor", "identity_anchor"):
            v = getattr(self, name)
            if not (_is_real(v) and math.isfinite(v) and 0 <= v <= 1):
                bad(name, "a fraction in [0, 1] (0 = off)")
        return problems

    @property
    def latent_frames(self) -> int:
        return self.infer_frames // 4

    @property
    def motion_latent_frames(self) -> int:
        return (self.motion_frames + 3) // 4

    @property
    def drops_first_frames(self) -> bool:
        """Whether the shot's first clip is 3 frames short: the official drop applies to a first
        clip without motion frames, and ``start_from_ref`` gives the first clip motion frames."""
        return self.official_frame_drop and not self.start_from_ref


#: the defaults as one (valid) instance: ``DEFAULT_SETTINGS.crf`` is the default crf everywhere.
DEFAULT_SETTINGS = RenderSettings()

