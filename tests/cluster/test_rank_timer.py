"""The rank's clip timer reads the time only after the GPU has finished the queued work: unsynchronised,
it measured when a step's kernels were launched (on an H100 4.1 s for a 5.8 s step)."""

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
