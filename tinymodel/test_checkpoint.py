"""Write a random-weight S2V checkpoint folder at the release's shapes (``Wan-AI/Wan2.2-S2V-14B``).

For trying the product on a real GPU without the 45 GB download: every file the loaders read is
there, with the release's names, key lists, shapes and storage dtypes (checked against the
official key dumps by ``tests/tinymodel/test_test_checkpoint.py``), filled with seeded random
values (everywhere non-zero, fan-in scaled so forwards stay finite; the pictures are noise):

    config.json                                          DiTConfig defaults (= the 14B release)
    diffusion_pytorch_model-0000{1..4}-of-00004.safetensors + .index.json
                                                         the 16.3 B-parameter DiT, bf16 (32.6 GB)
    Wan2.1_VAE.pth                                       Wan2.1 VAE, width 96, float32 (0.5 GB)
    models_t5_umt5-xxl-enc-bf16.pth                      umT5-XXL encoder, bf16 (11.4 GB)
    google/umt5-xxl/                                     a small word-level tokenizer (no download)
    wav2vec2-large-xlsr-53-english/                      Wav2Vec2ForCTC 1024 wide, 24 layers, float32
                                                         (1.26 GB, transformers format)

The values are drawn on ``device`` (a GPU writes the 46 GB in about a minute, mostly disk time)
one tensor at a time with a ``torch.Generator`` per part, so the same seed and device give the
same files. ``size="tiny"`` hands over to :mod:`tinymodel.checkpoint` (the CPU demo model).

    python -m tinymodel.test_checkpoint /tmp/s2v-14b-random [--size 14b|tiny] [--device cuda]

A part whose files exist is kept (files are written under temporary names and renamed when
complete, so an interrupted write leaves no half part); ``--force`` rewrites.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from render.model.checkpoint import T5_FILE, TOKENIZER_DIR, VAE_FILE, W2V_DIR, DiTConfig

SIZES = ("14b", "tiny")
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_SHARD = "diffusion_pytorch_model-{:05d}-of-{:05d}.safetensors"
SHARD_BYTES = 10_000_000_000  # the release's shard limit ("10GB"): 4 shards of 9.97/9.89/9.96/2.77 GB

# umT5-XXL encoder (models_t5_umt5-xxl-enc-bf16.pth), as UMT5Config fields.
RELEASE_T5 = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
# jonatasgrosman/wav2vec2-large-xlsr-53-english (Wav2Vec2ForCTC; CTC vocabulary of 33 symbols:
# <pad> <s> </s> <unk> | ' - A..Z); 424 tensors, 315,472,545 parameters.
RELEASE_W2V = dict(
    vocab_size=33, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=True,
    do_stable_layer_norm=True, feat_extract_norm="layer", feat_extract_activation="gelu", hidden_act="gelu",
    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, layer_norm_eps=1e-5,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, ctc_loss_reduction="mean", ctc_zero_infinity=True,
)
W2V_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "'", "-", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]

# Key order inside one block of the official umT5 file (the module order of its T5SelfAttention).
T5_LAYER_ORDER = (
    "norm1.weight", "attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.o.weight", "norm2.weight",
    "ffn.gate.0.weight", "ffn.fc1.weight", "ffn.fc2.weight", "pos_embedding.embedding.weight",
)

PARTS = ("dit", "vae", "t5", "w2v")
STORAGE_DTYPE = {"dit": torch.bfloat16, "vae": torch.float32, "t5": torch.bfloat16, "w2v": torch.float32}


@dataclass(frozen=True)
class CheckpointSpec:
    """Architecture of every part; :data:`RELEASE` is the 14B release, tests use small ones."""

    dit: DiTConfig = field(default_factory=DiTConfig)
    vae_dim: int = 96
    t5: dict = field(default_factory=lambda: dict(RELEASE_T5))
    w2v: dict = field(default_factory=lambda: dict(RELEASE_W2V))
    shard_bytes: int = SHARD_BYTES


RELEASE = CheckpointSpec()


# ----------------------------------------------------------------------------- key -> shape maps


def dit_key_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    from render.model.dit.model import S2VDiT

    with torch.device("meta"):
        model = S2VDiT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def vae_key_shapes(dim: int) -> dict[str, tuple[int, ...]]:
    from render.model.vae.model import WanVAEModel

    with torch.device("meta"):
        model = WanVAEModel(dim=dim)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _umt5_config(t5: dict):
    from transformers import UMT5Config

    return UMT5Config(**t5, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0)


def t5_key_shapes(t5: dict) -> dict[str, tuple[int, ...]]:
    """Official umT5 encoder keys in the official file's order."""
    from render.model.text_encoder import official_key_shapes

    shapes = official_key_shapes(_umt5_config(t5))
    ordered = {"token_embedding.weight": shapes["token_embedding.weight"]}
    for n in range(t5["num_layers"]):
        ordered.update({f"blocks.{n}.{k}": shapes[f"blocks.{n}.{k}"] for k in T5_LAYER_ORDER})
    ordered["norm.weight"] = shapes["norm.weight"]
    assert set(ordered) == set(shapes)
    return ordered


