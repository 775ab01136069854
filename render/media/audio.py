"""Audio decoding: one streaming decoder for the model's 16 kHz mono input and for the soundtrack.

Everything here is one PyAV (FFmpeg) decode loop, ``_decode_stream``: it yields float32 chunks in
bounded memory, and the whole-file functions (``decode_audio``, ``decode_audio_channels``) just
collect its chunks, so a file read whole or window by window gives the same samples.

The model's input (``decode_audio``, ``stream_audio``, ``read_window``): the official pipeline
calls ``librosa.load(path, sr=16000)``: mono = mean over channels, then resampled. PyAV reads every
container/codec the renderer is likely to meet (wav, flac, mp3, m4a/aac, ogg/opus, mp4/mkv/webm
with an audio stream) without pulling librosa/soundfile in. Resampling uses libswresample through
``av.AudioResampler`` with a longer filter than FFmpeg's default (soxr, librosa's default, is not
in PyAV's FFmpeg build), so the result is close to but not bit-identical with librosa's.

The soundtrack (``decode_audio_channels``, ``stream_soundtrack``, ``soundtrack_info``): every
channel kept (1 to 8, what AAC carries) at ``soundtrack_sample_rate`` of the source rate, with
the same validation and length rules.

Length handling (measured with PyAV 18.1 / FFmpeg 8 on 1.0 s test tones):

* wav, flac, ogg/opus and mp3 written by LAME (which records encoder delay and padding in its
  header) decode to exactly the encoded number of samples.
* AAC in mp4/m4a: FFmpeg removes the 1024-sample encoder delay (edit list) but keeps the padding
  of the last frame (44100 encoded samples decode to 45056). The container records the true
  stream duration, so a small excess over it (at most ``_MAX_PADDING_S``) is trimmed as codec
  padding. A larger excess is kept: then the header is the thing that is wrong. To apply this
  rule while streaming, the last ``_MAX_PADDING_S`` (+ rounding) of output is held back until
  the stream ends.

Frames are resampled to packed (interleaved) float32: PyAV 18's planar ``AudioFrame.to_ndarray``
counts planes until a NULL data pointer, which for exactly 8 channels reads past the frame's 8
pointers (measured: a 7.1 wav crashed the process with a segmentation fault).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

DEFAULT_MAX_SECONDS = 4 * 3600.0

# Soundtrack limits: AAC in MP4 carries 1 to 8 channels at the rates the encoder lists; a
# source at any other rate is resampled to this one.
MAX_SOUNDTRACK_CHANNELS = 8
SOUNDTRACK_FALLBACK_RATE = 48000

# libswresample settings: a 64-tap (default 32) windowed-sinc filter with finer phase steps and
# linear interpolation between phases; cutoff slightly below Nyquist to keep aliasing out.
_RESAMPLER_OPTIONS = {"filter_size": "64", "phase_shift": "12", "linear_interp": "1", "cutoff": "0.95"}

# Codec padding at the end of a stream is at most about one frame (AAC 1024/2048, mp3 1152,
# opus 960 samples); anything longer than this beyond the declared duration is real audio.
_MAX_PADDING_S = 0.1

# The resampler's output length may differ from round(seconds * rate) by filter rounding.
_MAX_ROUNDING_SAMPLES = 8

# A stream whose decoded length falls short of its header's duration by more than both of these
# is reported as truncated (a partial download would otherwise render a silently short video).
_TRUNCATION_MIN_FRACTION = 0.9
_TRUNCATION_MIN_SHORTFALL_S = 0.25


class AudioDecodeError(ValueError):
    """An audio file could not be decoded (the message names the file and the problem)."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32: mono [N] (decode_audio) or [channels, N] (decode_audio_channels)
    sample_rate: int
    duration_s: float  # N / sample_rate
    source_sample_rate: int
    source_channels: int
    codec: str
    # Channel layout of ``samples`` (FFmpeg name such as "stereo" or "5.1(side)"); None when the
    # source does not say which speaker each channel is for.
    layout: str | None = "mono"

    @property
    def channels(self) -> int:
        return 1 if self.samples.ndim == 1 else int(self.samples.shape[0])


# ---------------------------------------------------------------- the soundtrack-rate rule


@functools.cache
def _aac_sample_rates() -> frozenset[int]:
    return frozenset(av.codec.Codec("aac", "w").audio_rates or ())


