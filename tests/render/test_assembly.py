"""Feature assembly: shots of a manifest sequence in order, audio at its place, chapters, EDL/CSV."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

from manifests import write_manifest
from render.assembly import assemble_film, film_shots, timecode
from render.media.video import AudioTrack, Mp4Writer, probe_video
from s2v.cli import main
from tinymodel.demo_assets import cartoon_face, write_wav

RATE = 16000


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _shot_file(path, seconds, freq, level, size=(64, 64)):
    """A rendered-looking shot: flat grey frames at ``level`` and its tone as the soundtrack."""
    w, h = size
    n = int(np.ceil(seconds * 16 - 1e-6))
    with Mp4Writer(path, w, h, fps=16) as wr:
        wr.write(torch.full((3, n, h, w), level))
        wr.close(audio=AudioTrack(_tone(seconds, freq), RATE))
    return path


@pytest.fixture()
def manifest(tmp_path):
    image = cartoon_face(tmp_path / "face.png", (64, 64))
    spec = [  # shot_id, sequence, order, seconds, tone Hz, grey level, size
        ("intro", "film", 2, 1.30, 330.0, -0.6, (64, 64)),
        ("middle", "film", 5, 2.05, 550.0, 0.0, (96, 64)),
        ("opening", "film", 0, 0.70, 880.0, 0.6, (64, 64)),
        ("other", "trailer", 0, 1.00, 440.0, 0.2, (64, 64)),
    ]
    rows = []
    for sid, seq, order, secs, freq, level, size in spec:
        audio = write_wav(tmp_path / f"{sid}.wav", _tone(secs, freq))
        out = _shot_file(tmp_path / f"{sid}.mp4", secs, freq, level, size)
        rows.append({"shot_id": sid, "audio": str(audio), "image": str(image), "prompt": "p", "output": str(out),
                     "sequence": seq, "order": order})
    return write_manifest(rows, tmp_path / "shots.parquet"), {s[0]: s for s in spec}


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * rate / x.size)


def test_assemble_orders_shots_places_audio_and_writes_sidecars(manifest, tmp_path, capsys):
    path, spec = manifest
    film = tmp_path / "out" / "film.mp4"
    film.parent.mkdir()
    assert main(["assemble", str(path), "--sequence", "film", "--out", str(film)]) == 0
    assert "3 shots" in capsys.readouterr().out
    order = ["opening", "intro", "middle"]
    frames = [int(np.ceil(spec[s][3] * 16 - 1e-6)) for s in order]
    info = probe_video(film)
    assert info.frames == sum(frames) and (info.width, info.height) == (96, 64)
    assert info.audio_sample_rate == 48000
    with av.open(str(film)) as c:
        titles = [ch["metadata"]["title"] for ch in c.chapters()]
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        c.seek(0)
        pics = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert titles == order
    starts = np.cumsum([0] + frames)
    for k, sid in enumerate(order):
        # Each shot's own sound sits in its slot of the timeline (sample-exact start) ...
        a0 = starts[k] * 3000  # 48000 / 16 samples per frame
        n = int(spec[sid][3] * 48000)
        seg = audio[a0 + 1000: a0 + n - 1000]
        assert abs(_dominant_hz(seg, 48000) - spec[sid][4]) < 5
        # ... and its pictures in its frames (grey level of the shot; letterboxed when narrower).
        mid = pics[starts[k] + frames[k] // 2]
        assert abs(mid[:, mid.shape[1] // 2].mean() / 127.5 - 1 - spec[sid][5]) < 0.05
    assert pics[starts[0]][:, :10].max() < 20  # 64-wide shot in a 96-wide film: black bars
    edl = (tmp_path / "out" / "film.edl").read_text()
    assert "FROM CLIP NAME: middle" in edl and f"{timecode(int(starts[2]), 16)} {timecode(int(starts[3]), 16)}" in edl
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "film.csv").read_text())))
    assert [r["shot_id"] for r in rows] == order
    assert [int(r["start_frame"]) for r in rows] == list(starts[:3])
    assert [int(r["audio_start_sample"]) for r in rows] == [s * 3000 for s in starts[:3]]
    assert sorted(p.name for p in film.parent.iterdir()) == ["film.csv", "film.edl", "film.mp4", "film.otio"]


def test_assemble_errors(manifest, tmp_path, capsys):
    path, _ = manifest
    assert main(["assemble", str(path), "--out", str(tmp_path / "f.mp4")]) == 2
    assert "choose one with --sequence" in capsys.readouterr().err
    assert main(["assemble", str(path), "--sequence", "nope", "--out", str(tmp_path / "f.mp4")]) == 2
    assert "sequence 'nope' not found" in capsys.readouterr().err
    dup = [SimpleNamespace(shot_id="a", sequence="s", order=1, row=0),
           SimpleNamespace(shot_id="b", sequence="s", order=1, row=3)]
    with pytest.raises(ValueError, match=r"'a' \(row 0\) and 'b' \(row 3\) both have order 1"):
        film_shots(dup, "s")
    missing = [SimpleNamespace(shot_id="x", output=tmp_path / "none.mp4", audio=tmp_path / "none.wav",
                               sequence=None, order=None)]
    with pytest.raises(FileNotFoundError, match="shot 'x': rendered output"):
        assemble_film(missing, tmp_path / "f.mp4")
    assert not (tmp_path / "f.mp4").exists()


def test_multi_shot_tiny_render_assembles_into_one_playable_film(tiny_ckpt, tmp_path):
    from render.model.components import S2VModels
    from render.settings import RenderSettings
    from render.shot.pipeline import render_shot

    pipe = S2VModels(tiny_ckpt, device="cpu")
    image = cartoon_face(tmp_path / "face.png", (64, 64))
    shots = []
    for k, secs in enumerate((1.2, 0.8)):
        audio = write_wav(tmp_path / f"a{k}.wav", _tone(secs, 300 + 200 * k))
        out = tmp_path / f"s{k}.mp4"
        render_shot(pipe, audio, image, "a face talks", out, RenderSettings(size="64*64", steps=1, seed=k),
                    progress=False)
        shots.append(SimpleNamespace(shot_id=f"s{k}", output=out, audio=audio, sequence=None, order=k, row=k))
    r = assemble_film(film_shots(shots), tmp_path / "film.mp4", audio_source="output")
    info = probe_video(tmp_path / "film.mp4")
    assert info.frames == r.frames == 20 + 13 and info.audio_codec == "aac"
    assert abs(info.duration_s - r.duration_s) < 1e-9 and r.edl.is_file() and r.csv.is_file()
