"""Starting or joining Ray, bound to loopback unless the user opts in (nothing listens beyond
this machine without an explicit choice).

* ``--address local`` starts a private Ray on this machine: node address 127.0.0.1 with
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (with a 127.0.0.1 node address alone Ray would still
  switch to the primary interface and listen on 0.0.0.0), dashboard and job server on
  127.0.0.1, Ray's token authentication left on (the 2.60 default). Without GPUs it declares
  ``render_slot`` resources so render groups can be formed from CPU processes.
* ``--address auto`` / ``HOST:PORT`` joins a running cluster (see docs/cluster.md for a head
  started on loopback). Joining a non-loopback cluster with token authentication disabled is
  refused.
* ``--bind-public`` binds the local head's dashboard/job server to all interfaces; it requires
  token authentication and is refused when ``RAY_AUTH_MODE=disabled``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
NAMESPACE = "s2v"


class RaySecurityError(ValueError):
    """A binding or authentication choice that would expose the cluster (message says which)."""


class RayUnreachable(RuntimeError):
    """No Ray cluster answers at the given ``--address`` (the environment, not the run: exit 7)."""


def _auth_disabled() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled"


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def connect(address: str = "local", *, bind_public: bool = False, render_slots: int | None = None,
            num_cpus: int | None = None) -> dict[str, Any]:
    """Start or join Ray; returns a few facts about the connection (for the driver log)."""
    if address == "local" and not bind_public:
        _keep_on_loopback()
    import ray

    if ray.is_initialized():  # an embedding program (or a test) already connected
        return {"address": "existing", "dashboard": None}
    if bind_public and _auth_disabled():
        raise RaySecurityError("--bind-public requires Ray token authentication, but RAY_AUTH_MODE=disabled; "
                               "unset it (token authentication is Ray's default) or drop --bind-public")
    if address == "local":
        kwargs: dict[str, Any] = {"namespace": NAMESPACE, "include_dashboard": True, "log_to_driver": False}
        if bind_public:
            os.environ["RAY_AUTH_MODE"] = "token"
            kwargs["dashboard_host"] = "0.0.0.0"
        else:
            kwargs["dashboard_host"] = LOOPBACK
            kwargs["_node_ip_address"] = LOOPBACK
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if render_slots and not _has_gpus():
            kwargs["resources"] = {"render_slot": render_slots}
        ctx = ray.init(address="local", **kwargs)
        return {"address": ctx.address_info.get("gcs_address"), "dashboard": ctx.dashboard_url,
                "metrics_export_port": ctx.address_info.get("metrics_export_port")}
    host = address.rsplit(":", 1)[0] if ":" in address else ""
    if host and not _is_loopback(host) and _auth_disabled() and not bind_public:
        raise RaySecurityError(f"--address {address} is not on loopback and RAY_AUTH_MODE=disabled: joining "
                               "an unauthenticated cluster over the network is refused; enable token "
                               "authentication (and pass --bind-public to confirm)")
    try:
        ctx = ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    except (ConnectionError, TimeoutError) as exc:  # no head (not started, rebooted, crashed)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnreachable(
            f"no Ray cluster at --address {address} ({first}). Start its head first (on one machine: "
            "`ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1`, see docs/cluster.md), "
            "or pass --address local for a private Ray that this run starts and stops") from exc
    return {"address": ctx.address_info.get("gcs_address"), "dashboard": ctx.dashboard_url,
            "metrics_export_port": ctx.address_info.get("metrics_export_port")}


def _keep_on_loopback() -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when ``ray`` is first imported; set it
    before that. If ``ray`` was already imported (an embedding program), the constant it derived
    is switched too — otherwise the head would pick the primary interface and listen on it."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        log.info("ray was imported before the loopback setting; applying it to the loaded module")
        constants.ENABLE_RAY_CLUSTER = False


def _has_gpus() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def disconnect(started_here: bool) -> None:
    import ray

    if started_here and ray.is_initialized():
        ray.shutdown()
