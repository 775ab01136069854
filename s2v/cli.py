"""The ``s2v`` command: render-shot, demo, validate (and run, status, submit, assemble, qa).

Exit codes: 0 success; 2 invalid input (file, value or checkpoint problem, message says which) or
a usage error (every subcommand; argparse prints ``usage:``); 3 unreadable manifest; 7 environment
error: the output location is full, read-only or forbidden (ENOSPC, EROFS, EACCES/EPERM; one line
names the path and the errno; render-shot checks its output directory before loading any model);
8 render-shot ran out of GPU memory (one line: the size, the memory needed and free, the options
that fit such as --offload or a smaller --size); 130 interrupted by Ctrl-C or SIGTERM (temporary
files removed, no partial output); 1 unexpected internal error. ``s2v run`` /
``s2v submit`` add theirs (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from render.model.hub import CKPT_HELP

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
EXIT_ENVIRONMENT = 7  # output location full, read-only or forbidden (cluster.exit_codes.EXIT_ENVIRONMENT)
EXIT_OUT_OF_MEMORY = 8  # render-shot ran out of GPU memory (the message names the size, memory, options)


def _add_render_options(p: argparse.ArgumentParser) -> None:
    # Every default is RenderSettings' (render.settings); the help only shows it.
    from render.settings import DEFAULT_SETTINGS as d
    from render.settings import GUIDANCE_RANGE, SAMPLERS, STEPS_RANGE

    p.add_argument("--size", default=d.size,
                   help=f"maximum area W*H (or WxH); the aspect ratio follows the image (default {d.size})")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="sampling steps, {}..{} (default {})".format(*STEPS_RANGE, d.steps))
    p.add_argument("--guidance", type=float, default=d.guidance,
                   help="classifier-free guidance scale, {:g}..{:g} (default {:g})".format(
                       *GUIDANCE_RANGE, d.guidance))
    p.add_argument("--shift", type=float, default=d.shift,
                   help=f"noise schedule shift, > 0 (default {d.shift:g})")
    p.add_argument("--sampler", default=d.sampler, choices=SAMPLERS, help=f"(default {d.sampler})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"in [0, 2^32) (default {d.seed})")
    p.add_argument("--negative-prompt", default=d.negative_prompt,
                   help="default: the official S2V negative prompt")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--crf", type=int, default=d.crf,
                   help=f"H.264 quality, 0 (lossless) .. 51 (default {d.crf})")
    p.add_argument("--official-frame-drop", action="store_true",
                   help="drop clip 0's first 3 frames like the official code (video 3 frames ahead of audio)")
    p.add_argument("--start-from-ref", action="store_true", help="official --start_from_ref")
    p.add_argument("--no-cfg-batch", action="store_true", help="run the two CFG passes one after the other")
    p.add_argument("--decode-context", type=int, default=d.decode_context_latents, metavar="K",
                   help="warm the VAE decoder with only the last K motion latents (official: all 19); "
                        "faster, changes pixels")
    p.add_argument("--vae-dtype", default="fp32", choices=["fp32", "bf16"],
                   help="VAE precision; official fp32. bf16 halves VAE time on GPU (rel. error ~2e-2)")
    p.add_argument("--fp8", action="store_true",
                   help="fp8 e4m3 linear layers (GPU sm89+): ~9%% faster, changes numbers (rel. error ~4e-2)")
    p.add_argument("--fp8-attention", action="store_true",
                   help="self-attention through cuDNN's fp8 flash attention (GPU sm90+, needs "
                        "nvidia-cudnn-frontend). Not recommended on Hopper: with --fp8 on an H100 it was "
                        "only 2-7%% faster than --fp8 alone for 5x its error (flow rel. L2 21-27%% vs 4.3%%); "
                        "see benchmarks/results/single_gpu.md")
    p.add_argument("--offload", action="store_true",
                   help="for GPUs smaller than the model (bf16 DiT 30.4 GiB): keep the DiT's 40 blocks in pinned "
                        "host memory (~27 GiB of pinned RAM) and stream each to the GPU one block ahead; same frames, "
                        "slower when the copies do not hide behind the compute")
    p.add_argument("--vae-tile", type=int, default=None, metavar="N",
                   help="decode in spatial tiles of NxN latents (8N pixels, overlap min(8, N/2) latents, blended): the VAE "
                        "decode's memory becomes one tile's; changes pixels slightly (default: whole frames)")
    p.add_argument("--fast", action="store_true",
                   help="fast mode: a step cache that skips the DiT's blocks on steps whose input barely changed "
                        "(the audio injection kept exact), and where the GPU has them fp8 linears, bf16 VAE and "
                        "FlashAttention-4; "
                        "prints what it turned on (quality cost: benchmarks/results/fast_mode.md)")
    p.add_argument("--motion-handoff", default=d.motion_handoff, choices=("pixels", "latents"),
                   help="what the next clip is conditioned on: re-encoded decoded frames (pixels, official) or the "
                        "sampled latents (no lossy round trip; benchmarks/results/long_form_quality.md)")
    p.add_argument("--colour-anchor", type=float, default=d.colour_anchor, metavar="S",
                   help="move each clip's Lab colour mean/std this fraction (0..1) toward the reference's: "
                        "long chains cannot drift in colour (default 0 = off)")
    p.add_argument("--identity-anchor", type=float, default=d.identity_anchor, metavar="W",
                   help="blend the oldest motion latents this fraction (0..1) toward a still reference "
                        "(default 0 = off)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _settings(a: argparse.Namespace):
    """render-shot's RenderSettings. Values are checked here, by RenderSettings (whose size rule is
    the manifest's too): a ValueError naming every bad field, before any model is loaded."""
    from render.settings import RenderSettings

    settings = RenderSettings(size=a.size, steps=a.steps, guidance=a.guidance, shift=a.shift, sampler=a.sampler,
                              seed=a.seed, negative_prompt=a.negative_prompt, crf=a.crf,
                              official_frame_drop=a.official_frame_drop, start_from_ref=a.start_from_ref,
                              cfg_batch=not a.no_cfg_batch, decode_context_latents=a.decode_context,
                              motion_handoff=a.motion_handoff, colour_anchor=a.colour_anchor,
                              identity_anchor=a.identity_anchor)
    if getattr(a, "fast", False):
        from render.model.fast.preset import apply_fast

        settings = apply_fast(settings)
    return settings


