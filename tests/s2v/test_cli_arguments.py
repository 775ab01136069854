"""Argument checks of the ``s2v`` subcommands that must fail up front, with one actionable line."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2v.cli import main


def _render_shot_argv(tmp_path: Path, out: str) -> list[str]:
    for name in ("a.wav", "f.png"):
        (tmp_path / name).write_bytes(b"x")
    return ["render-shot", "--ckpt", str(tmp_path / "no-ckpt"), "--audio", str(tmp_path / "a.wav"), "--image",
            str(tmp_path / "f.png"), "--prompt", "p", "--out", str(tmp_path / out), "--device", "cpu"]


@pytest.mark.parametrize("out", ["e8.avi", "e8.mkv", "e8", ".mp4"])
def test_render_shot_refuses_an_output_that_is_no_mp4(out, tmp_path, capsys):
    code = main(_render_shot_argv(tmp_path, out))
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--out {tmp_path / out}: the output is an MP4" in err and "ending in .mp4" in err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "f.png"]


def test_render_shot_takes_an_upper_case_mp4_name(tmp_path, capsys):
    """.MP4 passes the output check; the run then stops at the missing checkpoint (exit 2)."""
    code = main(_render_shot_argv(tmp_path, "E8.MP4"))
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint folder not found" in err, err


def test_assemble_refuses_an_output_that_is_no_mp4(tmp_path, capsys):
    code = main(["assemble", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "film.avi")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--out {tmp_path / 'film.avi'}: the output is an MP4" in err


def _run_argv(tmp_path: Path, ckpt: Path) -> list[str]:
    from manifests.schema import write_manifest
    from tests.manifests.malformed_cases import make_media, rows

    make_media(tmp_path)
    write_manifest(rows(), tmp_path / "m.parquet")
    return ["run", str(tmp_path / "m.parquet"), "--run-dir", str(tmp_path / "run"), "--ckpt", str(ckpt)]


def test_run_refuses_the_folder_above_a_checkpoint_before_starting_ray(tmp_path, tiny_ckpt, monkeypatch, capsys):
    import shutil

    import cluster.driver

    monkeypatch.setattr(cluster.driver, "run", lambda req: pytest.fail("the run must not start"))
    parent = tmp_path / "models"
    shutil.copytree(tiny_ckpt, parent / "tiny-s2v")
    code = main(_run_argv(tmp_path, parent))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{parent}: incomplete S2V checkpoint folder; missing: config.json (DiT config)" in err
    assert f"checkpoint folders inside it: {parent / 'tiny-s2v'}" in err
    assert not (tmp_path / "run").exists()


def test_run_names_each_missing_part_of_a_checkpoint(tmp_path, tiny_ckpt, monkeypatch, capsys):
    import shutil

    import cluster.driver

    monkeypatch.setattr(cluster.driver, "run", lambda req: pytest.fail("the run must not start"))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    shutil.rmtree(ckpt / "wav2vec2-large-xlsr-53-english")
    (ckpt / "Wan2.1_VAE.pth").unlink()
    assert main(_run_argv(tmp_path, ckpt)) == 2
    err = capsys.readouterr().err
    assert "missing: Wan2.1_VAE.pth (VAE); wav2vec2-large-xlsr-53-english/ (wav2vec2 folder)" in err, err
    (ckpt / "Wan2.1_VAE.pth").write_bytes(b"x")
    (ckpt / "wav2vec2-large-xlsr-53-english").mkdir()
    (ckpt / "config.json").write_text("{not json")
    assert main(_run_argv(tmp_path, ckpt)) == 2
    assert f"{ckpt / 'config.json'}: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
