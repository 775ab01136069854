"""What a CUDA rank does with its GPU, checked without one: the clip timer reads the time only after
the GPU has finished the queued work (unsynchronised, it measured when a step's kernels were launched:
on an H100 4.1 s for a 5.8 s step); the memory cap test hook."""

from types import SimpleNamespace

import torch

from cluster import rank


def test_step_time_waits_for_the_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    timer = rank._ClipTimer(metrics=None, steps=2)
    timer.on_step(0, 0, 2)
    timer.on_step(0, 1, 2)
    timer.clip_done(frames=80)
    assert calls == ["sync"] * 3


def test_no_gpu_no_wait(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: (_ for _ in ()).throw(AssertionError("synchronised")))
    timer = rank._ClipTimer(metrics=None, steps=1)
    timer.on_step(0, 0, 1)
    timer.clip_done(frames=80)
    assert timer.last_step >= timer.clip_start - 1


def test_memory_cap_hook(monkeypatch):
    fractions = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "a test card")
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: fractions.append((f, d)))
    monkeypatch.delenv(rank.MEMORY_CAP_ENV, raising=False)
    rank._apply_memory_cap(torch.device("cuda", 0))
    assert fractions == []  # unset: no cap
    monkeypatch.setenv(rank.MEMORY_CAP_ENV, "54")
    rank._apply_memory_cap(torch.device("cuda", 0))
    assert fractions == [(54 / 80, 0)]
