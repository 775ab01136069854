"""Cheap "can we decode this at all?" probes for a manifest's media files.

Each probe returns None when the file is usable, else a message saying what is wrong. They open
files as Python file objects, so FFmpeg never interprets a file *name* as a protocol, and they
forbid nested protocol opens, so a playlist-like file cannot make FFmpeg read other resources.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import av
from PIL import Image

# The renderer's limit, so a manifest accepts exactly the reference images render-shot accepts.
from render.media.image import MAX_IMAGE_PIXELS, pixel_limit_problem

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")

#: demuxers we accept (FFmpeg short names). Anything else (playlists, concat lists, image2, raw
#: devices...) is refused even when FFmpeg could open it.
AUDIO_DEMUXERS = frozenset(
    {"wav", "w64", "mp3", "flac", "ogg", "aac", "aiff", "caf", "au", "mov", "mp4", "m4a", "matroska", "webm"}
)
VIDEO_DEMUXERS = frozenset({"mov", "mp4", "m4a", "matroska", "webm", "avi", "gif"})

# A protocol name that does not exist: the top-level input is our file object, and every nested
# open a demuxer might attempt (HLS segments, concat entries) is refused.
_NO_NESTED_PROTOCOLS = {"protocol_whitelist": "none"}
_MAX_PROBE_PACKETS = 64


def _probe_stream(path: Path, kind: str, demuxers: frozenset[str]) -> str | None:
    try:
        with open(path, "rb") as fh, av.open(fh, mode="r", options=_NO_NESTED_PROTOCOLS) as container:
            names = set(container.format.name.split(","))
            if not names & demuxers:
                return f"container format {container.format.name!r} is not accepted for {kind}"
            streams = container.streams.audio if kind == "audio" else container.streams.video
            if not streams:
                return f"no {kind} stream in the file"
            stream = streams[0]
            # Decoders may need a few packets (or a flush) before the first frame comes out.
            for i, packet in enumerate(container.demux(stream)):
                if packet.size and packet.decode():
                    return None
                if i >= _MAX_PROBE_PACKETS:
                    break
            if stream.codec_context.decode(None):
                return None
            return f"the first packets of the {kind} stream decode to no {kind}"
    # PyAV raises a zoo of FFmpeg/OS/value errors for broken input; all mean "not decodable".
    except Exception as exc:
        return f"cannot decode {kind}: {type(exc).__name__}: {exc}"


def check_audio(path: Path) -> str | None:
    return _probe_stream(path, "audio", AUDIO_DEMUXERS)


def check_video(path: Path) -> str | None:
    return _probe_stream(path, "video", VIDEO_DEMUXERS)


def check_image(path: Path) -> tuple[str, str] | None:
    """Returns None, or (rule, message) with rule "image-too-large" or "undecodable-image"."""
    try:
        # Pillow warns from ~89 MP on; MAX_IMAGE_PIXELS is the policy, so the warning is noise.
        with (
            warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning),
            open(path, "rb") as fh,
            Image.open(fh, formats=IMAGE_FORMATS) as img,
        ):
            width, height = img.size  # header only: no pixels decoded yet
            problem = pixel_limit_problem(width, height, MAX_IMAGE_PIXELS)
            if problem is not None:
                return "image-too-large", problem
            img.verify()
    except Image.DecompressionBombError as exc:
        return (
            "image-too-large",
            f"{exc}; downscale the image to at most {MAX_IMAGE_PIXELS / 1e6:g} megapixels",
        )
    except Exception as exc:  # PIL raises many exception types for corrupt data
        return (
            "undecodable-image",
            f"cannot decode image ({', '.join(IMAGE_FORMATS)}): {type(exc).__name__}: {exc}",
        )
    return None
