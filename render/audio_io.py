"""Decode any audio (or video-with-audio) file to float32: mono at a fixed rate for the model,
or with all its channels at its own rate for the soundtrack.

``decode_audio`` is the model's input. The official pipeline calls ``librosa.load(path,
sr=16000)``: mono = mean over channels, then resampled. We do the same with PyAV (FFmpeg), which reads every container/codec the renderer
is likely to meet (wav, flac, mp3, m4a/aac, ogg/opus, mp4/mkv/webm with an audio stream) without
pulling librosa/soundfile in. Resampling uses libswresample through ``av.AudioResampler`` with a
longer filter than FFmpeg's default (soxr, librosa's default, is not in PyAV's FFmpeg build), so
the result is close to but not bit-identical with librosa's.

Length handling (measured with PyAV 18.1 / FFmpeg 8 on 1.0 s test tones):

* wav, flac, ogg/opus and mp3 written by LAME (which records encoder delay and padding in its
  header) decode to exactly the encoded number of samples.
* AAC in mp4/m4a: FFmpeg removes the 1024-sample encoder delay (edit list) but keeps the padding
  of the last frame (44100 encoded samples decode to 45056). The container records the true
  stream duration, so a small excess over it (at most ``_MAX_PADDING_S``) is trimmed as codec
  padding. A larger excess is kept: then the header is the thing that is wrong.

``decode_audio_channels`` is the soundtrack: every channel kept (1 to 8, what AAC carries), at
the source rate when AAC supports it (else 48 kHz), with the same validation and length rules.
Both resample to packed (interleaved) float32: PyAV 18's planar ``AudioFrame.to_ndarray`` counts
planes until a NULL data pointer, which for exactly 8 channels reads past the frame's 8 pointers
(measured: a 7.1 wav crashed the process with a segmentation fault).
"""

from __future__ import annotations

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


def _declared_duration_s(
    container: av.container.InputContainer, stream: av.audio.AudioStream
) -> float | None:
    """Duration recorded by the container (stream header first, then the container's guess)."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


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


def soundtrack_sample_rate(source_rate: int) -> int:
    """The rate a soundtrack is kept at: the source's own if AAC can carry it, else 48 kHz."""
    return source_rate if source_rate in _aac_sample_rates() else SOUNDTRACK_FALLBACK_RATE


def _aac_sample_rates() -> frozenset[int]:
    return frozenset(av.codec.Codec("aac", "w").audio_rates or ())


def _named_layout(layout: av.AudioLayout) -> str | None:
    """The layout's name if every channel has a speaker position, else None ("6 channels" etc.).

    One or two channels without positions (plain PCM wav has no channel mask) are mono and
    left/right in every player, so they are named so.
    """
    if all(ch.name != "NONE" for ch in layout.channels):
        return layout.name
    return {1: "mono", 2: "stereo"}.get(layout.nb_channels)


