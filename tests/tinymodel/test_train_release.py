"""tinymodel/train_release.sh: the shipped model's recipe chains its stages and only passes flags
that tinymodel.train accepts (run with a stand-in trainer that records its arguments)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tinymodel.train import parse_args

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tinymodel" / "train_release.sh"

FAKE_TRAIN = """
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--out") + 1])
with open(os.environ["CALLS"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
(out / "ckpt").mkdir(parents=True, exist_ok=True)
(out / "Wan2.1_VAE.pth").write_text("vae " + str(out))
if "--vae-only" not in args:
    (out / "ckpt" / "config.json").write_text("{}")
    (out / "ckpt" / "diffusion_pytorch_model.safetensors").write_text("dit " + str(out))
"""


def _run(tmp_path: Path, *extra: str) -> list[list[str]]:
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    calls = tmp_path / "calls.jsonl"
    calls.unlink(missing_ok=True)
    env = {"PATH": "/usr/bin:/bin", "CALLS": str(calls), "TRAIN_CMD": f"{sys.executable} {fake}",
           "SHIP_DIR": str(tmp_path / "ship")}
    subprocess.run(["bash", str(SCRIPT), str(tmp_path / "work"), *extra], check=True, env=env, cwd=ROOT,
                   capture_output=True, text=True)
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def test_recipe_chains_seven_stages_with_valid_flags_and_resumes(tmp_path):
    work = tmp_path / "work"
    calls = _run(tmp_path)
    assert [c[c.index("--out") + 1] for c in calls] == [str(work / str(n)) for n in range(1, 8)]
    for c in calls:
        parse_args(c)  # every flag of the recipe exists in the training script (SystemExit otherwise)
    init_vae = [c[c.index("--init-vae") + 1] if "--init-vae" in c else None for c in calls]
    assert init_vae == [None, str(work / "1" / "Wan2.1_VAE.pth"), str(work / "2" / "Wan2.1_VAE.pth")] + [
        str(work / "3" / "Wan2.1_VAE.pth")] * 4
    dit = "ckpt/diffusion_pytorch_model.safetensors"
    assert [c[c.index("--init-dit") + 1] for c in calls[4:]] == [str(work / str(n) / dit) for n in (4, 5, 6)]
    assert all("--vae-only" in c for c in calls[:3]) and not any("--vae-only" in c for c in calls[3:])
    assert all("--vae-finetune" in c for c in calls[1:3])
    seeds = [c[c.index("--seed") + 1] if "--seed" in c else "0" for c in calls[3:]]
    assert seeds == ["0", "1", "2", "3"]  # new characters for each DiT stage
    # Stage 7 trains on the renderer's hand-off (the seams), the earlier ones on ground truth.
    assert [parse_args(c).handoff for c in calls[3:]] == ["ground-truth"] * 3 + ["renderer"]

    assert _run(tmp_path) == []  # every stage finished: nothing runs again
    (work / "5" / dit).unlink()
    again = _run(tmp_path)
    assert [c[c.index("--out") + 1] for c in again] == [str(work / "5")]  # only the missing stage


def test_one_stage_and_ship(tmp_path):
    calls = _run(tmp_path, "2")
    assert len(calls) == 1 and calls[0][calls[0].index("--out") + 1] == str(tmp_path / "work" / "2")
    _run(tmp_path)
    assert _run(tmp_path, "ship") == []
    ship = tmp_path / "ship"
    # stage 6 until a stage-7 variant beats it on long chains (SHIP_STAGE picks another)
    assert (ship / "diffusion_pytorch_model.safetensors").read_text() == f"dit {tmp_path / 'work' / '6'}"
    assert (ship / "Wan2.1_VAE.pth").read_text() == f"vae {tmp_path / 'work' / '3'}"
    assert (ship / "config.json").is_file()
