"""Shared test fixtures.

The golden parity data lives in the project's ``shared`` folder beside the checkout
(``<checkout>/../shared``), or wherever ``S2V_SHARED_DIR`` points. Tests that need it skip
with a clear reason when it is absent; product code never depends on it.
"""

from __future__ import annotations

import os

# On 2 busy cores, OpenMP threads that spin-wait for each other make small CPU kernels up to 30x
# slower (measured: a tiny VAE encode+decode 5.9 s vs 0.16 s); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path | None:
    env = os.environ.get("S2V_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared")
    for c in candidates:
        if (c / "wan_s2v").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _shared_dir()
    if d is None:
        pytest.skip("golden data not found: set S2V_SHARED_DIR or place shared/ beside the checkout")
    return d


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    return shared_dir / "wan_s2v" / "golden"


@pytest.fixture(scope="session")
def golden_vae_t5_dir(shared_dir: Path) -> Path:
    return shared_dir / "wan_s2v" / "golden_vae_t5"


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
