"""Run the official ``WanS2V.generate()`` on the CPU for a tiny chain of clips and compare it with
our ChainRenderer; ``--write`` stores the official result as the golden data of
``tests/render/test_clip_chain_parity.py``.

Nothing of the official repository is copied here: it is imported from an ignored local checkout
(``.official/`` by default; get it as a git archive of github.com/Wan-Video/Wan2.2), with its
Python dependencies in the versions of ``OFFICIAL_SITE_PACKAGES`` installed into ``<checkout>/site``
by ``pip install --target`` (the error message says how). The official run is a child process
with that folder first on its path: the official code pins transformers <= 4.51.3, while ours runs
on 5.x, and the two return different last-layer wav2vec2 hidden states (4.x after the final
LayerNorm; our feature code reads that one explicitly). With transformers 5.x the official audio
features differ by up to 1.2 in that layer, and the whole chain with them.

The official run is the official code path except where it cannot run here, each replaced by
something that computes nothing on the compared path or feeds exactly the inputs our side gets:

* ``WanS2V.__init__`` hard-codes a CUDA device and loads the full-size umT5 with its tokenizer, so
  the object is assembled with the same attributes (``device`` = CPU, float32 params, the
  official s2v-14B config for motion frames, frame drop, fps and negative prompt);
* the text encoder returns fixed prompt embeddings (random [L, 4096]; the tiny DiT reads 4096-wide
  text like the release), the same tensors our side gets;
* ``librosa.load`` returns the stored 16 kHz waveform (file decoding is not compared); the
  ``AudioEncoder`` gets the tiny wav2vec2 with its feature extractor (the official
  ``Wav2Vec2Processor`` also needs a CTC vocabulary the tiny model has none of, and only forwards
  audio to the feature extractor);
* ``flash_attention`` (CUDA only, bf16) becomes SDPA in float32 with the same varlen semantics;
* ``decord`` (pose and previous-video reading, unused without a pose video) is an empty module,
  and torchvision's package ``__init__`` is bypassed (its compiled ops do not load with the CPU
  torch build; only ``torchvision.transforms`` on PIL images is used, and that is pure Python).

Prints, for each compared tensor, the max-abs difference between our renderer and the official run.

Usage: .venv/bin/python benchmarks/official_clip_chain.py [--official .official] [--write]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import json
import lzma
import subprocess
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.official_s2v import sdpa_flash_attention  # noqa: E402
from tests.conftest import GOLDEN_SOURCE, unpack_golden  # noqa: E402

_BARE_PACKAGES = ("wan", "wan.modules", "wan.modules.s2v", "wan.distributed", "wan.utils", "wan.configs")
_FLASH_USERS = ("wan.modules.attention", "wan.modules.model", "wan.modules.s2v.model_s2v",
                "wan.modules.s2v.motioner")
AUDIO_SECONDS = 1.2  # 3 clips of 8 frames by the official clip count; the last one ends in silence
REF_SIZE = (72, 80)  # (width, height) of the reference image: resized and centre-cropped to 64x64
PROMPT_TOKENS, NEGATIVE_TOKENS, TEXT_DIM = 7, 11, 4096
# The official dependencies this run uses (the versions the golden data of tests/data/wan_s2v was
# made with; transformers as pinned by the official requirements).
OFFICIAL_SITE_PACKAGES = ("diffusers==0.39.0", "transformers==4.51.3", "huggingface_hub==0.36.0",
                          "tokenizers==0.21.4", "einops==0.8.2", "easydict==1.14", "torchvision==0.28.0")


def fp32_flash_attention(*args, **kwargs):
    """The official flash_attention contract, computed in the input dtype (float32 here)."""
    kwargs["dtype"] = torch.float32
    return sdpa_flash_attention(*args, **kwargs)


def make_inputs(workdir: Path) -> dict[str, torch.Tensor]:
    """Seeded inputs: waveform, reference image (written as PNG), prompt embeddings."""
    from tinymodel.demo_assets import speech_like_audio

    g = torch.Generator().manual_seed(20251206)
    wave = torch.from_numpy(speech_like_audio(AUDIO_SECONDS, seed=3).astype(np.float32))
    w, h = REF_SIZE
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    smooth = torch.stack([yy, xx, 0.5 * (yy + xx)], dim=-1)
    rgb = (255 * (0.7 * smooth + 0.3 * torch.rand(h, w, 3, generator=g))).round().clamp(0, 255).to(torch.uint8)
    Image.fromarray(rgb.numpy()).save(workdir / "reference.png")
    return {
        "in_waveform_16k": wave,
        "in_reference_rgb": rgb,
        "in_context": torch.randn(PROMPT_TOKENS, TEXT_DIM, generator=g),
        "in_context_null": torch.randn(NEGATIVE_TOKENS, TEXT_DIM, generator=g),
    }


def _stand_in(name: str, **attrs) -> None:
    """Register a module object (with a spec, so ``importlib.util.find_spec`` accepts it)."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package="__path__" in attrs)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod


