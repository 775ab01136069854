"""Output resolution selection (SPEC §3.1).

``--size`` in the official CLI only selects an *area*; the aspect ratio follows the reference
image. ``output_size`` reproduces the official ``get_size_less_than_area`` scale search exactly
(same float operations in the same order), so every reference image gets the resolution the
official pipeline would give it.
"""

from __future__ import annotations

import math
import re

# The VAE downsamples 8x spatially (vae_stride (4, 8, 8)).
VAE_SPATIAL_STRIDE = 8
# Smallest sensible area: one 64x64 tile (the size search rounds up to multiples of 64).
MIN_AREA = 64 * 64
# Largest accepted area: 4096x4096. The model is trained around 480P/720P (~0.4-0.9 MPx); an
# area this large is almost certainly a typo and would need terabytes of attention memory.
MAX_AREA = 4096 * 4096

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[*xX]\s*(\d+)\s*$")


def parse_size(text: str) -> int:
    """Parse a ``--size`` string such as ``"832*480"`` or ``"832x480"`` into ``max_area``.

    As in the official CLI the two numbers only define an area (their order does not matter).
    """
    if not isinstance(text, str):
        raise TypeError(f"size must be a string like '832*480', got {type(text).__name__}: {text!r}")
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(
            f"invalid size {text!r}: expected '<width>*<height>' or '<width>x<height>' with positive "
            "integers, e.g. '832*480', '1024*704' or '1280*720'"
        )
    a, b = int(m.group(1)), int(m.group(2))
    if a <= 0 or b <= 0:
        raise ValueError(f"invalid size {text!r}: both dimensions must be positive, got {a} and {b}")
    area = a * b
    if area < MIN_AREA:
        raise ValueError(f"invalid size {text!r}: area {area} is below the minimum {MIN_AREA} (64*64)")
    if area > MAX_AREA:
        raise ValueError(
            f"invalid size {text!r}: area {area} exceeds the maximum {MAX_AREA} (4096*4096); "
            "the model is meant for areas around 832*480 to 1280*720"
        )
    return area


def _round_up(value: int, divisor: int) -> int:
    return value + (divisor - value % divisor) % divisor


def output_size(h0: int, w0: int, max_area: int, divisor: int = 64) -> tuple[int, int]:
    """Output (H, W) for a reference image of h0 x w0 pixels: multiples of ``divisor``, H*W <= max_area.

    Port of the official ``get_size_less_than_area`` (SPEC §3.1): try 100 scales from the largest
    down and take the first whose size, rounded *up* to multiples of ``divisor``, fits the area.
    The official code hard-codes 64 in the rounding step and uses ``divisor`` elsewhere; with the
    default divisor=64 (the only value it is called with) this is identical.
    """
    for name, v in (("h0", h0), ("w0", w0), ("max_area", max_area), ("divisor", divisor)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"output_size: {name} must be a positive integer, got {v!r}")

    if h0 * w0 <= max_area:
        # Image already small enough: only (up-)rounding to the divisor is needed, so scales
        # in [0.1, 1] are tried (scale 1 first).
        min_scale, max_scale = 0.1, 1.0
    else:
        # Lower bound from the quadratic (s*h0 + d)(s*w0 + d) = max_area, d = divisor - 1
        # (worst-case rounding). The official formula uses 2ac instead of 4ac under the root,
        # which gives a smaller (safe) lower bound; kept for bit-exact parity.
        d = divisor - 1
        a = h0 * w0
        b = d * (h0 + w0)
        c = d**2 - max_area
        min_scale = (-b + math.sqrt(b**2 - 2 * a * c)) / (2 * a)
        max_scale = math.sqrt(max_area / (h0 * w0))

    for i in range(100):
        # Same operation order as the official code so the float results (and the int()
        # truncations that follow) are bit-identical.
        scale = max_scale - (max_scale - min_scale) * i / 100
        new_h, new_w = int(h0 * scale), int(w0 * scale)
        out_h, out_w = _round_up(new_h, divisor), _round_up(new_w, divisor)
        # Deviation: the official accepts a candidate whose truncated side is 0 (area 0 "fits"),
        # returning an empty size for tiny areas or extreme aspect ratios; we skip those.
        if out_h > 0 and out_w > 0 and out_h * out_w <= max_area:
            return out_h, out_w

    return _fallback_size(h0, w0, max_area, divisor)


def _fallback_size(h0: int, w0: int, max_area: int, divisor: int) -> tuple[int, int]:
    """Official fallback when no scale fits: floor-to-divisor of the area-preserving size,
    capped to the original size. Only reachable for areas near divisor**2 or extreme aspect
    ratios; unlike the official code we refuse results that are empty or exceed the area
    (the official would hand those to the model and fail later)."""
    aspect = w0 / h0
    out_w = int((max_area * aspect) ** 0.5 // divisor * divisor)
    out_h = int((max_area / aspect) ** 0.5 // divisor * divisor)
    if out_w >= w0 or out_h >= h0:
        out_w = int(w0 // divisor * divisor)
        out_h = int(h0 // divisor * divisor)
    if out_h <= 0 or out_w <= 0 or out_h * out_w > max_area:
        raise ValueError(
            f"no output size for a {h0}x{w0} (HxW) image within area {max_area}: every candidate "
            f"is either empty or larger than the area after rounding to multiples of {divisor}; "
            "use a larger --size or a reference image with a less extreme aspect ratio"
        )
    return out_h, out_w


def latent_size(height: int, width: int) -> tuple[int, int]:
    """Latent grid (h, w) = (H/8, W/8) of the Wan2.1 VAE for an output of height x width pixels."""
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"latent_size: {name} must be a positive integer, got {v!r}")
        if v % VAE_SPATIAL_STRIDE:
            raise ValueError(
                f"latent_size: {name}={v} is not a multiple of the VAE stride {VAE_SPATIAL_STRIDE}"
            )
    return height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE
