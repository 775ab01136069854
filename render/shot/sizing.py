"""Output resolution selection.

``--size`` in the official CLI only selects an *area*; the aspect ratio follows the reference
image. ``output_size`` reproduces the official ``get_size_less_than_area`` scale search exactly
(same float operations in the same order), so every reference image gets the resolution the
official pipeline would give it. The size string itself is parsed by ``render.settings`` (the one
rule shared by the CLI and the manifest); ``parse_size`` is re-exported here for the callers that
turn a size into an area right before the search.
"""

from __future__ import annotations

import logging
import math

from render.settings import MAX_AREA, MIN_AREA, OFFICIAL_SIZES, parse_size

__all__ = ["MAX_AREA", "MIN_AREA", "VAE_SPATIAL_STRIDE", "latent_size", "output_size", "parse_size"]

log = logging.getLogger(__name__)

# The VAE downsamples 8x spatially (vae_stride (4, 8, 8)).
VAE_SPATIAL_STRIDE = 8


def _round_up(value: int, divisor: int) -> int:
    return value + (divisor - value % divisor) % divisor


def output_size(h0: int, w0: int, max_area: int, divisor: int = 64, *, warn: bool = True) -> tuple[int, int]:
    """Output (H, W) for a reference image of h0 x w0 pixels: multiples of ``divisor``, H*W <= max_area.

    Port of the official ``get_size_less_than_area``: try 100 scales from the largest down and
    take the first whose size, rounded *up* to multiples of ``divisor``, fits the area. The
    official code hard-codes 64 in the rounding step and uses ``divisor`` elsewhere; with the
    default divisor=64 (the only value it is called with) this is identical.

    A reference image smaller than the area is only rounded, never upscaled (official
    behaviour), so the output can be far smaller than asked; that is logged as a warning unless
    ``warn`` is False. Callers compute this once per shot, so the warning comes once per shot.
    """
    for name, v in (("h0", h0), ("w0", w0), ("max_area", max_area), ("divisor", divisor)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"output_size: {name} must be a positive integer, got {v!r}")
    out_h, out_w = _search(h0, w0, max_area, divisor)
    if warn and h0 * w0 < max_area:
        _warn_if_smaller(h0, w0, max_area, divisor, out_h, out_w)
    return out_h, out_w


def _warn_if_smaller(h0: int, w0: int, max_area: int, divisor: int, out_h: int, out_w: int) -> None:
    """Warn when the output is smaller than the area gives a large image of the same shape.

    The yardstick is the same image scaled up by a whole factor (same aspect ratio, larger than
    the area): comparing with the area itself would also flag the few percent every size loses
    to rounding its sides to multiples of 64.
    """
    k = math.isqrt(max_area // (h0 * w0)) + 2  # (k*h0)*(k*w0) > max_area
    try:
        full_h, full_w = _search(h0 * k, w0 * k, max_area, divisor)
    except ValueError:  # no size for this shape at all: nothing to compare with
        return
    if out_h * out_w >= full_h * full_w:
        return
    log.warning(
        "reference image is %dx%d (WxH), smaller than the asked size %s; it is not upscaled, so the "
        "output is %dx%d instead of %dx%d. Use a reference image of at least %dx%d for the full size.",
        w0, h0, _describe_area(max_area), out_w, out_h, full_w, full_h, full_w, full_h,
    )


def _describe_area(max_area: int) -> str:
    """An area as the official size that has it (sizes are parsed to areas before the search)."""
    for text in OFFICIAL_SIZES:
        if parse_size(text) == max_area:
            return f"{text} (area {max_area} pixels)"
    return f"(max area {max_area} pixels)"


def _search(h0: int, w0: int, max_area: int, divisor: int) -> tuple[int, int]:
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
