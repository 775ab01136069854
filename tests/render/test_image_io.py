from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from render.media.image import ImageLoadError, image_size, load_reference_image


def _to_unit(arr_u8: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> [3, H, W] in [-1, 1] the way ToTensor() * 2 - 1 does it."""
    return torch.from_numpy(arr_u8.copy()).permute(2, 0, 1).float().div(255.0).mul(2.0).sub(1.0)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _raw_png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """Minimal PNG writer (for headers Pillow cannot produce: 16-bit RGB, bogus sizes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


class _DecodedError(BaseException):
    """Raised by a patched ImageFile.load; BaseException so no ``except Exception`` can hide it."""


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- resize + crop semantics


def test_same_size_is_identity(tmp_path: Path) -> None:
    arr = _noise(64, 128)
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    out = load_reference_image(p, 64, 128)
    assert out.dtype == torch.float32 and out.shape == (3, 64, 128)
    assert torch.equal(out, _to_unit(arr))
    assert out.min() >= -1 and out.max() <= 1


def test_official_resize_then_center_crop(tmp_path: Path) -> None:
    # 100x200 (HxW) -> Resize(64): 64 x int(64*200/100)=128, PIL bilinear; CenterCrop(64, 64):
    # left = round((128 - 64) / 2) = 32.
    arr = _noise(100, 200, seed=1)
    p = tmp_path / "b.png"
    Image.fromarray(arr).save(p)
    resized = np.asarray(Image.fromarray(arr).resize((128, 64), Image.Resampling.BILINEAR))
    assert torch.equal(load_reference_image(p, 64, 64), _to_unit(resized[:, 32:96]))


def test_center_crop_offset_rounds_half_to_even(tmp_path: Path) -> None:
    # 99x200 -> Resize(64): long side int(64*200/99) = 129; left = round(32.5) = 32 (banker's).
    arr = _noise(99, 200, seed=2)
    p = tmp_path / "c.png"
    Image.fromarray(arr).save(p)
    resized = np.asarray(Image.fromarray(arr).resize((129, 64), Image.Resampling.BILINEAR))
    assert torch.equal(load_reference_image(p, 64, 64), _to_unit(resized[:, 32:96]))


def test_portrait_target_from_landscape_official_path(tmp_path: Path) -> None:
    # 120x90 image, target 128x64: Resize(64) -> short side (w=90) to 64, h = int(64*120/90) = 85.
    # 85 < 128 would make the official pad; we cover instead (scale 128/120 -> 128x96, left 16).
    arr = _noise(120, 90, seed=3)
    p = tmp_path / "d.png"
    Image.fromarray(arr).save(p)
    resized = np.asarray(Image.fromarray(arr).resize((96, 128), Image.Resampling.BILINEAR))
    assert torch.equal(load_reference_image(p, 128, 64), _to_unit(resized[:, 16:80]))


def test_cover_instead_of_black_bars(tmp_path: Path) -> None:
    # 1080x1920 at 448x832: the official Resize(448) gives 448x796 and pads 18 px black bars.
    p = tmp_path / "white.png"
    Image.new("RGB", (1920, 1080), (255, 255, 255)).save(p)
    out = load_reference_image(p, 448, 832)
    assert out.shape == (3, 448, 832)
    assert torch.all(out == 1.0)  # no black (-1) bars anywhere


def test_upscale_small_image(tmp_path: Path) -> None:
    p = tmp_path / "small.png"
    Image.new("RGB", (10, 6), (10, 200, 30)).save(p)
    out = load_reference_image(p, 64, 128)
    assert out.shape == (3, 64, 128)
    expected = _to_unit(np.full((1, 1, 3), (10, 200, 30), np.uint8))[:, 0, 0]
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-6)


# ---------------------------------------------------------------- modes


def _save_mode(path: Path, mode: str) -> np.ndarray:
    """Write a constant image in ``mode``; return the expected RGB uint8 colour."""
    if mode == "RGBA":
        Image.new("RGBA", (32, 32), (200, 100, 50, 0)).save(path)  # fully transparent: alpha dropped
        return np.array([200, 100, 50])
    if mode == "LA":
        Image.new("LA", (32, 32), (77, 128)).save(path)
        return np.array([77, 77, 77])
    if mode == "L":
        Image.new("L", (32, 32), 99).save(path)
        return np.array([99, 99, 99])
    if mode == "1":
        Image.new("1", (32, 32), 1).save(path)
        return np.array([255, 255, 255])
    if mode == "P":
        im = Image.new("P", (32, 32), 3)
        im.putpalette([0, 0, 0, 1, 1, 1, 2, 2, 2, 10, 20, 30] + [0] * (256 * 3 - 12))
        im.save(path)
        return np.array([10, 20, 30])
    if mode == "P-transparency":
        im = Image.new("P", (32, 32), 1)
        im.putpalette([0, 0, 0, 40, 50, 60] + [0] * (256 * 3 - 6))
        im.info["transparency"] = 1
        im.save(path, transparency=1)
        return np.array([40, 50, 60])
    if mode == "I;16":
        Image.fromarray(np.full((32, 32), 128 * 257, np.uint16)).save(path)
        return np.array([128, 128, 128])
    if mode == "I":
        Image.fromarray(np.full((32, 32), 65535, np.int32)).save(path)  # TIFF, 32-bit int
        return np.array([255, 255, 255])
    if mode == "F":
        Image.fromarray(np.full((32, 32), 0.5, np.float32)).save(path)  # TIFF, float
        return np.array([128, 128, 128])
    if mode == "RGB16":
        # 16-bit-per-channel RGB PNG: Pillow reduces it to 8-bit RGB itself.
        px = struct.pack(">HHH", 0xFFFF, 0x8000, 0x0000)
        raw = b"".join(b"\x00" + px * 32 for _ in range(32))
        path.write_bytes(_raw_png(32, 32, 16, 2, raw))
        return np.array([255, 128, 0])
    raise AssertionError(mode)


@pytest.mark.parametrize(
    "mode,suffix",
    [
        ("RGBA", ".png"),
        ("LA", ".png"),
        ("L", ".png"),
        ("1", ".png"),
        ("P", ".png"),
        ("P-transparency", ".png"),
        ("P", ".gif"),
        ("I;16", ".png"),
        ("I", ".tif"),
        ("F", ".tif"),
        ("RGB16", ".png"),
    ],
)
def test_modes_convert_to_rgb(tmp_path: Path, mode: str, suffix: str) -> None:
    p = tmp_path / f"img{suffix}"
    expected = _save_mode(p, mode)
    out = load_reference_image(p, 32, 32)
    got = np.rint((out[:, 0, 0].numpy() + 1) / 2 * 255)
    assert np.abs(got - expected).max() <= 1, (mode, got, expected)
    assert torch.all(out == out[:, :1, :1])  # constant image stays constant


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(p, quality=100)  # pure red in CMYK
    got = (load_reference_image(p, 32, 32)[:, 16, 16].numpy() + 1) / 2 * 255
    assert got[0] > 240 and got[1] < 15 and got[2] < 15


# ---------------------------------------------------------------- EXIF orientation


def _oriented(arr: np.ndarray, orientation: int) -> np.ndarray:
    """How a viewer displays stored pixels ``arr`` carrying EXIF ``orientation`` (TIFF spec)."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse (anti-diagonal)
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path: Path, orientation: int) -> None:
    arr = _noise(16, 24, seed=orientation)  # stored 16 high, 24 wide
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.png"
    im.save(p, exif=exif)
    expected = _oriented(arr, orientation)
    assert image_size(p) == expected.shape[:2]
    out = load_reference_image(p, *expected.shape[:2])
    assert torch.equal(out, _to_unit(expected))


def test_exif_orientation_jpeg(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # stored left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # display = rotate 90 degrees clockwise: left half -> top half
    p = tmp_path / "phone.jpg"
    im.save(p, exif=exif, quality=95)
    assert image_size(p) == (40, 20)
    out = load_reference_image(p, 40, 20)
    assert out[0, :16].mean() > 0.8 and out[2, :16].mean() < -0.8  # top is red
    assert out[2, 24:].mean() > 0.8 and out[0, 24:].mean() < -0.8  # bottom is blue


# ---------------------------------------------------------------- errors


def _assert_error(path: Path, needle: str, **kw: int) -> None:
    with pytest.raises(ImageLoadError, match=needle) as ei:
        load_reference_image(path, 64, 64, **kw)
    assert str(path) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    _assert_error(tmp_path / "nope.png", "does not exist")
    with pytest.raises(ImageLoadError, match="does not exist"):
        image_size(tmp_path / "nope.png")


def test_directory(tmp_path: Path) -> None:
    _assert_error(tmp_path, "not a regular file")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    _assert_error(p, "empty")


def test_zero_dimension_header(tmp_path: Path) -> None:
    p = tmp_path / "zero.png"
    p.write_bytes(_raw_png(0, 10, 8, 2, b""))
    _assert_error(p, "not a readable image|zero-size")


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n" * 10)
    _assert_error(p, "not a readable image")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated(tmp_path: Path, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    Image.fromarray(_noise(128, 128, seed=9)).save(full)
    data = full.read_bytes()
    p = tmp_path / f"trunc{suffix}"
    p.write_bytes(data[: len(data) // 2])
    _assert_error(p, "truncated")


def test_bomb_checked_from_header_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "ok.png"
    Image.fromarray(_noise(64, 64)).save(p)

    def no_decode(self: ImageFile.ImageFile) -> None:
        raise _DecodedError("pixel data must not be decoded for an over-limit image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    _assert_error(p, "exceeds the limit of 4095 pixels", max_pixels=4095)


def test_bomb_headers(tmp_path: Path) -> None:
    # Tiny files whose headers claim huge images: ours (default 100 MPx) and Pillow's own guard.
    p = tmp_path / "bomb.png"
    p.write_bytes(_raw_png(12_000, 12_000, 8, 2, b"\x00" * 16))
    _assert_error(p, "144000000 pixels exceeds")
    with pytest.raises(ImageLoadError, match="exceeds"):
        image_size(p)
    p2 = tmp_path / "bomb2.png"
    p2.write_bytes(_raw_png(30_000, 30_000, 8, 2, b"\x00" * 16))
    _assert_error(p2, "decompression bomb")


def test_bad_target_size(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.fromarray(_noise(8, 8)).save(p)
    with pytest.raises(ValueError, match="height"):
        load_reference_image(p, 0, 64)


def test_image_size_reads_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain.png"
    Image.fromarray(_noise(30, 50)).save(plain)
    rotated_png, rotated_jpg = tmp_path / "rot.png", tmp_path / "rot.jpg"
    im = Image.fromarray(_noise(30, 50))
    exif = im.getexif()
    exif[0x0112] = 8
    im.save(rotated_png, exif=exif)
    im.save(rotated_jpg, exif=exif)

    def no_decode(self: ImageFile.ImageFile) -> None:
        raise _DecodedError("image_size must not decode pixel data")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    assert image_size(plain) == (30, 50)
    assert image_size(rotated_png) == (50, 30)
    assert image_size(rotated_jpg) == (50, 30)
