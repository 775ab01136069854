from __future__ import annotations

import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from render.media.audio import decode_audio_channels
from render.media.mp4 import DEFAULT_AUDIO_LAYOUTS, audio_bit_rate
from render.media.video import (
    AudioTrack,
    Mp4Writer,
    VideoProbeError,
    float_frames_to_uint8,
    probe_video,
)

H, W = 64, 64
AAC_FRAME = 1024


def _gradient_frames(n: int, start: int = 0) -> np.ndarray:
    """Smooth, moving frames (encode well, so decoded pixels are close to the written ones)."""
    y, x = np.mgrid[0:H, 0:W]
    out = np.empty((n, H, W, 3), np.uint8)
    for i in range(n):
        k = start + i
        out[i, ..., 0] = (x * 3 + k * 2) % 256
        out[i, ..., 1] = (y * 3 + k) % 256
        out[i, ..., 2] = 128
    return out


def _tone(n: int, rate: int, hz: float = 440.0) -> np.ndarray:
    return (0.4 * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


def _decode_audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        chunks = [f.to_ndarray()[0] for f in c.decode(audio=0)]
    return np.concatenate(chunks)


def _decode_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("fps,rate", [(16, 16000), (25, 48000), (16, 44100)])
def test_round_trip_with_audio(tmp_path: Path, fps: int, rate: int) -> None:
    path = tmp_path / "out.mp4"
    n_frames = 48
    duration = n_frames / fps
    n_samples = round(duration * rate)
    frames = _gradient_frames(n_frames)
    with Mp4Writer(path, W, H, fps=fps) as w:
        w.write(frames[:20])  # numpy uint8 [N, H, W, 3]
        w.write(torch.from_numpy(frames[20:30]))  # uint8 tensor
        # float [3, N, H, W] in [-1, 1]; exactly representable values round-trip to the same uint8
        f = torch.from_numpy(frames[30:]).permute(3, 0, 1, 2).float() / 255.0 * 2.0 - 1.0
        w.write(f)
        result = w.close(audio=AudioTrack(_tone(n_samples, rate), rate))
    assert result.frames == n_frames and result.audio_samples == n_samples
    assert _leftovers(tmp_path) == []

    info = probe_video(path)
    assert probe_video(path, decode_video=False) == info  # packets counted, not decoded
    assert info.frames == n_frames
    assert info.fps == fps
    assert (info.width, info.height) == (W, H)
    assert info.duration_s == pytest.approx(duration)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.audio_sample_rate == rate
    # Measured AAC padding: the MP4 edit list removes the encoder priming, so decoding yields the
    # written samples rounded up to whole 1024-sample frames (e.g. 16 kHz: +0..63 ms; 48 kHz: +0..21 ms).
    excess = info.audio_samples - n_samples
    assert 0 <= excess < AAC_FRAME, excess
    assert info.audio_duration_s == pytest.approx(info.audio_samples / rate)

    decoded = _decode_video(path)
    assert decoded.shape == (n_frames, H, W, 3)
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 3.0

    # Audio is sample-aligned: best cross-correlation lag is 0 and the waveform matches.
    audio = _decode_audio(path)[:n_samples]
    ref = _tone(n_samples, rate)
    lags = range(-8, 9)
    scores = [float(np.dot(np.roll(audio, -lag), ref)) for lag in lags]
    assert list(lags)[int(np.argmax(scores))] == 0
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((audio - ref) ** 2))
    assert snr > 15, snr


def test_video_trimmed_to_audio(tmp_path: Path) -> None:
    rate, fps = 16000, 16
    path = tmp_path / "trim.mp4"
    with Mp4Writer(path, W, H, fps=fps) as w:
        w.write(_gradient_frames(50))
        # 2.01 s of audio -> ceil(2.01 * 16) = 33 frames cover it.
        result = w.close(audio=(_tone(32160, rate), rate), audio_trim_to_video=False)
    assert result.frames == 33 and result.audio_samples == 32160
    info = probe_video(path)
    assert probe_video(path, decode_video=False) == info  # the trim dropped packets, not just frames
    assert info.frames == 33
    assert 32160 <= info.audio_samples < 32160 + AAC_FRAME
    assert np.abs(_decode_video(path).astype(int) - _gradient_frames(33).astype(int)).mean() < 3.0


