"""Start N fresh processes with a process group each (CPU/gloo for tests, or NCCL), bounded in time.

A rank that fails inside a ring step leaves the others blocked in their next collective, so
:func:`spawn` never waits unboundedly: it collects each rank's result or traceback, and once
one rank failed or the deadline passed it terminates the processes it started and raises.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

WorkerFn = Callable[..., Any]  # fn(rank, world_size, *args) -> picklable result
GRACE_S = 3.0


class SpawnError(RuntimeError):
    pass


def init_process_group(rank: int, world_size: int, init_file: str, backend: str = "gloo",
                       timeout_s: float = 60.0) -> None:
    """A fresh group over a file store (no ports to pick or collide)."""
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def _entry(fn: WorkerFn, rank: int, world_size: int, init_file: str, backend: str, threads: int,
           collective_timeout_s: float, args: tuple, results) -> None:
    try:
        torch.set_num_threads(threads)
        init_process_group(rank, world_size, init_file, backend, collective_timeout_s)
        try:
            out = fn(rank, world_size, *args)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        results.put((rank, True, out))
    except BaseException:  # report everything, including assertion errors, to the parent
        results.put((rank, False, traceback.format_exc()))


def spawn(fn: WorkerFn, world_size: int, *args: Any, timeout_s: float = 120.0, backend: str = "gloo",
          threads: int = 1, collective_timeout_s: float = 60.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes; return results by rank.

    ``fn`` must be importable (a module-level function). Raises :class:`SpawnError` with the
    first failing rank's traceback, or when ``timeout_s`` passes.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="s2v-pg-") as tmp:
        init_file = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_entry, args=(fn, r, world_size, init_file, backend, threads,
                                                  collective_timeout_s, args, results), daemon=True)
                 for r in range(world_size)]
        for p in procs:
            p.start()
        out: dict[int, Any] = {}
        failures: dict[int, str] = {}
        deadline = time.monotonic() + timeout_s
        grace_end: float | None = None  # after a failure, collect the others' errors briefly
        try:
            while len(out) + len(failures) < world_size:
                now = time.monotonic()
                if grace_end is not None and now >= grace_end:
                    break
                left = deadline - now
                if left <= 0:
                    if failures:
                        break
                    missing = sorted(set(range(world_size)) - set(out))
                    raise SpawnError(f"ranks {missing} did not finish within {timeout_s:.0f} s")
                try:
                    rank, ok, value = results.get(timeout=min(left, 0.5))
                except queue.Empty:
                    for r, p in enumerate(procs):
                        if r not in out and r not in failures and p.exitcode not in (None, 0):
                            failures[r] = f"process exited with code {p.exitcode}"
                else:
                    if ok:
                        out[rank] = value
                    else:
                        failures[rank] = value
                if failures and grace_end is None:
                    grace_end = time.monotonic() + GRACE_S
            if failures:
                # The first rank to fail usually makes the others fail in their next collective;
                # all errors are listed, the first one received first.
                raise SpawnError("\n".join(f"rank {r} failed:\n{tb}" for r, tb in failures.items()))
        finally:
            for p in procs:
                p.join(timeout=5.0 if not failures and len(out) == world_size else 0.5)
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5.0)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5.0)
            results.close()
        return [out[r] for r in range(world_size)]