def _device(name: str | None):
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available on this machine")
    if name.split(":")[0] not in ("cuda", "cpu"):
        raise ValueError(f"--device {name!r}: expected 'cuda', 'cuda:N' or 'cpu'")
    return name


def cmd_render_shot(a: argparse.Namespace) -> int:
    from render.model.components import S2VModels
    from render.shot.pipeline import render_shot
    from s2v.arguments import check_mp4_output

    check_mp4_output("--out", a.out)
    settings = _settings(a)
    for label, path in (("--audio", a.audio), ("--image", a.image)):
        if not Path(path).is_file():
            raise ValueError(f"{label} {path}: file not found")
    from s2v.cli_segments import check_segment_sizes

    if getattr(a, "segment_mode", "sequential") != "sequential":
        check_segment_sizes(a.segment_seconds, a.overlap_seconds)
    device = _device(a.device)
    if a.fp8 and not device.startswith("cuda"):
        raise ValueError("--fp8 needs a CUDA device (sm89 or newer)")
    if a.fp8_attention and not device.startswith("cuda"):
        raise ValueError("--fp8-attention needs a CUDA device (sm90 or newer)")
    from render.media.atomic import check_writable

    check_writable(Path(a.out).parent)  # a full or read-only output location fails now, not after rendering
    import torch

    vae_dtype = torch.bfloat16 if a.vae_dtype == "bf16" else torch.float32
    if a.fast:
        from render.model.fast.preset import fast_plan

        plan = fast_plan(device)
        a.fp8 = a.fp8 or plan.fp8
        vae_dtype = torch.bfloat16 if plan.vae_bf16 else vae_dtype
        print(plan.describe(), flush=True)
        logging.getLogger(__name__).info("%s", plan.describe())
    from render.model.hub import resolve_checkpoint

    pipe = S2VModels(resolve_checkpoint(a.ckpt), device=device, fp8=a.fp8, fp8_attention=a.fp8_attention,
                     vae_dtype=vae_dtype, offload=a.offload)
    if a.vae_tile is not None:
        pipe.vae.set_decode_tiles(a.vae_tile)
    from render.model.out_of_memory import ShotOutOfMemory, is_out_of_memory, out_of_memory_message
    from s2v.cli_segments import segment_options

    oom_message = None
    try:
        r = render_shot(pipe, a.audio, a.image, a.prompt, a.out, settings, progress=not a.quiet,
                        pose_video=a.pose_video, segments=segment_options(a))
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        # The size searched from the image is inside render_shot; the message names --size's area.
        oom_message = out_of_memory_message(exc, width=None, height=None, size=settings.size, device=device,
                                            offload=a.offload)
    if oom_message is not None:
        raise ShotOutOfMemory(oom_message)
    print(f"wrote {r.output} ({r.width}x{r.height}, {r.frames} frames, {r.duration_s:.2f} s, "
          f"{r.clips} clips, seed {r.seed}) in {r.wall_s:.1f} s")
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    from s2v.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(out_dir=Path(a.out_dir), size=a.size, steps=a.steps, seed=a.seed,
                                seconds=a.seconds, restart=a.restart, quiet=a.quiet))