def test_audio_trimmed_to_video(tmp_path: Path) -> None:
    rate, fps = 48000, 25
    path = tmp_path / "trim_audio.mp4"
    with Mp4Writer(path, W, H, fps=fps) as w:
        w.write(_gradient_frames(20))  # 0.8 s
        result = w.close(audio=AudioTrack(_tone(2 * rate, rate), rate), audio_trim_to_video=True)
    assert result.frames == 20 and result.audio_samples == 38400
    info = probe_video(path)
    assert info.frames == 20
    assert 38400 <= info.audio_samples < 38400 + AAC_FRAME


def test_shorter_stream_is_not_padded(tmp_path: Path) -> None:
    # Audio shorter than the video with audio_trim_to_video=True: both kept as they are.
    path = tmp_path / "short_audio.mp4"
    with Mp4Writer(path, W, H, fps=16) as w:
        w.write(_gradient_frames(32))
        result = w.close(audio=(_tone(8000, 16000), 16000), audio_trim_to_video=True)
    assert result.frames == 32 and result.audio_samples == 8000
    assert probe_video(path).frames == 32


def test_video_only(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with Mp4Writer(path, W, H, fps=25) as w:
        w.write(_gradient_frames(7))
    info = probe_video(path)
    assert info.frames == 7 and info.audio_codec is None and info.audio_duration_s is None
    assert info.duration_s == pytest.approx(7 / 25)


def test_float_conversion_matches_official() -> None:
    x = torch.linspace(-1.2, 1.2, 3 * 2 * 4 * 1001).reshape(3, 2, 4, 1001)
    ref = np.floor((np.clip(x.numpy(), -1, 1) + np.float32(1)) / np.float32(2) * np.float32(255))
    got = float_frames_to_uint8(x)
    assert got.dtype == torch.uint8 and got.shape == (2, 4, 1001, 3)
    assert np.array_equal(got.permute(3, 0, 1, 2).numpy(), ref.astype(np.uint8))
    # Truncation, not rounding: 0.999 of a level stays below.
    edge = (
        torch.tensor([-1.0, 1.0, 2 * (127.999 / 255) - 1, 5.0, -5.0]).reshape(1, 1, 1, 5).expand(3, 1, 1, 5)
    )
    assert float_frames_to_uint8(edge)[0, 0, :, 0].tolist() == [0, 255, 127, 255, 0]
    with pytest.raises(ValueError, match="NaN"):
        float_frames_to_uint8(torch.full((3, 1, 2, 2), float("nan")))


@pytest.mark.parametrize("width,height", [(63, 64), (64, 65), (1, 2)])
def test_odd_sizes_rejected(tmp_path: Path, width: int, height: int) -> None:
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "odd.mp4", width, height)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    with Mp4Writer(path, W, H) as w:
        with pytest.raises(ValueError, match=r"\[N, 64, 64, 3\]"):
            w.write(np.zeros((2, 32, 64, 3), np.uint8))
        with pytest.raises(ValueError, match=r"\[3, N, 64, 64\]"):
            w.write(torch.zeros(4, 2, H, W))
        with pytest.raises(TypeError):
            w.write(np.zeros((2, H, W, 3), np.int16))
        with pytest.raises(TypeError):
            w.write([1, 2, 3])
        w.write(_gradient_frames(3))
        # Bad audio is rejected before anything is finalised; the writer stays usable.
        with pytest.raises(ValueError, match="sample_rate"):
            w.close(audio=(_tone(100, 12345), 12345))
        with pytest.raises(ValueError, match="1 to 8 channels"):
            w.close(audio=(np.zeros((9, 100), np.float32), 16000))
        with pytest.raises(ValueError, match=r"transpose.*\(100, 2\)"):
            w.close(audio=(np.zeros((100, 2), np.float32), 16000))
        with pytest.raises(ValueError, match="has 6 channels but the samples have 2"):
            w.close(audio=AudioTrack(np.zeros((2, 100), np.float32), 16000, layout="5.1"))
        with pytest.raises(ValueError, match="not an FFmpeg channel layout"):
            w.close(audio=AudioTrack(np.zeros((2, 100), np.float32), 16000, layout="bogus"))
        with pytest.raises(ValueError, match="does not accept audio layout"):
            w.close(audio=AudioTrack(np.zeros((2, 100), np.float32), 16000, layout="2 channels"))
        with pytest.raises(ValueError, match="no samples"):
            w.close(audio=(np.zeros(0, np.float32), 16000))
        w.write(_gradient_frames(2))
        w.close(audio=(_tone(16000, 16000), 16000))
    assert probe_video(path).frames == 5
    assert _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="closed"):
        w.write(_gradient_frames(1))
    with pytest.raises(RuntimeError, match="closed"):
        w.close()
    with pytest.raises(ValueError, match="bogus"):
        Mp4Writer(tmp_path / "p.mp4", W, H, preset="bogus")
    with pytest.raises(ValueError, match="codec"):
        Mp4Writer(tmp_path / "c.mp4", W, H, codec="no_such_codec")
    assert _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        Mp4Writer(tmp_path / "missing_dir" / "x.mp4", W, H)


