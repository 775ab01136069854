"""Render groups: N rank actors in one STRICT_PACK placement group, one process group.

``form_group`` is blocking (placement, actor start, weight load, process group) and is run in a
thread by the driver so several groups form at once. Any failure while forming tears down what
was built and raises ``GroupStartError`` naming the node, so the driver can count it against the
group's start budget and the node's health. ``teardown`` kills every member: a group is only ever
used whole (one dead rank makes the others' collectives fail anyway).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.ledger import RunDir
from cluster.rank import RankWorker
from render.media.atomic import atomic_write_json

log = logging.getLogger(__name__)

CUSTOM_SLOT = "render_slot"  # what `s2v run --address local` gives a CPU-only machine
RankActor = ray.remote(RankWorker)


class GroupStartError(RuntimeError):
    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


@dataclass
class GroupSpec:
    run_dir: str
    run_id: str
    settings: dict[str, Any]
    size: int
    slot_resource: str  # "GPU", "render_slot" or "CPU"
    collective_timeout_s: float
    start_timeout_s: float
    cpu_threads: int
    parallel: str = "auto"
    handoff_timeout_s: float = 600.0  # the writer's hand-off group (parallel.chain_sync)
    lease_token: str | None = None  # the driver's lease: ranks check it before every commit
    offload: bool = False  # DiT blocks streamed from host memory (render/model/offload.py)


@dataclass
class RenderGroup:
    name: str  # slot name, e.g. "g0"
    generation: int
    pg: Any
    actors: list[Any]
    node_id: str | None
    pids: list[int] = field(default_factory=list)
    parallel: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}.{self.generation}"


def detect_slot_resource(size: int) -> str:
    """GPU when the cluster has GPUs, else the custom CPU slot of a local run, else CPU cores."""
    total = ray.cluster_resources()
    if total.get("GPU", 0) >= size:
        return "GPU"
    if total.get(CUSTOM_SLOT, 0) >= size:
        return CUSTOM_SLOT
    return "CPU"


def _bundle(slot: str) -> dict[str, float]:
    if slot == "GPU":
        return {"GPU": 1, "CPU": 1}
    return {slot: 1}


def _actor_options(slot: str) -> dict[str, Any]:
    if slot == "GPU":
        return {"num_gpus": 1, "num_cpus": 1}
    if slot == "CPU":
        return {"num_cpus": 1}
    return {"num_cpus": 0, "resources": {slot: 1}}


def _candidate_nodes(slot: str, size: int, excluded: set[str]) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] not in excluded
            and n.get("Resources", {}).get(slot, 0) >= size]


def _place(spec: GroupSpec, name: str, excluded: set[str]) -> tuple[Any, str | None]:
    bundles = [_bundle(spec.slot_resource) for _ in range(spec.size)]
    pins: list[str | None] = [None]
    if excluded:
        # Pin the group to a healthy node through the node's built-in "node:<ip>" resource.
        nodes = _candidate_nodes(spec.slot_resource, spec.size, excluded)
        if not nodes:
            raise GroupStartError(f"no healthy node has {spec.size} x {spec.slot_resource} "
                                  f"(excluded: {', '.join(sorted(excluded))})")
        pins = [n["NodeManagerAddress"] for n in nodes]
    last_error = ""
    for ip in pins:
        if ip is not None:
            bundles[0] = {**_bundle(spec.slot_resource), f"node:{ip}": 0.001}
        pg = placement_group(bundles, strategy="STRICT_PACK", name=f"s2v-{spec.run_id}-{name}")
        try:
            ray.get(pg.ready(), timeout=spec.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(pg)
            last_error = (f"placement of {spec.size} x {_bundle(spec.slot_resource)} on one node timed out "
                          f"after {spec.start_timeout_s:.0f} s (cluster: {ray.cluster_resources()})")
            continue
        node = placement_group_table(pg).get("bundles_to_node_id", {}).get(0)
        return pg, node
    raise GroupStartError(last_error)


def form_group(spec: GroupSpec, name: str, generation: int, excluded: set[str]) -> RenderGroup:
    label = f"{name}.{generation}"
    pg, node = _place(spec, label, excluded)
    actors: list[Any] = []
    try:
        device_kind = "cuda" if spec.slot_resource == "GPU" else "cpu"
        for rank in range(spec.size):
            actors.append(RankActor.options(
                name=f"s2v-{spec.run_id}-{label}-r{rank}", max_restarts=0, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
                **_actor_options(spec.slot_resource),
            ).remote(spec.run_dir, spec.settings, spec.run_id, name, rank, spec.size, device_kind,
                     spec.cpu_threads, spec.lease_token))
        store = f"{spec.run_id}-{label}-{secrets.token_hex(4)}"
        infos = ray.get([a.setup.remote(store, spec.collective_timeout_s, spec.parallel, spec.handoff_timeout_s,
                                       spec.offload)
                         for a in actors], timeout=spec.start_timeout_s)
    except Exception as exc:
        _kill(actors, pg)
        if isinstance(exc, ray.exceptions.GetTimeoutError):
            raise GroupStartError(f"group {label} did not start within {spec.start_timeout_s:.0f} s",
                                  node) from exc
        raise GroupStartError(f"group {label} failed to start: {_first_line(exc)}", node) from exc
    group = RenderGroup(name, generation, pg, actors, node, [i["pid"] for i in infos], infos[0]["parallel"])
    atomic_write_json(RunDir(spec.run_dir).group_record(label), {
        "group": name, "generation": generation, "node_id": node, "host": infos[0]["host"],
        "pids": group.pids, "actors": [f"s2v-{spec.run_id}-{label}-r{r}" for r in range(spec.size)],
        "parallel": group.parallel, "backend": infos[0]["backend"], "formed_at": time.time(),
    })
    log.info("group %s formed on node %s (pids %s, %s)", label, node, group.pids, group.parallel)
    return group


def _kill(actors: list[Any], pg: Any) -> None:
    for a in actors:
        with contextlib.suppress(Exception):
            ray.kill(a, no_restart=True)
    with contextlib.suppress(Exception):
        remove_placement_group(pg)


def teardown(group: RenderGroup) -> None:
    _kill(group.actors, group.pg)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
