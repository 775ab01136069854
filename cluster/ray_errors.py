"""How the engine reads an exception from Ray: a process that died under the work (the cluster's
trouble), a collective that broke (the group's), or the work's own error; and one line for it."""

from __future__ import annotations

import ray

_COLLECTIVE_HINTS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout")


# What Ray raises when the process running a task or actor is gone (killed, crashed, its node lost).
_RAY_DEATHS = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
               ray.exceptions.LocalRayletDiedError, ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError)


def ray_process_died(exc: BaseException) -> bool:
    return isinstance(exc, _RAY_DEATHS) or isinstance(cause_of(exc), _RAY_DEATHS)


def cause_of(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


def describe_exception(exc: BaseException) -> str:
    cause = cause_of(exc)
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    if isinstance(cause, ray.exceptions.RayActorError):
        return lines[0] if lines else type(cause).__name__
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:2000]


def looks_collective(exc: BaseException) -> bool:
    cause = cause_of(exc)
    if type(cause).__name__ == "GroupCommError":
        return True
    try:
        import torch.distributed as dist

        if isinstance(cause, dist.DistError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(cause).lower()
    return isinstance(cause, RuntimeError) and any(h in text for h in _COLLECTIVE_HINTS)
