"""RenderSettings is the one home of the render settings: its defaults, its rules, the size rule
and the reference-image limit are the same for ``s2v render-shot``, ``s2v run`` and manifests."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from cluster.settings import RunSettings
from manifests import media_checks
from manifests.schema import COLUMN_BY_NAME, Shot, write_manifest
from manifests.validate import read_manifest, validate_manifest
from render.media import image as image_io
from render.media.image import ImageLoadError, image_size
from render.settings import (
    DEFAULT_MIN_PARALLEL_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    DEFAULT_SEGMENT_MODE,
    DEFAULT_SETTINGS,
    DEFAULT_TARGET_SECONDS,
    MAX_AREA,
    MIN_AREA,
    RenderSettings,
    normalize_size,
    parse_size,
)
from render.shot import sizing
from render.shot.plan import SegmentOptions, plan_shot
from render.shot.sizing import output_size
from s2v.cli import _settings, build_parser
from tests.manifests.malformed_cases import (
    AUDIO,
    IMAGE,
    base_row,
    make_media,
    make_png,
    make_wav,
    png_header_only,
)

RENDER_SHOT_REQUIRED = ["render-shot", "--ckpt", "ck", "--audio", "a.wav", "--image", "i.png", "--prompt", "p",
                        "--out", "o.mp4"]

# (size string, accepted?) -- the one rule: W*H or WxH, area in [64*64, 4096*4096].
SIZE_CASES = [
    ("832*480", True),
    ("832x480", True),
    ("832X480", True),
    ("100*100", True),  # only the area counts: sides need not be multiples of anything
    ("2048*2048", True),
    ("4096*4096", True),  # MAX_AREA exactly
    ("64*64", True),  # MIN_AREA exactly
    ("1*4096", True),  # an area; the aspect ratio comes from the image
    (" 832 * 480 ", True),
    ("4097*4096", False),
    ("63*64", False),
    ("0*480", False),
    ("832*", False),
    ("*480", False),
    ("abc", False),
    ("", False),
    ("832,480", False),
    ("832*480*2", False),
    ("-832*480", False),
    ("8e2*480", False),
    ("832.5*480", False),
    ("99999999999*1", False),
]


def _cli_accepts(text: str) -> bool:
    """render-shot's argument parsing, up to the RenderSettings it builds (no model is loaded)."""
    args = build_parser().parse_args([*RENDER_SHOT_REQUIRED, f"--size={text}"])
    try:
        _settings(args)
    except ValueError as exc:
        assert f"size {text!r}" in str(exc)  # the message names the field and the value
        return False
    return True


def test_size_rule_is_the_same_for_render_shot_and_the_manifest(tmp_path: Path) -> None:
    make_media(tmp_path)
    rows = [base_row(i) | {"size": text} for i, (text, _) in enumerate(SIZE_CASES)]
    table = pa.table({name: pa.array([r[name] for r in rows], pa.string()) for name in rows[0]})
    write_manifest(table, tmp_path / "m.parquet")
    report = validate_manifest(tmp_path / "m.parquet", check_media=False)
    assert {(p.column, p.rule) for p in report.errors} <= {("size", "bad-size")}, report.format_table()
    rejected_by_manifest = {p.row: p for p in report.errors}

    for row, (text, accepted) in enumerate(SIZE_CASES):
        assert _cli_accepts(text) is accepted, text
        assert (row not in rejected_by_manifest) is accepted, text
        if not accepted:
            message = rejected_by_manifest[row].message
            assert repr(text) in message and "size" in message
            with pytest.raises(ValueError) as info:
                parse_size(text)
            assert str(info.value) == message  # literally the same check


def test_malformed_size_message_names_the_expected_form() -> None:
    for text in ("abc", "832*", "0*480"):
        with pytest.raises(ValueError, match=r"'<width>\*<height>' or '<width>x<height>'"):
            parse_size(text)
    with pytest.raises(ValueError, match="below the minimum"):
        parse_size("63*64")
    with pytest.raises(ValueError, match="exceeds the maximum"):
        parse_size("4097*4096")
    assert (MIN_AREA, MAX_AREA) == (64 * 64, 4096 * 4096)


def test_sizes_are_stored_in_one_spelling(tmp_path: Path) -> None:
    assert normalize_size(" 832 x 480 ") == "832*480"
    assert RenderSettings(size="832x480") == RenderSettings() and RenderSettings(size="832X480").size == "832*480"
    make_media(tmp_path)
    write_manifest([base_row(0) | {"size": " 1280 x 720"}], tmp_path / "m.parquet")
    (shot,) = read_manifest(tmp_path / "m.parquet", check_media=False)
    assert shot.size == "1280*720" and shot.max_area == 1280 * 720


# --- RenderSettings: frozen, checked on construction ------------------------------------------------


