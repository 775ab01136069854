"""Shots a film cannot show as rendered (failed, pending, output gone): a slate, a skip or an error.

A slate is a plain card standing in for the shot at its planned length, so the cut keeps its
timing for the editor: black frames with the shot id and "not rendered" drawn on them, and
silence. Its length is the shot's planned duration when known (the results' ``duration_s``, else
its audio file's length), else ``DEFAULT_SLATE_SECONDS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_SLATE_SECONDS = 3.0
#: what to do with a shot that has no rendered output: insert a slate, leave it out, or stop.
MISSING_POLICIES = ("slate", "skip", "strict")


@dataclass(frozen=True)
class FilmShot:
    """One shot of a film's plan. ``problem`` is None when ``output`` is its rendered MP4, else
    why it cannot be shown (``failed (render): ...``, ``pending``, ``output ... is missing``)."""

    shot_id: str
    sequence: str | None
    order: int | None
    row: int | None
    output: Path | None
    audio: Path | None
    problem: str | None = None
    duration_s: float | None = None  # planned length, when the results know it


@dataclass(frozen=True)
class Slate:
    """A card in place of a shot that was not rendered (see the module docstring)."""

    shot_id: str
    sequence: str | None
    order: int | None
    row: int | None
    seconds: float
    seconds_from: str  # "results", "audio" or "default": where the length came from
    reason: str

    def frames(self, fps: int) -> int:
        # ceil, like a render of audio of this length (render.shot.plan rounds its frame count up)
        return max(1, math.ceil(self.seconds * fps - 1e-6))


def with_output_checked(shot) -> FilmShot:
    """A manifest shot as a FilmShot; its problem says so when its rendered output is missing."""
    output = Path(shot.output)
    problem = None if output.is_file() else f"rendered output {output} does not exist"
    return FilmShot(shot.shot_id, shot.sequence, shot.order, getattr(shot, "row", None), output,
                    Path(shot.audio) if shot.audio is not None else None, problem)


def planned_seconds(shot: FilmShot) -> tuple[float, str]:
    """(seconds, source) of a shot's planned length: results, else its audio file, else the default."""
    if shot.duration_s is not None and shot.duration_s > 0:
        return float(shot.duration_s), "results"
    if shot.audio is not None and Path(shot.audio).is_file():
        from render.media.audio import AudioDecodeError, audio_length

        try:
            samples = audio_length(shot.audio, 48000)
        except (AudioDecodeError, OSError, ValueError):
            samples = 0  # an unreadable audio file: the default length below
        if samples > 0:
            return samples / 48000, "audio"
    return DEFAULT_SLATE_SECONDS, "default"


def resolve_missing(shots: Sequence[FilmShot], policy: str,
                    warn: Callable[[str], None]) -> tuple[list[FilmShot | Slate], list[FilmShot]]:
    """(film items, skipped shots) under ``policy`` (``MISSING_POLICIES``), one warning per shot
    not shown as rendered. ``strict`` raises a ValueError naming every such shot."""
    if policy not in MISSING_POLICIES:
        raise ValueError(f"missing-shot policy {policy!r}: expected one of {', '.join(MISSING_POLICIES)}")
    bad = [s for s in shots if s.problem is not None]
    if bad and policy == "strict":
        raise ValueError(f"{len(bad)} shot(s) not rendered (--strict): "
                         + "; ".join(f"{s.shot_id}: {s.problem}" for s in bad)
                         + ". Render them, or drop --strict to insert slates (or --skip-failed to leave them out)")
    items: list[FilmShot | Slate] = []
    skipped: list[FilmShot] = []
    for s in shots:
        if s.problem is None:
            items.append(s)
        elif policy == "skip":
            skipped.append(s)
            warn(f"shot {s.shot_id}: {s.problem}: left out of the film (--skip-failed)")
        else:
            seconds, source = planned_seconds(s)
            items.append(Slate(s.shot_id, s.sequence, s.order, s.row, seconds, source, s.problem))
            warn(f"shot {s.shot_id}: {s.problem}: a {seconds:.2f} s slate stands in for it "
                 f"(length from the {source if source != 'default' else 'default, unknown plan'})")
    if not any(isinstance(i, FilmShot) for i in items):
        raise ValueError("none of the film's shots is rendered; nothing to assemble"
                         + (f" ({len(skipped)} left out)" if skipped else ""))
    return items, skipped


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def slate_frame(width: int, height: int, shot_id: str, line: str = "not rendered") -> np.ndarray:
    """(height, width, 3) uint8: black with ``shot_id`` and ``line`` in grey, centred."""
    img = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    size = max(8, height // 6)
    while size > 8 and draw.textlength(shot_id, font=_font(size)) > 0.9 * width:  # long ids: smaller type
        size -= max(1, size // 8)
    y = height // 2 - size
    for text, px in ((shot_id, size), (line, max(8, size * 2 // 3, height // 14))):
        font = _font(px)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text(((width - (right - left)) // 2 - left, y - top), text, fill=(200, 200, 200), font=font)
        y += (bottom - top) + px // 2
    return np.asarray(img, dtype=np.uint8).copy()
