"""Streaming audio decode: the samples of ``render.audio_io.decode_audio`` in bounded memory.

Long shots (minutes) must not hold their whole audio in memory in the segment planner or the
stitcher. ``stream_audio`` yields mono float32 chunks whose concatenation is exactly
``decode_audio(path, rate).samples``: the same resampler and options, the same length rule
(codec padding within ``_MAX_PADDING_S`` of the declared duration trimmed, a few samples of
resampler rounding padded) and the same errors. To apply the length rule before the end is
known, the last ``_MAX_PADDING_S`` + rounding samples are held back until the stream ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from .audio_io import (
    _MAX_PADDING_S,
    _MAX_ROUNDING_SAMPLES,
    _RESAMPLER_OPTIONS,
    _TRUNCATION_MIN_FRACTION,
    _TRUNCATION_MIN_SHORTFALL_S,
    DEFAULT_MAX_SECONDS,
    AudioDecodeError,
    _declared_duration_s,
    _open,
)

# Soundtrack rule (as the shot renderer): the source rate when AAC carries it, else 48 kHz.
SOUNDTRACK_FALLBACK_RATE = 48000
MAX_CHANNELS = 8


def soundtrack_rate(source_rate: int) -> int:
    rates = av.codec.Codec("aac", "w").audio_rates or ()
    return source_rate if source_rate in rates else SOUNDTRACK_FALLBACK_RATE


class _Resampler:
    """Resample every frame to packed float32 at one rate (packed: PyAV 18's planar conversion
    misbehaves at 8 channels), then average the channels (``downmix``, librosa's to_mono, as
    ``decode_audio``) or keep them in the first frame's layout. Output chunks go to ``chunks``:
    [n] when downmixing, else [channels, n]."""

    def __init__(self, sample_rate: int | None, downmix: bool, layout: str | None = None) -> None:
        self.rate, self.downmix = sample_rate, downmix
        self.layout: str | None = layout  # None: the first frame's
        self.chunks: list[np.ndarray] = []
        self._r: av.AudioResampler | None = None
        self._key: tuple | None = None

    def _collect(self, frames: list[av.AudioFrame]) -> None:
        for f in frames:
            n_ch = f.layout.nb_channels
            inter = f.to_ndarray().reshape(-1, n_ch)
            if not self.downmix:
                self.chunks.append(np.ascontiguousarray(inter.T))
            elif n_ch > 1:
                self.chunks.append(inter.mean(axis=1, dtype=np.float32))
            else:
                self.chunks.append(np.ascontiguousarray(inter[:, 0]))

    def push(self, frame: av.AudioFrame) -> None:
        if self.rate is None:
            self.rate = soundtrack_rate(frame.sample_rate)
        if not self.downmix and self.layout is None:
            self.layout = frame.layout.name
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._key:
            self.flush()
            self._r = av.AudioResampler(format="flt", layout=self.layout, rate=self.rate, options=_RESAMPLER_OPTIONS)
            self._key = key
        frame.pts = None  # timestamps ignored: samples are concatenated in order (as decode_audio)
        self._collect(self._r.resample(frame))

    def flush(self) -> None:
        if self._r is not None:
            self._collect(self._r.resample(None))  # the filter holds back its last samples
        self._r, self._key = None, None


def source_sample_rate(path: str | Path) -> int:
    """Sample rate of the best audio stream of ``path`` (what the shot's soundtrack keeps)."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"file {str(path)!r} has no audio stream; expected a file with an audio track")
        stream = container.streams.best("audio") or container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        if rate <= 0:
            raise AudioDecodeError(f"audio file {str(path)!r}: the audio stream has no sample rate")
        return rate


def stream_audio(path: str | Path, sample_rate: int = 16000, *, max_seconds: float = DEFAULT_MAX_SECONDS,
                 check_truncation: bool = True) -> Iterator[np.ndarray]:
    """Yield mono float32 chunks at ``sample_rate``; concatenated they equal ``decode_audio``'s."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    yield from _stream(Path(path), sample_rate, True, max_seconds, check_truncation)


def stream_soundtrack(path: str | Path, *, max_seconds: float = DEFAULT_MAX_SECONDS,
                      check_truncation: bool = True) -> Iterator[np.ndarray]:
    """Yield float32 [channels, n] chunks of the shot's soundtrack: every channel kept, at
    ``soundtrack_rate(source rate)`` (see ``soundtrack_info`` for rate and layout)."""
    yield from _stream(Path(path), None, False, max_seconds, check_truncation)


def stream_audio_layout(path: str | Path, sample_rate: int, layout: str, *,
                        max_seconds: float = DEFAULT_MAX_SECONDS) -> Iterator[np.ndarray]:
    """Yield float32 [channels, n] chunks at ``sample_rate`` remixed by FFmpeg to ``layout``
    (e.g. "stereo": 5.1 is downmixed with its centre channel, mono is spread to both sides)."""
    yield from _stream(Path(path), sample_rate, False, max_seconds, True, layout)


def soundtrack_info(path: str | Path) -> tuple[int, int, str]:
    """(rate, channels, FFmpeg layout name) of ``stream_soundtrack(path)``'s output."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"file {str(path)!r} has no audio stream; expected a file with an audio track")
        stream = container.streams.best("audio") or container.streams.audio[0]
        for frame in container.decode(stream):
            if frame.samples:
                if frame.layout.nb_channels > MAX_CHANNELS:
                    raise AudioDecodeError(
                        f"audio file {str(path)!r} has {frame.layout.nb_channels} channels; a soundtrack can "
                        f"have at most {MAX_CHANNELS} (AAC in MP4): mix it down first")
                return soundtrack_rate(frame.sample_rate), frame.layout.nb_channels, frame.layout.name
    raise AudioDecodeError(f"audio file {str(path)!r} contains no audio samples")


def _stream(path: Path, sample_rate: int | None, downmix: bool, max_seconds: float,
            check_truncation: bool, layout: str | None = None) -> Iterator[np.ndarray]:
    hold_rate = sample_rate or 192000  # upper bound when the rate is only known at the first frame
    hold = int(np.ceil(_MAX_PADDING_S * hold_rate)) + 4 * _MAX_ROUNDING_SAMPLES
    with _open(path) as container:
        if not container.streams.audio:
            kinds = ", ".join(f"{s.type} ({s.codec_context.name})" for s in container.streams) or "none"
            raise AudioDecodeError(f"file {str(path)!r} has no audio stream (streams found: {kinds}); "
                                   "expected a file with an audio track")
        stream = container.streams.best("audio") or container.streams.audio[0]
        codec = stream.codec_context.name
        declared = _declared_duration_s(container, stream)
        if declared is not None and declared > max_seconds:
            raise AudioDecodeError(f"audio file {str(path)!r} is {declared:.1f} s long, more than "
                                   f"max_seconds={max_seconds:g}; split it or raise max_seconds")
        mono = _Resampler(sample_rate, downmix, layout)
        pending: list[np.ndarray] = []  # held-back tail, at most `hold` samples after each drain
        pending_n = 0
        emitted = 0
        decoded_s = 0.0
        n_src = 0

        def drain() -> Iterator[np.ndarray]:
            nonlocal pending, pending_n, emitted
            pending.extend(mono.chunks)
            pending_n += sum(c.shape[-1] for c in mono.chunks)
            mono.chunks.clear()
            if pending_n <= hold:
                return
            joined = np.concatenate(pending, axis=-1) if len(pending) > 1 else pending[0]
            out, rest = joined[..., : pending_n - hold], joined[..., pending_n - hold:]
            pending, pending_n = [rest], rest.shape[-1]
            emitted += out.shape[-1]
            yield out

        try:
            for frame in container.decode(stream):
                if frame.samples == 0:
                    continue
                if not downmix and layout is None and frame.layout.nb_channels > MAX_CHANNELS:
                    raise AudioDecodeError(
                        f"audio file {str(path)!r} ({codec}) has {frame.layout.nb_channels} channels; a "
                        f"soundtrack can have at most {MAX_CHANNELS} (AAC in MP4): mix it down first")
                n_src += frame.samples
                decoded_s += frame.samples / frame.sample_rate
                if decoded_s > max_seconds:
                    raise AudioDecodeError(f"audio file {str(path)!r} decodes to more than "
                                           f"max_seconds={max_seconds:g} s; split it or raise max_seconds")
                mono.push(frame)
                yield from drain()
            mono.flush()
        except (av.error.FFmpegError, EOFError) as e:
            raise AudioDecodeError(
                f"audio file {str(path)!r} ({codec}) has corrupt or truncated data after {decoded_s:.2f} s of "
                f"audio (FFmpeg: {getattr(e, 'strerror', None) or e})") from e
        pending.extend(mono.chunks)
        mono.chunks.clear()
    if n_src == 0:
        raise AudioDecodeError(f"audio file {str(path)!r} ({codec}) contains no audio samples")
    kept_s = decoded_s
    if declared is not None:
        excess = decoded_s - declared
        if 0 < excess <= _MAX_PADDING_S:
            kept_s = declared
        elif (check_truncation and -excess > _TRUNCATION_MIN_SHORTFALL_S
              and decoded_s < _TRUNCATION_MIN_FRACTION * declared):
            raise AudioDecodeError(
                f"audio file {str(path)!r} ({codec}) looks truncated: its header declares {declared:.2f} s "
                f"but only {decoded_s:.2f} s could be decoded (pass check_truncation=False to accept it)")
    if mono.rate is None:
        raise AudioDecodeError(f"audio file {str(path)!r} ({codec}) contains no audio samples")
    tail = np.concatenate(pending, axis=-1) if pending else np.zeros(0, np.float32)
    have = tail.shape[-1]
    total = emitted + have
    n = int(round(kept_s * mono.rate))
    if total >= n:
        if n < emitted:  # cannot happen: `hold` covers the padding trim
            raise RuntimeError(f"{str(path)!r}: streamed {emitted} samples, more than the {n} kept")
        tail = tail[..., : n - emitted]
    elif n - total <= _MAX_ROUNDING_SAMPLES:
        tail = np.pad(tail, [(0, 0)] * (tail.ndim - 1) + [(0, n - total)])
    if emitted + tail.shape[-1] == 0:
        raise AudioDecodeError(f"audio file {str(path)!r} ({codec}) contains no audio samples")
    if tail.shape[-1]:
        yield np.ascontiguousarray(tail, dtype=np.float32)


def read_window(path: str | Path, start: int, stop: int, sample_rate: int = 16000) -> np.ndarray:
    """Samples [start, stop) of the decoded audio (zeros past its end), streaming from the start."""
    if not 0 <= start <= stop:
        raise ValueError(f"read_window: need 0 <= start <= stop, got {start}, {stop}")
    out = np.zeros(stop - start, np.float32)
    pos = 0
    for chunk in stream_audio(path, sample_rate):
        a, b = max(start, pos), min(stop, pos + chunk.size)
        if a < b:
            out[a - start: b - start] = chunk[a - pos: b - pos]
        pos += chunk.size
        if pos >= stop:
            break
    return out


def audio_length(path: str | Path, sample_rate: int = 16000) -> int:
    """Number of samples ``decode_audio(path, sample_rate)`` returns, without holding them."""
    return sum(c.size for c in stream_audio(path, sample_rate))
