"""Checks of command-line arguments shared by several commands (usage errors: ValueError, exit 2)."""

from __future__ import annotations

from pathlib import Path


def check_mp4_output(option: str, path: str) -> None:
    """A usage error (ValueError, exit 2) unless ``path`` names an .mp4 file: the outputs are H.264 (or
    H.265) + AAC MP4s, as manifests require (manifests.schema.OUTPUT_SUFFIX). Given another name,
    FFmpeg would pick that container from the extension and write something else (an AVI a frame short)."""
    from manifests.schema import OUTPUT_SUFFIX

    name = Path(path).name
    if not name.lower().endswith(OUTPUT_SUFFIX) or name.lower() == OUTPUT_SUFFIX:
        raise ValueError(f"{option} {path}: the output is an MP4 (H.264 + AAC); give a file name ending in "
                         f"{OUTPUT_SUFFIX}")
