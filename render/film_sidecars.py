"""The film's hand-off files for an editor: a CMX 3600 EDL, a CSV and an OpenTimelineIO timeline.

All three list the film's entries (``render.assembly.FilmEntry``: rendered shots and slates) with
timecodes counted at the film's own frame rate, the rate its MP4 is written at, so a record
timecode points at the same frame of the film in any of them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

#: rates CMX 3600 defines timecode for (non-drop); others are written as the film has them.
CMX3600_RATES = (24, 25, 30)
FILM_AUDIO_RATE = 48000


def timecode(frame: int, fps: int) -> str:
    """HH:MM:SS:FF (non-drop) of a frame index at an integer frame rate."""
    s, f = divmod(frame, fps)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    width = max(2, len(str(fps - 1)))  # frame digits: two up to 100 fps
    return f"{h:02d}:{m:02d}:{sec:02d}:{f:0{width}d}"


def edl_text(entries: Sequence, title: str, fps: int) -> str:
    """CMX 3600 EDL: one cut event per entry (video + audio), source and record timecodes.

    A slate is an event on the ``BL`` (black) reel with a comment saying which shot it stands for.
    """
    lines = [f"TITLE: {title}", "FCM: NON-DROP FRAME"]
    lines.append(f"* FRAME RATE: {fps} FPS (every timecode below counts {fps} frames per second)")
    if fps not in CMX3600_RATES:
        lines.append(f"* NOTE: {fps} fps is not a CMX 3600 rate ({', '.join(map(str, CMX3600_RATES))}); "
                     "set the importing timeline to the film's rate")
    lines.append("")
    for e in entries:
        src_in, src_out = timecode(0, fps), timecode(e.frames, fps)
        rec_in, rec_out = timecode(e.start_frame, fps), timecode(e.start_frame + e.frames, fps)
        reel = "BL" if e.slate else "AX"
        lines.append(f"{e.index + 1:03d}  {reel:<8} B     C        {src_in} {src_out} {rec_in} {rec_out}")
        lines.append(f"* FROM CLIP NAME: {e.shot_id}")
        if e.slate:
            lines.append(f"* SLATE: not rendered: {e.reason}")
        else:
            lines.append(f"* SOURCE FILE: {e.video}")
        lines.append("")
    return "\n".join(lines)


def csv_text(entries: Sequence, fps: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "shot_id", "kind", "sequence", "order", "start_timecode", "end_timecode", "start_s",
                "end_s", "duration_s", "start_frame", "frames", "fps", "audio_start_sample", "audio_samples",
                "audio_rate", "video", "audio", "reason"])
    for e in entries:
        start_s, dur_s = e.start_frame / fps, e.frames / fps
        w.writerow([e.index, e.shot_id, "slate" if e.slate else "shot", e.sequence or "",
                    "" if e.order is None else e.order,
                    timecode(e.start_frame, fps), timecode(e.start_frame + e.frames, fps),
                    f"{start_s:.6f}", f"{start_s + dur_s:.6f}", f"{dur_s:.6f}", e.start_frame, e.frames, fps,
                    e.audio_start_sample, e.audio_samples, FILM_AUDIO_RATE, e.video or "", e.audio or "",
                    e.reason or ""])
    return buf.getvalue()


def otio_text(entries: Sequence, title: str, fps: int, film: Path) -> str:
    """An OpenTimelineIO timeline (otio_json) of one video track: each rendered shot a clip whose
    media is its MP4 (an ExternalReference), each slate a gap named after its shot; every item
    carries its shot id in a marker and in ``metadata["s2v"]``."""
    import opentimelineio as otio

    def span(start: int, frames: int):
        return otio.opentime.TimeRange(otio.opentime.RationalTime(start, fps),
                                       otio.opentime.RationalTime(frames, fps))

    timeline = otio.schema.Timeline(name=title)
    timeline.metadata["s2v"] = {"film": str(Path(film).resolve()), "fps": fps}
    track = otio.schema.Track(name="shots", kind=otio.schema.TrackKind.Video)
    for e in entries:
        meta = {"shot_id": e.shot_id, "sequence": e.sequence, "order": e.order, "index": e.index,
                "record_in": timecode(e.start_frame, fps), "record_out": timecode(e.start_frame + e.frames, fps),
                "slate": e.slate}
        if e.slate:
            meta["reason"] = e.reason
            item = otio.schema.Gap(name=e.shot_id, source_range=span(0, e.frames))
        else:
            ref = otio.schema.ExternalReference(target_url=Path(e.video).resolve().as_uri(),
                                                available_range=span(0, e.frames))
            item = otio.schema.Clip(name=e.shot_id, media_reference=ref, source_range=span(0, e.frames))
        item.metadata["s2v"] = meta
        item.markers.append(otio.schema.Marker(name=e.shot_id, marked_range=span(0, 0),
                                               metadata={"s2v": {"shot_id": e.shot_id, "slate": e.slate}}))
        track.append(item)
    timeline.tracks.append(track)
    return otio.adapters.write_to_string(timeline, "otio_json")
