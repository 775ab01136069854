"""Table of malformed manifests and the exact problems each must produce.

Every case builds its manifest inside a fresh directory ``d`` that already holds small real media
(see ``make_media``) and is the allowed root. ``errors`` is the exact set of (row, column, rule)
of the reported errors; ``warnings`` likewise for warnings.
"""

from __future__ import annotations

import os
import struct
import wave
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
from PIL import Image

from manifests.schema import write_manifest

AUDIO, IMAGE, POSE = "voice.wav", "ref.png", "pose.mp4"


def make_wav(path: Path, seconds: float = 0.1, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def make_png(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    Image.new("RGB", size, (200, 120, 40)).save(path)
    return path


def make_mp4(path: Path, frames: int = 2) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_media(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    make_wav(d / AUDIO)
    make_png(d / IMAGE)
    make_mp4(d / POSE)


def base_row(i: int) -> dict[str, Any]:
    return {
        "shot_id": f"shot{i}",
        "audio": AUDIO,
        "image": IMAGE,
        "prompt": "a person talks to the camera",
        "output": f"out/shot{i}.mp4",
    }


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims a huge image (a decompression bomb, minus the payload)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _outside(d: Path) -> Path:
    """A directory beside the case directory, i.e. outside the allowed root."""
    out = d.parent / f"{d.name}-outside"
    out.mkdir(exist_ok=True)
    return out


# --- builders ------------------------------------------------------------------------------------

Rows = list[dict[str, Any]]


def rows(*overrides: dict[str, Any], n: int = 2, drop: tuple[str, ...] = ()) -> Rows:
    """``n`` valid rows; ``overrides[i]`` updates row i; ``drop`` removes columns from every row."""
    out = [base_row(i) for i in range(n)]
    for i, o in enumerate(overrides):
        out[i].update(o)
    for r in out:
        for c in drop:
            r.pop(c, None)
    return out


def same(column: str, *values: Any) -> Rows:
    """Two rows whose ``column`` takes the given values (one column type for all rows)."""
    return rows(*({column: v} for v in values))


def _symlink_file(d: Path) -> Rows:
    target = make_wav(_outside(d) / "secret.wav")
    os.symlink(target, d / "link.wav")
    return rows({"audio": "link.wav"})


def _symlink_dir(d: Path) -> Rows:
    make_png(_outside(d) / "ref.png")
    os.symlink(_outside(d), d / "linkdir")
    return rows({}, {"image": "linkdir/ref.png"})


def _absolute_outside(d: Path) -> Rows:
    return rows({"audio": str(make_wav(_outside(d) / "a.wav"))})


def _write_file(name: str, data: bytes, column: str, row: int = 0) -> Callable[[Path], Rows]:
    def build(d: Path) -> Rows:
        (d / name).write_bytes(data)
        return rows(*([{}] * row), {column: name})

    return build


def _truncated_png(d: Path) -> Rows:
    data = (d / IMAGE).read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    return rows({"image": "cut.png"})


def _bomb(d: Path) -> Rows:
    png_header_only(d / "bomb.png", 100_000, 100_000)
    return rows({}, {"image": "bomb.png"})


def _output_dir(d: Path) -> Rows:
    (d / "out" / "dir.mp4").mkdir(parents=True)
    return rows({"output": "out/dir.mp4"})


def _audio_dir(d: Path) -> Rows:
    (d / "sounds.wav").mkdir()
    return rows({"audio": "sounds.wav"})


def _all_null_image(d: Path) -> pa.Table:
    table = pa.Table.from_pylist(rows(drop=("image",)))
    return table.append_column("image", pa.nulls(2))  # Arrow type "null"


def _duplicate_column(d: Path) -> pa.Table:
    table = pa.Table.from_pylist(rows())
    return table.append_column("steps", pa.array([40, 40])).append_column("steps", pa.array([30, 30]))


def _dict_encoded_bad_sampler(d: Path) -> pa.Table:
    table = pa.Table.from_pylist(rows())
    return table.append_column("sampler", pa.array(["unipc", "euler"]).dictionary_encode())


def _seed_uint64(d: Path) -> pa.Table:
    table = pa.Table.from_pylist(rows())
    return table.append_column("seed", pa.array([7, 2**63 + 5], pa.uint64()))


def _no_rows(d: Path) -> pa.Table:
    return pa.Table.from_pylist(rows()).slice(0, 0)


def _not_parquet(d: Path) -> None:
    (d / "manifest.parquet").write_text("shot_id,audio\nshot0,voice.wav\n")


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Rows | pa.Table | None]
    errors: frozenset[tuple[int | None, str | None, str]]
    warnings: frozenset[tuple[int | None, str | None, str]] = field(default_factory=frozenset)


def case(name: str, build: Callable[[Path], Any], *errors: tuple, warnings: tuple = ()) -> Case:
    return Case(name, build, frozenset(errors), frozenset(warnings))


def const(value: Any) -> Callable[[Path], Any]:
    return lambda d: value


CASES: list[Case] = [
    # file and columns
    case("not-parquet", _not_parquet, (None, None, "not-parquet")),
    case("no-rows", _no_rows, (None, None, "no-rows")),
    case(
        "unknown-column",
        const(rows({"colour": "red"}, {"colour": "blue"})),
        (None, "colour", "unknown-column"),
    ),
    case("missing-prompt-column", const(rows(drop=("prompt",))), (None, "prompt", "missing-column")),
    case(
        "missing-two-columns",
        const(rows(drop=("output", "shot_id"))),
        (None, "output", "missing-column"),
        (None, "shot_id", "missing-column"),
    ),
    case("duplicate-column", _duplicate_column, (None, "steps", "duplicate-column")),
    case("steps-as-strings", const(same("steps", "40", "30")), (None, "steps", "type")),
    case("guidance-as-strings", const(same("guidance", "4.5", "5")), (None, "guidance", "type")),
    case("steps-as-bools", const(same("steps", True, False)), (None, "steps", "type")),
    case("prompt-as-ints", const(same("prompt", 1, 2)), (None, "prompt", "type")),
    case("seed-non-integral-float", const(same("seed", 1.0, 2.5)), (1, "seed", "type")),
    case("steps-nan-float", const(same("steps", 40.0, float("nan"))), (1, "steps", "type")),
    # nulls and text
    case("null-prompt", const(rows({}, {"prompt": None})), (1, "prompt", "null")),
    case("null-audio", const(rows({"audio": None})), (0, "audio", "null")),
    case("null-typed-image-column", _all_null_image, (0, "image", "null"), (1, "image", "null")),
    case("blank-prompt", const(rows({"prompt": "   "})), (0, "prompt", "empty")),
    case("prompt-too-long", const(rows({"prompt": "x" * 10_001})), (0, "prompt", "too-long")),
    case(
        "negative-too-long",
        const(rows({}, {"negative_prompt": "y" * 10_001})),
        (1, "negative_prompt", "too-long"),
    ),
    case("empty-audio-path", const(rows({"audio": ""})), (0, "audio", "empty")),
    # ids
    case("duplicate-id", const(rows({}, {"shot_id": "shot0"})), (1, "shot_id", "duplicate-id")),
    case("id-with-slash", const(rows({"shot_id": "a/b"})), (0, "shot_id", "bad-id")),
    case("id-dotdot", const(rows({}, {"shot_id": ".."})), (1, "shot_id", "bad-id")),
    case("id-too-long", const(rows({"shot_id": "a" * 129})), (0, "shot_id", "bad-id")),
    case("bad-sequence-name", const(rows({"sequence": "film one"})), (0, "sequence", "bad-id")),
    # outputs
    case("duplicate-output", const(rows({}, {"output": "out/shot0.mp4"})), (1, "output", "duplicate-output")),
    case(
        "duplicate-output-dot-tricks",
        const(rows({"output": "./out/x.mp4"}, {"output": "out/sub/../x.mp4"})),
        (1, "output", "duplicate-output"),
    ),
    case(
        "output-is-pose-of-other-row",
        const(rows({"pose_video": POSE}, {"output": "./" + POSE})),
        (1, "output", "output-is-input"),
    ),
    case("output-wrong-extension", const(rows({"output": "out/x.avi"})), (0, "output", "bad-extension")),
    case("output-is-directory", _output_dir, (0, "output", "output-is-dir")),
    case("output-escapes", const(rows({}, {"output": "../x.mp4"})), (1, "output", "path-escape")),
    # paths
    case("audio-dotdot-escape", const(rows({"audio": "../voice.wav"})), (0, "audio", "path-escape")),
    case(
        "image-nested-dotdot-escape", const(rows({"image": "a/../../ref.png"})), (0, "image", "path-escape")
    ),
    case("audio-absolute-outside", _absolute_outside, (0, "audio", "path-escape")),
    case("audio-symlink-outside", _symlink_file, (0, "audio", "symlink")),
    case("image-symlinked-dir-outside", _symlink_dir, (1, "image", "symlink")),
    case("audio-http-url", const(rows({"audio": "http://example.com/a.wav"})), (0, "audio", "url")),
    case("image-file-url", const(rows({}, {"image": "file:///etc/passwd"})), (1, "image", "url")),
    case(
        "pose-ffmpeg-protocol",
        const(rows({"pose_video": "concat:pose.mp4|pose.mp4"})),
        (0, "pose_video", "url"),
    ),
    case("nul-in-path", const(rows({"audio": "voice\x00.wav"})), (0, "audio", "bad-path")),
    case("missing-audio", const(rows({}, {"audio": "nope.wav"})), (1, "audio", "missing-file")),
    case("missing-pose", const(rows({"pose_video": "nope.mp4"})), (0, "pose_video", "missing-file")),
    case("audio-is-directory", _audio_dir, (0, "audio", "not-a-file")),
    # media
    case(
        "audio-is-text",
        _write_file("text.wav", b"not audio at all\n" * 20, "audio"),
        (0, "audio", "undecodable-audio"),
    ),
    case("audio-is-png", const(rows({"audio": IMAGE})), (0, "audio", "undecodable-audio")),
    case(
        "image-garbage",
        _write_file("junk.png", b"\x00garbage" * 50, "image", 1),
        (1, "image", "undecodable-image"),
    ),
    case("image-truncated", _truncated_png, (0, "image", "undecodable-image")),
    case("image-bomb", _bomb, (1, "image", "image-too-large")),
    case("pose-without-video", const(rows({"pose_video": AUDIO})), (0, "pose_video", "undecodable-video")),
    # parameters
    case("steps-zero-and-huge", const(same("steps", 0, 1001)), (0, "steps", "range"), (1, "steps", "range")),
    case(
        "guidance-nan-and-60",
        const(same("guidance", float("nan"), 60.0)),
        (0, "guidance", "range"),
        (1, "guidance", "range"),
    ),
    case("guidance-negative", const(rows({"guidance": -0.5})), (0, "guidance", "range")),
    case(
        "shift-zero-and-inf",
        const(same("shift", 0.0, float("inf"))),
        (0, "shift", "range"),
        (1, "shift", "range"),
    ),
    case(
        "seed-negative-and-2pow32", const(same("seed", -1, 2**32)), (0, "seed", "range"), (1, "seed", "range")
    ),
    case("seed-uint64-huge", _seed_uint64, (1, "seed", "range")),
    case("size-with-comma", const(rows({"size": "832,480"})), (0, "size", "bad-size")),
    case(
        "size-area-too-small-and-large",
        const(same("size", "32*32", "4097*4096")),
        (0, "size", "bad-size"),
        (1, "size", "bad-size"),
    ),
    case("size-zero-side", const(rows({}, {"size": "0*480"})), (1, "size", "bad-size")),
    case("sampler-unknown", const(rows({"sampler": "euler"})), (0, "sampler", "choice")),
    case("sampler-dictionary-encoded", _dict_encoded_bad_sampler, (1, "sampler", "choice")),
    case("segment-mode-unknown", const(rows({}, {"segment_mode": "fast"})), (1, "segment_mode", "choice")),
    case(
        "duplicate-order",
        const(rows({"sequence": "film", "order": 1}, {"sequence": "film", "order": 1})),
        (1, "order", "duplicate-order"),
    ),
    case("negative-order", const(rows({"sequence": "film", "order": -1})), (0, "order", "range")),
    # warnings only
    case(
        "output-case-collision",
        const(rows({"output": "out/Shot.mp4"}, {"output": "out/shot.mp4"})),
        warnings=((1, "output", "output-case-collision"),),
    ),
    case(
        "id-case-collision",
        const(rows({"shot_id": "Intro"}, {"shot_id": "intro"})),
        warnings=((1, "shot_id", "duplicate-id-case"),),
    ),
    case(
        "order-without-sequence",
        const(rows({"order": 3})),
        warnings=((0, "order", "order-without-sequence"),),
    ),
]


def build_case(c: Case, d: Path) -> Path:
    """Create media and the case's manifest in ``d``; returns the manifest path."""
    make_media(d)
    manifest = d / "manifest.parquet"
    built = c.build(d)
    if built is not None:
        write_manifest(built, manifest, strict=False)
    return manifest
