"""Reference-image loading with checks a batch run can act on.

The official pipeline does ``Image.open(path).convert("RGB")``, torchvision
``Resize(min(H, W))`` (shorter side to min(H, W), PIL bilinear, which always antialiases) and
``CenterCrop((H, W))``, then ``ToTensor() * 2 - 1``. We do the same with PIL directly, with
these documented deviations:

* When the resized image would be smaller than the target in one dimension, torchvision's
  CenterCrop pads with black bars. We instead scale the image so that it *covers* the target,
  then centre-crop (no black bars). Whenever the official code would not pad, the result is
  identical.
* EXIF orientation is applied (the official code ignores it, so phone photos come out rotated).
* 16-bit / 32-bit integer and float grey images are scaled to 8 bit instead of being clipped
  (Pillow's ``convert("RGB")`` saturates 16-bit values, giving an all-white image).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

#: the one reference-image pixel limit (``s2v render-shot`` and the manifest's media check). Images
#: are refused from their header, before any pixel is decoded: a 64k x 64k PNG is a few hundred
#: bytes on disk but gigabytes in memory. 100 MP covers medium-format camera frames, and stays below
#: Pillow's own hard guard (~179 MP), so users get this limit's message rather than Pillow's.
MAX_IMAGE_PIXELS = 100_000_000
_EXIF_ORIENTATION_TAG = 0x0112
# Orientations 5-8 include a 90-degree rotation, so width and height swap.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageLoadError(ValueError):
    """A reference image cannot be used; the message names the file and the problem."""


def pixel_limit_problem(width: int, height: int, limit: int = MAX_IMAGE_PIXELS) -> str | None:
    """None when a width x height image is within ``limit`` pixels, else what is wrong and what to do
    (shared with the manifest's media check so both say the same)."""
    if width * height <= limit:
        return None
    return (
        f"{width}x{height} (WxH) = {width * height} pixels exceeds the limit of {limit} pixels; "
        f"downscale the image to at most {limit / 1e6:g} megapixels"
    )


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check existence, type and pixel count before any decoding."""
    if not path.exists():
        raise ImageLoadError(f"reference image {str(path)!r}: file does not exist")
    if not path.is_file():
        raise ImageLoadError(f"reference image {str(path)!r}: not a regular file")
    try:
        size_bytes = path.stat().st_size
    except OSError as e:
        raise ImageLoadError(f"reference image {str(path)!r}: cannot stat file: {e}") from e
    if size_bytes == 0:
        raise ImageLoadError(f"reference image {str(path)!r}: file is empty (0 bytes)")
    try:
        # Pillow warns above ~89 MPx; our own max_pixels check below is the policy, so silence
        # the warning. Pillow still refuses > ~179 MPx outright (DecompressionBombError).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageLoadError(
            f"reference image {str(path)!r}: header declares too many pixels (decompression bomb guard): "
            f"{e}; downscale the image to at most {MAX_IMAGE_PIXELS / 1e6:g} megapixels"
        ) from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(
            f"reference image {str(path)!r}: not a readable image (unknown or corrupt format)"
        ) from e
    except OSError as e:
        raise ImageLoadError(f"reference image {str(path)!r}: cannot read file: {e}") from e

    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise ImageLoadError(f"reference image {str(path)!r}: zero-size image ({w}x{h} WxH)")
    problem = pixel_limit_problem(w, h, max_pixels)
    if problem is not None:
        img.close()
        raise ImageLoadError(f"reference image {str(path)!r}: {problem}")
    return img


def _exif_orientation(img: Image.Image) -> int:
    """EXIF orientation tag (1 = as stored), read without decoding pixel data.

    Pillow's PNG ``getexif()`` decodes the whole image when no eXIf chunk precedes the image
    data, so for PNG only an eXIf chunk before IDAT (where writers put it) is honoured. The same
    rule is used before and after decoding, so ``image_size`` and ``load_reference_image`` agree.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF must not make an otherwise usable image unusable
        return 1


def image_size(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(height, width) of the image as displayed (after EXIF orientation), read from the header
    only; the pixel data is not decoded. Raises ImageLoadError like ``load_reference_image``."""
    path = Path(path)
    img = _open_checked(path, max_pixels)
    try:
        w, h = img.size
        if _exif_orientation(img) in _TRANSPOSING_ORIENTATIONS:
            w, h = h, w
        return h, w
    finally:
        img.close()


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB. Alpha is dropped without compositing, as the
    official ``convert("RGB")`` does (parity for RGBA/LA/P-with-transparency inputs)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            # Float images are taken as [0, 1] (the usual convention for float image data).
            arr8 = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255)
        else:
            # 16-bit (and 32-bit integer, which Pillow uses for some 16-bit files) grey:
            # map the 16-bit range to 8 bits instead of saturating.
            arr8 = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255)
        return Image.fromarray(arr8.astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids Pillow's palette-transparency warning; result is the same.
        return img.convert("RGBA").convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError:
        pass
    try:
        # Modes without a direct RGB conversion (e.g. premultiplied "La").
        return img.convert("RGBA").convert("RGB")
    except ValueError as e:
        raise ImageLoadError(
            f"reference image {str(path)!r}: unsupported pixel mode {mode!r} (cannot convert to RGB)"
        ) from e


def _resized_size(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """Size (h, w) to resize to before the centre crop.

    Official: torchvision Resize(min(height, width)) -> shorter side = that size, longer side =
    int(size * long / short). If that does not cover (height, width), scale to cover instead.
    """
    size = min(height, width)
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_h, new_w = size, int(size * w / h)
    if new_h >= height and new_w >= width:
        return new_h, new_w
    # Deviation (documented above): cover the target; the binding dimension lands exactly on
    # the target, the other is rounded and never smaller than its target.
    scale = max(height / h, width / w)
    return max(height, round(h * scale)), max(width, round(w * scale))


def _center_crop_box(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    # Offsets as torchvision's center_crop computes them (Python round: half to even).
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return left, top, left + width, top + height


def load_reference_image(
    path: str | Path, height: int, width: int, max_pixels: int = MAX_IMAGE_PIXELS
) -> torch.Tensor:
    """Load, orient, convert, resize and centre-crop a reference image.

    Returns a float32 tensor [3, height, width] in [-1, 1] (the official adds the batch and time
    axes itself before VAE encoding). Raises ImageLoadError naming the file and the problem.
    """
    for name, v in (("height", height), ("width", width), ("max_pixels", max_pixels)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"load_reference_image: {name} must be a positive integer, got {v!r}")
    path = Path(path)
    img = _open_checked(path, max_pixels)
    try:
        orientation = _exif_orientation(img)  # before load(): same answer as image_size()
        try:
            img.load()
        except Image.DecompressionBombError as e:
            raise ImageLoadError(f"reference image {str(path)!r}: decompression bomb guard: {e}") from e
        except (OSError, SyntaxError, ValueError) as e:
            # Truncated files raise OSError("image file is truncated ..."); corrupt data may
            # raise SyntaxError/ValueError from the plugin.
            raise ImageLoadError(
                f"reference image {str(path)!r}: cannot decode image data (truncated or corrupt): {e}"
            ) from e
        oriented = ImageOps.exif_transpose(img) if orientation != 1 else img
        rgb = _to_rgb(oriented, path)
        w0, h0 = rgb.size
        new_h, new_w = _resized_size(h0, w0, height, width)
        if (new_h, new_w) != (h0, w0):
            rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
        rgb = rgb.crop(_center_crop_box(new_h, new_w, height, width))
        arr = np.asarray(rgb, dtype=np.uint8)
    finally:
        img.close()
    # ToTensor (uint8 / 255) then * 2 - 1, in float32 like the official.
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)
    return t.mul_(2.0).sub_(1.0).contiguous()
