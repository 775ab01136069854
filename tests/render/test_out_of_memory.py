"""Out of GPU memory (render/model/out_of_memory.py): the one-line message, render-shot's exit
code 8, and the run's rule that such a shot is not retried."""

from __future__ import annotations

import os
import time

import pytest
import torch

from cluster.ledger import Failure, ShotStatus
from cluster.scheduler import ERROR, failure_signature, judge_failure
from cluster.settings import EngineOptions
from render.model.out_of_memory import is_out_of_memory, memory_report, out_of_memory_message
from s2v.cli import EXIT_OUT_OF_MEMORY, main

ALLOCATOR_TEXT = ("CUDA out of memory. Tried to allocate 3.52 GiB. GPU 0 has a total capacity of 23.55 GiB of "
                  "which 1.25 GiB is free. Including non-PyTorch memory, this process has 22.28 GiB memory in use.")


def test_message_names_size_memory_and_the_options_that_fit():
    exc = torch.OutOfMemoryError(ALLOCATOR_TEXT)
    msg = out_of_memory_message(exc, width=1280, height=720, size="1280*720", device="cpu", offload=False,
                                group_size=1)
    assert "\n" not in msg
    assert msg.startswith("out of GPU memory rendering 1280x720 (needed 3.52 GiB more, 1.25 GiB free of 23.55 GiB)")
    assert "--offload" in msg and "a smaller size than 1280*720" in msg and "--group-size 2" in msg
    offloaded = out_of_memory_message(exc, width=None, height=None, size="832*480", device="cpu", offload=True)
    assert "rendering size 832*480" in offloaded
    assert "--offload" not in offloaded and "--group-size" not in offloaded  # on already; one device


def test_out_of_memory_is_recognised_and_figures_are_optional():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert memory_report(torch.OutOfMemoryError("no figures"), "cpu") == "no memory figures in the error"


def test_an_out_of_memory_failure_is_not_retried():
    status = ShotStatus()
    msg = "out of GPU memory rendering 64x64"
    failure = Failure(1, ERROR, failure_signature(ERROR, "ShotOutOfMemory", msg), msg, time.time())
    verdict = judge_failure(status, failure, max_failures=3, retryable=False)
    assert not verdict.retry and verdict.reason == msg and status.failures == [failure]
    other = Failure(1, ERROR, failure_signature(ERROR, "ValueError", "x"), "x", time.time())
    assert judge_failure(ShotStatus(), other, max_failures=3).retry


def test_offload_is_for_groups_of_one_gpu():
    EngineOptions(offload=True, group_size=1).validate()
    with pytest.raises(ValueError, match="--offload streams the DiT to one GPU; --group-size 2"):
        EngineOptions(offload=True, group_size=2).validate()
    with pytest.raises(ValueError, match="weight sharding would move the streamed blocks"):
        EngineOptions(offload=True, group_size=1, parallel="shard_weights=1").validate()


def test_render_shot_out_of_memory_is_one_line_and_exit_8(tmp_path, capsys, monkeypatch):
    import render.model.components as components
    import render.shot.pipeline as pipeline

    for name in ("a.wav", "f.png"):
        (tmp_path / name).write_bytes(b"x")
    made = {}

    def models(*args, **kwargs):
        made.update(kwargs)
        return object()

    def render_shot(*args, **kwargs):
        raise torch.OutOfMemoryError(ALLOCATOR_TEXT)

    monkeypatch.setattr(components, "S2VModels", models)
    monkeypatch.setattr(pipeline, "render_shot", render_shot)
    code = main(["render-shot", "--ckpt", str(tmp_path), "--audio", str(tmp_path / "a.wav"), "--image",
                 str(tmp_path / "f.png"), "--prompt", "p", "--out", str(tmp_path / "o.mp4"), "--device", "cpu",
                 "--size", "1280*720"])
    err = capsys.readouterr().err
    assert code == EXIT_OUT_OF_MEMORY == 8, err
    assert len(err.strip().splitlines()) == 1, err
    assert "out of GPU memory rendering size 1280*720" in err and "--offload" in err and "3.52 GiB" in err
    assert made["offload"] is False
    main(["render-shot", "--ckpt", str(tmp_path), "--audio", str(tmp_path / "a.wav"), "--image",
          str(tmp_path / "f.png"), "--prompt", "p", "--out", str(tmp_path / "o.mp4"), "--device", "cpu", "--offload"])
    assert made["offload"] is True



def test_expandable_segments_unless_the_user_configured_the_allocator(monkeypatch, tmp_path):
    from render.model.out_of_memory import (
        ALLOCATOR_ENV,
        ALLOCATOR_ENVS,
        EXPANDABLE_SEGMENTS,
        prefer_expandable_segments,
    )

    for name in ALLOCATOR_ENVS:
        monkeypatch.delenv(name, raising=False)
    for name, value in (("PYTORCH_ALLOC_CONF", "max_split_size_mb:512"), (ALLOCATOR_ENV, "")):
        monkeypatch.setenv(name, value)
        assert not prefer_expandable_segments()  # the user's setting (even an empty one) stands
        assert os.environ[name] == value and (name == ALLOCATOR_ENV or ALLOCATOR_ENV not in os.environ)
        monkeypatch.delenv(name)
    assert prefer_expandable_segments()
    assert os.environ[ALLOCATOR_ENV] == EXPANDABLE_SEGMENTS
    # Every s2v command asks for it before its own work (render-shot loads the models inside).
    monkeypatch.delenv(ALLOCATOR_ENV)
    main(["validate", "--no-media-check", str(tmp_path / "missing.parquet")])
    assert os.environ[ALLOCATOR_ENV] == EXPANDABLE_SEGMENTS
