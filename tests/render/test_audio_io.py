"""Decoding tests: every file is generated here with PyAV (no fixtures on disk).

Test signal: 1.0 s, 440 Hz sine (amplitude 0.5) in the left channel and a 1 kHz tone (0.3) in the
right one, so the mono mix (mean of channels) has 440 Hz at 0.25 and 1 kHz at 0.15.

Measured with PyAV 18.1 (FFmpeg 8): every format below decodes to exactly 16000 samples and no
time shift (checked with a chirp while writing this). mp3 (LAME) and opus carry their encoder
delay/padding in the stream and FFmpeg removes both; AAC's 1024-sample delay is removed through
the mp4 edit list but its end padding is not (45056 samples for 44100), so decode_audio trims
the small excess to the duration the container declares.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from render.media.audio import (
    AudioDecodeError,
    DecodedAudio,
    decode_audio,
    decode_audio_channels,
    soundtrack_sample_rate,
)

DURATION_S = 1.0
TARGET_RATE = 16000
VIDEO_FRAME_S = 1 / 16

# name -> (codec, source rate, source layout, video stream?)
FORMATS = {
    "pcm_s16le_44k_stereo.wav": ("pcm_s16le", 44100, "stereo", False),
    "pcm_f32le_16k_mono.wav": ("pcm_f32le", 16000, "mono", False),
    "flac_48k.flac": ("flac", 48000, "stereo", False),
    "mp3_22k.mp3": ("libmp3lame", 22050, "stereo", False),
    "aac.m4a": ("aac", 44100, "stereo", False),
    "opus.ogg": ("libopus", 48000, "stereo", False),
    "video_aac.mp4": ("aac", 32000, "stereo", True),
    "opus.webm": ("libopus", 48000, "stereo", False),
    "video_mp3.mkv": ("libmp3lame", 44100, "stereo", True),
}


def _tones(rate: int, layout: str, seconds: float = DURATION_S) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * np.sin(2 * np.pi * 1000 * t)
    data = np.stack([left, right]) if layout == "stereo" else left[None]
    return data.astype(np.float32)


def _write(path: Path, codec: str, rate: int, layout: str, with_video: bool = False) -> None:
    data = _tones(rate, layout)
    with av.open(str(path), "w") as out:
        # Add every stream before the first packet is muxed (that writes the header).
        video = out.add_stream("mpeg4", rate=16) if with_video else None
        audio = out.add_stream(codec, rate=rate)
        audio.layout = layout
        if video is not None:
            video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
            for i in range(16):
                img = np.full((32, 32, 3), 10 * i, np.uint8)
                for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in video.encode(None):
                out.mux(packet)
        step = 1000  # not the codec frame size on purpose: PyAV re-frames for the encoder
        for i in range(0, data.shape[1], step):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, i : i + step]), format="fltp", layout=layout
            )
            frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("audio_io")
    for name, (codec, rate, layout, with_video) in FORMATS.items():
        _write(d / name, codec, rate, layout, with_video)
    return d


def _amplitude_at(x: np.ndarray, rate: int, freq: float) -> float:
    # Hann-windowed spectrum; the peak of a windowed sine of amplitude a is a * N / 4.
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    freqs = np.fft.rfftfreq(x.size, 1 / rate)
    band = np.abs(freqs - freq) <= 5
    return float(spec[band].max() * 4 / x.size)


@pytest.mark.parametrize("name", list(FORMATS))
def test_decode_formats(media_dir: Path, name: str) -> None:
    codec, rate, layout, _ = FORMATS[name]
    a = decode_audio(media_dir / name, sample_rate=TARGET_RATE)
    assert isinstance(a, DecodedAudio)
    x = a.samples
    assert x.dtype == np.float32 and x.ndim == 1 and x.flags.c_contiguous
    assert a.sample_rate == TARGET_RATE
    assert a.source_sample_rate == rate
    assert a.source_channels == (2 if layout == "stereo" else 1)
    assert a.duration_s == x.size / TARGET_RATE
    print(f"{name}: codec={a.codec} samples={x.size} duration={a.duration_s:.5f}s (encoded {DURATION_S}s)")
    assert abs(a.duration_s - DURATION_S) <= VIDEO_FRAME_S
    # Measured: exact for every format here (see module docstring).
    assert abs(x.size - round(DURATION_S * TARGET_RATE)) <= 4

    core = x[800:-800]  # skip codec/resampler edge transients
    a440 = _amplitude_at(core, TARGET_RATE, 440)
    a1k = _amplitude_at(core, TARGET_RATE, 1000)
    spec = np.abs(np.fft.rfft(core * np.hanning(core.size)))
    dominant = np.fft.rfftfreq(core.size, 1 / TARGET_RATE)[np.argmax(spec)]
    print(f"  dominant {dominant:.1f} Hz, |440 Hz| = {a440:.4f}, |1 kHz| = {a1k:.4f}")
    assert abs(dominant - 440) <= 2
    if layout == "stereo":
        # Mean of channels: 0.5/2 and 0.3/2 (lossy codecs lose a little).
        assert a440 == pytest.approx(0.25, abs=0.02)
        assert a1k == pytest.approx(0.15, abs=0.02)
    else:
        assert a440 == pytest.approx(0.5, abs=0.02)
        assert a1k < 0.01


def test_lossless_matches_reference_waveform(media_dir: Path) -> None:
    # 16 kHz float mono: no resampling, the samples must come back (nearly) bit-exact.
    a = decode_audio(media_dir / "pcm_f32le_16k_mono.wav")
    ref = _tones(16000, "mono")[0]
    err = float(np.abs(a.samples - ref).max())
    print(f"16 kHz float wav max-abs error {err:.2e}")
    assert err <= 1e-6
    # 44.1 kHz s16 stereo: resampled; compare with the analytic 16 kHz mono mix away from edges.
    b = decode_audio(media_dir / "pcm_s16le_44k_stereo.wav")
    mix = _tones(16000, "stereo").mean(axis=0)
    err = float(np.abs(b.samples - mix)[200:-200].max())
    print(f"44.1 kHz s16 stereo -> 16 kHz mono max-abs error {err:.2e}")
    assert err <= 1e-3


def test_mono_is_mean_of_all_channels(tmp_path: Path) -> None:
    # 5.1 at the target rate: no resampling, so the result must equal the plain channel mean
    # (FFmpeg's own downmix would weight centre/LFE/surround differently).
    n = 1600
    t = np.arange(n) / 16000
    data = np.stack([0.1 * (k + 1) * np.sin(2 * np.pi * (100 + 50 * k) * t) for k in range(6)])
    data = data.astype(np.float32)
    path = tmp_path / "six.wav"
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_f32le", rate=16000)
        s.layout = "5.1"
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="5.1")
        frame.sample_rate = 16000
        for packet in [*s.encode(frame), *s.encode(None)]:
            out.mux(packet)
    a = decode_audio(path)
    assert a.source_channels == 6
    np.testing.assert_allclose(a.samples, data.mean(axis=0), atol=1e-7)


def test_other_target_rate(media_dir: Path) -> None:
    a = decode_audio(media_dir / "flac_48k.flac", sample_rate=24000)
    assert a.sample_rate == 24000 and a.samples.size == 24000


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="does not exist") as e:
        decode_audio(tmp_path / "nope.wav")
    assert "nope.wav" in str(e.value)
    assert issubclass(AudioDecodeError, ValueError)


def test_text_file_renamed_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioDecodeError, match="not a readable media file") as e:
        decode_audio(path)
    assert "notes.wav" in str(e.value)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.mp3"
    path.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(path)


def test_video_only_mp4(tmp_path: Path) -> None:
    path = tmp_path / "silent_film.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=16)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        img = np.zeros((32, 32, 3), np.uint8)
        packets = [*video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")), *video.encode(None)]
        for packet in packets:
            out.mux(packet)
    with pytest.raises(AudioDecodeError, match="no audio stream") as e:
        decode_audio(path)
    assert "silent_film.mp4" in str(e.value) and "video" in str(e.value)


def test_empty_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=16000)
        s.layout = "mono"
        out.start_encoding()  # header only, zero samples
    assert path.stat().st_size > 0
    with pytest.raises(AudioDecodeError, match="no audio samples") as e:
        decode_audio(path)
    assert "empty.wav" in str(e.value)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("flac_48k.flac", "corrupt or truncated"),  # decoder error mid-stream
        ("mp3_22k.mp3", "looks truncated"),  # decodes, but far shorter than its header says
        ("aac.m4a", "truncated/corrupt"),  # the mp4 index (moov) is at the end: cannot open
    ],
)
def test_truncated_file(media_dir: Path, tmp_path: Path, name: str, expected: str) -> None:
    data = (media_dir / name).read_bytes()
    path = tmp_path / f"truncated_{name}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioDecodeError, match=expected) as e:
        decode_audio(path)
    print(e.value)
    assert path.name in str(e.value)


def test_truncation_check_can_be_disabled(media_dir: Path, tmp_path: Path) -> None:
    data = (media_dir / "mp3_22k.mp3").read_bytes()
    path = tmp_path / "half.mp3"
    path.write_bytes(data[: len(data) // 2])
    a = decode_audio(path, check_truncation=False)
    assert 0.3 < a.duration_s < 0.7


def test_max_seconds(media_dir: Path) -> None:
    with pytest.raises(AudioDecodeError, match="max_seconds"):
        decode_audio(media_dir / "pcm_s16le_44k_stereo.wav", max_seconds=0.5)
    assert decode_audio(media_dir / "pcm_s16le_44k_stereo.wav", max_seconds=2).samples.size == 16000


@pytest.mark.parametrize(
    "codec, rate, suffix",
    [("libmp3lame", 22050, "mp3"), ("aac", 44100, "m4a"), ("libopus", 48000, "ogg"), ("flac", 48000, "flac")],
)
def test_no_encoder_delay_shift(tmp_path: Path, codec: str, rate: int, suffix: str) -> None:
    """Encoder delay must be removed: a chirp (non-periodic, unlike the tones) comes back unshifted."""
    n = rate  # 1 s
    t = np.arange(n) / rate
    chirp = (0.4 * np.sin(2 * np.pi * (200 * t + 1500 * t**2))).astype(np.float32)[None]
    path = tmp_path / f"chirp.{suffix}"
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=rate)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(chirp, format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in [*s.encode(frame), *s.encode(None)]:
            out.mux(packet)
    x = decode_audio(path).samples
    t16 = np.arange(16000) / 16000
    ref = 0.4 * np.sin(2 * np.pi * (200 * t16 + 1500 * t16**2))
    lags = np.arange(-200, 201)
    errs = [np.sqrt(np.mean((x[1000 + lag : 15000 + lag] - ref[1000:15000]) ** 2)) for lag in lags]
    best = int(lags[int(np.argmin(errs))])
    print(f"{codec}: {x.size} samples, best alignment lag {best} samples at 16 kHz, rms err {min(errs):.4f}")
    assert x.size == 16000
    assert best == 0


# --- decode_audio_channels: the soundtrack keeps its channels and (AAC-supported) rate ---------


def _write_pcm(path: Path, data: np.ndarray, rate: int, layout: str) -> None:
    """Float32 wav written from one packed frame (PyAV's planar from_ndarray breaks at 8 channels)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_f32le", rate=rate)
        s.layout = layout
        packed = np.ascontiguousarray(data.T).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)
        frame.sample_rate = rate
        for packet in [*s.encode(frame), *s.encode(None)]:
            out.mux(packet)


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    core = x[x.size // 10 : -(x.size // 10)]  # skip codec/resampler edge transients
    spec = np.abs(np.fft.rfft(core * np.hanning(core.size)))
    return float(np.fft.rfftfreq(core.size, 1 / rate)[np.argmax(spec)])


@pytest.mark.parametrize(
    "name, layout",
    [
        ("pcm_s16le_44k_stereo.wav", "stereo"),
        ("mp3_22k.mp3", "stereo"),
        ("aac.m4a", "stereo"),
        ("video_aac.mp4", "stereo"),
        ("pcm_f32le_16k_mono.wav", "mono"),
    ],
)
def test_channels_keep_layout_and_rate(media_dir: Path, name: str, layout: str) -> None:
    _, rate, _, _ = FORMATS[name]
    a = decode_audio_channels(media_dir / name)
    channels = 2 if layout == "stereo" else 1
    assert a.samples.shape == (channels, round(DURATION_S * rate))
    assert a.samples.dtype == np.float32 and a.samples.flags.c_contiguous
    assert a.sample_rate == a.source_sample_rate == rate
    assert a.channels == a.source_channels == channels and a.layout == layout
    assert a.duration_s == a.samples.shape[1] / rate
    dominant = [_dominant_hz(ch, rate) for ch in a.samples]
    print(f"{name}: {a.samples.shape} at {rate} Hz, dominant per channel {dominant}")
    assert abs(dominant[0] - 440) <= 2  # left (or the mono tone)
    if channels == 2:
        assert abs(dominant[1] - 1000) <= 2  # right: not mixed with the left
        assert _amplitude_at(a.samples[0], rate, 1000) < 0.02
        assert _amplitude_at(a.samples[1], rate, 440) < 0.02


def test_channels_lossless_are_exact(media_dir: Path) -> None:
    a = decode_audio_channels(media_dir / "pcm_s16le_44k_stereo.wav")
    err = float(np.abs(a.samples - _tones(44100, "stereo")).max())
    assert err <= 1 / 32768  # s16 quantisation only: no resampling, no mixing
    mono = decode_audio_channels(media_dir / "pcm_f32le_16k_mono.wav")
    np.testing.assert_array_equal(mono.samples, _tones(16000, "mono"))


@pytest.mark.parametrize("layout", ["5.1", "7.1"])
def test_channels_surround(tmp_path: Path, layout: str) -> None:
    n_ch = av.AudioLayout(layout).nb_channels
    t = np.arange(4800) / 48000
    data = np.stack([0.05 * (k + 1) * np.sin(2 * np.pi * (100 + 50 * k) * t) for k in range(n_ch)])
    data = data.astype(np.float32)
    path = tmp_path / "surround.wav"
    _write_pcm(path, data, 48000, layout)
    a = decode_audio_channels(path)
    assert a.layout == layout and a.samples.shape == (n_ch, 4800) and a.sample_rate == 48000
    np.testing.assert_array_equal(a.samples, data)
    # The mono path reads the same file (8 channels crashed PyAV's planar conversion before).
    np.testing.assert_allclose(decode_audio(path, sample_rate=48000).samples, data.mean(axis=0), atol=1e-7)


def test_channels_unsupported_rate_resampled_to_48k(tmp_path: Path) -> None:
    rate = 37800  # not an AAC rate
    t = np.arange(rate // 2) / rate
    data = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)]).astype(np.float32)
    path = tmp_path / "odd_rate.wav"
    _write_pcm(path, data, rate, "stereo")
    assert soundtrack_sample_rate(rate) == 48000 and soundtrack_sample_rate(44100) == 44100
    a = decode_audio_channels(path)
    assert a.sample_rate == 48000 and a.source_sample_rate == rate
    assert a.samples.shape == (2, 24000)
    assert [round(_dominant_hz(ch, 48000)) for ch in a.samples] == [440, 1000]