def _w2v_config(w2v: dict):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(**w2v)


def w2v_key_shapes(w2v: dict) -> dict[str, tuple[int, ...]]:
    from transformers import Wav2Vec2ForCTC

    with torch.device("meta"):
        model = Wav2Vec2ForCTC(_w2v_config(w2v))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def key_shapes(spec: CheckpointSpec = RELEASE) -> dict[str, dict[str, tuple[int, ...]]]:
    """{part: {key: shape}} of every tensor the writer stores (no weights made)."""
    return {"dit": dit_key_shapes(spec.dit), "vae": vae_key_shapes(spec.vae_dim),
            "t5": t5_key_shapes(spec.t5), "w2v": w2v_key_shapes(spec.w2v)}


def part_bytes(shapes: dict[str, dict[str, tuple[int, ...]]]) -> dict[str, int]:
    return {part: sum(math.prod(s) for s in ks.values()) * STORAGE_DTYPE[part].itemsize
            for part, ks in shapes.items()}


def plan_shards(shapes: dict[str, tuple[int, ...]], itemsize: int, max_bytes: int) -> list[list[str]]:
    """Greedy split in key order, a new shard when the next tensor would pass ``max_bytes``
    (huggingface_hub's rule, which gave the release its 4 shards)."""
    shards: list[list[str]] = [[]]
    size = 0
    for k, s in shapes.items():
        n = math.prod(s) * itemsize
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    return shards


# ----------------------------------------------------------------------------------- values


def _fan_in(shape: tuple[int, ...]) -> int:
    return max(1, math.prod(shape[1:]))


def _dit_value(key: str, shape, r: torch.Tensor) -> torch.Tensor:
    # The rule of render.model.dit.init.fill_random_ (used for the tiny model).
    if len(shape) == 1 and "norm" in key:
        return r.mul_(0.1).add_(1)
    if len(shape) == 1 or "modulation" in key or "padding_tokens" in key:
        return r.mul_(0.1)
    return r.div_(_fan_in(shape) ** 0.5)


def _vae_value(key: str, shape, r: torch.Tensor) -> torch.Tensor:
    # The rule of tinymodel.checkpoint.write_tiny_vae.
    if key.endswith("gamma"):
        return r.mul_(0.1).add_(1)
    if len(shape) == 1:
        return r.mul_(0.05)
    return r.div_(_fan_in(shape) ** 0.5)


def _t5_value(t5: dict) -> Callable:
    def value(key: str, shape, r: torch.Tensor) -> torch.Tensor:
        # Roughly transformers' T5 init: no 1/sqrt(d) in umT5's attention, so q carries it.
        if "norm" in key:
            return r.mul_(0.1).add_(1)
        if key == "token_embedding.weight":
            return r
        if "pos_embedding" in key:
            return r.mul_(0.1)
        if key.endswith("attn.q.weight"):
            return r.div_((_fan_in(shape) * t5["d_kv"]) ** 0.5)
        return r.div_(_fan_in(shape) ** 0.5)

    return value


def _w2v_value(key: str, shape, r: torch.Tensor) -> torch.Tensor:
    if "layer_norm" in key and key.endswith(".weight"):
        return r.mul_(0.1).add_(1)
    if key.endswith("parametrizations.weight.original0"):  # weight-norm magnitude g
        return r.mul_(0.1).add_(1)
    if len(shape) == 1:
        return r.mul_(0.05)
    return r.div_(_fan_in(shape) ** 0.5)


def _generate(shapes: dict[str, tuple[int, ...]], keys: Iterable[str], value: Callable, dtype: torch.dtype,
              gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """One tensor at a time: float32 normal on ``device``, shaped by ``value``, stored dtype, CPU."""
    out = {}
    for k in keys:
        r = torch.randn(shapes[k], generator=gen, device=device, dtype=torch.float32)
        out[k] = value(k, shapes[k], r).to(dtype).cpu().contiguous()
        del r
    return out


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------------- writers


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def write_dit(folder: Path, spec: CheckpointSpec, device: torch.device, seed: int) -> None:
    from safetensors.torch import save_file

    shapes = dit_key_shapes(spec.dit)
    dtype = STORAGE_DTYPE["dit"]
    shards = plan_shards(shapes, dtype.itemsize, spec.shard_bytes)
    gen = _generator(device, seed)
    weight_map, names = {}, []
    for i, keys in enumerate(shards, 1):
        name = DIT_SHARD.format(i, len(shards))
        tensors = _generate(shapes, keys, _dit_value, dtype, gen, device)
        save_file(tensors, _tmp(folder / name), metadata={"format": "pt"})
        del tensors
        weight_map.update({k: name for k in keys})
        names.append(name)
    for name in names:
        os.replace(_tmp(folder / name), folder / name)
    total = sum(math.prod(s) for s in shapes.values()) * dtype.itemsize
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "config.json").write_text(json.dumps(spec.dit.to_json_dict(), indent=2))
    _tmp(folder / DIT_INDEX).write_text(json.dumps(index, indent=2))
    os.replace(_tmp(folder / DIT_INDEX), folder / DIT_INDEX)


