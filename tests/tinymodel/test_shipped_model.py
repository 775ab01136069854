"""The trained tiny model that ships in tinymodel/tiny-s2v (its acceptance tests, on the CPU).

They fail, not skip, when the checkpoint is missing from the package: the demo would silently fall
back to random weights.
"""

from __future__ import annotations

import time

import pytest

from render.media.video import probe_video
from render.model.checkpoint import VAE_FILE
from tinymodel.export import TRAINED_DIT, shipped_checkpoint

SHIPPED = shipped_checkpoint()
FPS = 16


@pytest.fixture(autouse=True)
def _shipped():
    assert SHIPPED is not None, ("tinymodel/tiny-s2v has no config.json + diffusion_pytorch_model.safetensors: "
                                 "the trained tiny model is missing (bash tinymodel/train_release.sh WORK ship)")


def test_shipped_folder_is_small_official_layout_and_chunk_local():
    from render.model.components import S2VModels

    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, f"{total / 1e6:.1f} MB"
    assert (SHIPPED / "config.json").is_file() and (SHIPPED / "diffusion_pytorch_model.safetensors").is_file()
    assert (SHIPPED / VAE_FILE).is_file()
    pipe = S2VModels(SHIPPED, device="cpu")
    assert pipe.dit.cfg == TRAINED_DIT
    assert pipe.vae.chunk_local


@pytest.mark.slow
def test_shipped_model_follows_held_out_audio():
    """Lip-sync correlation >= 0.6 on characters and (procedural) speech never seen in training."""
    from tinymodel.evaluate import evaluate_lipsync

    ev = evaluate_lipsync(SHIPPED, "cpu", samples=3, seconds=6.0, steps=8, guidance=4.5)
    assert ev["mean_corr"] >= 0.6, ev["per_sample"]


@pytest.mark.slow
def test_demo_with_the_shipped_model_meets_its_time_duration_and_seams(tmp_path, capsys):
    """`s2v demo` (20 s of bundled speech, production path): <= 2 min, duration = audio +- 1
    frame, no clip seam above the within-clip p99 frame change, and the mouth follows the audio."""
    from render.media.audio import decode_audio
    from render.quality.qa import qa_video
    from s2v.cli import main

    out = tmp_path / "demo"
    t0 = time.monotonic()
    assert main(["demo", "--out-dir", str(out), "--quiet"]) == 0
    wall = time.monotonic() - t0
    assert "trained tiny model" in capsys.readouterr().out
    video = out / "demo.mp4"
    info = probe_video(video)
    speech = decode_audio(out / "demo_speech.ogg")
    assert abs(info.duration_s - speech.duration_s) <= 1 / FPS + 1e-6
    rep = qa_video(video, out / "run" / "shots" / "demo" / "plan.json", lipsync=True, audio=out / "demo_speech.ogg")
    p99 = rep["inside"]["p99"]
    assert all(b["value"] <= p99 for b in rep["clip_boundaries"]), (p99, rep["clip_boundaries"])
    assert all(j["value"] <= p99 for j in rep["joins"]), (p99, rep["joins"])
    assert rep["lipsync"]["corr"] >= 0.6, rep["lipsync"]
    # The 2-minute target is for an idle 2-core machine; CI shares its cores, so allow 1.5x here
    # (the measured time goes in the results file, not in a timed test).
    assert wall <= 180, f"demo took {wall:.0f} s"
