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
