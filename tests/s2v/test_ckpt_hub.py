"""``--ckpt`` as a Hugging Face repo id (render.model.hub), through ``s2v run`` and ``s2v render-shot``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import huggingface_hub.constants
import pytest

from render.model.checkpoint import CheckpointError
from render.model.hub import is_hub_repo_id, resolve_checkpoint
from s2v.cli import main
from tinymodel.checkpoint import write_tiny_checkpoint

REPO = "Wan-AI/Wan2.2-S2V-14B"


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and a working directory where ``Wan-AI/`` is no folder."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    # huggingface_hub read the environment when it was imported: point its constant there too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _run_argv(tmp_path: Path, ckpt: str) -> list[str]:
    return ["run", str(tmp_path / "m.parquet"), "--run-dir", str(tmp_path / "run"), "--ckpt", ckpt,
            "--no-media-check"]


def test_a_repo_id_offline_is_one_line_naming_the_download_command(tmp_path, empty_hub_cache, monkeypatch, capsys):
    # The real snapshot_download runs: with HF_HUB_OFFLINE=1 it only looks into the (empty) cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(_run_argv(tmp_path, REPO))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "HF_HUB_OFFLINE=1" in err
    assert f"download {REPO} --local-dir ./Wan2.2-S2V-14B" in err
    assert "pass --ckpt ./Wan2.2-S2V-14B" in err
    assert not (tmp_path / "run").exists()


def test_an_existing_path_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("no download"))
    folder = tmp_path / "Wan-AI" / "Wan2.2-S2V-14B"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint(REPO) == Path(REPO)  # a relative folder shaped like a repo id wins
    assert resolve_checkpoint(folder) == folder


@pytest.mark.parametrize("value", ["/no/such/ckpt", "./ckpt-missing", "models/missing"])
def test_a_missing_path_that_is_no_repo_id_is_not_found(value, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("no download"))
    (tmp_path / "models").mkdir()  # models/missing: its first part is a folder here, so a path
    monkeypatch.chdir(tmp_path)
    assert not is_hub_repo_id(value)
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        resolve_checkpoint(value)
    assert main(_run_argv(tmp_path, value)) == 2
    assert f"--ckpt {value}: checkpoint folder not found" in capsys.readouterr().err


def test_a_failed_download_names_the_cause_and_the_command(empty_hub_cache, monkeypatch):
    def unreachable(repo_id, **kw):
        raise OSError("Name or service not known\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(CheckpointError) as exc:
        resolve_checkpoint(REPO)
    message = str(exc.value)
    assert "\n" not in message
    assert "OSError: Name or service not known" in message and f"download {REPO} --local-dir" in message


def _fake_hub(monkeypatch, tmp_path) -> tuple[Path, list]:
    folder = write_tiny_checkpoint(tmp_path / "hf-home" / "hub" / "snapshot")
    calls = []

    def snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return folder, calls


def test_run_downloads_a_repo_id_and_renders_from_the_snapshot(tmp_path, empty_hub_cache, monkeypatch):
    import cluster.driver

    folder, calls = _fake_hub(monkeypatch, tmp_path)
    seen = []
    monkeypatch.setattr(cluster.driver, "run", lambda req: seen.append(req) or 0)
    assert main(_run_argv(tmp_path, REPO)) == 0
    # The CLI leaves the hub reachable for a repo id (it defaults HF_HUB_OFFLINE=1 for folders).
    assert calls == [(REPO, {"local_files_only": False})]
    assert seen[0].settings.ckpt == str(folder.resolve())


def test_render_shot_loads_the_models_from_the_snapshot(tmp_path, empty_hub_cache, monkeypatch):
    import render.model.components as components
    import render.shot.pipeline as pipeline

    folder, calls = _fake_hub(monkeypatch, tmp_path)
    for name in ("a.wav", "f.png"):
        (tmp_path / name).write_bytes(b"x")
    loaded = []
    monkeypatch.setattr(components, "S2VModels", lambda ckpt, **kw: loaded.append(Path(ckpt)) or "models")
    result = SimpleNamespace(output="o.mp4", width=8, height=8, frames=1, duration_s=0.04, clips=1, seed=0,
                             wall_s=0.0)
    monkeypatch.setattr(pipeline, "render_shot", lambda pipe, *a, **k: result if pipe == "models" else None)
    code = main(["render-shot", "--ckpt", REPO, "--audio", str(tmp_path / "a.wav"), "--image",
                 str(tmp_path / "f.png"), "--prompt", "p", "--out", str(tmp_path / "o.mp4"), "--device", "cpu"])
    assert code == 0
    assert [c[0] for c in calls] == [REPO] and loaded == [folder]