def official_site(checkout: Path) -> Path:
    """``<checkout>/site``, after checking that the checkout and its packages are there."""
    site = checkout / "site"
    if not (checkout / "wan" / "speech2video.py").is_file():
        raise SystemExit(f"{checkout}: not a Wan2.2 checkout (wan/speech2video.py missing)")
    if not (site / "diffusers").is_dir() or not (site / "transformers").is_dir():
        raise SystemExit(f"{site}: missing; run: PIP_CONSTRAINT= .venv/bin/pip install --target {site} --no-deps "
                         f"{' '.join(OFFICIAL_SITE_PACKAGES)}")
    return site


def use_official_site(checkout: Path) -> Path:
    """Put ``<checkout>/site`` first on the import path (the official run's process only), before
    anything imports transformers."""
    site = official_site(checkout)
    if "transformers" in sys.modules:
        raise RuntimeError("transformers was imported before the official site folder was put on the path")
    sys.path.insert(0, str(site))
    return site


def import_official(checkout: Path, waveform: np.ndarray):
    """The official ``wan.speech2video`` module, with the stand-ins listed in the module docstring."""
    site = checkout / "site"
    for name in _BARE_PACKAGES:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(checkout.joinpath(*name.split(".")))]
        sys.modules[name] = pkg
    _stand_in("torchvision", __path__=[str(site / "torchvision")])
    _stand_in("decord", VideoReader=None)
    _stand_in("librosa", load=lambda path, sr: (waveform.copy(), sr))
    _stand_in("wan.modules.t5", T5EncoderModel=None)  # replaced by fixed embeddings
    s2v = importlib.import_module("wan.speech2video")
    for name in _FLASH_USERS:
        importlib.import_module(name).flash_attention = fp32_flash_attention
    return s2v


class FixedTextEncoder:
    """Stands in for the official T5EncoderModel: prompt -> fixed unpadded embedding."""

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table = table

    def __call__(self, texts, device):
        return [self.table[t].to(device) for t in texts]