def soundtrack_sample_rate(source_rate: int) -> int:
    """The rate a soundtrack is kept at: the source's own if AAC can carry it, else 48 kHz."""
    return source_rate if source_rate in _aac_sample_rates() else SOUNDTRACK_FALLBACK_RATE


def _named_layout(layout: av.AudioLayout) -> str | None:
    """The layout's name if every channel has a speaker position, else None ("6 channels" etc.).

    One or two channels without positions (plain PCM wav has no channel mask) are mono and
    left/right in every player, so they are named so.
    """
    if all(ch.name != "NONE" for ch in layout.channels):
        return layout.name
    return {1: "mono", 2: "stereo"}.get(layout.nb_channels)


# ---------------------------------------------------------------- opening


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise AudioDecodeError(f"audio file {str(path)!r} does not exist")
    if not path.is_file():
        raise AudioDecodeError(f"audio path {str(path)!r} is not a regular file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"audio file {str(path)!r} is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as e:
        raise AudioDecodeError(
            f"audio file {str(path)!r} is not a readable media file, or is truncated/corrupt "
            f"(FFmpeg: {e.strerror or e}); expected an audio or video container such as wav, flac, "
            "mp3, m4a, ogg, mp4, mkv, webm (a truncated mp4/m4a lacks its index and fails here)"
        ) from e


def _audio_stream(container: av.container.InputContainer, path: Path) -> av.audio.AudioStream:
    if not container.streams.audio:
        kinds = ", ".join(f"{s.type} ({s.codec_context.name})" for s in container.streams) or "none"
        raise AudioDecodeError(
            f"file {str(path)!r} has no audio stream (streams found: {kinds}); "
            "expected a file with an audio track"
        )
    return container.streams.best("audio") or container.streams.audio[0]


def _declared_duration_s(
    container: av.container.InputContainer, stream: av.audio.AudioStream
) -> float | None:
    """Duration recorded by the container (stream header first, then the container's guess)."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _check_channel_count(path: Path, codec: str, channels: int) -> None:
    if channels > MAX_SOUNDTRACK_CHANNELS:
        raise AudioDecodeError(
            f"audio file {str(path)!r} ({codec}) has {channels} channels; a soundtrack can have at "
            f"most {MAX_SOUNDTRACK_CHANNELS} (AAC in MP4): mix it down to 7.1 or fewer channels first"
        )


# ---------------------------------------------------------------- the one resampler


class _Resampler:
    """Format-convert and resample every frame to packed float32 at one rate, then either average
    the channels (``downmix``, librosa's to_mono) or keep them in one layout.

    Averaging ourselves (instead of asking FFmpeg for a mono layout) keeps "mean of channels"
    exact: libswresample's downmix matrix weights channels by layout (centre, LFE, surround
    gains), which is not what the official librosa path does. A new resampler is made if the
    stream changes rate or layout mid-way (some AAC/ADTS streams do); with channels kept, later
    layouts are remixed to the output layout so every chunk has the same channel count.
    ``rate=None``: ``soundtrack_sample_rate`` of the first frame's rate; ``layout=None``: the
    first frame's layout (no remix). Output goes to ``chunks``: [n] when downmixing, else
    [channels, n].
    """

    def __init__(self, rate: int | None, downmix: bool, layout: str | None = None) -> None:
        self.rate = rate
        self.downmix = downmix
        self.layout = layout
        self.chunks: list[np.ndarray] = []
        self._resampler: av.AudioResampler | None = None
        self._key: tuple | None = None

    def _collect(self, frames: list[av.AudioFrame]) -> None:
        for out in frames:
            n_ch = out.layout.nb_channels
            interleaved = out.to_ndarray().reshape(-1, n_ch)  # packed flt -> [samples, channels]
            if not self.downmix:
                self.chunks.append(np.ascontiguousarray(interleaved.T))
            elif n_ch > 1:
                self.chunks.append(interleaved.mean(axis=1, dtype=np.float32))
            else:
                self.chunks.append(np.ascontiguousarray(interleaved[:, 0]))

    def push(self, frame: av.AudioFrame) -> None:
        if self.rate is None:
            self.rate = soundtrack_sample_rate(frame.sample_rate)
        if not self.downmix and self.layout is None:
            self.layout = frame.layout.name
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._key:
            self.flush()
            self._resampler = av.AudioResampler(
                format="flt", layout=self.layout, rate=self.rate, options=_RESAMPLER_OPTIONS
            )
            self._key = key
        # Decoded timestamps are ignored (like librosa): samples are concatenated in order.
        frame.pts = None
        self._collect(self._resampler.resample(frame))

    def flush(self) -> None:
        # The filter keeps the last filter_size/2 input samples until flushed; without this
        # the output would be short by a few milliseconds.
        if self._resampler is not None:
            self._collect(self._resampler.resample(None))
        self._resampler = None
        self._key = None


# ---------------------------------------------------------------- the one decoder


@dataclass
class _Source:
    """What ``_decode_stream`` learnt about the file, filled in as it goes (complete once the
    stream is exhausted)."""

    codec: str = ""
    source_rate: int = 0
    source_channels: int = 0
    rate: int | None = None  # output rate
    layout: str | None = None  # output layout name (channels kept)


def _decode_stream(
    path: Path,
    sample_rate: int | None,
    downmix: bool,
    max_seconds: float,
    check_truncation: bool,
    layout: str | None = None,
    source: _Source | None = None,
) -> Iterator[np.ndarray]:
    """Decode the best audio stream of ``path`` to float32 chunks: [n] mono (``downmix``) or
    [channels, n]; concatenated they are the file's whole decoded audio with the length rule of
    the module docstring applied. Raises AudioDecodeError (see ``decode_audio``)."""
    src = source if source is not None else _Source()
    with _open(path) as container:
        stream = _audio_stream(container, path)
        src.codec = codec = stream.codec_context.name
        src.source_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        src.source_channels = int(stream.codec_context.channels or 0)
        keep_channels = not downmix and layout is None  # the source's channels, unremixed
        if keep_channels:
            _check_channel_count(path, codec, src.source_channels)
        declared = _declared_duration_s(container, stream)
        if declared is not None and declared > max_seconds:
            raise AudioDecodeError(
                f"audio file {str(path)!r} is {declared:.1f} s long, more than max_seconds={max_seconds:g}; "
                "split it or raise max_seconds"
            )
        out = _Resampler(sample_rate, downmix, layout)
        pending: list[np.ndarray] = []  # held-back tail, at most `hold` samples after each drain
        pending_n = 0
        emitted = 0
        decoded_s = 0.0  # summed per frame: a stream may change rate mid-way
        n_src = 0

        def drain() -> Iterator[np.ndarray]:
            nonlocal pending, pending_n, emitted
            pending.extend(out.chunks)
            pending_n += sum(c.shape[-1] for c in out.chunks)
            out.chunks.clear()
            # Enough to cover the end-of-stream padding trim and resampler rounding.
            hold = int(np.ceil(_MAX_PADDING_S * out.rate)) + 4 * _MAX_ROUNDING_SAMPLES
            if pending_n <= hold:
                return
            joined = np.concatenate(pending, axis=-1) if len(pending) > 1 else pending[0]
            ready, rest = joined[..., : pending_n - hold], joined[..., pending_n - hold :]
            pending, pending_n = [rest], rest.shape[-1]
            emitted += ready.shape[-1]
            yield np.ascontiguousarray(ready)

        try:
            for frame in container.decode(stream):
                if frame.samples == 0:
                    continue
                src.source_rate = frame.sample_rate
                src.source_channels = frame.layout.nb_channels
                if keep_channels:
                    _check_channel_count(path, codec, src.source_channels)
                n_src += frame.samples
                decoded_s += frame.samples / frame.sample_rate
                # Headers can lie (or be absent): enforce the limit on what is actually decoded.
                if decoded_s > max_seconds:
                    raise AudioDecodeError(
                        f"audio file {str(path)!r} decodes to more than max_seconds={max_seconds:g} s; "
                        "split it or raise max_seconds"
                    )
                out.push(frame)
                src.rate, src.layout = out.rate, out.layout
                yield from drain()
            out.flush()
        except (av.error.FFmpegError, EOFError) as e:
            raise AudioDecodeError(
                f"audio file {str(path)!r} ({codec}) has corrupt or truncated data after "
                f"{decoded_s:.2f} s of audio (FFmpeg: {getattr(e, 'strerror', None) or e})"
            ) from e
        pending.extend(out.chunks)
        out.chunks.clear()

    if n_src == 0 or out.rate is None:
        raise AudioDecodeError(f"audio file {str(path)!r} ({codec}) contains no audio samples")
    kept_s = decoded_s
    if declared is not None:
        excess = decoded_s - declared
        if 0 < excess <= _MAX_PADDING_S:
            kept_s = declared  # end-of-stream codec padding (see module docstring)
        elif (
            check_truncation
            and -excess > _TRUNCATION_MIN_SHORTFALL_S
            and decoded_s < _TRUNCATION_MIN_FRACTION * declared
        ):
            raise AudioDecodeError(
                f"audio file {str(path)!r} ({codec}) looks truncated: its header declares {declared:.2f} s "
                f"but only {decoded_s:.2f} s could be decoded (pass check_truncation=False to accept it)"
            )
    tail = np.concatenate(pending, axis=-1) if pending else np.zeros(0, np.float32)
    total = emitted + tail.shape[-1]
    # The flushed resampler yields round(decoded_s * rate) samples up to filter rounding (a
    # sample or two); pin the length to exactly the kept duration at the output rate.
    n = int(round(kept_s * out.rate))
    if total >= n:
        if n < emitted:  # cannot happen: the held-back tail covers the padding trim
            raise RuntimeError(f"{str(path)!r}: streamed {emitted} samples, more than the {n} kept")
        tail = tail[..., : n - emitted]
    elif n - total <= _MAX_ROUNDING_SAMPLES:
        tail = np.pad(tail, [(0, 0)] * (tail.ndim - 1) + [(0, n - total)])
    # else: not a rounding effect; keep what was decoded rather than invent silence
    if emitted + tail.shape[-1] == 0:
        raise AudioDecodeError(f"audio file {str(path)!r} ({codec}) contains no audio samples")
    if tail.shape[-1]:
        yield np.ascontiguousarray(tail, dtype=np.float32)


def _collect(
    path: Path, sample_rate: int | None, downmix: bool, max_seconds: float, check_truncation: bool
) -> DecodedAudio:
    src = _Source()
    chunks = list(_decode_stream(path, sample_rate, downmix, max_seconds, check_truncation, source=src))
    samples = np.ascontiguousarray(np.concatenate(chunks, axis=-1), dtype=np.float32)
    rate = int(src.rate)
    return DecodedAudio(
        samples=samples,
        sample_rate=rate,
        duration_s=samples.shape[-1] / rate,
        source_sample_rate=src.source_rate,
        source_channels=src.source_channels,
        codec=src.codec,
        layout="mono" if downmix else _named_layout(av.AudioLayout(src.layout)),
    )


def _check_rate(sample_rate: int | None, optional: bool) -> None:
    if sample_rate is None and optional:
        return
    if sample_rate is None or sample_rate <= 0:
        extra = " or None" if optional else ""
        raise ValueError(f"sample_rate must be a positive integer{extra}, got {sample_rate!r}")


# ---------------------------------------------------------------- the model's mono input


def stream_audio(
    path: str | Path,
    sample_rate: int = 16000,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    check_truncation: bool = True,
) -> Iterator[np.ndarray]:
    """Mono float32 chunks at ``sample_rate``; concatenated they are ``decode_audio``'s samples.
    Memory stays bounded however long the file is (the segment planner reads hours this way)."""
    _check_rate(sample_rate, optional=False)
    return _decode_stream(Path(path), sample_rate, True, max_seconds, check_truncation)


def decode_audio(
    path: str | Path,
    sample_rate: int = 16000,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    check_truncation: bool = True,
) -> DecodedAudio:
    """Decode the best audio stream of ``path`` to mono float32 [N] at ``sample_rate``.

    Raises AudioDecodeError for a missing file, a file FFmpeg cannot read, no audio stream,
    no samples, corrupt or truncated data, or audio longer than ``max_seconds``. With
    ``check_truncation`` (default) a stream that decodes to much less than the duration its
    header declares is rejected; turn it off for files whose header is known to be inaccurate
    (e.g. VBR mp3 without a Xing header, whose duration FFmpeg estimates from the bitrate).
    """
    _check_rate(sample_rate, optional=False)
    return _collect(Path(path), sample_rate, True, max_seconds, check_truncation)


def read_window(path: str | Path, start: int, stop: int, sample_rate: int = 16000) -> np.ndarray:
    """Samples [start, stop) of ``decode_audio(path, sample_rate)`` (zeros past its end), streaming
    from the start and stopping once the window is filled."""
    if not 0 <= start <= stop:
        raise ValueError(f"read_window: need 0 <= start <= stop, got {start}, {stop}")
    out = np.zeros(stop - start, np.float32)
    pos = 0
    for chunk in stream_audio(path, sample_rate):
        a, b = max(start, pos), min(stop, pos + chunk.size)
        if a < b:
            out[a - start : b - start] = chunk[a - pos : b - pos]
        pos += chunk.size
        if pos >= stop:
            break
    return out


def audio_length(path: str | Path, sample_rate: int = 16000) -> int:
    """Number of samples ``decode_audio(path, sample_rate)`` returns, without holding them."""
    return sum(c.size for c in stream_audio(path, sample_rate))


# ---------------------------------------------------------------- the soundtrack


def stream_soundtrack(
    path: str | Path,
    sample_rate: int | None = None,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    check_truncation: bool = True,
) -> Iterator[np.ndarray]:
    """Float32 [channels, n] chunks of the soundtrack; concatenated they are
    ``decode_audio_channels``'s samples (``soundtrack_info`` gives their rate, channels, layout)."""
    _check_rate(sample_rate, optional=True)
    return _decode_stream(Path(path), sample_rate, False, max_seconds, check_truncation)


def decode_audio_channels(
    path: str | Path,
    sample_rate: int | None = None,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    check_truncation: bool = True,
) -> DecodedAudio:
    """Decode the best audio stream of ``path`` keeping its channels: float32 [channels, N].

    This is the soundtrack, so nothing is downmixed: a stereo song stays stereo, 5.1 stays 5.1
    (``layout`` names the channel order, FFmpeg's). The rate is ``sample_rate`` if given, else
    ``soundtrack_sample_rate`` of the source's: its own when AAC supports it (7350, 8000, 11025,
    12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000), otherwise 48000 Hz,
    resampled. Sources with more than 8 channels are rejected (AAC in MP4 carries at most 8).
    Errors and length handling are those of ``decode_audio``.
    """
    _check_rate(sample_rate, optional=True)
    return _collect(Path(path), sample_rate, False, max_seconds, check_truncation)


def soundtrack_info(path: str | Path) -> tuple[int, int, str | None]:
    """(rate, channels, layout) of ``stream_soundtrack(path)``'s output, from the first decoded
    frame: the same values ``decode_audio_channels`` reports (layout None: the source does not
    name its speakers)."""
    path = Path(path)
    with _open(path) as container:
        stream = _audio_stream(container, path)
        codec = stream.codec_context.name
        try:
            for frame in container.decode(stream):
                if frame.samples:
                    _check_channel_count(path, codec, frame.layout.nb_channels)
                    return (soundtrack_sample_rate(frame.sample_rate), frame.layout.nb_channels,
                            _named_layout(frame.layout))
        except (av.error.FFmpegError, EOFError) as e:
            raise AudioDecodeError(
                f"audio file {str(path)!r} ({codec}) has corrupt data (FFmpeg: {getattr(e, 'strerror', None) or e})"
            ) from e
    raise AudioDecodeError(f"audio file {str(path)!r} ({codec}) contains no audio samples")


def stream_audio_layout(
    path: str | Path, sample_rate: int, layout: str, *, max_seconds: float = DEFAULT_MAX_SECONDS
) -> Iterator[np.ndarray]:
    """Float32 [channels, n] chunks at ``sample_rate`` remixed by FFmpeg to ``layout`` (e.g.
    "stereo": 5.1 is downmixed with its centre channel, mono is spread to both sides)."""
    _check_rate(sample_rate, optional=False)
    return _decode_stream(Path(path), sample_rate, False, max_seconds, True, layout)


__all__ = [
    "AudioDecodeError",
    "DEFAULT_MAX_SECONDS",
    "DecodedAudio",
    "MAX_SOUNDTRACK_CHANNELS",
    "SOUNDTRACK_FALLBACK_RATE",
    "audio_length",
    "decode_audio",
    "decode_audio_channels",
    "read_window",
    "soundtrack_info",
    "soundtrack_sample_rate",
    "stream_audio",
    "stream_audio_layout",
    "stream_soundtrack",
]
