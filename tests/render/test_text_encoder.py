"""umT5 text encoder: golden parity (tiny official-key checkpoint), config inference, strict key
checks, and the tokenize -> encode -> trim path with a tiny tokenizer built here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from render.model.checkpoint import CheckpointError
from render.model.text_encoder import (
    UMT5TextEncoder,
    clean_prompt,
    infer_umt5_config,
    load_text_encoder,
)

CKPT_NAME = "models_t5_umt5-xxl-enc-bf16.pth"
TOL = 1e-4


@pytest.fixture(scope="module")
def t5_dir(golden_vae_t5_dir: Path) -> Path:
    return golden_vae_t5_dir / "t5"


@pytest.fixture(scope="module")
def golden(t5_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(t5_dir / "t5_golden.safetensors")


@pytest.fixture(scope="module")
def encoder(t5_dir: Path) -> UMT5TextEncoder:
    return load_text_encoder(t5_dir / CKPT_NAME, None, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def official_state(t5_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(t5_dir / CKPT_NAME, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer matching the tiny vocab (1000): <pad>=0, </s>=1, <unk>=2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({f"w{i}": i for i in range(3, 998)})
    vocab.update({"a": 998, "prompt": 999})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    fast.save_pretrained(str(out))
    return out


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("case", ["short", "long"])
def test_golden_full_and_trimmed(
    encoder: UMT5TextEncoder, golden: dict[str, torch.Tensor], case: str
) -> None:
    ids, mask = golden[f"{case}_in_ids"], golden[f"{case}_in_mask"]
    full = encoder.encode_ids(ids, mask)
    err_full = _max_abs(full, golden[f"{case}_out_full"])
    print(f"{case}: full max-abs {err_full:.3e}")
    assert full.shape == golden[f"{case}_out_full"].shape
    assert err_full <= TOL

    # The official wrapper's trimming: row i cut to the number of mask entries > 0.
    lengths = mask.gt(0).sum(dim=1).tolist()
    for i, n in enumerate(lengths):
        ref = golden[f"{case}_out_trimmed_{i}"]
        got = full[i, :n]
        err = _max_abs(got, ref)
        print(f"{case}: trimmed[{i}] len {n} max-abs {err:.3e}")
        assert got.shape == ref.shape
        assert err <= TOL


def test_relative_position_buckets_and_bias(
    encoder: UMT5TextEncoder, golden: dict[str, torch.Tensor]
) -> None:
    offsets = torch.arange(-159, 160)
    for n, block in enumerate(encoder.model.encoder.block):
        attn = block.layer[0].SelfAttention
        if n == 0:
            assert torch.equal(attn._relative_position_bucket(offsets), golden["dbg_rel_bucket_by_offset"])
        bias = attn.compute_bias(16, 16)
        err = _max_abs(bias, golden[f"dbg_pos_bias_layer{n}_16"])
        print(f"layer {n} position bias max-abs {err:.3e}")
        assert err <= 1e-6


def test_config_inference(official_state: dict[str, torch.Tensor], encoder: UMT5TextEncoder) -> None:
    cfg = infer_umt5_config(official_state)
    got = (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads)
    assert got == (1000, 64, 16, 128, 2, 4)
    assert cfg.relative_attention_num_buckets == 32 and cfg.relative_attention_max_distance == 128
    assert cfg.is_gated_act and cfg.dense_act_fn == "gelu_new" and cfg.layer_norm_epsilon == 1e-6
    assert cfg.dropout_rate == 0.0
    # Loaded model: one embedding module for both HF names, fp32 weights, nothing left on meta.
    model = encoder.model
    assert model.shared is model.encoder.embed_tokens
    assert all(p.dtype == torch.float32 and not p.is_meta for p in model.parameters())
    # A different (still consistent) shape set is inferred too: 3 layers, 2 heads of 8, d_ff 24.
    vocab, d, inner, ff, heads = 50, 16, 16, 24, 2
    other: dict[str, torch.Tensor] = {"token_embedding.weight": torch.zeros(vocab, d)}
    for n in range(3):
        p = f"blocks.{n}."
        other |= {p + "norm1.weight": torch.ones(d), p + "norm2.weight": torch.ones(d)}
        other |= {p + f"attn.{x}.weight": torch.zeros(inner, d) for x in "qkv"}
        other |= {p + "attn.o.weight": torch.zeros(d, inner)}
        other |= {p + "pos_embedding.embedding.weight": torch.zeros(32, heads)}
        other |= {p + "ffn.gate.0.weight": torch.zeros(ff, d), p + "ffn.fc1.weight": torch.zeros(ff, d)}
        other |= {p + "ffn.fc2.weight": torch.zeros(d, ff)}
    other["norm.weight"] = torch.ones(d)
    cfg = infer_umt5_config(other)
    assert (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads) == (
        50,
        16,
        8,
        24,
        3,
        2,
    )


@pytest.mark.parametrize(
    "edit, expect",
    [
        ("missing", "blocks.1.attn.k.weight"),
        ("extra", "blocks.0.attn.bias"),
        ("shape", "blocks.1.ffn.fc2.weight"),
        ("gap", "blocks.1.norm1.weight"),
    ],
)
def test_bad_checkpoint_raises(
    official_state: dict[str, torch.Tensor], tmp_path: Path, edit: str, expect: str
) -> None:
    state = dict(official_state)
    if edit == "missing":
        del state["blocks.1.attn.k.weight"]
    elif edit == "extra":
        state["blocks.0.attn.bias"] = torch.zeros(64)
    elif edit == "shape":
        state["blocks.1.ffn.fc2.weight"] = state["blocks.1.ffn.fc2.weight"].t().contiguous()
    else:  # a layer 2 tensor without a complete layer 1 -> layer 1 keys missing
        state = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
        state["blocks.2.norm1.weight"] = torch.ones(64, dtype=torch.bfloat16)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as info:
        load_text_encoder(bad, None)
    msg = str(info.value)
    print(msg)
    assert str(bad) in msg and expect in msg


def test_unreadable_files_raise(t5_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_text_encoder(tmp_path / "nope.pth", None)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_text_encoder(junk, None)
    with pytest.raises(CheckpointError, match="no_tokenizer_here"):
        load_text_encoder(t5_dir / CKPT_NAME, tmp_path / "no_tokenizer_here")
    empty = tmp_path / "empty_tokenizer"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty_tokenizer"):
        load_text_encoder(t5_dir / CKPT_NAME, empty)


def test_encode_prompts_with_tokenizer(t5_dir: Path, tokenizer_dir: Path) -> None:
    enc = load_text_encoder(t5_dir / CKPT_NAME, tokenizer_dir, text_len=16)
    assert enc.device == torch.device("cpu") and enc.dtype == torch.float32
    assert enc.to("cpu") is enc and enc.model.shared is enc.model.encoder.embed_tokens
    # "a prompt" -> 2 real tokens + EOS; the messy whitespace/entity prompt cleans to the same text.
    outs = enc.encode(["a prompt", "  a\n\tprompt  ", "w5 w6 w7 w8 w9"])
    assert [tuple(o.shape) for o in outs] == [(3, 64), (3, 64), (6, 64)]
    assert torch.equal(outs[0], outs[1])

    ids, mask = enc.tokenize(["a prompt"])
    assert ids[0, :3].tolist() == [998, 999, 1] and ids[0, 3:].eq(0).all() and mask.sum() == 3
    # The trimmed output is the full padded-batch output cut to the real length.
    assert _max_abs(outs[0], enc.encode_ids(ids, mask)[0, :3]) == 0.0

    # Longer than text_len: truncated to text_len tokens, the last one EOS.
    long_prompt = " ".join(f"w{i}" for i in range(3, 43))
    (out,) = enc.encode([long_prompt])
    assert out.shape == (16, 64)
    ids, mask = enc.tokenize([long_prompt])
    assert ids.shape == (1, 16) and ids[0, -1].item() == 1 and mask.all()

    enc.release()
    assert enc.model is None
    with pytest.raises(RuntimeError, match="released"):
        enc.encode(["a prompt"])


def test_bf16_run_close_to_golden(t5_dir: Path, golden: dict[str, torch.Tensor]) -> None:
    # The official GPU pipeline runs T5 in bf16: same weights (stored bf16), bf16 rounding only.
    enc = load_text_encoder(t5_dir / CKPT_NAME, None, dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16
    out = enc.encode_ids(golden["short_in_ids"], golden["short_in_mask"])
    ref = golden["short_out_full"]
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    print(f"bf16 short: relative L2 {rel:.3e}")
    assert out.dtype == torch.bfloat16 and rel < 5e-2


def test_clean_prompt() -> None:
    assert clean_prompt("  a \n\t b  ") == "a b"
    assert clean_prompt("fish &amp;amp; chips") == "fish & chips"  # unescaped twice
    assert clean_prompt("") == ""
