"""umT5-XXL text encoder (prompt -> per-token embeddings) on top of transformers' ``UMT5EncoderModel``.

The official release stores the encoder as a plain bf16 state dict with its own key names
(``models_t5_umt5-xxl-enc-bf16.pth``, 11.4 GB). We infer the architecture from the tensor shapes,
rename the keys to the ``UMT5EncoderModel`` layout and load them without a second copy in RAM
(model built on the meta device, tensors assigned). ``UMT5EncoderModel`` is the right HF class:
like the official encoder it has a relative-position table in *every* layer (the plain T5 class
shares the layer-0 table) and applies no 1/sqrt(d) attention scaling.

Prompt handling follows the official wrapper: 'whitespace' cleaning, padding to ``text_len`` with
truncation and EOS, encoder over the padded batch, outputs trimmed to the real token count.
"""

from __future__ import annotations

import functools
import gc
import html
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from transformers import UMT5Config, UMT5EncoderModel

from render.model.checkpoint import CheckpointError
from render.model.checkpoint_keys import key_mismatches

# Fixed in the official umT5 code, not recorded in the checkpoint.
NUM_BUCKETS = 32
MAX_DISTANCE = 128
LAYER_NORM_EPS = 1e-6

# Per-layer official suffix -> UMT5EncoderModel suffix (under ``encoder.block.N.layer.``).
_LAYER_KEY_MAP: dict[str, str] = {
    "norm1.weight": "0.layer_norm.weight",
    "attn.q.weight": "0.SelfAttention.q.weight",
    "attn.k.weight": "0.SelfAttention.k.weight",
    "attn.v.weight": "0.SelfAttention.v.weight",
    "attn.o.weight": "0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "1.layer_norm.weight",
    # gate.0 is the GELU branch, fc1 the linear branch of the gated FFN.
    "ffn.gate.0.weight": "1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "1.DenseReluDense.wo.weight",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


@functools.cache
def _ftfy_fix_text() -> Callable[[str], str] | None:
    # Optional: the official code always runs ftfy; without it, mojibake is passed on unchanged.
    try:
        import ftfy
    except ImportError:
        return None
    return ftfy.fix_text


def clean_prompt(text: str) -> str:
    """The official 'whitespace' cleaning: ftfy fix (when installed), html-unescape twice, collapse
    whitespace runs to one space, strip."""
    fix_text = _ftfy_fix_text()
    if fix_text is not None:
        text = fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _require(state: Mapping[str, torch.Tensor], key: str, ndim: int, path: str) -> torch.Size:
    if key not in state:
        raise CheckpointError(f"{path}: key {key!r} is missing; cannot infer the umT5 architecture")
    shape = state[key].shape
    if len(shape) != ndim:
        raise CheckpointError(f"{path}: key {key!r} has shape {tuple(shape)}, expected {ndim} dims")
    return shape


def infer_umt5_config(state: Mapping[str, torch.Tensor], path: str = "<state dict>") -> UMT5Config:
    """Build the ``UMT5Config`` of an official-key umT5 encoder state dict from its tensor shapes."""
    vocab_size, d_model = _require(state, "token_embedding.weight", 2, path)
    layer_ids = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    if not layer_ids:
        raise CheckpointError(f"{path}: no 'blocks.N.*' keys found; not a umT5 encoder checkpoint")
    num_layers = max(layer_ids) + 1  # gaps show up as missing keys in the strict check
    num_heads = _require(state, "blocks.0.pos_embedding.embedding.weight", 2, path)[1]
    dim_attn = _require(state, "blocks.0.attn.q.weight", 2, path)[0]
    if dim_attn % num_heads:
        raise CheckpointError(
            f"{path}: attention width {dim_attn} (blocks.0.attn.q.weight) is not divisible by the "
            f"{num_heads} heads of blocks.0.pos_embedding.embedding.weight"
        )
    d_ff = _require(state, "blocks.0.ffn.fc1.weight", 2, path)[0]
    config = UMT5Config(
        vocab_size=int(vocab_size),
        d_model=int(d_model),
        d_kv=int(dim_attn // num_heads),
        d_ff=int(d_ff),
        num_layers=int(num_layers),
        num_heads=int(num_heads),
        relative_attention_num_buckets=NUM_BUCKETS,
        relative_attention_max_distance=MAX_DISTANCE,
        feed_forward_proj="gated-gelu",  # -> tanh-approximated GELU on wi_0, like the official FFN
        layer_norm_epsilon=LAYER_NORM_EPS,
        dropout_rate=0.0,
    )
    # Eager attention: closest to the official op order (fp32 golden max-abs ~1e-6 vs ~7e-6 for sdpa).
    config._attn_implementation = "eager"
    return config


def official_key_shapes(config: UMT5Config) -> dict[str, tuple[int, ...]]:
    """Every key of an official umT5 encoder checkpoint with this config, and its shape."""
    d, inner, ff, h = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.num_heads
    per_layer = {
        "norm1.weight": (d,),
        "attn.q.weight": (inner, d),
        "attn.k.weight": (inner, d),
        "attn.v.weight": (inner, d),
        "attn.o.weight": (d, inner),
        "pos_embedding.embedding.weight": (config.relative_attention_num_buckets, h),
        "norm2.weight": (d,),
        "ffn.gate.0.weight": (ff, d),
        "ffn.fc1.weight": (ff, d),
        "ffn.fc2.weight": (d, ff),
    }
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (config.vocab_size, d)}
    for n in range(config.num_layers):
        shapes.update({f"blocks.{n}.{k}": s for k, s in per_layer.items()})
    shapes["norm.weight"] = (d,)
    return shapes


def hf_keys_for(official_key: str) -> list[str]:
    """``UMT5EncoderModel`` key(s) of an official key (the token embedding is stored twice in HF)."""
    if official_key == "token_embedding.weight":
        return ["shared.weight", "encoder.embed_tokens.weight"]
    if official_key == "norm.weight":
        return ["encoder.final_layer_norm.weight"]
    m = _BLOCK_KEY.match(official_key)
    suffix = official_key[m.end() :] if m else None
    if m is None or suffix not in _LAYER_KEY_MAP:
        raise KeyError(official_key)
    return [f"encoder.block.{m.group(1)}.layer.{_LAYER_KEY_MAP[suffix]}"]


def _check_keys(state: Mapping[str, torch.Tensor], config: UMT5Config, path: str) -> None:
    problems = key_mismatches(official_key_shapes(config), {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CheckpointError(
            f"{path}: not a consistent umT5 encoder checkpoint for the inferred config "
            f"(vocab {config.vocab_size}, d_model {config.d_model}, {config.num_layers} layers, "
            f"{config.num_heads} heads, d_kv {config.d_kv}, d_ff {config.d_ff}): " + "; ".join(problems)
        )


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: umT5 encoder checkpoint file not found")
    try:
        # mmap: the release file is 11.4 GB; tensors are paged in only when used or converted.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # corrupt / legacy-format / non-tensor content: say which file
        raise CheckpointError(f"{path}: cannot read as a torch state dict ({exc})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a plain {{key: tensor}} state dict")
    return dict(state)


def _load_tokenizer(tokenizer_dir: str | Path):
    from transformers import AutoTokenizer

    folder = Path(tokenizer_dir)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: tokenizer folder not found (expected e.g. google/umt5-xxl/)")
    try:
        # local_files_only: the folder must be complete; never fall back to a hub download.
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"{folder}: cannot load a tokenizer from this folder ({exc})") from exc


class UMT5TextEncoder:
    """Tokenizer + umT5 encoder with the official wrapper's call semantics."""

    def __init__(self, model: UMT5EncoderModel, tokenizer=None, text_len: int = 512) -> None:
        self.model: UMT5EncoderModel | None = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.config: UMT5Config = model.config

    def _live_model(self) -> UMT5EncoderModel:
        if self.model is None:
            raise RuntimeError("UMT5TextEncoder was released; load it again to encode prompts")
        return self.model

    @property
    def device(self) -> torch.device:
        return next(self._live_model().parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._live_model().parameters()).dtype

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> UMT5TextEncoder:
        # Module.to keeps tied parameters tied (shared == encoder.embed_tokens), so no duplicate copy.
        self._live_model().to(device=device, dtype=dtype)
        return self

    def release(self) -> None:
        """Drop the weights (the pipeline no longer needs T5 once prompts are embedded)."""
        on_cuda = self.model is not None and self.device.type == "cuda"
        self.model = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned, EOS-terminated, padded/truncated to ``text_len``: (ids [B, L], mask [B, L])."""
        if self.tokenizer is None:
            raise RuntimeError("UMT5TextEncoder has no tokenizer: pass tokenizer_dir to load_text_encoder")
        batch = self.tokenizer(
            [clean_prompt(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output [B, L, d_model] at all positions, padded ones included."""
        model = self._live_model()
        device = self.device
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
        return out.last_hidden_state

    def encode(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """One [len_i, d_model] tensor per prompt: real tokens + EOS, padding trimmed off."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of prompts, not a single string")
        if len(texts) == 0:
            return []
        ids, mask = self.tokenize(texts)
        lengths = mask.gt(0).sum(dim=1).tolist()
        full = self.encode_ids(ids, mask)
        # clone: a slice of the batch would keep (and torch.save would write) the whole [B, text_len, d]
        return [row[:n].clone() for row, n in zip(full, lengths)]


def load_text_encoder(
    pth_path: str | Path,
    tokenizer_dir: str | Path | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    text_len: int = 512,
) -> UMT5TextEncoder:
    """Load the official umT5 encoder checkpoint (+ tokenizer folder) as a ``UMT5TextEncoder``.

    ``tokenizer_dir=None`` gives an encoder that only supports ``encode_ids``.
    """
    path = Path(pth_path)
    state = _load_state(path)
    config = infer_umt5_config(state, str(path))
    _check_keys(state, config, str(path))
    tokenizer = _load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None

    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    hf_state: dict[str, torch.Tensor] = {}
    for key in list(state):
        # Convert one tensor at a time straight to the target device/dtype; a no-op (still the
        # mmapped tensor) when both already match, so RAM never holds a second full copy.
        tensor = state.pop(key).to(device=device, dtype=dtype)
        for hf_key in hf_keys_for(key):
            hf_state[hf_key] = tensor
    try:
        model.load_state_dict(hf_state, strict=True, assign=True)
    except RuntimeError as exc:  # key check above should make this unreachable; keep the file name
        raise CheckpointError(f"{path}: state dict does not fit UMT5EncoderModel ({exc})") from exc
    # One embedding module for both names, so .to() moves (and memory holds) a single copy.
    model.set_input_embeddings(model.shared)
    return UMT5TextEncoder(model, tokenizer=tokenizer, text_len=text_len)