class _Resampled:
    """Format-convert and resample every frame to packed float32 at one rate, then either average
    the channels (``downmix``, librosa's to_mono) or keep them in the first frame's layout.

    Averaging ourselves (instead of asking FFmpeg for a mono layout) keeps "mean of channels"
    exact: libswresample's downmix matrix weights channels by layout (centre, LFE, surround
    gains), which is not what the official librosa path does. A new resampler is made if the
    stream changes rate or layout mid-way (some AAC/ADTS streams do); with channels kept, later
    layouts are remixed to the first one so every chunk has the same channel count.
    ``sample_rate=None`` means ``soundtrack_sample_rate`` of the first frame's rate.
    """

    def __init__(self, sample_rate: int | None, downmix: bool) -> None:
        self.sample_rate = sample_rate
        self.downmix = downmix
        self.layout: str | None = None  # output layout name when channels are kept
        self._resampler: av.AudioResampler | None = None
        self._key: tuple | None = None
        self.chunks: list[np.ndarray] = []  # [n] (downmix) or [channels, n]

    def _collect(self, frames: list[av.AudioFrame]) -> None:
        for out in frames:
            n_ch = out.layout.nb_channels
            interleaved = out.to_ndarray().reshape(-1, n_ch)  # packed flt -> [samples, channels]
            if not self.downmix:
                self.chunks.append(interleaved.T)
            elif n_ch > 1:
                self.chunks.append(interleaved.mean(axis=1, dtype=np.float32))
            else:
                self.chunks.append(interleaved[:, 0])

    def push(self, frame: av.AudioFrame) -> None:
        if self.sample_rate is None:
            self.sample_rate = soundtrack_sample_rate(frame.sample_rate)
        if not self.downmix and self.layout is None:
            self.layout = frame.layout.name
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._key:
            self.flush()
            self._resampler = av.AudioResampler(
                format="flt", layout=self.layout, rate=self.sample_rate, options=_RESAMPLER_OPTIONS
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
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return _decode(Path(path), sample_rate, True, max_seconds, check_truncation)


def decode_audio_channels(
    path: str | Path,
    sample_rate: int | None = None,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    check_truncation: bool = True,
) -> DecodedAudio:
    """Decode the best audio stream of ``path`` keeping its channels: float32 [channels, N].

    This is the soundtrack, so nothing is downmixed: a stereo song stays stereo, 5.1 stays 5.1
    (``layout`` names the channel order, FFmpeg's). The rate is ``sample_rate`` if given, else the
    source's own rate when AAC supports it (8 to 96 kHz: 7350, 8000, 11025, 12000, 16000, 22050,
    24000, 32000, 44100, 48000, 64000, 88200, 96000) and otherwise 48000 Hz, resampled. Sources
    with more than 8 channels are rejected (AAC in MP4 carries at most 8). Errors and length
    handling are those of ``decode_audio``.
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer or None, got {sample_rate!r}")
    return _decode(Path(path), sample_rate, False, max_seconds, check_truncation)


def _decode(
    path: Path, sample_rate: int | None, downmix: bool, max_seconds: float, check_truncation: bool
) -> DecodedAudio:
    container = _open(path)
    with container:
        if not container.streams.audio:
            kinds = ", ".join(f"{s.type} ({s.codec_context.name})" for s in container.streams) or "none"
            raise AudioDecodeError(
                f"file {str(path)!r} has no audio stream (streams found: {kinds}); "
                "expected a file with an audio track"
            )
        stream = container.streams.best("audio") or container.streams.audio[0]
        codec = stream.codec_context.name
        src_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        src_channels = int(stream.codec_context.channels or 0)
        if not downmix:
            _check_channel_count(path, codec, src_channels)

        declared = _declared_duration_s(container, stream)
        if declared is not None and declared > max_seconds:
            raise AudioDecodeError(
                f"audio file {str(path)!r} is {declared:.1f} s long, more than max_seconds={max_seconds:g}; "
                "split it or raise max_seconds"
            )

        out = _Resampled(sample_rate, downmix)
        n_src = 0
        decoded_s = 0.0  # summed per frame: a stream may change rate mid-way
        try:
            for frame in container.decode(stream):
                if frame.samples == 0:
                    continue
                src_rate = frame.sample_rate
                src_channels = frame.layout.nb_channels
                if not downmix and out.layout is None:
                    _check_channel_count(path, codec, src_channels)
                n_src += frame.samples
                decoded_s += frame.samples / frame.sample_rate
                # Headers can lie (or be absent): enforce the limit on what is actually decoded.
                if decoded_s > max_seconds:
                    raise AudioDecodeError(
                        f"audio file {str(path)!r} decodes to more than max_seconds={max_seconds:g} s; "
                        "split it or raise max_seconds"
                    )
                out.push(frame)
            out.flush()
        except (av.error.FFmpegError, EOFError) as e:
            raise AudioDecodeError(
                f"audio file {str(path)!r} ({codec}) has corrupt or truncated data after "
                f"{decoded_s:.2f} s of audio (FFmpeg: {getattr(e, 'strerror', None) or e})"
            ) from e

    if n_src == 0 or out.sample_rate is None:
        raise AudioDecodeError(f"audio file {str(path)!r} ({codec}) contains no audio samples")
    rate = out.sample_rate
    n_channels = 1 if downmix else av.AudioLayout(out.layout).nb_channels
    if out.chunks:
        samples = np.concatenate(out.chunks, axis=-1)
    else:
        samples = np.zeros(0 if downmix else (n_channels, 0), np.float32)
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
    # The flushed resampler yields round(decoded_s * rate) samples up to filter rounding (a
    # sample or two); pin the length to exactly the kept duration at the output rate.
    samples = _fit_length(samples, int(round(kept_s * rate)))
    n = samples.shape[-1]
    if n == 0:
        raise AudioDecodeError(f"audio file {str(path)!r} ({codec}) contains no audio samples")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if downmix:
        layout: str | None = "mono"
    else:
        layout = _named_layout(av.AudioLayout(out.layout))
    return DecodedAudio(
        samples=samples,
        sample_rate=rate,
        duration_s=n / rate,
        source_sample_rate=src_rate,
        source_channels=src_channels,
        codec=codec,
        layout=layout,
    )


def _check_channel_count(path: Path, codec: str, channels: int) -> None:
    if channels > MAX_SOUNDTRACK_CHANNELS:
        raise AudioDecodeError(
            f"audio file {str(path)!r} ({codec}) has {channels} channels; a soundtrack can have at "
            f"most {MAX_SOUNDTRACK_CHANNELS} (AAC in MP4): mix it down to 7.1 or fewer channels first"
        )


def _fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Trim the last (time) axis to n samples, or zero-pad a resampler rounding shortfall of a
    few samples."""
    have = samples.shape[-1]
    if have >= n:
        return samples[..., :n]
    if n - have <= _MAX_ROUNDING_SAMPLES:
        pad = [(0, 0)] * (samples.ndim - 1) + [(0, n - have)]
        return np.pad(samples, pad)
    return samples  # not a rounding effect: keep what was decoded rather than invent silence


__all__ = [
    "AudioDecodeError",
    "DecodedAudio",
    "DEFAULT_MAX_SECONDS",
    "MAX_SOUNDTRACK_CHANNELS",
    "SOUNDTRACK_FALLBACK_RATE",
    "decode_audio",
    "decode_audio_channels",
    "soundtrack_sample_rate",
]
