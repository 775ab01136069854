"""``s2v demo``: the main job (``s2v run``) on an embedded default, on this machine.

What it does, in the demo's output folder D:

1. the checkpoint: the trained tiny model when this copy of the code ships it
   (``tinymodel.export.shipped_checkpoint()``), else a tiny random-weight checkpoint in the
   official layout written to ``D/tiny-s2v-checkpoint`` (frames are noise then);
2. the inputs: the bundled espeak speech (``tinymodel/assets/demo_speech.ogg``, 20.1 s; cut to
   ``--seconds`` when given) and a generated character (``tinymodel.faces``) as a PNG;
3. a one-shot Parquet manifest ``D/demo.parquet`` (``manifests.write_manifest``);
4. the production path: ``cluster.driver.run`` — exactly what ``s2v run`` calls — on a private
   local Ray bound to 127.0.0.1, one render group of one CPU rank (a GPU when Ray sees one), the
   run directory ``D/run`` as the ledger. A second ``s2v demo`` with the same D resumes from the
   ledger: nothing is rendered again and the existing result is printed.

Inputs are written once and never rewritten (their names carry what shapes them: the cut and
the seed), so an unchanged rerun has the same manifest and fingerprint. A changed option on a
rendered demo is refused (exit 5) unless ``--restart`` is given, before the manifest is rewritten
(a change the run finds itself, of the model or the code, puts the manifest back): a refused demo
leaves ``D/demo.parquet`` describing ``D/demo.mp4``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import tinymodel  # noqa: E402  (package data: works for editable and regular installs)

BUNDLED_SPEECH = Path(tinymodel.__file__).resolve().parent / "assets" / "demo_speech.ogg"
PROMPT = "a cartoon character talks to the camera"
SHOT_ID = "demo"
# 128*128 for both checkpoints: the trained tiny model is trained at 128x128 (tinymodel.export.SIZE)
# and the generated character is drawn at 128x128, so this gives a 128x128 video; for the
# random-weight model 128 (rather than the old demo's 192*192) keeps the full 20 s of speech
# inside the 2-minute budget on 2 CPU cores, and its frames are noise at any size.
DEFAULT_SIZE = "128*128"
DEFAULT_STEPS = 8
REFERENCE_SIDE = 128  # the character's PNG; the output's aspect follows it (square)


@dataclass
class DemoOptions:
    out_dir: Path
    size: str = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    seed: int = 42
    seconds: float | None = None  # None: all of the bundled speech
    restart: bool = False
    quiet: bool = False


def _say(message: str) -> None:
    print(f"s2v demo: {message}", file=sys.stderr, flush=True)


def _validate(o: DemoOptions) -> None:
    from manifests.schema import SEED_LIMIT, STEPS_RANGE, parse_size

    try:
        parse_size(o.size)
    except ValueError as exc:
        raise ValueError(f"--size {o.size}: {exc}") from None
    if not STEPS_RANGE[0] <= o.steps <= STEPS_RANGE[1]:
        raise ValueError(f"--steps {o.steps}: expected {STEPS_RANGE[0]}..{STEPS_RANGE[1]}")
    if not 0 <= o.seed < SEED_LIMIT:
        raise ValueError(f"--seed {o.seed}: expected 0 <= seed < 2**32")
    if o.seconds is not None and not o.seconds > 0:
        raise ValueError(f"--seconds {o.seconds}: expected a positive number of seconds")
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ValueError("s2v demo runs the main job on Ray, which is not installed: "
                         "pip install -e '.[cluster]' (the README's first command installs it)")
    if not BUNDLED_SPEECH.is_file():
        raise FileNotFoundError(f"{BUNDLED_SPEECH}: the demo's bundled speech is missing from this installation")


def _checkpoint(out_dir: Path) -> tuple[Path, bool]:
    """(checkpoint folder, trained?)"""
    from tinymodel.export import shipped_checkpoint

    shipped = shipped_checkpoint()
    if shipped is not None:
        return shipped, True
    from tinymodel.checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(out_dir / "tiny-s2v-checkpoint"), False


def _atomic_copy_or_write(dst: Path, write) -> Path:
    """Create ``dst`` once (temp name + rename); an existing file is kept as it is."""
    if dst.is_file():
        return dst
    tmp = dst.with_name(f".{dst.stem}.tmp{dst.suffix}")
    write(tmp)
    os.replace(tmp, dst)
    return dst


def speech_file(out_dir: Path, seconds: float | None) -> Path:
    """The bundled speech in D (copied whole, or its first ``seconds`` as 16 kHz mono WAV)."""
    if seconds is None:
        return _atomic_copy_or_write(out_dir / "demo_speech.ogg", lambda p: shutil.copyfile(BUNDLED_SPEECH, p))
    from render.media.audio import decode_audio
    from tinymodel.demo_assets import write_wav

    decoded = decode_audio(BUNDLED_SPEECH)
    if seconds > decoded.duration_s:
        raise ValueError(f"--seconds {seconds:g}: the bundled speech {BUNDLED_SPEECH.name} is only "
                         f"{decoded.duration_s:.2f} s long")
    n = int(round(seconds * decoded.sample_rate))
    return _atomic_copy_or_write(out_dir / f"demo_speech-{seconds:g}s.wav",
                                 lambda p: write_wav(p, decoded.samples[:n], decoded.sample_rate))


def character_file(out_dir: Path, seed: int) -> Path:
    """A generated character at rest (``tinymodel.faces``), drawn from ``seed``, as a PNG."""
    def draw(p: Path) -> None:
        from PIL import Image

        from tinymodel.faces import random_character, reference_frame, to_uint8

        ch = random_character(np.random.default_rng(seed))
        pixels = to_uint8(reference_frame(ch, REFERENCE_SIDE, REFERENCE_SIDE)[None])[0]
        Image.fromarray(pixels).save(p, format="PNG")

    return _atomic_copy_or_write(out_dir / f"demo_character-seed{seed}.png", draw)


def demo_run_dir(out_dir: Path) -> Path:
    """The run directory of the demo in ``out_dir`` (s2v demo has no --run-dir)."""
    return out_dir / "run"


def changed_options(manifest: Path, row: dict) -> list[str]:
    """What differs between ``row`` and the demo's earlier manifest, as "--steps 8 -> 4" (empty when
    there is none, or it cannot be read: the run then decides from its ledger)."""
    if not manifest.is_file():
        return []
    import pyarrow.parquet as pq

    try:
        (old,) = pq.read_table(manifest, columns=list(row)).to_pylist()
    except Exception:  # unreadable or another layout: not ours to judge here
        return []
    described = {"audio": "the speech (--seconds)", "image": "the character (--seed)"}
    return [described.get(k) or f"--{k} {old.get(k)} -> {v}" for k, v in row.items() if old.get(k) != v]


def restore_file(path: Path, content: bytes | None) -> None:
    """Put back ``path`` as it was: ``content``, or no file when it had none."""
    if content is None:
        path.unlink(missing_ok=True)
    else:
        from render.media.atomic import atomic_write_bytes

        atomic_write_bytes(path, content)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def build_request(o: DemoOptions, manifest: Path, ckpt: Path):
    from cluster.driver import RunRequest
    from cluster.settings import EngineOptions, RunSettings

    threads = max(1, min(_cores(), 8))
    # One group of one rank. The rank takes a render_slot (local Ray declares one per rank on a
    # machine without GPUs), not a CPU; the prompt/audio preparation actor and the stitch task
    # take one CPU each, so 2 CPUs never deadlock and fit a 2-core machine. Preparation happens
    # before rendering and stitching after it, so each may use every core for its threads.
    engine = EngineOptions(group_size=1, groups=1, cpu_threads_per_rank=threads, prep_threads=threads)
    return RunRequest(manifest=manifest, run_dir=demo_run_dir(o.out_dir), settings=RunSettings(ckpt=str(ckpt.resolve())),
                      engine=engine, address="local", restart=o.restart, num_cpus=2,
                      refuse_changed=True)


def run_demo(o: DemoOptions) -> int:
    from cluster import exit_codes as ec
    from cluster.driver import run
    from cluster.ledger import RunDir
    from manifests.schema import write_manifest

    t0 = time.time()
    _validate(o)
    # Spin-waiting OpenMP threads make small CPU kernels many times slower on a busy 2-core
    # machine; the Ray workers started below inherit this (tests/conftest.py does the same).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out_dir = o.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    o = replace(o, out_dir=out_dir)
    audio = speech_file(out_dir, o.seconds)  # first: it checks --seconds against the speech's length
    image = character_file(out_dir, o.seed)
    ckpt, trained = _checkpoint(out_dir)
    output = out_dir / "demo.mp4"
    row = dict(shot_id=SHOT_ID, audio=str(audio), image=str(image), prompt=PROMPT, output=str(output),
               size=o.size, steps=o.steps, seed=o.seed)
    manifest = out_dir / "demo.parquet"
    run_dir = RunDir(demo_run_dir(out_dir))
    already = run_dir.is_published(SHOT_ID) and not o.restart
    changed = changed_options(manifest, row) if already else []
    if changed:
        # Refused here, before the manifest is rewritten: it keeps describing the video in D.
        _say(f"{out_dir} holds a demo rendered with other options ({', '.join(changed)}); pass --restart to "
             "render it again with these, or another --out-dir")
        return ec.EXIT_FINGERPRINT_CHANGED
    previous = manifest.read_bytes() if manifest.is_file() else None
    write_manifest([row], manifest)
    req = build_request(o, manifest, ckpt)
    if not o.quiet:
        model = "trained tiny model" if trained else "tiny random-weight model (the trained one is missing from tinymodel/tiny-s2v)"
        _say(f"{model}: {ckpt}; speech {audio.name}; character {image.name}; manifest {manifest}; "
             f"run directory {req.run_dir} (local Ray, 1 render group of 1 rank)")
    code = run(req)
    if code in (ec.EXIT_FINGERPRINT_CHANGED, ec.EXIT_LEASE_HELD):
        # Refused by the run (the model or the code changed; another demo runs in D): the manifest
        # goes back to what it was, so it still describes the video and the run directory.
        restore_file(manifest, previous)
    if code == ec.EXIT_FINGERPRINT_CHANGED:
        _say(f"{req.run_dir} holds a demo rendered with another model, code or options; pass --restart to "
             "render again, or another --out-dir (s2v demo has no --run-dir: its run directory is --out-dir/run)")
    if code != ec.EXIT_OK:
        return code
    published = run_dir.read_published(SHOT_ID)
    if published is None:  # run() said every shot is done; the ledger must agree
        raise RuntimeError(f"{req.run_dir}: the run finished but no published record for shot {SHOT_ID!r}")
    from render.media.video import probe_video

    info = probe_video(published["output"])
    how = "already rendered (resumed from the run directory's ledger; nothing rendered)" if already else "rendered"
    model = f"trained tiny model {ckpt}" if trained else f"tiny random-weight model {ckpt} (frames are noise)"
    print(f"demo video: {published['output']} ({info.width}x{info.height}, {published['frames']} frames, "
          f"{published['duration_s']:.2f} s) — {how}; {model}; run directory {req.run_dir}; "
          f"wall {time.time() - t0:.1f} s")
    return ec.EXIT_OK
