"""The random-weight test checkpoint writer (tinymodel/test_checkpoint.py).

The 14B layout is checked by shapes only (models on the meta device, no weights made) against
the official key dumps in tests/data/wan_s2v_key_dumps.json.gz (copied from shared/wan_s2v);
the writing itself runs through the same code at small shapes on the CPU and is loaded back
with the product's loaders.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from tinymodel import test_checkpoint as tc

DUMPS = Path(__file__).resolve().parents[1] / "data" / "wan_s2v_key_dumps.json.gz"


@pytest.fixture(scope="module")
def dumps() -> dict:
    with gzip.open(DUMPS, "rt") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def release_shapes() -> dict:
    return tc.key_shapes(tc.RELEASE)


def _listing(shapes: dict) -> list:
    return [[k, list(s)] for k, s in shapes.items()]


def test_dit_keys_equal_the_release_dump(dumps, release_shapes):
    assert _listing(release_shapes["dit"]) == [[k, s] for k, s, _ in dumps["dit"]]  # order too
    assert {d for _, _, d in dumps["dit"]} == {"bfloat16"} and tc.STORAGE_DTYPE["dit"] == torch.bfloat16
    assert sum(math.prod(s) for s in release_shapes["dit"].values()) == 16_295_755_609


def test_vae_keys_equal_the_release_dump(dumps, release_shapes):
    assert _listing(release_shapes["vae"]) == [[k, s] for k, s, _ in dumps["vae"]]
    assert {d for _, _, d in dumps["vae"]} == {"float32"} and tc.STORAGE_DTYPE["vae"] == torch.float32
    assert sum(math.prod(s) for s in release_shapes["vae"].values()) == 126_892_531


def test_t5_keys_follow_the_official_file(dumps, release_shapes):
    golden = dumps["t5_golden_tiny"]
    # Key order and shapes of an official umT5 file (tiny config) ...
    assert _listing(tc.t5_key_shapes(golden["config"])) == [[k, s] for k, s, _ in golden["keys"]]
    assert {d for _, _, d in golden["keys"]} == {"bfloat16"} and tc.STORAGE_DTYPE["t5"] == torch.bfloat16
    # ... and the release's sizes (SPEC 1.1 / 1.4: 242 tensors, 5.68 B params, 11.4 GB bf16).
    t5 = release_shapes["t5"]
    assert len(t5) == 242
    assert sum(math.prod(s) for s in t5.values()) == 5_680_910_336
    assert t5["token_embedding.weight"] == (256384, 4096)
    assert t5["blocks.23.attn.q.weight"] == (4096, 4096)
    assert t5["blocks.23.ffn.gate.0.weight"] == (10240, 4096)
    assert t5["blocks.23.ffn.fc2.weight"] == (4096, 10240)
    assert t5["blocks.0.pos_embedding.embedding.weight"] == (32, 64)


def test_wav2vec2_is_the_large_xlsr_ctc_model(release_shapes):
    w2v = release_shapes["w2v"]
    assert len(w2v) == 424
    assert sum(math.prod(s) for s in w2v.values()) == 315_472_545  # the release's "315M params"
    assert w2v["wav2vec2.feature_extractor.conv_layers.0.conv.weight"] == (512, 1, 10)
    assert w2v["wav2vec2.feature_projection.projection.weight"] == (1024, 512)
    assert w2v["wav2vec2.encoder.layers.23.feed_forward.intermediate_dense.weight"] == (4096, 1024)
    assert w2v["wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"] == (1024, 64, 128)
    assert w2v["lm_head.weight"] == (33, 1024)


def test_dit_shards_like_the_release(release_shapes):
    shards = tc.plan_shards(release_shapes["dit"], 2, tc.SHARD_BYTES)
    sizes = [sum(math.prod(release_shapes["dit"][k]) for k in s) * 2 / 1e9 for s in shards]
    assert [round(s, 2) for s in sizes] == [9.97, 9.89, 9.96, 2.77]  # the release's 4 files
    assert tc.part_bytes(release_shapes) == {"dit": 32_591_511_218, "vae": 507_570_124,
                                             "t5": 11_361_820_672, "w2v": 1_261_890_180}


def _small_spec() -> tc.CheckpointSpec:
    from tinymodel.checkpoint import TINY_DIT, TINY_T5

    w2v = dict(tc.RELEASE_W2V, hidden_size=TINY_DIT.audio_dim, num_attention_heads=2, intermediate_size=64,
               conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    return tc.CheckpointSpec(dit=TINY_DIT, vae_dim=8, t5=dict(TINY_T5), w2v=w2v, shard_bytes=200_000)


def test_written_checkpoint_loads(tmp_path):
    """The 14B code path at small shapes: files, dtypes and the product's loaders."""
    from safetensors import safe_open
    from transformers import Wav2Vec2ForCTC

    from render.model.components import S2VModels

    spec = _small_spec()
    times = tc.write_checkpoint(tmp_path, spec, device="cpu", seed=5)
    assert set(times) == set(tc.PARTS)
    index = json.loads((tmp_path / tc.DIT_INDEX).read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) > 1 and shard_files[-1].endswith(f"-of-{len(shard_files):05d}.safetensors")
    assert not list(tmp_path.rglob("*.partial"))
    with safe_open(tmp_path / shard_files[0], "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16
    t5 = torch.load(tmp_path / tc.T5_FILE, weights_only=True, mmap=True)
    assert list(t5) == list(tc.t5_key_shapes(spec.t5)) and t5["norm.weight"].dtype == torch.bfloat16

    models = S2VModels(tmp_path, device="cpu")
    dit = models.dit
    assert sum(p.numel() for p in dit.parameters()) == sum(math.prod(s) for s in tc.dit_key_shapes(spec.dit).values())
    assert models.vae is not None
    (emb,) = models.embed_prompts(["a test"])
    assert emb.shape == (3, 4096) and torch.isfinite(emb).all()  # "a", "test" -> unk, eos
    _, info = Wav2Vec2ForCTC.from_pretrained(tmp_path / tc.W2V_DIR, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    feats = models.audio_frames(torch.randn(16000).numpy(), num_video_frames=8, fps=16)
    assert feats.shape == (1, 25, spec.w2v["hidden_size"], 8) and torch.isfinite(feats).all()

    # Same seed and device: same values; an existing part is kept.
    again = tmp_path / "again"
    tc.write_checkpoint(again, spec, device="cpu", seed=5)
    assert torch.equal(torch.load(again / tc.VAE_FILE)["conv1.weight"], torch.load(tmp_path / tc.VAE_FILE)["conv1.weight"])
    assert tc.write_checkpoint(tmp_path, spec, device="cpu", seed=5) == {}


def test_cli_tiny_writes_a_loadable_checkpoint(tmp_path, capsys):
    from render.model.components import S2VModels

    assert tc.main([str(tmp_path / "ck"), "--size", "tiny"]) == 0
    assert "GB" in capsys.readouterr().out
    models = S2VModels(tmp_path / "ck", device="cpu")
    assert models.dit.cfg.num_layers == 2 and models.vae is not None


def test_refuses_cuda_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no GPU"):
        tc.write_checkpoint(tmp_path, _small_spec(), device="cuda")
    with pytest.raises(ValueError, match="size"):
        tc.write_test_checkpoint(tmp_path, size="7b")
