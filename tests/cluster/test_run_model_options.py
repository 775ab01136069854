"""`s2v run --fp8 --vae-dtype bf16`: run-wide model options, validated and keyed only when set."""

from __future__ import annotations

import pytest

from cluster.fingerprint import _ROW_NOT_RENDER, _RUN_NOT_FRAMES, InputHashes, json_digest, shot_key
from cluster.settings import RunSettings
from manifests import Shot
from tests.cluster.helpers import request_from_cli


def _shot(tmp_path) -> Shot:
    for name in ("a.wav", "a.png"):
        (tmp_path / name).write_bytes(name.encode())
    return Shot(shot_id="a", audio=str(tmp_path / "a.wav"), image=str(tmp_path / "a.png"), prompt="p",
                output=str(tmp_path / "a.mp4"))


def test_defaults_keep_the_key_shots_had_before_the_options_existed(tmp_path):
    shot, run = _shot(tmp_path), RunSettings(ckpt=str(tmp_path))
    env, hashes = {"model": "m", "code": "c"}, InputHashes(tmp_path / "h.json")
    key = shot_key(shot, run, env, hashes)
    new = {"fast", "fp8", "vae_dtype"}
    old = json_digest([{k: v for k, v in shot.to_row().items() if k not in _ROW_NOT_RENDER and k not in new},
                       {k: v for k, v in run.to_dict().items() if k not in _RUN_NOT_FRAMES and k not in new}])
    assert key.parts["render"] == old
    for changed in (RunSettings(ckpt=str(tmp_path), fp8=True), RunSettings(ckpt=str(tmp_path), vae_dtype="bf16")):
        assert shot_key(shot, changed, env, hashes).frames != key.frames


def test_vae_dtype_is_validated(tmp_path):
    with pytest.raises(ValueError, match="vae_dtype='fp16'"):
        RunSettings(ckpt=str(tmp_path), vae_dtype="fp16")


def test_run_command_passes_the_model_options(tmp_path, tiny_ckpt, monkeypatch):
    req = request_from_cli(monkeypatch, tmp_path, tiny_ckpt, "--fp8", "--vae-dtype", "bf16")
    assert (req.settings.fp8, req.settings.vae_dtype) == (True, "bf16")


def test_a_fast_row_in_a_run_of_several_gpus_per_group_is_an_invalid_row(tmp_path, tiny_ckpt):
    """The step cache runs on one GPU per shot: a manifest `fast` cell that is true in a run with
    --group-size 2 fails that row with a row-precise error (the other rows render); --strict
    refuses the run."""
    from cluster import exit_codes as ec
    from cluster.driver import load_manifest
    from tests.cluster.helpers import request, shot_rows, write_rows

    rows = shot_rows(tmp_path, [1.0, 1.0, 1.0], tmp_path / "out")
    rows[1]["fast"], rows[2]["fast"] = True, False
    manifest = write_rows(rows, tmp_path / "m.parquet")
    loaded = load_manifest(request(manifest, tmp_path / "run", tiny_ckpt, engine={"group_size": 2}))
    assert [s.shot_id for s in loaded.shots] == [rows[0]["shot_id"], rows[2]["shot_id"]]
    (bad,) = loaded.invalid
    assert bad.row == 1 and bad.shot_id == rows[1]["shot_id"]
    assert bad.problems[0].column == "fast" and "--group-size 1" in bad.problems[0].message
    # one GPU per group: the row renders
    one = load_manifest(request(manifest, tmp_path / "run", tiny_ckpt, engine={"group_size": 1}))
    assert len(one.shots) == 3 and not one.invalid
    strict = load_manifest(request(manifest, tmp_path / "run", tiny_ckpt, engine={"group_size": 2}, strict=True))
    assert strict == ec.EXIT_INVALID