def build_official_pipeline(s2v, golden_root: Path, inputs: dict[str, torch.Tensor]):
    cfg = importlib.import_module("wan.configs.wan_s2v_14B").s2v_14B
    vae_mod = importlib.import_module("wan.modules.vae2_1")
    vae_mod._video_vae = partial(vae_mod._video_vae, dim=8)  # the tiny VAE's width (8 instead of 96)
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    pipe = s2v.WanS2V.__new__(s2v.WanS2V)
    cpu = torch.device("cpu")
    pipe.device, pipe.config, pipe.rank = cpu, cfg, 0
    pipe.t5_cpu, pipe.init_on_cpu = True, False
    pipe.num_train_timesteps, pipe.param_dtype = cfg.num_train_timesteps, torch.float32
    pipe.sample_neg_prompt = cfg.sample_neg_prompt
    pipe.motion_frames = cfg.transformer.motion_frames
    pipe.drop_first_motion = cfg.drop_first_motion
    pipe.fps = cfg.sample_fps
    pipe.audio_sample_m = 0
    pipe.sp_size = 1
    pipe.text_encoder = FixedTextEncoder({"prompt": inputs["in_context"],
                                          cfg.sample_neg_prompt: inputs["in_context_null"]})
    pipe.vae = vae_mod.Wan2_1_VAE(vae_pth=str(golden_root / "golden_vae_t5" / "vae" / "Wan2.1_VAE.pth"),
                                  dtype=torch.float32, device=cpu)
    pipe.noise_model = s2v.WanModel_S2V.from_pretrained(str(golden_root / "golden"), torch_dtype=torch.float32)
    pipe.noise_model.eval().requires_grad_(False)
    audio = importlib.import_module("wan.modules.s2v.audio_encoder")
    enc = audio.AudioEncoder.__new__(audio.AudioEncoder)
    w2v_dir = str(golden_root / "golden" / "tiny_wav2vec2")
    enc.processor = Wav2Vec2FeatureExtractor.from_pretrained(w2v_dir)
    enc.model = Wav2Vec2ForCTC.from_pretrained(w2v_dir).eval()
    enc.video_rate = 30
    pipe.audio_encoder = enc
    return pipe


def record_official(pipe) -> dict[str, torch.Tensor]:
    """Wrap the pipeline's models to keep what each clip was given (noise, motion latents, audio)."""
    rec: dict[str, torch.Tensor] = {}
    model, vae = pipe.noise_model, pipe.vae
    forward, encode_audio, vae_encode = model.forward, pipe.encode_audio, vae.encode
    state = {"clip": -1, "t": None}

    def forward_rec(x, t, **kw):
        if state["t"] is None or float(t[0]) > float(state["t"]):  # first step of a new clip
            state["clip"] += 1
            c = state["clip"]
            rec[f"official_clip{c}_noise"] = x[0].clone()
            rec[f"official_clip{c}_audio_input"] = kw["audio_input"].clone()
            if not kw["drop_motion_frames"]:
                rec[f"official_clip{c}_motion_latents"] = kw["motion_latents"].clone()
        state["t"] = t[0]
        return forward(x, t, **kw)

    def encode_audio_rec(*a, **kw):
        emb, nr = encode_audio(*a, **kw)
        rec["official_audio_emb"] = emb.clone()
        return emb, nr

    def vae_encode_rec(videos):
        out = vae_encode(videos)
        if "official_ref_latents" not in rec:  # the first encode is the reference image
            rec["official_ref_pixels"] = videos[0].clone()[None]
            rec["official_ref_latents"] = torch.stack(out).clone()
        return out

    model.forward, pipe.encode_audio, vae.encode = forward_rec, encode_audio_rec, vae_encode_rec
    return rec


def run_official(checkout: Path, workdir: Path, call: dict) -> None:
    """Child process: the official generate() on the chain ``call``; writes ``workdir/official.safetensors``
    (inputs, what each clip was given, the video) and ``workdir/clip_chain/reference.png``."""
    use_official_site(checkout)
    golden_root = unpack_golden(GOLDEN_SOURCE, workdir / "golden")
    chain_dir = workdir / "clip_chain"
    chain_dir.mkdir()
    inputs = make_inputs(chain_dir)
    s2v = import_official(checkout, inputs["in_waveform_16k"].numpy())
    pipe = build_official_pipeline(s2v, golden_root, inputs)
    rec = record_official(pipe)
    with torch.no_grad():
        video = pipe.generate("prompt", str(chain_dir / "reference.png"), "speech.wav", enable_tts=False,
                              tts_prompt_audio=None, tts_prompt_text=None, tts_text=None, n_prompt="",
                              offload_model=False, init_first_frame=False, **call)
    out = {**inputs, **rec, "official_video": video.float()}
    save_file({k: v.detach().contiguous() for k, v in out.items()}, str(workdir / "official.safetensors"))


