"""Feature assembly: the rendered shots of a manifest's sequence as one film.

Shots are ordered by the manifest's ``order`` column (then manifest row) within one
``sequence``. Shot i starts at video frame F_i = frames of the shots before it; its sound (the
original audio file by default, or its rendered MP4's track) starts at F_i / fps on the film's
timeline, sample-exact at 48 kHz, so every shot keeps its lip sync; the sub-frame gap between a
shot's audio end and the next shot's start is silence. Shots of another frame size are scaled to
fit and letterboxed. A shot that was not rendered can stand in as a slate (``render.film_slate``:
a black card naming it, silence, its planned length). The film carries one chapter per entry, and
three sidecars list the entries with timecodes at the film's frame rate (``render.film_sidecars``):
a CMX 3600 EDL (``film.edl``), a CSV (``film.csv``) and an OpenTimelineIO timeline (``film.otio``).

Everything streams (one frame and one audio chunk at a time); the film and the sidecars are
published atomically (temporary name, fsync, verify, rename).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from render.film_sidecars import FILM_AUDIO_RATE, csv_text, edl_text, otio_text, timecode
from render.film_slate import Slate, slate_frame
from render.media.atomic import atomic_write_text
from render.media.audio import audio_length, soundtrack_info, stream_audio_layout
from render.media.mp4 import encode_film
from render.media.publish import atomic_output, verify_video
from render.media.video import probe_video

__all__ = ["FILM_AUDIO_RATE", "FilmEntry", "FilmResult", "assemble_film", "film_shots", "timecode"]


@dataclass(frozen=True)
class FilmEntry:
    index: int
    shot_id: str
    sequence: str | None
    order: int | None
    video: Path | None  # None for a slate
    audio: Path | None
    start_frame: int
    frames: int
    fps: int
    width: int
    height: int
    audio_start_sample: int  # at FILM_AUDIO_RATE
    audio_samples: int
    slate: bool = False
    reason: str | None = None  # a slate's: why the shot is not rendered

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
    otio: Path
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
            raise ValueError(f"the shots are of {len(names)} sequences {names}; choose one with --sequence")
        chosen = list(shots)
    else:
        chosen = [s for s in shots if s.sequence == sequence]
        if not chosen:
            raise ValueError(f"sequence {sequence!r} not found among the shots (sequences: {names})")
    if not chosen:
        raise ValueError("there are no shots to assemble")
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
        if e.slate:
            card = slate_frame(width, height, e.shot_id)
            for _ in range(e.frames):
                yield card
            continue
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
        if e.slate:  # silence over the slot, in chunks of at most a second
            while pos < slot_end:
                n = min(FILM_AUDIO_RATE, slot_end - pos)
                yield np.zeros((channels, n), np.float32)
                pos += n
            continue
        for chunk in stream_audio_layout(path, FILM_AUDIO_RATE, layout):
            room = slot_end - pos
            if room <= 0:
                break
            chunk = chunk[:, :room]
            pos += chunk.shape[1]
            yield chunk
    if pos > end_sample:  # cannot happen: every shot is cut to its slot
        raise RuntimeError(f"film audio ran {pos - end_sample} samples past the film's end")


def assemble_film(shots: Sequence, out_path: str | Path, *, size: str | None = None, crf: int = 18,
                  codec: str = "libx264", preset: str = "medium", audio_source: str = "original") -> FilmResult:
    """One film of ``shots`` (already in film order, see ``film_shots``). Each is a rendered shot
    (``shot_id``, ``output`` (its published MP4), ``audio``, ``sequence``, ``order``) or a
    ``render.film_slate.Slate``; the film's rate and size come from the rendered ones."""
    t0 = time.time()
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(out_path.parent)!r} does not exist")
    if audio_source not in ("original", "output"):
        raise ValueError(f"audio_source={audio_source!r}: expected 'original' or 'output'")
    if not shots:
        raise ValueError("no shots to assemble")
    rendered = [s for s in shots if not isinstance(s, Slate)]
    if not rendered:
        raise ValueError("every shot of the film is a slate; at least one rendered shot sets its rate and size")
    infos = {}
    for s in rendered:
        if not Path(s.output).is_file():
            raise FileNotFoundError(f"shot {s.shot_id!r}: rendered output {s.output} does not exist (render it first)")
        infos[id(s)] = probe_video(s.output)
    rates = {round(i.fps) for i in infos.values()}
    if len(rates) != 1:
        detail = ", ".join(f"{s.shot_id}: {infos[id(s)].fps:g}" for s in rendered)
        raise ValueError(f"shots have different frame rates ({detail}); render them at one rate")
    fps = rates.pop()
    if size is not None:
        from render.settings import size_dims

        width, height = size_dims(size)
    else:
        width, height = max(((i.width, i.height) for i in infos.values()), key=lambda wh: (wh[0] * wh[1], wh))
    if width % 2 or height % 2:
        raise ValueError(f"film size {width}x{height}: width and height must be even")
    audio_paths = [None if isinstance(s, Slate) else Path(s.audio) if audio_source == "original" else Path(s.output)
                   for s in shots]
    channels = max(soundtrack_info(p)[1] for p in audio_paths if p is not None)
    layout = "mono" if channels == 1 else "stereo"
    channels = 1 if layout == "mono" else 2
    entries, start = [], 0
    for k, (s, ap) in enumerate(zip(shots, audio_paths)):
        a0 = round(Fraction(start * FILM_AUDIO_RATE, fps))
        if isinstance(s, Slate):
            n = s.frames(fps)
            entries.append(FilmEntry(k, s.shot_id, s.sequence, s.order, None, None, start, n, fps, width, height,
                                     a0, round(Fraction(n * FILM_AUDIO_RATE, fps)), slate=True, reason=s.reason))
        else:
            i = infos[id(s)]
            n = i.frames
            n_audio = min(audio_length(ap, FILM_AUDIO_RATE), round(Fraction(n * FILM_AUDIO_RATE, fps)))
            entries.append(FilmEntry(k, s.shot_id, s.sequence, s.order, Path(s.output), ap, start, n, fps,
                                     i.width, i.height, a0, n_audio))
        start += n
    total = start
    end_sample = entries[-1].audio_start_sample + entries[-1].audio_samples
    chapters = [{"id": e.index + 1, "start": e.start_frame, "end": e.start_frame + e.frames,
                 "time_base": Fraction(1, fps),
                 "metadata": {"title": e.shot_id + (" (slate: not rendered)" if e.slate else "")}} for e in entries]
    verify = functools.partial(verify_video, expected_frames=total, expected_duration_s=total / fps)
    with atomic_output(out_path, verify) as tmp:
        written, samples = encode_film(_video_frames(entries, width, height), total, width, height, fps,
                                       _audio_chunks(entries, layout, channels, end_sample, audio_paths),
                                       FILM_AUDIO_RATE, channels, layout, tmp, crf, codec, preset, chapters)
        if written != total or samples != end_sample:
            raise ValueError(f"film: wrote {written} frames / {samples} samples, expected {total} / {end_sample}")
    edl, csv_path, otio_path = (out_path.with_suffix(x) for x in (".edl", ".csv", ".otio"))
    atomic_write_text(edl, edl_text(entries, out_path.stem, fps))
    atomic_write_text(csv_path, csv_text(entries, fps))
    atomic_write_text(otio_path, otio_text(entries, out_path.stem, fps, out_path))
    return FilmResult(out_path, edl, csv_path, otio_path, tuple(entries), total, fps, total / fps, width, height,
                      time.time() - t0)


def film_duration_s(entries: Sequence[FilmEntry]) -> float:
    return math.fsum(e.duration_s for e in entries)