def test_render_settings_are_frozen() -> None:
    s = RenderSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 3  # type: ignore[misc]
    changed = dataclasses.replace(s, steps=3, seed=7)
    assert (changed.steps, changed.seed, s.steps) == (3, 7, DEFAULT_SETTINGS.steps)
    with pytest.raises(ValueError, match="steps=0"):
        dataclasses.replace(s, steps=0)  # replace() constructs, so it checks too
    assert not hasattr(s, "validate")


@pytest.mark.parametrize(
    "field,value",
    [
        ("size", "abc"),
        ("size", 832 * 480),
        ("steps", 0),
        ("steps", 1001),
        ("steps", 2.5),
        ("guidance", math.nan),
        ("guidance", -1.0),
        ("guidance", 51.0),
        ("shift", 0.0),
        ("shift", math.inf),
        ("sampler", "euler"),
        ("seed", -1),
        ("seed", 2**32),
        ("seed", True),
        ("infer_frames", 6),
        ("infer_frames", 0),
        ("motion_frames", 4),
        ("fps", 0),
        ("negative_prompt", 5),
        ("official_frame_drop", "yes"),
        ("cfg_batch", 1),
        ("decode_context_latents", 0),
        ("noise", "gpu"),
        ("crf", 52),
        ("crf", -1),
    ],
)
def test_invalid_values_raise_at_construction_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^invalid render settings: {field}") as info:
        RenderSettings(**{field: value})
    message = str(info.value)
    assert repr(value) in message or f"{value}" in message
    assert "expected" in message or "below" in message


def test_every_problem_is_listed() -> None:
    with pytest.raises(ValueError) as info:
        RenderSettings(steps=0, crf=99, noise="gpu", size="1*1")
    message = str(info.value)
    for needle in ("steps=0", "crf=99", "noise='gpu'", "size '1*1'"):
        assert needle in message


# --- one set of defaults ---------------------------------------------------------------------------


def _field_defaults() -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(RenderSettings)}


def test_defaults_are_declared_once() -> None:
    assert dataclasses.asdict(DEFAULT_SETTINGS) == _field_defaults()
    assert (DEFAULT_TARGET_SECONDS, DEFAULT_OVERLAP_SECONDS, DEFAULT_MIN_PARALLEL_SECONDS) == (30.0, 0.5, 60.0)
    assert DEFAULT_SEGMENT_MODE == "auto"
    options = SegmentOptions()  # the planner's own defaults are these constants
    assert (options.target_seconds, options.overlap_seconds, options.min_parallel_seconds) == (
        DEFAULT_TARGET_SECONDS, DEFAULT_OVERLAP_SECONDS, DEFAULT_MIN_PARALLEL_SECONDS)


def test_render_shot_defaults_are_render_settings_defaults() -> None:
    args = build_parser().parse_args(RENDER_SHOT_REQUIRED)
    assert _settings(args) == RenderSettings()
    d = _field_defaults()
    assert (args.size, args.steps, args.guidance, args.shift, args.sampler, args.seed, args.crf) == (
        d["size"], d["steps"], d["guidance"], d["shift"], d["sampler"], d["seed"], d["crf"])
    assert args.negative_prompt == d["negative_prompt"] and args.decode_context == d["decode_context_latents"]
    assert (args.official_frame_drop, args.start_from_ref, not args.no_cfg_batch) == (
        d["official_frame_drop"], d["start_from_ref"], d["cfg_batch"])
    assert (args.segment_mode, args.segment_seconds, args.overlap_seconds, args.min_parallel_seconds) == (
        DEFAULT_SEGMENT_MODE, DEFAULT_TARGET_SECONDS, DEFAULT_OVERLAP_SECONDS, DEFAULT_MIN_PARALLEL_SECONDS)


def test_s2v_run_defaults_are_render_settings_defaults() -> None:
    args = build_parser().parse_args(["run", "m.parquet", "--run-dir", "r", "--ckpt", "ck"])
    d = _field_defaults()
    assert (args.crf, args.infer_frames, args.motion_frames) == (d["crf"], d["infer_frames"], d["motion_frames"])
    assert (args.official_frame_drop, args.start_from_ref, not args.no_cfg_batch) == (
        d["official_frame_drop"], d["start_from_ref"], d["cfg_batch"])
    assert (args.segment_seconds, args.overlap_seconds, args.min_parallel_seconds) == (
        DEFAULT_TARGET_SECONDS, DEFAULT_OVERLAP_SECONDS, DEFAULT_MIN_PARALLEL_SECONDS)


