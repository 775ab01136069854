"""One torch CPU thread for the tiny-model tests.

Their work is many small convolutions (VAE dim 8, 32-64 px). On a machine whose two cores are
busy with other processes, torch's OpenMP threads spin-wait for each other on every op: measured
here, a VAE encode + decode of 3 x 9 frames at 32 px took 5.9 s with the default 2 threads and
0.42 s with 1 (0.16 s with 2 threads and OMP_WAIT_POLICY=PASSIVE, which must be set before the
process starts). The previous thread count is restored after each test.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
