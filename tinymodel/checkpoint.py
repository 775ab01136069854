"""Write a tiny S2V checkpoint folder in the official layout (random weights).

Used by ``s2v demo`` on a fresh CPU machine and by tests: every file the production loader
reads is present and in the release's format, so the same code path runs as for the 14B model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from render.model.checkpoint import T5_FILE, TOKENIZER_DIR, VAE_FILE, W2V_DIR, DiTConfig
from render.model.dit.init import fill_random_
from render.model.dit.model import S2VDiT

TINY_DIT = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, audio_inject_layers=[0, 1],
                     audio_dim=32, text_len=32)
TINY_VAE_DIM = 8
TINY_T5 = dict(vocab_size=512, d_model=4096, d_kv=16, d_ff=64, num_layers=2, num_heads=4)
# The DiT's text projection input is fixed at 4096 (not in config.json), so the tiny umT5 keeps
# d_model 4096 and shrinks everything else.


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_tiny_dit(folder: Path, cfg: DiTConfig = TINY_DIT, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = fill_random_(S2VDiT(cfg), seed)
    (folder / "config.json").write_text(json.dumps(cfg.to_json_dict(), indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              folder / "diffusion_pytorch_model.safetensors")


def write_tiny_vae(folder: Path, dim: int = TINY_VAE_DIM, seed: int = 1) -> None:
    from render.model.vae.model import WanVAEModel

    torch.manual_seed(seed)
    model = WanVAEModel(dim=dim)
    g = _seeded(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5))
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, folder / VAE_FILE)


def write_tiny_text_encoder(folder: Path, seed: int = 2, t5: dict | None = None) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from render.model.text_encoder import hf_keys_for, official_key_shapes

    t5 = dict(TINY_T5 if t5 is None else t5)
    cfg = UMT5Config(**t5, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0)
    torch.manual_seed(seed)
    hf = UMT5EncoderModel(cfg).state_dict()
    state = {}
    for key, shape in official_key_shapes(cfg).items():
        t = hf[hf_keys_for(key)[0]]
        assert tuple(t.shape) == tuple(shape), (key, t.shape, shape)
        state[key] = t.to(torch.bfloat16).contiguous()
    torch.save(state, folder / T5_FILE)
    # A word-level tokenizer over a small vocabulary: enough to turn prompts into ids.
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = [a + b for a in letters for b in letters][: max(0, t5["vocab_size"] - len(vocab) - len(letters))]
    for w in (list(letters) + words)[: t5["vocab_size"] - len(vocab)]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder / TOKENIZER_DIR)


def write_tiny_wav2vec2(folder: Path, hidden: int = 32, seed: int = 3) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    cfg = Wav2Vec2Config(
        vocab_size=32, hidden_size=hidden, num_hidden_layers=24, num_attention_heads=2,
        intermediate_size=2 * hidden, conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2), do_stable_layer_norm=True, feat_extract_norm="layer",
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    )
    torch.manual_seed(seed)
    Wav2Vec2ForCTC(cfg).save_pretrained(folder / W2V_DIR, safe_serialization=True)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(folder / W2V_DIR)


def write_tiny_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Create (or complete) a tiny checkpoint folder; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "diffusion_pytorch_model.safetensors").exists():
        write_tiny_dit(folder, seed=seed)
    if not (folder / VAE_FILE).exists():
        write_tiny_vae(folder, seed=seed + 1)
    if not (folder / T5_FILE).exists() or not (folder / TOKENIZER_DIR).exists():
        write_tiny_text_encoder(folder, seed=seed + 2)
    if not (folder / W2V_DIR).exists():
        write_tiny_wav2vec2(folder, hidden=TINY_DIT.audio_dim, seed=seed + 3)
    return folder