def cmd_validate(a: argparse.Namespace) -> int:
    from manifests.validate import run_validate

    return run_validate(a)


def package_version() -> str:
    """The installed package's version, else the one in the source tree's pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("s2v-render")
    except PackageNotFoundError:
        pass
    import re

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        m = re.search(r'(?m)^version\s*=\s*"([^"]+)"', pyproject.read_text())
    except OSError:
        m = None
    return m.group(1) if m else "unknown"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="s2v", description="Batch renderer for audio-driven video (Wan2.2-S2V-14B)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("render-shot", help="render one audio + image + prompt to an MP4")
    p.add_argument("--ckpt", required=True, help=CKPT_HELP)
    p.add_argument("--audio", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="the MP4 to write (H.264 + AAC; a name ending in .mp4)")
    p.add_argument("--pose-video", default=None, help="optional pose-driving video (official --pose_video)")
    _add_render_options(p)
    p.set_defaults(fn=cmd_render_shot)

    from s2v.demo import DEFAULT_SIZE, DEFAULT_STEPS, DemoOptions

    p = sub.add_parser("demo", help="the main job (s2v run) on local Ray with a tiny built-in model, CPU",
                       description="Writes a one-shot manifest (bundled 20 s speech, a generated character) "
                                   "and renders it with `s2v run`'s code on a private local Ray; a rerun with "
                                   "the same --out-dir resumes from the run directory. Exit codes as s2v run.")
    p.add_argument("--out-dir", default="s2v-demo", help="checkpoint, inputs, manifest, run/ and demo.mp4")
    p.add_argument("--seconds", type=float, default=None,
                   help="use only the first SECONDS of the bundled speech (default: all of it, 20.1 s)")
    p.add_argument("--size", default=DEFAULT_SIZE, help=f"max area W*H (default {DEFAULT_SIZE})")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps (default {DEFAULT_STEPS})")
    p.add_argument("--seed", type=int, default=DemoOptions.seed,
                   help=f"noise and character seed, in [0, 2^32) (default {DemoOptions.seed})")
    p.add_argument("--restart", action="store_true", help="discard an earlier demo run in --out-dir (other options)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_demo)

    from manifests.validate import VALIDATE_DESCRIPTION, add_validate_arguments

    p = sub.add_parser("validate", help="check a Parquet manifest; lists every problem",
                       description=VALIDATE_DESCRIPTION)
    add_validate_arguments(p)
    p.set_defaults(fn=cmd_validate)
    from s2v.cli_run import register as register_cluster  # s2v run / status / submit

    register_cluster(sub)
    from s2v.cli_assemble import register_assemble  # s2v assemble
    from s2v.cli_segments import register as register_segments  # segment options, qa

    register_assemble(sub)
    register_segments(sub)
    return ap


def _quiet_libraries(hub: bool = False) -> None:
    # transformers prints per-tensor loading bars and hub hints; our own progress bars suffice.
    # Offline by default (local folders need no hub), unless --ckpt names a hub repo to download.
    if not hub:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


_TOP_OPTIONS = {"-v", "--verbose"}


def _subcommand_parser(parser: argparse.ArgumentParser, cmd: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``cmd`` (argparse keeps it in its subparsers action)."""
    sub = next(x for x in parser._actions if isinstance(x, argparse._SubParsersAction))
    return sub.choices[cmd]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse an ``s2v`` command line. ``s2v submit``'s arguments after the first ``--`` are not
    parsed here: they become ``run_args``, passed as given to the ``s2v run`` it submits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args: list[str] | None = None
    cmd_at = next((i for i, x in enumerate(argv) if x not in _TOP_OPTIONS), None)
    if cmd_at is not None and argv[cmd_at] == "submit" and "--" in argv[cmd_at:]:
        cut = argv.index("--", cmd_at)
        argv, run_args = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    a, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse would report them with the top-level usage ("s2v [-h] ..."); the subcommand's
        # usage is the one that lists the options the user meant to give (unless they came first).
        before_cmd = argv[:argv.index(a.cmd)]
        owner = parser if any(x in before_cmd for x in unknown) else _subcommand_parser(parser, a.cmd)
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")
    if a.cmd == "submit":
        a.run_args = run_args or []
    return a