def store_golden(workdir: Path, golden_file: str, call: dict) -> Path:
    """Write the official result into tests/data/wan_s2v/clip_chain (xz) and SHA256SUMS."""
    dest = GOLDEN_SOURCE / "clip_chain"
    dest.mkdir(parents=True, exist_ok=True)
    raw = (workdir / "official.safetensors").read_bytes()
    with lzma.open(dest / (golden_file + ".xz"), "wb", preset=9 | lzma.PRESET_EXTREME) as f:
        f.write(raw)
    files = {golden_file: raw, "reference.png": (workdir / "clip_chain" / "reference.png").read_bytes()}
    meta = {"call": call, "official_commit": "42bf4cf", "audio_seconds": AUDIO_SECONDS,
            "reference_size_wh": list(REF_SIZE), "dtype": "float32", "device": "cpu"}
    files["chain.json"] = (json.dumps(meta, indent=1) + "\n").encode()
    (dest / "reference.png").write_bytes(files["reference.png"])
    (dest / "chain.json").write_bytes(files["chain.json"])
    sums = GOLDEN_SOURCE / "SHA256SUMS"
    lines = [ln for ln in sums.read_text().splitlines() if not ln.split(maxsplit=1)[1].startswith("clip_chain/")]
    lines += [f"{hashlib.sha256(b).hexdigest()}  clip_chain/{name}" for name, b in sorted(files.items())]
    sums.write_text("\n".join(lines) + "\n")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, default=REPO_ROOT / ".official", help="the official checkout")
    ap.add_argument("--write", action="store_true", help="store the official result as the test's golden data")
    ap.add_argument("--official-run", nargs=2, metavar=("WORKDIR", "CALL_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    checkout = args.official.resolve()
    if args.official_run:
        run_official(checkout, Path(args.official_run[0]), json.loads(args.official_run[1]))
        return
    official_site(checkout)  # fail early; this process keeps our own packages
    from tests.render import test_clip_chain_parity as chain

    call = {"num_repeat": chain.CLIPS, "sampling_steps": chain.STEPS, "infer_frames": chain.INFER_FRAMES,
            "guide_scale": chain.GUIDANCE, "shift": chain.SHIFT, "seed": chain.SEED, "sample_solver": "unipc",
            "max_area": chain.HEIGHT * chain.WIDTH}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The official run needs transformers 4.51.3, ours 5.x: separate processes.
        subprocess.run([sys.executable, __file__, "--official", str(checkout), "--official-run", str(tmp),
                        json.dumps(call)], check=True)
        golden = load_file(str(tmp / "official.safetensors"))
        video = golden["official_video"]
        print(f"official video {tuple(video.shape)}")
        ours = chain.render_ours(tmp / "golden", tmp / "clip_chain", golden)
        pairs = [("audio_emb", "official_audio_emb"), ("ref_latents", "official_ref_latents")]
        pairs += [(f"clip{c}_noise", f"official_clip{c}_noise") for c in range(chain.CLIPS)]
        pairs += [(f"clip{c}_motion_latents", f"official_clip{c}_motion_latents") for c in range(1, chain.CLIPS)]
        pairs += [("video", "official_video")]
        for mine, theirs in pairs:
            a, b = ours[mine].float(), golden[theirs].float()
            diff = f"shape {tuple(a.shape)} vs {tuple(b.shape)}" if a.shape != b.shape else \
                f"max-abs {float((a - b).abs().max()):.3g}"
            print(f"{mine:24s} {diff}")
        if ours["video"].shape == video.shape:
            first = 0
            for c in range(chain.CLIPS):
                n = chain.INFER_FRAMES - (3 if c == 0 else 0)
                err = float((ours["video"][:, first:first + n] - video[:, first:first + n]).abs().max())
                print(f"clip {c} frames [{first}, {first + n}): max-abs {err:.3g}")
                first += n
        if args.write:
            print(f"wrote {store_golden(tmp, chain.GOLDEN_FILE, call)}")


if __name__ == "__main__":
    main()
