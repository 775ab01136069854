"""``s2v qa``'s output: the summary on stdout, the full JSON report only on request."""

from __future__ import annotations

import json

import numpy as np
import pytest

from render.media.video import Mp4Writer
from s2v.cli import main


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa_output") / "shot.mp4"
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8), 40, axis=0)
    with Mp4Writer(path, 64, 64, fps=16) as w:
        w.write(frames)
    return path


def test_qa_prints_the_summary_without_the_json_report(video, tmp_path, capsys):
    assert main(["qa", str(video), "--curves-dir", str(tmp_path / "curves")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("inside clips: p50") and "wrote " in out
    assert '"inside"' not in out and not any(line.startswith("{") for line in out.splitlines())


def test_qa_json_prints_only_the_report_on_stdout(video, capsys):
    assert main(["qa", str(video), "--no-curves", "--json"]) == 0
    out, err = capsys.readouterr()
    assert set(json.loads(out)) >= {"inside", "clip_boundaries", "joins", "colour"}
    assert err.startswith("inside clips: p50")  # the summary still shows, on stderr


def test_qa_json_out_creates_its_folder(video, tmp_path, capsys):
    target = tmp_path / "reports" / "new" / "qa.json"
    assert main(["qa", str(video), "--no-curves", "--json-out", str(target)]) == 0
    assert "inside" in json.loads(target.read_text())
    out = capsys.readouterr().out
    assert out.startswith("inside clips: p50") and '"inside"' not in out
