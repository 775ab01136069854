"""Verified publication of final outputs: nothing half-written or broken ever sits at a final path.

A final file is written under a hidden temporary name in the same folder, fsynced, *verified*
(e.g. decoded end to end with ``verify_video``), renamed over the final name and the folder
fsynced. The temporary-name / fsync / rename mechanics are ``render.media.atomic``'s; this module
adds the check before the rename. Anything that goes wrong before the rename removes the
temporary file and leaves the final path untouched.

Imports: atomic <- video <- publish (video needs temporary names, verification needs the video
probe), so no module of the media layer imports another in a cycle.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

from render.media.atomic import commit, remove_quietly, temp_path_for
from render.media.video import VideoProbeError, probe_video


class OutputVerifyError(RuntimeError):
    """A freshly written output failed verification; the message says what was expected/found."""


def publish_atomically(
    tmp_path: str | Path, final_path: str | Path, verify: Callable[[Path], None] | None
) -> Path:
    """fsync ``tmp_path``, run ``verify(tmp_path)``, rename it over ``final_path``, fsync the folder.

    If ``verify`` raises (or anything else fails before the rename) the temporary file is removed,
    the exception propagates and ``final_path`` is left exactly as it was (absent or the previous
    version). Returns ``final_path``.
    """
    tmp_path, final_path = Path(tmp_path), Path(final_path)
    try:
        if not tmp_path.is_file():
            raise OutputVerifyError(f"{str(final_path)!r}: temporary file {str(tmp_path)!r} was not written")
        if tmp_path.parent.resolve() != final_path.parent.resolve():
            raise ValueError(
                f"temporary file {str(tmp_path)!r} must be in the same directory as {str(final_path)!r} "
                "for an atomic rename; use temp_path_for(final_path)"
            )
    except BaseException:
        remove_quietly(tmp_path)
        raise
    return commit(tmp_path, final_path, verify)


@contextlib.contextmanager
def atomic_output(final_path: str | Path, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``final_path`` to; publish it atomically on success.

    On any exception inside the block (KeyboardInterrupt included) the temporary file is removed
    and ``final_path`` is untouched. ``verify`` (e.g. a ``functools.partial`` of ``verify_video``)
    runs on the complete temporary file before the rename.
    """
    final_path = Path(final_path)
    if not final_path.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(final_path.parent)!r} does not exist")
    tmp_path = temp_path_for(final_path)
    try:
        yield tmp_path
    except BaseException:
        remove_quietly(tmp_path)
        raise
    publish_atomically(tmp_path, final_path, verify)


def verify_video(
    path: str | Path,
    expected_frames: int | None = None,
    expected_duration_s: float | None = None,
    tolerance_frames: int = 1,
) -> None:
    """Decode the whole file and check it; raise OutputVerifyError with the specifics otherwise.

    Checks: decodable, has a video stream with >= 1 frame; frame count within ``tolerance_frames``
    of ``expected_frames``; video duration (frames / fps) within ``tolerance_frames`` frames of
    ``expected_duration_s`` (a shot lasts as long as its audio, +- 1 frame). If the file has audio, its
    decoded duration must also match, allowing in addition one codec frame (1024 samples for AAC)
    of encoder padding, since AAC decoders output whole frames.
    """
    path = Path(path)
    try:
        info = probe_video(path)
    except VideoProbeError as e:
        raise OutputVerifyError(f"{str(path)!r}: not a decodable video: {e}") from e
    if info.frames <= 0:
        raise OutputVerifyError(f"{str(path)!r}: video stream has no decodable frames")
    if expected_frames is not None and abs(info.frames - expected_frames) > tolerance_frames:
        raise OutputVerifyError(
            f"{str(path)!r}: decoded {info.frames} frames, expected {expected_frames} "
            f"(tolerance +-{tolerance_frames})"
        )
    if expected_duration_s is not None:
        tol_s = tolerance_frames / info.fps + 1e-6
        if abs(info.duration_s - expected_duration_s) > tol_s:
            raise OutputVerifyError(
                f"{str(path)!r}: video duration {info.duration_s:.4f} s ({info.frames} frames at "
                f"{info.fps:g} fps), expected {expected_duration_s:.4f} s (tolerance +-{tol_s:.4f} s)"
            )
        if info.audio_duration_s is not None:
            pad_s = (info.audio_frame_size or 1024) / (info.audio_sample_rate or math.inf)
            lo, hi = expected_duration_s - tol_s, expected_duration_s + tol_s + pad_s
            if not lo <= info.audio_duration_s <= hi:
                raise OutputVerifyError(
                    f"{str(path)!r}: audio duration {info.audio_duration_s:.4f} s, expected "
                    f"{expected_duration_s:.4f} s (allowed range {lo:.4f}-{hi:.4f} s incl. codec padding)"
                )
