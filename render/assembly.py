"""Feature assembly: the rendered shots of a manifest's sequence as one film.

Shots are ordered by the manifest's ``order`` column (then manifest row) within one
``sequence``. Shot i starts at video frame F_i = frames of the shots before it; its sound (the
original audio file by default, or its rendered MP4's track) starts at F_i / fps on the film's
timeline, sample-exact at 48 kHz, so every shot keeps its lip sync; the sub-frame gap between a
shot's audio end and the next shot's start is silence. Shots of another frame size are scaled to
fit and letterboxed. The film carries one chapter per shot, and two sidecars list the shots with
their timecodes: a CMX 3600 EDL (``film.edl``) and a CSV (``film.csv``).

Everything streams (one frame and one audio chunk at a time); the film and the sidecars are
published atomically (temporary name, fsync, verify, rename).
"""

from __future__ import annotations

import csv
import functools
import io
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from render.media.atomic import atomic_write_text
from render.media.audio import audio_length, soundtrack_info, stream_audio_layout
from render.media.mp4 import encode_film
from render.media.publish import atomic_output, verify_video
from render.media.video import probe_video

FILM_AUDIO_RATE = 48000


@dataclass(frozen=True)
class FilmEntry:
    index: int
    shot_id: str
    sequence: str | None
    order: int | None
    video: Path
    audio: Path
    start_frame: int
    frames: int
    fps: int
    width: int
    height: int
    audio_start_sample: int  # at FILM_AUDIO_RATE
    audio_samples: int

    @property
    def start_s(self) -> float:
        return self.start_frame / self.fps

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps


@dataclass(frozen=True)
class FilmResult:
    output: Path
    edl: Path
    csv: Path
    entries: tuple[FilmEntry, ...]
    frames: int
    fps: int
    duration_s: float
    width: int
    height: int
    wall_s: float


def film_shots(shots: Sequence, sequence: str | None = None) -> list:
    """The shots of one sequence in film order (``order``, then manifest row).

    ``sequence=None`` is allowed when all shots share one sequence (or none). Two shots with the
    same order in a sequence are an error that names both.
    """
    names = sorted({s.sequence for s in shots}, key=lambda v: (v is None, v or ""))
    if sequence is None:
        if len(names) > 1:
            raise ValueError(f"the manifest has {len(names)} sequences {names}; choose one with --sequence")
        chosen = list(shots)
    else:
        chosen = [s for s in shots if s.sequence == sequence]
        if not chosen:
            raise ValueError(f"sequence {sequence!r} not found in the manifest (sequences: {names})")
    if not chosen:
        raise ValueError("the manifest has no shots")
    seen: dict[int, object] = {}
    for s in chosen:
        if s.order is not None:
            if s.order in seen:
                o = seen[s.order]
                raise ValueError(f"shots {o.shot_id!r} (row {o.row}) and {s.shot_id!r} (row {s.row}) both have "
                                 f"order {s.order} in sequence {s.sequence!r}; orders must be unique")
            seen[s.order] = s
    return sorted(chosen, key=lambda s: (s.order is None, s.order if s.order is not None else 0,
                                         s.row if s.row is not None else 0))


def timecode(frame: int, fps: int) -> str:
    """HH:MM:SS:FF (non-drop) of a frame index at an integer frame rate."""
    s, f = divmod(frame, fps)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{sec:02d}:{f:02d}"


def _letterbox(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    scale = min(width / w, height / h)
    sw, sh = max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)
    sw, sh = min(sw, width), min(sh, height)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    scaled = frame.reformat(width=sw, height=sh, interpolation="AREA" if scale < 1 else "BICUBIC").to_ndarray()
    out = np.zeros((height, width, 3), np.uint8)
    y0, x0 = (height - sh) // 2, (width - sw) // 2
    out[y0:y0 + sh, x0:x0 + sw] = scaled
    return out


def _video_frames(entries: Sequence[FilmEntry], width: int, height: int) -> Iterator[np.ndarray]:
    for e in entries:
        n = 0
        with av.open(str(e.video)) as f:
            for fr in f.decode(video=0):
                if n >= e.frames:
                    break
                n += 1
                yield _letterbox(fr.to_ndarray(format="rgb24"), width, height)
        if n != e.frames:
            raise ValueError(f"{e.video}: decoded {n} frames, expected {e.frames}")


def _audio_chunks(entries: Sequence[FilmEntry], layout: str, channels: int, end_sample: int,
                  audio_paths: Sequence[Path]) -> Iterator[np.ndarray]:
    pos = 0
    for e, path in zip(entries, audio_paths):
        if e.audio_start_sample > pos:
            yield np.zeros((channels, e.audio_start_sample - pos), np.float32)
            pos = e.audio_start_sample
        slot_end = e.audio_start_sample + round(Fraction(e.frames * FILM_AUDIO_RATE, e.fps))
        for chunk in stream_audio_layout(path, FILM_AUDIO_RATE, layout):
            room = slot_end - pos
            if room <= 0:
                break
            chunk = chunk[:, :room]
            pos += chunk.shape[1]
            yield chunk
    if pos > end_sample:  # cannot happen: every shot is cut to its slot
        raise RuntimeError(f"film audio ran {pos - end_sample} samples past the film's end")


