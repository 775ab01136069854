"""Scripts for the GPU machines, checked on the CPU: carry_slim.sh gives back exactly the index it
took, and bench_fast_speed.py's phases."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_carry_slim_leaves_data_out_and_puts_the_index_back(tmp_path):
    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    script = ["bash", str(ROOT / "benchmarks" / "carry_slim.sh")]
    tracked = _git(repo, "ls-files").splitlines()
    exclude_before = (repo / ".git" / "info" / "exclude").read_text()
    out = subprocess.run([*script, "on"], cwd=repo, check=True, capture_output=True, text=True).stdout
    left_out = [f for f in tracked if f not in _git(repo, "ls-files").splitlines()]
    assert any(f.startswith("tests/data/") for f in left_out) and "tinymodel/tiny-s2v/Wan2.1_VAE.pth" in left_out
    assert all((repo / f).is_file() for f in left_out)  # the files stay
    assert _git(repo, "status", "--porcelain", "--untracked-files=all").count("??") == 0  # ignored, not untracked
    assert f"{len(left_out)} files left out" in out
    again = subprocess.run([*script, "on"], cwd=repo, capture_output=True, text=True)
    assert again.returncode == 2  # twice is refused
    commit = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"],
                            cwd=repo, capture_output=True, text=True)
    assert commit.returncode != 0 and "carry_slim.sh is on" in commit.stderr  # it would delete the data
    subprocess.run([*script, "off"], cwd=repo, check=True, capture_output=True)
    assert _git(repo, "ls-files").splitlines() == tracked
    assert _git(repo, "status", "--porcelain") == ""
    assert (repo / ".git" / "info" / "exclude").read_text() == exclude_before
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()


def test_bench_fast_speed_phases_on_the_tiny_model(tmp_path):
    from benchmarks.bench_fast_speed import main

    assert main(["--tiny", "--phases", "fast", "--out", str(tmp_path / "fast.json")]) == 0
    r = json.loads((tmp_path / "fast.json").read_text())
    size = r["sizes"]["64x64"]
    assert "exact" not in size and "speedup_40" not in size and size["fast"]["forwards_40"] < 80


@pytest.mark.parametrize("step", ["1", "2", "3", "4", "ablation"])
def test_gpu_session_steps_name_scripts_that_exist(step, tmp_path):
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), step], cwd=ROOT, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "DRY_RUN": "1"})
    assert res.returncode == 0, res.stderr
    commands = [line[2:] for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert commands
    for cmd in commands:
        for word in cmd.split():
            if word.endswith((".sh", ".py")) and "/" in word and not word.startswith("/"):
                assert (ROOT / word).is_file(), f"step {step}: {word} does not exist"