def _interrupt_on_sigterm() -> object:
    """SIGTERM (what ``timeout``, ``kill`` and job schedulers send) stops a command the way Ctrl-C
    does: a KeyboardInterrupt, so every ``with`` block removes its temporary files and the command
    exits 130 with one line (returns the handler it replaced). Python's default for SIGTERM kills the process on the spot (exit 143),
    leaving half-written temporaries beside the output. ``s2v run`` replaces this handler with its
    own while rendering (a stop that lets running shots commit)."""
    import signal
    import threading

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread may set handlers
    return signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    previous = _interrupt_on_sigterm()
    try:
        return _main(a)
    finally:
        if previous is not None:  # an in-process caller (tests, a notebook) keeps its own handler
            import signal

            signal.signal(signal.SIGTERM, previous)


def _main(a: argparse.Namespace) -> int:
    from render.model.out_of_memory import prefer_expandable_segments

    prefer_expandable_segments()  # before any command touches a GPU
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from render.model.hub import is_hub_repo_id

    _quiet_libraries(hub=is_hub_repo_id(str(getattr(a, "ckpt", "") or "")))
    from render.media.atomic import describe_os_error, environment_error
    from render.media.audio import AudioDecodeError
    from render.media.image import ImageLoadError
    from render.media.pose import PoseVideoError
    from render.model.checkpoint import CheckpointError
    from render.model.out_of_memory import ShotOutOfMemory

    try:
        return a.fn(a)
    except (CheckpointError, AudioDecodeError, ImageLoadError, PoseVideoError, ValueError, FileNotFoundError) as e:
        print(f"s2v {a.cmd}: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except ShotOutOfMemory as e:
        print(f"s2v {a.cmd}: error: {e}", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except KeyboardInterrupt as e:
        by = f" by {e.args[0]}" if e.args and str(e.args[0]).startswith("SIG") else ""
        print(f"s2v {a.cmd}: interrupted{by}; no partial output was left", file=sys.stderr)
        return 130
    except Exception as e:
        env = environment_error(e)
        if env is None:
            raise
        print(f"s2v {a.cmd}: error: {describe_os_error(env)}", file=sys.stderr)
        return EXIT_ENVIRONMENT


if __name__ == "__main__":
    sys.exit(main())