def edl_text(entries: Sequence[FilmEntry], title: str) -> str:
    """CMX 3600 EDL: one cut event per shot (video + audio), source and record timecodes."""
    lines = [f"TITLE: {title}", "FCM: NON-DROP FRAME", ""]
    for e in entries:
        src_in, src_out = timecode(0, e.fps), timecode(e.frames, e.fps)
        rec_in, rec_out = timecode(e.start_frame, e.fps), timecode(e.start_frame + e.frames, e.fps)
        lines.append(f"{e.index + 1:03d}  AX       B     C        {src_in} {src_out} {rec_in} {rec_out}")
        lines.append(f"* FROM CLIP NAME: {e.shot_id}")
        lines.append(f"* SOURCE FILE: {e.video}")
        lines.append("")
    return "\n".join(lines)


def csv_text(entries: Sequence[FilmEntry]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "shot_id", "sequence", "order", "start_timecode", "end_timecode", "start_s", "end_s",
                "duration_s", "start_frame", "frames", "fps", "audio_start_sample", "audio_samples", "audio_rate",
                "video", "audio"])
    for e in entries:
        w.writerow([e.index, e.shot_id, e.sequence or "", "" if e.order is None else e.order,
                    timecode(e.start_frame, e.fps), timecode(e.start_frame + e.frames, e.fps),
                    f"{e.start_s:.6f}", f"{e.start_s + e.duration_s:.6f}", f"{e.duration_s:.6f}", e.start_frame,
                    e.frames, e.fps, e.audio_start_sample, e.audio_samples, FILM_AUDIO_RATE, e.video, e.audio])
    return buf.getvalue()


def assemble_film(shots: Sequence, out_path: str | Path, *, size: str | None = None, crf: int = 18,
                  codec: str = "libx264", preset: str = "medium", audio_source: str = "original") -> FilmResult:
    """One film of ``shots`` (already in film order, see ``film_shots``; each needs ``shot_id``,
    ``output`` (its published MP4), ``audio``, ``sequence``, ``order``)."""
    t0 = time.time()
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(out_path.parent)!r} does not exist")
    if audio_source not in ("original", "output"):
        raise ValueError(f"audio_source={audio_source!r}: expected 'original' or 'output'")
    if not shots:
        raise ValueError("no shots to assemble")
    infos = []
    for s in shots:
        if not Path(s.output).is_file():
            raise FileNotFoundError(f"shot {s.shot_id!r}: rendered output {s.output} does not exist (render it first)")
        infos.append(probe_video(s.output))
    rates = {round(i.fps) for i in infos}
    if len(rates) != 1:
        detail = ", ".join(f"{s.shot_id}: {i.fps:g}" for s, i in zip(shots, infos))
        raise ValueError(f"shots have different frame rates ({detail}); render them at one rate")
    fps = rates.pop()
    if size is not None:
        from render.settings import size_dims

        width, height = size_dims(size)
    else:
        width, height = max(((i.width, i.height) for i in infos), key=lambda wh: (wh[0] * wh[1], wh))
    if width % 2 or height % 2:
        raise ValueError(f"film size {width}x{height}: width and height must be even")
    audio_paths = [Path(s.audio) if audio_source == "original" else Path(s.output) for s in shots]
    channels = max(soundtrack_info(p)[1] for p in audio_paths)
    layout = "mono" if channels == 1 else "stereo"
    channels = 1 if layout == "mono" else 2
    entries, start = [], 0
    for k, (s, i, ap) in enumerate(zip(shots, infos, audio_paths)):
        a0 = round(Fraction(start * FILM_AUDIO_RATE, fps))
        n_audio = min(audio_length(ap, FILM_AUDIO_RATE), round(Fraction(i.frames * FILM_AUDIO_RATE, fps)))
        entries.append(FilmEntry(k, s.shot_id, s.sequence, s.order, Path(s.output), ap, start, i.frames, fps,
                                 i.width, i.height, a0, n_audio))
        start += i.frames
    total = start
    end_sample = entries[-1].audio_start_sample + entries[-1].audio_samples
    chapters = [{"id": e.index + 1, "start": e.start_frame, "end": e.start_frame + e.frames,
                 "time_base": Fraction(1, fps), "metadata": {"title": e.shot_id}} for e in entries]
    verify = functools.partial(verify_video, expected_frames=total, expected_duration_s=total / fps)
    with atomic_output(out_path, verify) as tmp:
        written, samples = encode_film(_video_frames(entries, width, height), total, width, height, fps,
                                       _audio_chunks(entries, layout, channels, end_sample, audio_paths),
                                       FILM_AUDIO_RATE, channels, layout, tmp, crf, codec, preset, chapters)
        if written != total or samples != end_sample:
            raise ValueError(f"film: wrote {written} frames / {samples} samples, expected {total} / {end_sample}")
    edl, csv_path = out_path.with_suffix(".edl"), out_path.with_suffix(".csv")
    atomic_write_text(edl, edl_text(entries, out_path.stem))
    atomic_write_text(csv_path, csv_text(entries))
    return FilmResult(out_path, edl, csv_path, tuple(entries), total, fps, total / fps, width, height,
                      time.time() - t0)


def film_duration_s(entries: Sequence[FilmEntry]) -> float:
    return math.fsum(e.duration_s for e in entries)
