"""Where the preparation actor runs umT5: the CPU keeps it loaded between chunks; a GPU loads it
per chunk of prompts and releases it at once (it must not stay on the render group's card)."""

from __future__ import annotations

import pytest
import torch

from cluster.prep import PrepWorker
from cluster.settings import EngineOptions, RunSettings


def _worker(tmp_path, ckpt, device: str) -> PrepWorker:
    return PrepWorker(str(tmp_path / "run"), RunSettings(ckpt=str(ckpt)).to_dict(), text_encoder_device=device)


def test_cpu_encoder_stays_loaded_and_writes_embeddings(tmp_path, tiny_ckpt):
    worker = _worker(tmp_path, tiny_ckpt, "cpu")
    worker._embed(["a woman talks", "a man sings"])
    assert worker._encoder is not None  # kept for the actor's next chunk, as before the option
    for text in ("a woman talks", "a man sings"):
        emb = torch.load(worker.run.prompt_file(text), weights_only=True)
        assert emb.dtype == torch.float32 and emb.dim() == 2 and emb.shape[1] == 4096
        # The file holds this prompt's rows only, not the batch it was embedded with (at the 14B's
        # text_len 512 a batch row is 8 MiB: a chunk of 16 texts made every file ~128 MiB).
        assert emb.untyped_storage().nbytes() == emb.numel() * emb.element_size()
        assert worker.run.prompt_file(text).stat().st_size < emb.numel() * emb.element_size() + 4096


def test_gpu_encoder_is_loaded_on_that_device_and_released_after_the_chunk(tmp_path, tiny_ckpt, monkeypatch):
    import render.model.text_encoder as text_encoder

    real_load = text_encoder.load_text_encoder
    devices = []

    def load_on_cpu(*args, device, **kwargs):  # no GPU here: record the device asked for
        devices.append(device)
        return real_load(*args, device="cpu", **kwargs)

    monkeypatch.setattr(text_encoder, "load_text_encoder", load_on_cpu)
    worker = _worker(tmp_path / "gpu", tiny_ckpt, "cuda")
    worker._embed(["a woman talks"])
    assert devices == ["cuda"]
    assert worker._encoder is None  # released right after the chunk's prompts
    worker._embed(["a man sings"])
    assert devices == ["cuda", "cuda"] and worker._encoder is None

    reference = _worker(tmp_path / "cpu", tiny_ckpt, "cpu")
    reference._embed(["a woman talks"])
    got = torch.load(worker.run.prompt_file("a woman talks"), weights_only=True)
    want = torch.load(reference.run.prompt_file("a woman talks"), weights_only=True)
    assert torch.equal(got, want)


def test_gpu_encoder_is_released_when_encoding_fails(tmp_path, tiny_ckpt, monkeypatch):
    import render.model.text_encoder as text_encoder

    real_load = text_encoder.load_text_encoder

    def failing_encoder(*args, device, **kwargs):
        enc = real_load(*args, device="cpu", **kwargs)
        enc.encode = lambda texts: (_ for _ in ()).throw(RuntimeError("CUDA error: an illegal memory access"))
        return enc

    monkeypatch.setattr(text_encoder, "load_text_encoder", failing_encoder)
    worker = _worker(tmp_path, tiny_ckpt, "cuda:0")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        worker._embed(["a woman talks"])
    assert worker._encoder is None


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_engine_option_accepts_devices(device):
    EngineOptions(prep_text_encoder_device=device).validate()


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", ""])
def test_engine_option_rejects_other_devices(device):
    with pytest.raises(ValueError, match="text encoder device"):
        EngineOptions(prep_text_encoder_device=device).validate()


def test_where_umt5_runs_is_part_of_every_shot_key(tiny_ckpt, monkeypatch):
    from cluster import fingerprint
    from cluster.settings import RunSettings

    monkeypatch.setattr(fingerprint, "code_digest", lambda: "code")
    settings = RunSettings(ckpt=str(tiny_ckpt))
    cpu, gpu0, gpu1 = (fingerprint.environment(settings, d) for d in ("cpu", "cuda:0", "cuda:1"))
    assert cpu["code"] != gpu0["code"] and gpu0 == gpu1 and cpu["model"] == gpu0["model"]
    assert fingerprint.environment(settings) == cpu


def test_run_command_passes_the_device_to_the_preparation_actor(tmp_path, tiny_ckpt, monkeypatch):
    from tests.cluster.helpers import request_from_cli

    req = request_from_cli(monkeypatch, tmp_path, tiny_ckpt, "--text-encoder-device", "cuda")
    assert req.engine.prep_text_encoder_device == "cuda"
