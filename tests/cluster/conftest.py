"""One local Ray per test module (starting Ray costs ~5 s and ~600 MiB on these machines)."""

from __future__ import annotations

import pytest

# Four "GPUs" made of CPU processes: two render groups of two gloo ranks.
RENDER_SLOTS = 4


@pytest.fixture(autouse=True, scope="session")
def _pinned_code_version():
    """Pin the code part of shot keys: other work on the source tree while a test's run
    is resumed would otherwise (correctly) refuse the resume. Subprocess drivers inherit it."""
    import os

    from cluster.fingerprint import CODE_VERSION_ENV

    old = os.environ.get(CODE_VERSION_ENV)
    os.environ[CODE_VERSION_ENV] = "tests"
    yield
    if old is None:
        os.environ.pop(CODE_VERSION_ENV, None)
    else:
        os.environ[CODE_VERSION_ENV] = old


@pytest.fixture(scope="module")
def local_ray():
    """A private Ray on 127.0.0.1 started the way `s2v run --address local` starts one."""
    from cluster.ray_runtime import connect

    info = connect("local", render_slots=RENDER_SLOTS, num_cpus=3)
    import ray

    yield {**info, "gcs_address": ray.get_runtime_context().gcs_address}
    ray.shutdown()