def test_run_settings_defaults_are_render_settings_defaults() -> None:
    run = RunSettings(ckpt="/ck")
    d = _field_defaults()
    for name in ("crf", "infer_frames", "motion_frames", "fps", "official_frame_drop", "start_from_ref",
                 "cfg_batch", "noise"):
        assert getattr(run, name) == d[name], name
    assert (run.segment_seconds, run.overlap_seconds, run.min_parallel_seconds) == (
        DEFAULT_TARGET_SECONDS, DEFAULT_OVERLAP_SECONDS, DEFAULT_MIN_PARALLEL_SECONDS)
    with pytest.raises(ValueError, match="infer_frames=6"):  # checked when the run starts
        RunSettings(ckpt="/ck", infer_frames=6)


def test_manifest_defaults_are_render_settings_defaults(tmp_path: Path) -> None:
    d = _field_defaults()
    for name in ("size", "steps", "guidance", "shift", "sampler"):
        assert COLUMN_BY_NAME[name].default == d[name], name
        assert next(f.default for f in dataclasses.fields(Shot) if f.name == name) == d[name], name
    assert COLUMN_BY_NAME["segment_mode"].default == DEFAULT_SEGMENT_MODE
    make_media(tmp_path)
    write_manifest([base_row(0)], tmp_path / "m.parquet")
    (shot,) = read_manifest(tmp_path / "m.parquet", check_media=False)
    assert RunSettings(ckpt="/ck").render_settings(shot) == RenderSettings(seed=shot.seed)


# --- one reference-image limit ------------------------------------------------------------------------


def _manifest_image_problems(d: Path, image: str) -> list:
    write_manifest([base_row(0) | {"image": image}], d / "m.parquet")
    report = validate_manifest(d / "m.parquet")
    assert all(p.column == "image" for p in report.problems), report.format_table()
    return report.problems


def test_one_image_limit_for_render_shot_and_the_manifest(tmp_path: Path) -> None:
    assert media_checks.MAX_IMAGE_PIXELS is image_io.MAX_IMAGE_PIXELS == 100_000_000
    make_media(tmp_path)
    big = tmp_path / "big.png"
    Image.new("1", (8000, 8000)).save(big)  # 64 MP; 1-bit keeps it ~8 MB in memory, tiny on disk
    try:
        assert image_size(big) == (8000, 8000)  # render-shot reads the geometry from the header
        assert _manifest_image_problems(tmp_path, big.name) == []
    finally:
        big.unlink()

    over = png_header_only(tmp_path / "over.png", 10_001, 10_000)  # just over 100 MP
    with pytest.raises(ImageLoadError) as info:
        image_size(over)
    (problem,) = _manifest_image_problems(tmp_path, over.name)
    assert problem.rule == "image-too-large"
    for message in (str(info.value), problem.message):
        assert "downscale the image to at most 100 megapixels" in message
        assert "max_pixels" not in message  # no option users could set
    assert problem.message in str(info.value)  # the same words, render-shot adds the file name


# --- smaller-than-asked output ------------------------------------------------------------------------


def test_warns_when_the_output_is_smaller_than_asked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=sizing.__name__):
        assert output_size(128, 128, parse_size("832*480")) == (128, 128)  # never upscaled
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "128x128 (WxH)" in message and "832*480" in message and "output is 128x128" in message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=sizing.__name__):
        assert output_size(576, 1024, parse_size("832*480")) == (448, 832)  # scaled down to fit
        assert output_size(512, 768, parse_size("832*480")) == (512, 768)  # fills the area already
        assert output_size(128, 128, parse_size("832*480"), warn=False) == (128, 128)
    assert caplog.records == []


def test_small_reference_warns_once_per_shot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_wav(tmp_path / AUDIO, seconds=2.0)
    small = make_png(tmp_path / IMAGE, (128, 128))
    large = make_png(tmp_path / "large.png", (1024, 576))
    settings = RenderSettings(size="832*480")
    with caplog.at_level(logging.WARNING):
        plan = plan_shot(tmp_path / AUDIO, small, settings, SegmentOptions())
    assert (plan.width, plan.height) == (128, 128)
    assert [r.getMessage().count("smaller than the asked size") for r in caplog.records] == [1]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plan_shot(tmp_path / AUDIO, large, settings, SegmentOptions())
    assert not [r for r in caplog.records if "smaller than the asked size" in r.getMessage()]


def test_the_first_clip_is_short_only_without_motion_frames():
    """The official 3-frame drop applies to a first clip without motion frames; with start_from_ref
    the first clip has them and keeps every frame (the renderer, the planner and QA agree)."""
    from render.model.clip_loop import ChainRenderer
    from render.shot.plan import clips_for

    for drop, from_ref, short in ((False, False, False), (True, False, True), (True, True, False)):
        s = RenderSettings(official_frame_drop=drop, start_from_ref=from_ref)
        assert s.drops_first_frames == short
        renderer = ChainRenderer.__new__(ChainRenderer)
        renderer.s = s
        assert renderer.frames_kept(0) == 80 - 3 * short and renderer.frames_kept(1) == 80
        assert clips_for(160, s, first_segment=True) == (3 if short else 2)
