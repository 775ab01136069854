"""tinymodel.chain_table: one column per chain_eval result, the values where their rows say."""

import json

import pytest

from tinymodel.chain_table import table


def _summary(boundary: float, drift_last: float) -> dict:
    return {"boundary_mean_over_p95": boundary, "boundary_max_over_p95": boundary + 0.5, "lipsync_mean": 0.79,
            "lipsync_min": 0.7, "lipsync_first_10s_mean": 0.86,
            "features_kept_last_clip": {"left_eye": 0.021, "right_eye": 0.0, "mouth": 0.85},
            "features_kept_min_clip": {"left_eye": 0.0, "right_eye": 0.0, "mouth": 0.675},
            "colour_drift_first_clip": 2.2, "colour_drift_last_clip": drift_last, "colour_drift_max": 14.9}


def test_columns_and_rows(tmp_path):
    for name, b, d in (("stage6", 1.249, 10.71), ("noise", 1.655, 13.8)):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"summary": _summary(b, d), "samples": 3, "seconds": 60.0, "steps": 8, "guidance": 4.5, "device": "cuda"}))
    lines = table([tmp_path / "stage6.json", tmp_path / "noise.json"]).splitlines()
    assert lines[0] == "| metric | stage6 | noise | target |"
    assert lines[2] == "| boundary jump / within-clip p95, mean | 1.25 | 1.66 | <= 1.5 |"
    assert "| colour drift (Lab), first / last clip | 2.2 / 10.7 | 2.2 / 13.8 | <= 3 |" in lines
    assert "| eyes kept, last clip (left / right) | 0.02 / 0.00 | 0.02 / 0.00 | kept |" in lines
    assert lines[-1] == "3 held-out characters x 60.0 s, 8 steps, guidance 4.5, device cuda"


def test_not_a_chain_eval_result(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SystemExit, match="x.json: no 'summary' key"):
        table([tmp_path / "x.json"])


def test_chain_eval_needs_a_clip_boundary(tmp_path, capsys):
    from tinymodel.chain_eval import main

    with pytest.raises(SystemExit):
        main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "o.json"), "--seconds", "5"])
    assert "needs at least 2 clips" in capsys.readouterr().err