def _save_pth(state: dict[str, torch.Tensor], path: Path) -> None:
    torch.save(state, _tmp(path))
    os.replace(_tmp(path), path)


def write_vae(folder: Path, spec: CheckpointSpec, device: torch.device, seed: int) -> None:
    shapes = vae_key_shapes(spec.vae_dim)
    _save_pth(_generate(shapes, shapes, _vae_value, STORAGE_DTYPE["vae"], _generator(device, seed), device),
              folder / VAE_FILE)


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer (pad 0, eos 1, unk 2, as umT5) loadable by AutoTokenizer; ids stay
    below ``vocab_size``. The release's sentencepiece model is not needed to run the loaders."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    for w in [*letters, *(a + b for a in letters for b in letters)][: max(0, vocab_size - len(vocab))]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    target = folder / TOKENIZER_DIR
    tmp = _tmp(target)
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def write_t5(folder: Path, spec: CheckpointSpec, device: torch.device, seed: int) -> None:
    shapes = t5_key_shapes(spec.t5)
    state = _generate(shapes, shapes, _t5_value(spec.t5), STORAGE_DTYPE["t5"], _generator(device, seed), device)
    _save_pth(state, folder / T5_FILE)
    del state
    write_tokenizer(folder, spec.t5["vocab_size"])


def write_w2v(folder: Path, spec: CheckpointSpec, device: torch.device, seed: int) -> None:
    from safetensors.torch import save_file
    from transformers import Wav2Vec2FeatureExtractor

    shapes = w2v_key_shapes(spec.w2v)
    target = folder / W2V_DIR
    tmp = _tmp(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = _w2v_config(spec.w2v)
    cfg.architectures = ["Wav2Vec2ForCTC"]
    cfg.save_pretrained(tmp)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(tmp)
    vocab = W2V_VOCAB if spec.w2v["vocab_size"] == len(W2V_VOCAB) else [f"<{i}>" for i in range(spec.w2v["vocab_size"])]
    (tmp / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(vocab)}))
    tensors = _generate(shapes, shapes, _w2v_value, STORAGE_DTYPE["w2v"], _generator(device, seed), device)
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _present(folder: Path) -> dict[str, bool]:
    return {
        "dit": (folder / DIT_INDEX).is_file() and (folder / "config.json").is_file(),
        "vae": (folder / VAE_FILE).is_file(),
        "t5": (folder / T5_FILE).is_file() and (folder / TOKENIZER_DIR).is_dir(),
        "w2v": (folder / W2V_DIR / "model.safetensors").is_file(),
    }


def write_checkpoint(folder: str | Path, spec: CheckpointSpec = RELEASE, device: str | torch.device = "cuda",
                     seed: int = 0, force: bool = False, log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Write (or complete) a random-weight checkpoint of ``spec``; returns seconds per part."""
    folder = Path(folder)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but no GPU is visible; pass device='cpu' (slow at 14B)")
    folder.mkdir(parents=True, exist_ok=True)
    present = {p: (not force) and have for p, have in _present(folder).items()}
    need = sum(b for p, b in part_bytes(key_shapes(spec)).items() if not present[p])
    free = shutil.disk_usage(folder).free
    if need > free:
        raise OSError(f"{folder}: {need / 1e9:.1f} GB needed for the missing parts, {free / 1e9:.1f} GB free")
    writers = {"dit": write_dit, "vae": write_vae, "t5": write_t5, "w2v": write_w2v}
    times = {}
    for i, part in enumerate(PARTS):
        if present[part]:
            continue
        t0 = time.perf_counter()
        writers[part](folder, spec, device, seed * 1000 + i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times[part] = time.perf_counter() - t0
        if log:
            log(f"{part}: {times[part]:.1f} s")
    return times


def write_test_checkpoint(folder: str | Path, size: str = "14b", device: str | torch.device = "cuda",
                          seed: int = 0, force: bool = False) -> Path:
    """A random-weight checkpoint folder: ``size="14b"`` at the release's shapes (46 GB; a GPU
    draws the values), ``"tiny"`` the CPU demo model of :mod:`tinymodel.checkpoint`."""
    if size not in SIZES:
        raise ValueError(f"size {size!r}: expected one of {SIZES}")
    if size == "tiny":
        from tinymodel.checkpoint import write_tiny_checkpoint

        if force:
            shutil.rmtree(folder, ignore_errors=True)
        return write_tiny_checkpoint(folder, seed=seed)
    write_checkpoint(folder, RELEASE, device=device, seed=seed, force=force)
    return Path(folder)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tinymodel.test_checkpoint", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--size", choices=SIZES, default="14b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rewrite parts that exist")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.size == "tiny":
        write_test_checkpoint(args.folder, "tiny", seed=args.seed, force=args.force)
    else:
        write_checkpoint(args.folder, RELEASE, device=args.device, seed=args.seed, force=args.force,
                         log=lambda s: print(s, flush=True))
    dt = time.perf_counter() - t0
    size = folder_bytes(Path(args.folder))
    print(f"wrote {args.folder} ({args.size}, device {args.device}) in {dt:.1f} s: {size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