def test_no_frames_is_an_error(tmp_path: Path) -> None:
    w = Mp4Writer(tmp_path / "empty.mp4", W, H)
    with pytest.raises(ValueError, match="no frames"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_exception_in_block_leaves_existing_file_and_no_temps(tmp_path: Path) -> None:
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"previous version")
    with pytest.raises(RuntimeError, match="boom"), Mp4Writer(path, W, H) as w:
        w.write(_gradient_frames(5))
        raise RuntimeError("boom")
    assert path.read_bytes() == b"previous version"
    assert _leftovers(tmp_path) == []


def test_overwrites_existing_on_success(tmp_path: Path) -> None:
    path = tmp_path / "replace.mp4"
    path.write_bytes(b"previous version")
    with Mp4Writer(path, W, H) as w:
        w.write(_gradient_frames(4))
    assert probe_video(path).frames == 4


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_memory_does_not_grow_with_length(tmp_path: Path) -> None:
    frame = _gradient_frames(1)
    batch = np.repeat(frame, 10, axis=0)
    with Mp4Writer(tmp_path / "long.mp4", W, H, fps=16, preset="ultrafast") as w:
        for _ in range(20):  # warm-up: encoder lookahead/threads reach their steady state
            w.write(batch)
        tracemalloc.start()
        try:
            py_before = tracemalloc.get_traced_memory()[0]
            rss_before = _rss_bytes()
            for _ in range(180):  # 1800 more frames (2000 total)
                w.write(batch)
            py_growth = tracemalloc.get_traced_memory()[0] - py_before
            rss_growth = _rss_bytes() - rss_before
        finally:
            tracemalloc.stop()
        w.close()
    # 1800 raw frames would be ~22 MB; kept frames/packets would show up here.
    assert py_growth < 512 * 1024, py_growth
    assert rss_growth < 16 * 1024 * 1024, rss_growth
    assert probe_video(tmp_path / "long.mp4").frames == 2000


def test_probe_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoProbeError, match="does not exist"):
        probe_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoProbeError, match="junk.mp4"):
        probe_video(junk)


# --- multi-channel soundtracks ----------------------------------------------------------------

# One tone per channel; an LFE channel gets a low one because AAC low-passes LFE (measured: a
# 495 Hz tone there came back dominated by ~240 Hz).
CHANNEL_TONES = [440.0, 1000.0, 660.0, 1250.0, 1500.0, 2200.0, 300.0, 1800.0]
LFE_TONE = 80.0


