"""The MP4 muxer: H.264/H.265 video with an AAC soundtrack, one set of rules for every output.

Two ways in, one audio path:

* ``encode_film``: encode frames and audio in one pass (the stitcher of ``s2v run`` and the film
  assembly), audio interleaved with the video as it comes.
* ``remux_with_audio``: stream-copy an already encoded video and encode the audio next to it
  (``Mp4Writer.close``, the shot renderer of ``s2v render-shot``).

Both write their soundtrack through ``AacTrack``, so a given source gets the same channel layout
(``aac_layout``), bit rate (``audio_bit_rate``), sample rate and encoded samples whichever command
rendered it.

AAC channel layouts (measured with PyAV 18.1 / FFmpeg 8.1 by encoding each layout and decoding
the file): mono, stereo, 2.1, 3.0, 3.0(back), 4.0, quad, 5.0, 5.1 and 7.1 are written as a
standard AAC channel configuration and decode with every speaker position named. FFmpeg's native
encoder also accepts most other layouts, but writes them with a program config element: the file
is valid and the channel order kept, yet decoders report "N channels" with no positions (a
5.1(side) track comes back as "6 channels", which players may not route to the surround
speakers). Side-surround variants are therefore written as their back-surround twins: AAC's
standard configurations have a single surround pair, and players route both the same way. The
samples are not reordered: 5.1(side) and 5.1 list their channels in the same order.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# AAC at 192 kb/s as in the official mux (its ffmpeg -b:a is the whole stream's rate), and at
# least 96 kb/s per channel beyond stereo so 5.1/7.1 keep stereo's per-channel quality. FFmpeg's
# encoder caps at 6144 bits per channel per 1024-sample frame (96 kb/s per channel at 16 kHz),
# clamped here to avoid a warning per file.
AUDIO_BIT_RATE = 192_000
AUDIO_BIT_RATE_PER_CHANNEL = 96_000
_AAC_MAX_BITS_PER_FRAME = 6144
MAX_AUDIO_CHANNELS = 8

# Channel layout written for each channel count when the source names none.
DEFAULT_AUDIO_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
# See the module docstring: these would decode without speaker positions.
_SIDE_AS_BACK = {"quad(side)": "quad", "5.0(side)": "5.0", "5.1(side)": "5.1"}

# Samples per frame handed to the AAC encoder. PyAV re-frames to the codec's 1024 samples, so this
# only bounds the size of one conversion, not what is encoded.
_AUDIO_CHUNK = 1024 * 8

CODECS = {"h264": "libx264", "libx264": "libx264", "h265": "libx265", "hevc": "libx265", "libx265": "libx265"}
_FASTSTART_SUFFIXES = {".mp4", ".mov", ".m4v"}


def container_options(path: Path) -> dict[str, str]:
    """``+faststart`` (the index at the front, for web playback) where the container has one."""
    return {"movflags": "+faststart"} if path.suffix.lower() in _FASTSTART_SUFFIXES else {}


def aac_layout(channels: int, requested: str | None, rate: int) -> str:
    """The channel layout an AAC track of ``channels`` channels is written with.

    ``requested`` None (the source does not name its speakers) gives ``DEFAULT_AUDIO_LAYOUTS``;
    side-surround layouts give their back-surround twins (see the module docstring); any other
    name is kept. The result is checked by opening an AAC encoder with it, so a layout the
    encoder refuses fails here with a ValueError, before anything is written.
    """
    if not 1 <= channels <= MAX_AUDIO_CHANNELS:
        raise ValueError(f"an AAC track has 1 to {MAX_AUDIO_CHANNELS} channels, got {channels}")
    name = DEFAULT_AUDIO_LAYOUTS[channels] if requested is None else requested
    try:
        n = av.AudioLayout(name).nb_channels
    except (ValueError, TypeError) as e:
        raise ValueError(f"audio layout {name!r} is not an FFmpeg channel layout name (e.g. 'stereo', '5.1')") from e
    if n != channels:
        raise ValueError(f"audio layout {name!r} has {n} channels but the samples have {channels}")
    name = _SIDE_AS_BACK.get(name, name)
    ctx = av.CodecContext.create("aac", "w")
    ctx.sample_rate, ctx.layout, ctx.format = rate, name, "fltp"
    try:
        ctx.open()
    except av.error.FFmpegError as e:
        raise ValueError(
            f"the AAC encoder does not accept audio layout {name!r} ({channels} channels): {e}; "
            f"pass layout=None for the default {DEFAULT_AUDIO_LAYOUTS[channels]!r}"
        ) from e
    finally:
        with contextlib.suppress(Exception):
            ctx.close()
    return name


def audio_bit_rate(channels: int, sample_rate: int) -> int:
    """AAC bit rate for a track: see ``AUDIO_BIT_RATE_PER_CHANNEL``."""
    wanted = max(AUDIO_BIT_RATE, AUDIO_BIT_RATE_PER_CHANNEL * channels)
    return min(wanted, _AAC_MAX_BITS_PER_FRAME * sample_rate * channels // 1024)


def check_aac_rate(rate: object) -> int:
    supported = av.codec.Codec("aac", "w").audio_rates or ()
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or int(rate) not in supported:
        raise ValueError(f"audio sample_rate {rate!r} is not supported by AAC; use one of {sorted(supported)}")
    return int(rate)


class AacTrack:
    """The AAC track of an output being written: the layout and bit-rate rules applied, float
    samples in, packets out (the caller muxes them)."""

    def __init__(self, container: av.container.OutputContainer, rate: int, channels: int,
                 layout: str | None) -> None:
        self.rate, self.channels = rate, channels
        self.layout = aac_layout(channels, layout, rate)
        self.stream = container.add_stream("aac", rate=rate)
        self.stream.layout = self.layout
        self.stream.bit_rate = audio_bit_rate(channels, rate)
        self.stream.codec_context.time_base = Fraction(1, rate)
        self.samples = 0  # handed to the encoder so far

    def encode(self, samples: np.ndarray) -> Iterator[av.Packet]:
        """Encode float32 [channels, n]. Frames are built packed ("flt", one interleaved plane)
        and PyAV converts them to the encoder's planar format: its planar ``from_ndarray`` writes
        one plane too many for exactly 8 channels (see render/media/audio.py)."""
        for start in range(0, samples.shape[1], _AUDIO_CHUNK):
            part = samples[:, start : start + _AUDIO_CHUNK]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part.T).reshape(1, -1), format="flt",
                                               layout=self.layout)
            frame.sample_rate, frame.pts, frame.time_base = self.rate, self.samples, Fraction(1, self.rate)
            self.samples += part.shape[1]
            yield from self.stream.encode(frame)

    def flush(self) -> Iterator[av.Packet]:
        yield from self.stream.encode(None)


def _packet_time(packet: av.Packet) -> Fraction:
    ts = packet.dts if packet.dts is not None else packet.pts
    return Fraction(ts or 0) * packet.time_base


def remux_with_audio(src: Path, dst: Path, keep_frames: int, fps: Fraction,
                     audio: tuple[np.ndarray, int, str | None] | None) -> int:
    """Stream-copy the first ``keep_frames`` video frames of ``src`` into ``dst`` and encode
    ``audio`` = (float32 [channels, n], rate, layout) as its AAC track, interleaved by time.
    Returns frames written. The video must have no B-frames (decode order = display order), so
    dropping trailing packets keeps every kept frame decodable."""
    written = 0
    with av.open(str(src)) as inp, av.open(str(dst), mode="w", container_options=container_options(dst)) as out:
        in_video = inp.streams.video[0]
        out_video = out.add_stream_from_template(in_video)

        def video_packets() -> Iterator[av.Packet]:
            nonlocal written
            dropped_any = False
            for packet in inp.demux(in_video):
                if packet.dts is None:  # demuxer flush packet
                    continue
                index = round(Fraction(packet.pts) * packet.time_base * fps)
                if index >= keep_frames:
                    dropped_any = True
                    continue
                if dropped_any:
                    raise RuntimeError(f"cannot trim {str(src)!r}: video packets are not in display order")
                written += 1
                yield packet

        streams: list[Iterator[tuple[Fraction, int, av.Packet]]] = [
            ((_packet_time(p), 0, p) for p in video_packets())
        ]
        if audio is not None and audio[0].shape[1]:
            samples, rate, layout = audio
            track = AacTrack(out, rate, samples.shape[0], layout)

            def audio_packets() -> Iterator[av.Packet]:
                yield from track.encode(samples)
                yield from track.flush()

            streams.append((_packet_time(p), 1, p) for p in audio_packets())
        for _, kind, packet in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            if kind == 0:
                packet.stream = out_video
            out.mux(packet)
    return written


def encode_film(frames: Iterator[np.ndarray], n_frames: int, width: int, height: int, fps: int,
                audio_chunks: Iterator[np.ndarray] | None, audio_rate: int, audio_channels: int,
                audio_layout: str | None, path: Path, crf: int = 18, codec: str = "libx264",
                preset: str = "medium", chapters: list[dict] | None = None) -> tuple[int, int]:
    """Encode ``n_frames`` uint8 [H, W, 3] frames and every sample of ``audio_chunks`` (float32
    [channels, n] each) into ``path``, the audio interleaved with the video as it comes. Returns
    (frames, audio samples). ``audio_layout`` None: the source names no speakers (see
    ``aac_layout``)."""
    codec = CODECS.get(codec, codec)
    written = 0
    with av.open(str(path), mode="w", container_options=container_options(path)) as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.time_base = Fraction(1, fps)
        copts = {"crf": str(crf), "preset": preset}
        if codec == "libx265":
            copts["x265-params"] = "log-level=error"
            vs.codec_context.codec_tag = "hvc1"  # plays in QuickTime/Safari
        vs.codec_context.options = copts
        track = None if audio_chunks is None else AacTrack(out, audio_rate, audio_channels, audio_layout)
        if chapters:
            out.set_chapters(chapters)
        pending = np.zeros((audio_channels, 0), np.float32)
        audio_done = audio_chunks is None

        def feed_audio(until_sample: int) -> None:
            """Encode audio up to ``until_sample`` (whole encoder frames; everything once the
            source ends), so audio packets stay close to the video packets of the same time."""
            nonlocal pending, audio_done
            while not audio_done and track.samples + pending.shape[1] < until_sample:
                chunk = next(audio_chunks, None)
                if chunk is None:
                    audio_done = True
                    break
                pending = np.concatenate([pending, chunk.reshape(audio_channels, -1)], axis=1)
            ready = pending.shape[1] if audio_done else pending.shape[1] // _AUDIO_CHUNK * _AUDIO_CHUNK
            if ready:
                for p in track.encode(pending[:, :ready]):
                    out.mux(p)
                pending = pending[:, ready:]

        for f in frames:
            if written >= n_frames:
                break
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = written
            for p in vs.encode(vf):
                out.mux(p)
            written += 1
            if track is not None:
                feed_audio(math.ceil((written + 1) * audio_rate / fps))
        for p in vs.encode(None):
            out.mux(p)
        if track is not None:
            feed_audio(1 << 62)
            for p in track.flush():
                out.mux(p)
    return written, (0 if track is None else track.samples)


__all__ = [
    "AUDIO_BIT_RATE",
    "AUDIO_BIT_RATE_PER_CHANNEL",
    "CODECS",
    "DEFAULT_AUDIO_LAYOUTS",
    "MAX_AUDIO_CHANNELS",
    "AacTrack",
    "aac_layout",
    "audio_bit_rate",
    "check_aac_rate",
    "container_options",
    "encode_film",
    "remux_with_audio",
]
