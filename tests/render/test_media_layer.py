"""The media layer has one rule for each thing: soundtrack layout/bit rate, atomic writes, decoding.

(a) ``s2v render-shot`` (decode_audio_channels -> Mp4Writer) and ``s2v run`` (stitch_shot ->
    encode_film) write the same soundtrack for the same source.
(b) ``atomic_write`` leaves the old file or the complete new one, never a partial file or a
    leftover temporary.
(c) The one streaming decoder gives the same 16 kHz mono samples read whole or window by window.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from render.media import atomic
from render.media.atomic import atomic_write, atomic_write_bytes, atomic_write_json, read_json, temp_path_for
from render.media.audio import (
    audio_length,
    decode_audio,
    decode_audio_channels,
    read_window,
    soundtrack_info,
    stream_audio,
    stream_soundtrack,
)
from render.media.mp4 import aac_layout, audio_bit_rate, encode_film
from render.media.video import AudioTrack, Mp4Writer
from render.settings import RenderSettings
from render.shot.plan import plan_shot_audio
from render.shot.segment import render_segment
from render.shot.stitch import stitch_shot
from tests.render.segment_helpers import FakeRenderer, fake_shot

S = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9)


def _write_audio(path: Path, layout: str, rate: int, seconds: float, codec: str = "pcm_f32le") -> Path:
    """A tone per channel (distinct frequencies) plus a little noise, in ``layout``."""
    n_ch = av.AudioLayout(layout).nb_channels
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    rng = np.random.default_rng(n_ch)
    x = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.02 * rng.standard_normal(n)
                  for c in range(n_ch)]).astype(np.float32)
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=rate)
        s.layout = layout
        for i in range(0, n, 4096):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i:i + 4096].T).reshape(1, -1), format="flt",
                                           layout=layout)
            f.sample_rate, f.pts, f.time_base = rate, i, Fraction(1, rate)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


def _soundtrack(path: Path) -> dict:
    """What a player learns about the file's AAC track, and its decoded samples."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        chunks, layout = [], None
        for frame in c.decode(s):
            layout = frame.layout
            chunks.append(frame.to_ndarray())
        return {
            "layout": layout.name,
            "positions": [ch.name for ch in layout.channels],
            "channels": s.codec_context.channels,
            "rate": s.codec_context.sample_rate,
            "bit_rate": s.bit_rate,
            "codec": s.codec_context.name,
            "samples": np.concatenate(chunks, axis=-1),
        }


# ------------------------------------------------------------------ (a) one soundtrack rule


@pytest.mark.parametrize(
    "source_layout, rate, written_layout",
    [
        ("5.1(side)", 48000, "5.1"),  # side surrounds as AAC's standard 5.1 (else "6 channels")
        ("stereo", 44100, "stereo"),
        ("mono", 16000, "mono"),
        ("quad(side)", 32000, "quad"),  # a 4-channel source, same side -> back rule
    ],
)
def test_render_shot_and_run_write_the_same_soundtrack(tmp_path, source_layout, rate, written_layout):
    src = _write_audio(tmp_path / "voice.wav", source_layout, rate, 2.3)

    # s2v render-shot: render/shot pipeline -> Mp4Writer.close(audio=AudioTrack(...)).
    original = decode_audio_channels(src)
    frames = np.full((int(np.ceil(original.duration_s * 16)), 64, 64, 3), 128, np.uint8)
    shot_mp4 = tmp_path / "render_shot.mp4"
    with Mp4Writer(shot_mp4, 64, 64, fps=16) as w:
        w.write(frames)
        w.close(audio=AudioTrack(original.samples, original.sample_rate, original.layout))

    # s2v run: segments -> stitch_shot -> encode_film.
    plan = plan_shot_audio(src, S, "parallel", 1.5, 0.5)
    renderer, shot = FakeRenderer(S), fake_shot(S)
    segs = [render_segment(renderer, shot, plan, i, S, tmp_path / "work") for i in range(len(plan.segments))]
    run_mp4 = tmp_path / "run.mp4"
    stitch_shot(plan, segs, src, run_mp4, S)

    a, b = _soundtrack(shot_mp4), _soundtrack(run_mp4)
    n_ch = av.AudioLayout(source_layout).nb_channels
    for got in (a, b):
        assert got["codec"] == "aac"
        assert got["layout"] == written_layout and "NONE" not in got["positions"]
        assert got["channels"] == n_ch and got["rate"] == rate
    assert (a["layout"], a["channels"], a["rate"], a["bit_rate"]) == (b["layout"], b["channels"], b["rate"],
                                                                      b["bit_rate"])
    # Same encoder input and settings: the decoded soundtracks are identical.
    assert np.array_equal(a["samples"], b["samples"])