def _channel_tones(channels: int, layout: str | None = None) -> list[float]:
    names = [ch.name for ch in av.AudioLayout(layout or DEFAULT_AUDIO_LAYOUTS[channels]).channels]
    return [LFE_TONE if name == "LFE" else CHANNEL_TONES[k] for k, name in enumerate(names)]


def _tones(channels: int, n: int, rate: int, layout: str | None = None) -> np.ndarray:
    return np.stack([_tone(n, rate, hz) * 0.5 for hz in _channel_tones(channels, layout)])


def _decode_channels(path: Path) -> tuple[np.ndarray, int, str]:
    """All decoded audio as [channels, n] (packed conversion: see render/media/audio.py)."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt")
        chunks, layout = [], ""
        for frame in c.decode(stream):
            layout = frame.layout.name
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1, out.layout.nb_channels))
        return np.concatenate(chunks).T, stream.codec_context.sample_rate, layout


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    core = x[x.size // 10 : -(x.size // 10)]
    spec = np.abs(np.fft.rfft(core * np.hanning(core.size)))
    return float(np.fft.rfftfreq(core.size, 1 / rate)[np.argmax(spec)])


def _mux(path: Path, track: AudioTrack | tuple, n_frames: int = 16, fps: int = 16, **close_kw: object):
    with Mp4Writer(path, W, H, fps=fps, preset="ultrafast") as w:
        w.write(_gradient_frames(n_frames))
        return w.close(audio=track, **close_kw)


@pytest.mark.parametrize(
    "channels, rate, layout, decoded_layout",
    [
        (1, 22050, None, "mono"),
        (2, 44100, None, "stereo"),
        (6, 48000, None, "5.1"),
        (8, 48000, None, "7.1"),  # PyAV's planar frame conversion breaks at exactly 8 channels
        (3, 32000, "2.1", "2.1"),  # an explicit layout is kept
        (6, 48000, "5.1(side)", "5.1"),  # side surrounds written as AAC's standard 5.1
    ],
)
def test_channels_and_rate_kept(
    tmp_path: Path, channels: int, rate: int, layout: str | None, decoded_layout: str
) -> None:
    path = tmp_path / "multi.mp4"
    n = rate  # 1 s = 16 frames at 16 fps
    samples = _tones(channels, n, rate, layout)
    result = _mux(path, AudioTrack(samples if channels > 1 else samples[0], rate, layout))
    assert result.frames == 16 and result.audio_samples == n
    info = probe_video(path)
    assert info.audio_channels == channels and info.audio_sample_rate == rate
    assert 0 <= info.audio_samples - n < AAC_FRAME
    audio, got_rate, got_layout = _decode_channels(path)
    assert got_rate == rate and got_layout == decoded_layout and audio.shape[0] == channels
    dominant = [_dominant_hz(ch, rate) for ch in audio[:, :n]]
    print(f"{channels} ch @ {rate} Hz ({got_layout}): dominant {[round(d) for d in dominant]}")
    expected = _channel_tones(channels, layout)
    assert all(abs(d - f) <= 2 for d, f in zip(dominant, expected, strict=True)), (dominant, expected)


def test_stereo_trim_is_sample_exact(tmp_path: Path) -> None:
    rate = 44100
    stereo = _tones(2, 2 * rate, rate)
    # 20 frames at 25 fps = 0.8 s -> exactly 35280 samples per channel.
    result = _mux(tmp_path / "a.mp4", AudioTrack(stereo, rate), n_frames=20, fps=25, audio_trim_to_video=True)
    assert result.frames == 20 and result.audio_samples == 35280
    info = probe_video(tmp_path / "a.mp4")
    assert info.audio_channels == 2 and 35280 <= info.audio_samples < 35280 + AAC_FRAME
    # Video cut to the audio: 0.5 s of stereo at 16 fps -> 8 frames.
    result = _mux(tmp_path / "v.mp4", (stereo[:, : rate // 2], rate), n_frames=16, fps=16)
    assert result.frames == 8 and result.audio_samples == rate // 2
    assert probe_video(tmp_path / "v.mp4").frames == 8


def test_bit_rate_scales_per_channel(tmp_path: Path) -> None:
    assert audio_bit_rate(1, 48000) == 192_000  # the official 192 kb/s
    assert audio_bit_rate(2, 44100) == 192_000
    assert audio_bit_rate(6, 48000) == 576_000
    assert audio_bit_rate(8, 48000) == 768_000
    assert audio_bit_rate(1, 16000) == 96_000  # encoder cap: 6144 bits per channel per frame
    assert audio_bit_rate(2, 8000) == 96_000
    _mux(tmp_path / "s.mp4", AudioTrack(_tones(6, 48000, 48000), 48000))
    with av.open(str(tmp_path / "s.mp4")) as c:
        assert c.streams.audio[0].bit_rate > 300_000  # measured ~ 576 kb/s, not the stereo 192


@pytest.mark.parametrize(
    "channels, rate, layout",
    [(2, 44100, "stereo"), (6, 48000, "5.1"), (1, 22050, "mono"), (1, 16000, "mono")],
)
def test_wav_to_mp4_keeps_original_audio(tmp_path: Path, channels: int, rate: int, layout: str) -> None:
    """The renderer's soundtrack path: a wav decoded with decode_audio_channels and muxed."""
    samples = _tones(channels, rate, rate, layout)
    wav = tmp_path / "song.wav"
    with av.open(str(wav), "w") as out:
        s = out.add_stream("pcm_s16le", rate=rate)
        s.layout = layout
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T).reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = rate
        for packet in [*s.encode(frame), *s.encode(None)]:
            out.mux(packet)
    original = decode_audio_channels(wav)
    assert original.samples.shape == (channels, rate) and original.sample_rate == rate
    _mux(tmp_path / "out.mp4", AudioTrack(original.samples, original.sample_rate, original.layout))
    info = probe_video(tmp_path / "out.mp4")
    assert (info.audio_channels, info.audio_sample_rate) == (channels, rate)
    audio, _, got_layout = _decode_channels(tmp_path / "out.mp4")
    assert got_layout == layout
    for k, hz in enumerate(_channel_tones(channels, layout)):
        assert abs(_dominant_hz(audio[k, :rate], rate) - hz) <= 2, k
    if channels == 2:  # left and right stay apart: each channel's other tone is far below its own
        spec = [np.abs(np.fft.rfft(ch[4410:-4410] * np.hanning(ch.size - 8820))) for ch in audio[:, :rate]]
        freqs = np.fft.rfftfreq(rate - 8820, 1 / rate)
        at = [np.argmin(np.abs(freqs - f)) for f in (440, 1000)]
        assert spec[0][at[1]] < 0.01 * spec[0][at[0]] and spec[1][at[0]] < 0.01 * spec[1][at[1]]


def test_probe_counts_what_decodes_in_a_file_with_an_edit_list(tmp_path: Path) -> None:
    """A stream-copy cut (someone else's file given to `s2v qa`): packets before the edit list's
    start are in the file but never shown; counting packets must skip them."""
    src, cut = tmp_path / "src.mp4", tmp_path / "cut.mp4"
    with Mp4Writer(src, W, H, fps=16) as w:
        w.write(_gradient_frames(20))
        w.close()
    with av.open(str(src)) as i, av.open(str(cut), "w", format="mp4") as o:
        vs = i.streams.video[0]
        out = o.add_stream_from_template(vs)
        shift = 5 * int(1 / (vs.time_base * 16))  # the first 5 frames before time 0
        for packet in i.demux(vs):
            if packet.dts is None:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out
            o.mux(packet)
    with av.open(str(cut)) as c:
        assert sum(p.size > 0 for p in c.demux(c.streams.video[0])) == 20  # the cut frames are still there
    assert probe_video(cut).frames == probe_video(cut, decode_video=False).frames == 15