def test_channels_explicit_rate(media_dir: Path) -> None:
    a = decode_audio_channels(media_dir / "flac_48k.flac", sample_rate=24000)
    assert a.samples.shape == (2, 24000) and a.sample_rate == 24000 and a.source_sample_rate == 48000
    with pytest.raises(ValueError, match="sample_rate"):
        decode_audio_channels(media_dir / "flac_48k.flac", sample_rate=0)


def test_channels_more_than_eight_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ten.wav"
    _write_pcm(path, np.zeros((10, 1600), np.float32), 16000, "10 channels")
    with pytest.raises(AudioDecodeError, match="10 channels.*at most 8") as e:
        decode_audio_channels(path)
    assert "ten.wav" in str(e.value)
    assert decode_audio(path).samples.shape == (1600,)  # the model's mono input still works


def test_channels_unnamed_layout(tmp_path: Path) -> None:
    path = tmp_path / "three.wav"
    _write_pcm(path, np.full((3, 160), 0.25, np.float32), 16000, "3 channels")
    a = decode_audio_channels(path)
    assert a.samples.shape == (3, 160) and a.layout is None


def test_channels_share_validation(media_dir: Path, tmp_path: Path) -> None:
    data = (media_dir / "mp3_22k.mp3").read_bytes()
    path = tmp_path / "half.mp3"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioDecodeError, match="looks truncated"):
        decode_audio_channels(path)
    assert decode_audio_channels(path, check_truncation=False).samples.shape[0] == 2
    with pytest.raises(AudioDecodeError, match="max_seconds"):
        decode_audio_channels(media_dir / "aac.m4a", max_seconds=0.5)
    with pytest.raises(AudioDecodeError, match="does not exist"):
        decode_audio_channels(tmp_path / "nope.wav")