@pytest.mark.parametrize("source_layout", ["5.1(side)", "quad(side)", "5.0(side)"])
def test_side_layouts_are_valid_files_through_encode_film(tmp_path, source_layout):
    """encode_film alone (also the film assembly's muxer) applies the rule: a valid file with
    every speaker position named."""
    src = _write_audio(tmp_path / "a.wav", source_layout, 48000, 0.6)
    rate, channels, layout = soundtrack_info(src)
    assert layout == source_layout
    out = tmp_path / "film.mp4"
    frames = iter([np.zeros((64, 64, 3), np.uint8)] * 10)
    written, samples = encode_film(frames, 10, 64, 64, 16, stream_soundtrack(src), rate, channels, layout, out)
    got = _soundtrack(out)
    assert (written, samples) == (10, decode_audio_channels(src).samples.shape[1])
    assert got["layout"] == aac_layout(channels, layout, rate) and "NONE" not in got["positions"]


def test_unnamed_channels_get_the_default_layout_on_both_paths(tmp_path):
    """A WAV without a channel mask names no speakers: both paths write the count's default."""
    src = tmp_path / "plain.wav"
    with av.open(str(src), "w") as out:  # pcm without layout: FFmpeg writes no channel mask
        s = out.add_stream("pcm_s16le", rate=48000)
        s.layout = "4 channels"
        f = av.AudioFrame.from_ndarray(np.zeros((1, 4 * 4800), np.int16), format="s16", layout="4 channels")
        f.sample_rate, f.pts = 48000, 0
        for p in [*s.encode(f), *s.encode(None)]:
            out.mux(p)
    rate, channels, layout = soundtrack_info(src)
    assert (rate, channels, layout) == (48000, 4, None) and decode_audio_channels(src).layout is None
    assert aac_layout(channels, layout, rate) == "quad"


def test_one_bit_rate_rule():
    assert audio_bit_rate(2, 44100) == 192_000 and audio_bit_rate(6, 48000) == 576_000
    assert audio_bit_rate(1, 16000) == 96_000  # the encoder's cap per channel


# ------------------------------------------------------------------ (b) atomic writes


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_failure_leaves_nothing(tmp_path, exc):
    target = tmp_path / "state.bin"

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(target, write)
    assert _entries(tmp_path) == []


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"new, but not all of it")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, write)
    assert target.read_bytes() == b"old" and _entries(tmp_path) == ["state.bin"]


def test_atomic_write_replaces_atomically(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    target.write_text("old")
    calls: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", Path(src).parent == Path(dst).parent, target.read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)

    def write(tmp: Path) -> str:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers still see the complete old file
        return "done"

    assert atomic_write(target, write) == "done"
    assert target.read_text() == "new" and _entries(tmp_path) == ["record.json"]
    # File data durable before the rename (within one folder), the folder entry after it.
    assert calls == [("fsync", False), ("replace", True, "old"), ("fsync", True)]


def test_atomic_write_conveniences(tmp_path):
    path = tmp_path / "deep" / "run.json"  # the folder is made on demand
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    assert read_json(path) == {"a": [1, 2], "b": 1} and read_json(tmp_path / "missing.json") is None
    atomic_write_bytes(path, b"{}")
    assert read_json(path) == {} and _entries(path.parent) == ["run.json"]


def test_temp_names_stay_hidden_and_keep_the_suffix(tmp_path):
    t = temp_path_for(tmp_path / ("x" * 300 + ".mp4"))
    assert t.parent == tmp_path and t.name.startswith(".") and t.suffix == ".mp4"
    assert len(t.name.encode()) <= 255


# ------------------------------------------------------------------ (c) one decoder


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("media_layer")
    return [
        _write_audio(d / "stereo44.wav", "stereo", 44100, 3.3),
        _write_audio(d / "side51.wav", "5.1(side)", 48000, 2.1),
        _write_audio(d / "aac.m4a", "stereo", 44100, 2.6, codec="aac"),  # end padding trimmed
        _write_audio(d / "mono.mp3", "mono", 22050, 2.2, codec="libmp3lame"),
    ]


def test_whole_and_windowed_reads_give_the_same_16k_mono_samples(sources):
    for path in sources:
        whole = decode_audio(path).samples
        assert whole.dtype == np.float32 and whole.ndim == 1 and decode_audio(path).sample_rate == 16000
        streamed = list(stream_audio(path))
        assert len(streamed) > 1  # really streamed in pieces
        assert np.array_equal(np.concatenate(streamed), whole)
        assert audio_length(path) == whole.size
        # Windows tile the file (and run past its end, which reads as zeros).
        edges = [0, 1, 4000, 4001, 16000, 23456, whole.size - 7, whole.size + 500]
        pieces = [read_window(path, a, b) for a, b in zip(edges, edges[1:])]
        assert np.array_equal(np.concatenate(pieces)[: whole.size], whole)
        assert not np.concatenate(pieces)[whole.size:].any()


def test_whole_and_streamed_soundtrack_agree(sources):
    for path in sources:
        whole = decode_audio_channels(path)
        streamed = np.concatenate(list(stream_soundtrack(path)), axis=-1)
        assert np.array_equal(streamed, whole.samples)
        assert soundtrack_info(path) == (whole.sample_rate, whole.channels, whole.layout)
