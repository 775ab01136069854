"""Crash safety: SIGKILL at random instants never leaves a partial final file, and a killed
segment render resumes to identical frames (tests/render/crash_driver.py does the killing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _drive(tmp_path: Path, mode: str, kills: int, seed: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.render.crash_driver", str(tmp_path / mode), mode, str(kills),
                          str(seed)], capture_output=True, text=True, cwd=REPO, timeout=330,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(360)
def test_random_kills_during_encode_never_leave_a_bad_final_file(tmp_path):
    stats = _drive(tmp_path, "stitch", kills=50, seed=1)
    print(stats)
    assert stats["kills_mid_run"] >= 50, stats
    assert stats["bad"] == 0, stats
    # Both outcomes of a kill were exercised: nothing published, and the previous version kept.
    assert stats["absent_after"] > 0 and stats["previous_kept"] > 0, stats
    assert stats["kills_leaving_temps"] > 0 and stats["temps_left_after_sweep"] == 0, stats


@pytest.mark.timeout(360)
def test_killed_segment_render_resumes_to_identical_frames(tmp_path):
    stats = _drive(tmp_path, "segment", kills=20, seed=2)
    print(stats)
    assert stats["kills_mid_run"] >= 20 and stats["resumed_different"] == 0 and stats["resumed_identical"] >= 1, stats
    assert stats["temps_left"] == 0, stats  # a resumed render removes the killed attempt's temporary files
