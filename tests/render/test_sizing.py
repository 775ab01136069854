from __future__ import annotations

import math
import random

import pytest

from render.shot.sizing import MAX_AREA, MIN_AREA, latent_size, output_size, parse_size

AREA_1024_704 = 1024 * 704
AREA_1280_720 = 1280 * 720
AREA_832_480 = 832 * 480
OFFICIAL_SIZES = [
    "720*1280",
    "1280*720",
    "480*832",
    "832*480",
    "1024*704",
    "704*1024",
    "704*1280",
    "1280*704",
]


@pytest.mark.parametrize(
    "text,area",
    [
        ("832*480", 399360),
        ("832x480", 399360),
        ("480X832", 399360),
        (" 1280 * 720 ", 921600),
        ("64*64", 4096),
    ],
)
def test_parse_size_accepts(text: str, area: int) -> None:
    assert parse_size(text) == area


@pytest.mark.parametrize(
    "text,needle",
    [
        ("832", "expected"),
        ("832*480*2", "expected"),
        ("832,480", "expected"),
        ("-832*480", "expected"),
        ("832.5*480", "expected"),
        ("", "expected"),
        ("0*480", "positive"),
        ("10*10", "minimum"),
        ("100000*100000", "maximum"),
    ],
)
def test_parse_size_rejects(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as ei:
        parse_size(text)
    assert repr(text) in str(ei.value)  # the message names the offending value


def test_parse_size_type_error() -> None:
    with pytest.raises(TypeError):
        parse_size(832 * 480)  # type: ignore[arg-type]


# Outputs of the official get_size_less_than_area: (H0, W0) -> {area: (H, W)}.
OFFICIAL_EXAMPLES = [
    ((1024, 1024), {AREA_1024_704: (832, 832), AREA_1280_720: (960, 960), AREA_832_480: (576, 576)}),
    ((1080, 1920), {AREA_1024_704: (640, 1088), AREA_1280_720: (704, 1280), AREA_832_480: (448, 832)}),
    ((3000, 4000), {AREA_1024_704: (704, 960), AREA_1280_720: (832, 1088), AREA_832_480: (512, 704)}),
    ((768, 512), {AREA_1024_704: (768, 512), AREA_1280_720: (768, 512), AREA_832_480: (768, 512)}),
    (
        (480, 832),
        {
            AREA_832_480: (448, 832),
            512 * 832: (512, 832),
            AREA_1024_704: (512, 832),
            AREA_1280_720: (512, 832),
        },
    ),
]


@pytest.mark.parametrize("hw,expected", OFFICIAL_EXAMPLES)
def test_output_size_official_examples(hw: tuple[int, int], expected: dict[int, tuple[int, int]]) -> None:
    for area, out in expected.items():
        assert output_size(*hw, area) == out, (hw, area)


def test_output_size_480x832_any_area_at_least_512x832() -> None:
    for area in (512 * 832, 512 * 832 + 1, 600_000, AREA_1280_720, 2_000_000):
        assert output_size(480, 832, area) == (512, 832)


def test_sizes_of_16_9_and_square_inputs() -> None:
    # 448x832, 640x1088, 704x1280 for a 16:9 input; 832x832 for a square input at 1024*704.
    assert output_size(1080, 1920, parse_size("832*480")) == (448, 832)
    assert output_size(1080, 1920, parse_size("1024*704")) == (640, 1088)
    assert output_size(1080, 1920, parse_size("1280*720")) == (704, 1280)
    assert output_size(2000, 2000, parse_size("1024*704")) == (832, 832)


def _reference_scan(h0: int, w0: int, area: int) -> tuple[int, int] | None:
    """Independent restatement of the official scan (no fallback) for the property test."""
    if h0 * w0 <= area:
        lo, hi = 0.1, 1.0
    else:
        a, b, c = h0 * w0, 63 * (h0 + w0), 63**2 - area
        lo, hi = (-b + math.sqrt(b * b - 2 * a * c)) / (2 * a), math.sqrt(area / (h0 * w0))
    for i in range(100):
        s = hi - (hi - lo) * i / 100
        h, w = -(-int(h0 * s) // 64) * 64, -(-int(w0 * s) // 64) * 64
        if h > 0 and w > 0 and h * w <= area:
            return h, w
    return None


def test_output_size_properties() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        h0, w0 = rng.randint(16, 8000), rng.randint(16, 8000)
        if max(h0, w0) / min(h0, w0) > 8:
            continue
        area = parse_size(rng.choice(OFFICIAL_SIZES))
        h, w = output_size(h0, w0, area)
        assert h % 64 == 0 and w % 64 == 0 and h > 0 and w > 0
        assert h * w <= area
        assert (h, w) == _reference_scan(h0, w0, area)


def test_output_size_keeps_aspect_roughly() -> None:
    for h0, w0 in [(720, 1280), (1280, 720), (1000, 1500), (3000, 2000)]:
        h, w = output_size(h0, w0, AREA_1280_720)
        assert abs(math.log((h / w) / (h0 / w0))) < 0.15


def test_output_size_fallback_and_errors() -> None:
    # Area below one 64x64 tile: no scale fits and the fallback is empty -> clear error.
    with pytest.raises(ValueError, match="no output size"):
        output_size(100, 100, 4000)
    with pytest.raises(ValueError, match="h0"):
        output_size(0, 100, AREA_832_480)
    with pytest.raises(ValueError, match="max_area"):
        output_size(100, 100, -5)
    # Extreme aspect ratio: the official scan would return a zero height here; we raise instead.
    with pytest.raises(ValueError, match="10x100000"):
        output_size(10, 100_000, AREA_832_480)
    # A tiny image is padded up to one tile.
    assert output_size(10, 10, MIN_AREA) == (64, 64)
    assert output_size(4096, 4096, MAX_AREA) == (4096, 4096)


def test_latent_size() -> None:
    assert latent_size(448, 832) == (56, 104)
    assert latent_size(704, 1280) == (88, 160)
    with pytest.raises(ValueError, match="multiple"):
        latent_size(450, 832)
    with pytest.raises(ValueError, match="positive"):
        latent_size(0, 832)
