"""Streaming H.264 MP4 writer with AAC muxing, and an exact video probe.

Frames are encoded as they arrive (memory does not grow with video length) into a hidden
video-only file next to the output. ``close(audio=...)`` then stream-copies the video and
encodes the audio into a second hidden file (``render.media.mp4.remux_with_audio``, the same AAC
rules as every other output), which is renamed onto the output path: like the official
``ffmpeg -c:v copy -c:a aac -b:a 192k`` mux step, and the output path never holds a partial
file. The audio keeps its channels (mono, stereo, ... up to 7.1) and rate.

Deviations from the official ``save_video`` (imageio, ``quality=8``, which is libx264 crf 10):
* crf defaults to 18 (configurable; pass crf=10 to match the official quality setting).
* B-frames are disabled so decode order equals display order: trimming the video to the audio
  length then just drops trailing packets of the stream copy, and every kept frame stays
  decodable (with B-frames a dropped P-frame can be the reference of a kept B-frame). Costs a
  few percent of bitrate at equal crf.
* The mux trims sample-exactly / frame-exactly (see ``close``) instead of ffmpeg's
  packet-granular ``-shortest``; MP4s get ``+faststart`` (index at the front for web playback).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import torch

from render.media.atomic import atomic_write, temp_path_for
from render.media.mp4 import MAX_AUDIO_CHANNELS, aac_layout, check_aac_rate, remux_with_audio


class VideoProbeError(ValueError):
    """A video file cannot be opened or decoded (message names the file and the reason)."""


@dataclass(frozen=True)
class AudioTrack:
    """Float samples (nominally in [-1, 1]) at ``sample_rate`` Hz: mono [n], or [channels, n]
    with 1 to 8 channels in FFmpeg's order for ``layout`` (an FFmpeg layout name such as
    "stereo" or "5.1"; None picks ``render.media.mp4.DEFAULT_AUDIO_LAYOUTS`` by channel count)."""

    samples: np.ndarray
    sample_rate: int
    layout: str | None = None


@dataclass(frozen=True)
class MuxResult:
    path: Path
    frames: int  # video frames in the written file
    duration_s: float  # frames / fps
    audio_samples: int | None  # samples encoded (before codec padding), None without audio


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    duration_s: float  # frames / fps (our outputs are constant frame rate)
    audio_duration_s: float | None  # decoded samples / rate (includes codec end padding)
    audio_codec: str | None
    video_codec: str
    audio_sample_rate: int | None = None
    audio_samples: int | None = None  # per channel
    audio_frame_size: int | None = None
    audio_channels: int | None = None


def _as_fraction(fps: int | float | Fraction, what: str) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, int | float | Fraction) or not fps > 0:
        raise ValueError(f"{what} must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(1_000_000) if isinstance(fps, float) else Fraction(fps)


def _coerce_audio(audio: AudioTrack | tuple[object, int]) -> AudioTrack:
    """Validate a track; returns samples as contiguous float32 [channels, n] and a layout the AAC
    encoder was checked to accept (so a bad track fails before the writer finalises anything)."""
    layout = None
    if isinstance(audio, AudioTrack):
        samples, rate, layout = audio.samples, audio.sample_rate, audio.layout
    elif isinstance(audio, tuple) and len(audio) == 2:
        samples, rate = audio
    else:
        raise TypeError(f"audio must be an AudioTrack or (samples, sample_rate), got {type(audio).__name__}")
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    arr = np.asarray(samples)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or not 1 <= arr.shape[0] <= MAX_AUDIO_CHANNELS:
        raise ValueError(
            f"audio samples must be mono [n] or [channels, n] with 1 to {MAX_AUDIO_CHANNELS} channels "
            f"(channel-major: transpose [n, channels] arrays); got shape {tuple(arr.shape)}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"audio samples must be float (nominally in [-1, 1]); got dtype {arr.dtype}")
    if arr.shape[1] == 0:
        raise ValueError("audio has no samples")
    if not np.isfinite(arr).all():
        raise ValueError("audio samples contain NaN or inf")
    rate = check_aac_rate(rate)
    layout = aac_layout(arr.shape[0], layout, rate)
    return AudioTrack(np.ascontiguousarray(arr, dtype=np.float32), rate, layout)


def float_frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[3, N, H, W] float in [-1, 1] -> [N, H, W, 3] uint8 on the CPU, exactly as the official
    save_video: clamp, (x + 1) / 2, * 255 in float32, truncating cast. NaN raises (a NaN frame
    means the render failed; the official would silently write garbage)."""
    f = frames.detach().to(device="cpu", dtype=torch.float32)
    if torch.isnan(f).any():
        raise ValueError("frames contain NaN values")
    u8 = ((f.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0).to(torch.uint8)
    return u8.permute(1, 2, 3, 0).contiguous()


def _iter_rgb_frames(frames: object, height: int, width: int) -> Iterator[np.ndarray]:
    """Validate a batch and yield contiguous uint8 [H, W, 3] frames one at a time.

    uint8 input: [N, H, W, 3] (or one [H, W, 3] frame). Float input: [3, N, H, W] (or
    [1, 3, N, H, W]) in [-1, 1], converted as the official save_video does: clamp, (x + 1) / 2,
    * 255, truncating cast to uint8 (computed in float32, one frame at a time to bound memory).
    """
    if isinstance(frames, np.ndarray) and np.issubdtype(frames.dtype, np.floating):
        frames = torch.from_numpy(frames)
    if isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8:
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise TypeError(
                f"numpy frames must be uint8 [N, H, W, 3] or float [3, N, H, W]; got {frames.dtype}"
            )
        arr = frames[None] if frames.ndim == 3 else frames
        if arr.ndim != 4 or arr.shape[1:] != (height, width, 3):
            raise ValueError(
                f"uint8 frames must have shape [N, {height}, {width}, 3]; got {tuple(frames.shape)}"
            )
        for i in range(arr.shape[0]):
            yield np.ascontiguousarray(arr[i])
        return
    if isinstance(frames, torch.Tensor) and frames.is_floating_point():
        x = frames.detach()
        if x.ndim == 5 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 4 or x.shape[0] != 3 or tuple(x.shape[2:]) != (height, width):
            raise ValueError(
                f"float frames must have shape [3, N, {height}, {width}] (or [1, 3, N, H, W]); "
                f"got {tuple(frames.shape)}"
            )
        for i in range(x.shape[1]):
            yield float_frames_to_uint8(x[:, i : i + 1])[0].numpy()
        return
    raise TypeError(
        "frames must be a uint8 numpy array/tensor [N, H, W, 3] or a float tensor [3, N, H, W] in [-1, 1]; "
        f"got {type(frames).__name__}"
    )


class Mp4Writer:
    """Context manager that encodes frames as they come and muxes audio on ``close``.

    >>> with Mp4Writer(path, width=832, height=448) as w:   # doctest: +SKIP
    ...     w.write(frames)
    ...     w.close(audio=AudioTrack(samples, 16000))
    Leaving the block with an exception removes all temporary files and leaves ``path`` as it was;
    leaving it normally without ``close`` closes without audio.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: int | float | Fraction = 16,
        crf: int = 18,
        preset: str = "medium",
        codec: str = "libx264",
    ) -> None:
        for name, v in (("width", width), ("height", height)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"Mp4Writer: {name} must be a positive integer, got {v!r}")
            if v % 2:
                raise ValueError(
                    f"Mp4Writer: {name}={v} is odd; yuv420p (4:2:0 chroma) needs even width and height"
                )
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output directory {str(self.path.parent)!r} does not exist")
        self.width, self.height = width, height
        self.fps = _as_fraction(fps, "Mp4Writer: fps")
        self.frames_written = 0
        self._closed = False
        self._video_tmp = temp_path_for(self.path)
        self._container = av.open(str(self._video_tmp), mode="w")
        try:
            stream = self._container.add_stream(codec, rate=self.fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = 1 / self.fps
            stream.codec_context.max_b_frames = 0  # see module docstring (trimmable stream copy)
            stream.codec_context.options = {"crf": str(crf), "preset": preset}
            # Open now so a bad codec/crf/preset fails here, not at the first write.
            stream.codec_context.open()
            self._stream = stream
        except BaseException as e:
            self._discard()
            if isinstance(e, av.error.FFmpegError | av.codec.codec.UnknownCodecError):
                raise ValueError(
                    f"Mp4Writer: cannot set up codec {codec!r} for {str(self.path)!r}: {e}"
                ) from e
            raise

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._closed:
            return
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"Mp4Writer for {str(self.path)!r} is already closed")

    def write(self, frames: object) -> int:
        """Encode a batch of frames (see ``_iter_rgb_frames`` for layouts); returns frames written so far."""
        self._check_open()
        for rgb in _iter_rgb_frames(frames, self.height, self.width):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = self.frames_written
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            self.frames_written += 1
        return self.frames_written

    def abort(self) -> None:
        """Stop without producing an output; removes temporary files. Safe to call twice."""
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()
        with contextlib.suppress(FileNotFoundError):
            self._video_tmp.unlink()

    def close(
        self, audio: AudioTrack | tuple[object, int] | None = None, *, audio_trim_to_video: bool = False
    ) -> MuxResult:
        """Finish encoding and write ``path`` (atomically replaced), muxing ``audio`` if given.

        ``audio_trim_to_video=True``: the audio is cut to the video's duration
        (round(frames * rate / fps) samples) when longer; the video is kept whole.
        ``audio_trim_to_video=False`` (default, what the official mux does in practice since its
        video is always the longer stream): the video is cut to the first ceil(samples * fps / rate)
        frames (the shortest frame count covering the audio) when longer; every audio sample is
        encoded. The other stream is never padded.
        """
        self._check_open()
        # Validate the audio first: a bad track leaves the writer open so the caller can retry.
        track = None if audio is None else _coerce_audio(audio)
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            if self.frames_written == 0:
                raise ValueError(f"Mp4Writer for {str(self.path)!r}: no frames were written")
            keep_frames, keep_samples = self.frames_written, None
            if track is not None:
                n = track.samples.shape[1]
                if audio_trim_to_video:
                    keep_samples = min(n, round(Fraction(self.frames_written) * track.sample_rate / self.fps))
                else:
                    keep_samples = n
                    keep_frames = min(keep_frames, math.ceil(Fraction(n) * self.fps / track.sample_rate))
            audio = None if track is None else (track.samples[:, :keep_samples], track.sample_rate, track.layout)
            # Not fsynced here: ``path`` is normally itself the temporary file of a verified,
            # durable publish (``render.media.publish``), which syncs it once, complete.
            frames = atomic_write(
                self.path,
                lambda tmp: remux_with_audio(self._video_tmp, tmp, keep_frames, self.fps, audio),
                durable=False,
            )
        finally:
            self._discard()
        return MuxResult(self.path, frames, float(frames / self.fps), keep_samples)


def frame_count_mismatch(name: str, decoded: int, listed: int) -> ValueError:
    """The error of a reader that decoded another number of frames than ``probe_video(...,
    decode_video=False)`` listed."""
    return ValueError(f"{name}: {decoded} frames decode, the container lists {listed} (an edit list, a stream "
                      "that does not start on a key frame or a damaged file): re-encode the video")


def probe_video(path: str | Path, decode_video: bool = True) -> VideoInfo:
    """Decode every packet of the first video (and first audio) stream and report exact counts.

    ``decode_video=False`` counts the video stream's packets instead of decoding them (one frame
    each in the MP4s this project writes): for a reader that decodes the frames itself next, needs
    the count first and compares it with what it decoded; publishing keeps the full decode as its
    integrity check."""
    path = Path(path)
    if not path.is_file():
        raise VideoProbeError(f"{str(path)!r}: file does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoProbeError(f"{str(path)!r}: no video stream")
            vs = container.streams.video[0]
            vs.thread_type = "AUTO"
            audio = container.streams.audio[0] if container.streams.audio else None
            selected = [vs] + ([audio] if audio is not None else [])
            frames = samples = 0
            for packet in container.demux(*selected):
                if packet.stream is vs and not decode_video:
                    # Not the demuxer's empty flush packet, nor one an edit list cuts away (a stream
                    # copy cut of someone else's file); a reader that decodes still checks the count.
                    frames += packet.size > 0 and not packet.is_discard
                    continue
                for frame in packet.decode():
                    if packet.stream is vs:
                        frames += 1
                    else:
                        samples += frame.samples
            rate = vs.average_rate or vs.guessed_rate
            if not rate:
                raise VideoProbeError(f"{str(path)!r}: video stream has no frame rate")
            sr = audio.codec_context.sample_rate if audio is not None else None
            return VideoInfo(
                frames=frames,
                fps=float(rate),
                width=vs.codec_context.width,
                height=vs.codec_context.height,
                duration_s=float(frames / Fraction(rate)),
                audio_duration_s=(samples / sr) if audio is not None and sr else None,
                audio_codec=audio.codec_context.name if audio is not None else None,
                video_codec=vs.codec_context.name,
                audio_sample_rate=sr,
                audio_samples=samples if audio is not None else None,
                audio_frame_size=(audio.codec_context.frame_size or None) if audio is not None else None,
                audio_channels=audio.codec_context.channels if audio is not None else None,
            )
    except av.error.FFmpegError as e:
        raise VideoProbeError(f"{str(path)!r}: cannot decode: {e}") from e
