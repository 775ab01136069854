"""Shared test fixtures.

The golden parity data (outputs of the official Wan2.2 code on tiny random-weight models) is part
of the repository, in ``tests/data/wan_s2v``, so the parity tests run on a fresh clone and never
skip. Large files are stored xz-compressed; the first test that needs them unpacks the folder once
per session into a temporary directory and checks every unpacked file against ``SHA256SUMS`` (the
hashes of the files exactly as the official run wrote them). Product code never reads this data.
"""

from __future__ import annotations

import os

# On 2 busy cores, OpenMP threads that spin-wait for each other make small CPU kernels up to 30x
# slower (measured: a tiny VAE encode+decode 5.9 s vs 0.16 s); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hashlib  # noqa: E402
import lzma  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from render.model.out_of_memory import prefer_expandable_segments  # noqa: E402

# The CUDA allocator as the product's processes configure it, from the first GPU test on (read at
# the first allocation), not from whichever test happens to call the s2v CLI in-process first.
prefer_expandable_segments()

REPO_ROOT = Path(__file__).resolve().parents[1]


GOLDEN_SOURCE = REPO_ROOT / "tests" / "data" / "wan_s2v"


def unpack_golden(source: Path, dest: Path) -> Path:
    """Copy ``source`` to ``dest``, decompressing ``*.xz`` files, and verify ``SHA256SUMS``."""
    for src in sorted(source.rglob("*")):
        if not src.is_file():
            continue
        rel = src.relative_to(source)
        out = dest / (rel.with_suffix("") if src.suffix == ".xz" else rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".xz":
            with lzma.open(src) as f_in, out.open("wb") as f_out:
                shutil.copyfileobj(f_in, f_out, 1 << 20)
        else:
            shutil.copyfile(src, out)
    for line in (dest / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        got = hashlib.sha256((dest / name).read_bytes()).hexdigest()
        if got != digest:
            raise RuntimeError(f"golden file {name} does not match SHA256SUMS (got {got}): the copy in {source} is damaged")
    return dest


@pytest.fixture(scope="session")
def golden_root(tmp_path_factory) -> Path:
    """The unpacked golden folder: golden/, golden_vae_t5/, clip_chain/ and the 14B key inventories."""
    return unpack_golden(GOLDEN_SOURCE, tmp_path_factory.mktemp("wan_s2v_golden"))


@pytest.fixture(scope="session")
def golden_dir(golden_root: Path) -> Path:
    return golden_root / "golden"


@pytest.fixture(scope="session")
def golden_vae_t5_dir(golden_root: Path) -> Path:
    return golden_root / "golden_vae_t5"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny random-weight checkpoint folder in the official layout (written once per session)."""
    from tinymodel.checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture(scope="session")
def demo_media(tmp_path_factory) -> tuple[Path, Path]:
    """(speech-like wav of 3 s, cartoon face png)."""
    from tinymodel.demo_assets import cartoon_face, speech_like_audio, write_wav

    d = tmp_path_factory.mktemp("media")
    return write_wav(d / "speech.wav", speech_like_audio(3.0)), cartoon_face(d / "face.png", (200, 160))
