"""One rank of a render group: a Ray actor holding one GPU (or one CPU slot) and the model.

All ranks of a group run the same DiT calls: ``parallel.parallelize_dit`` makes the DiT shard
its work across the group inside ``prepare``/``denoise``, so every rank ends a clip with the same
sampled latents. Rank 0 is the writer: it alone loads the VAE, builds the conditioning
(reference latent, pose latents; it reads the prepared prompt and feature files), decodes each
clip, re-encodes the motion frames and writes to the run directory; the others receive what
they need through ``parallel.GroupChainSync`` (a gloo hand-off group with its own, longer
timeout, since they wait there while the writer decodes and writes). After every clip the ranks
compare a hash of their sampled latents — a consistency check that is also the group's liveness
check: a collective with a dead peer fails within the group's timeout (seconds, not the
30-minute default), the survivors raise, and the driver re-forms the group.

The process group is formed through a ``FileStore`` in the node's temp directory (a group is
packed on one node), and gloo/NCCL bootstrap on the loopback interface: nothing of a group
listens on the network.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class GroupCommError(RuntimeError):
    """A collective of the render group failed (a peer died, timed out or diverged)."""


# Tests: comma-separated shot ids whose DiT forwards raise torch.OutOfMemoryError in this rank
# (a CUDA out-of-memory error simulated on any device; read when a segment starts).
SIMULATE_OOM_ENV = "S2V_SIMULATE_OOM_SHOTS"
# Tests on a GPU: a cap in GiB on what each CUDA rank's allocator may hold (torch's per-process
# memory fraction), for a real out-of-memory error through the whole product on a large card.
MEMORY_CAP_ENV = "S2V_CUDA_MEMORY_CAP_GIB"

STORE_PREFIX = "s2v-group-"
STALE_STORE_S = 24 * 3600


def store_path(name: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"{STORE_PREFIX}{name}.store")


def sweep_stale_stores(now: float | None = None) -> int:
    """Remove store files of groups that were killed (their ranks cannot clean up): a store is
    written at every rendezvous and sub-group creation, so one untouched for a day is dead."""
    now = time.time() if now is None else now
    removed = 0
    for entry in os.scandir(tempfile.gettempdir()):
        if entry.name.startswith(STORE_PREFIX) and entry.name.endswith(".store"):
            try:
                if now - entry.stat().st_mtime > STALE_STORE_S:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
    return removed


class RankWorker:
    """Wrapped with ``ray.remote`` by ``cluster.group`` (actors must live in a package module)."""

    def __init__(self, run_dir: str, settings: dict[str, Any], run_id: str, group: str, rank: int,
                 world_size: int, device_kind: str, cpu_threads: int, lease_token: str | None = None):
        from cluster.ledger import RunDir
        from cluster.settings import RunSettings

        self.run = RunDir(run_dir)
        self.settings = RunSettings.from_dict(settings)
        self.run_id, self.group, self.rank, self.world = run_id, group, rank, world_size
        self.device_kind = device_kind
        self.cpu_threads = cpu_threads
        self.lease_token = lease_token  # None: no fencing (tests that drive a rank without a run)
        self.pipe = None
        self.parallel_note = "not set up"
        self._cond_cache: tuple[tuple[str, int], Any] | None = None
        self.sync: Any = None  # parallel.GroupChainSync of a group of > 1 ranks
        self._metrics = None
        self.offload = False
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # --- formation -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "host": socket.gethostname(), "node_id": ctx.get_node_id(),
                "rank": self.rank, "actor_id": ctx.get_actor_id()}

    def setup(self, store_name: str, timeout_s: float, parallel: str = "auto",
              handoff_timeout_s: float = 600.0, offload: bool = False) -> dict[str, Any]:
        """Join the group's process group, load the model, apply ``parallel/`` (when installed),
        form the writer's hand-off group (``handoff_timeout_s``). ``offload``: the DiT's blocks
        streamed from host memory (render/model/offload.py; groups of one rank)."""
        import torch.distributed as dist

        # Bootstrap and data connections of gloo and NCCL on loopback (the group is on one node).
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        if self.device_kind == "cuda":
            from render.model.out_of_memory import prefer_expandable_segments

            prefer_expandable_segments()  # before this process's first GPU allocation
            device = torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
            torch.cuda.set_device(device)
            _apply_memory_cap(device)
            backend = "nccl"
        else:
            device = torch.device("cpu")
            torch.set_num_threads(max(1, self.cpu_threads))
            backend = "gloo"
        if self.rank == 0:
            sweep_stale_stores()
        store = dist.FileStore(store_path(store_name), self.world)
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world,
                                timeout=timedelta(seconds=timeout_s))
        self.device = device
        from render.model.components import S2VModels

        self.offload = offload
        if self.settings.fp8 and device.type != "cuda":
            raise ValueError("--fp8 needs CUDA ranks (sm89 or newer); this group's ranks run on the CPU")
        from cluster.settings import VAE_DTYPES

        pipe = S2VModels(self.settings.ckpt, device=device, offload=offload, fp8=self.settings.fp8,
                         vae_dtype=getattr(torch, VAE_DTYPES[self.settings.vae_dtype]))
        pipe.dit  # noqa: B018  (load now: a start failure must surface while forming the group)
        if self.rank == 0:  # the writer alone runs the VAE; the other ranks never load it
            pipe.vae  # noqa: B018
        self.parallel_note = self._parallelize(pipe, parallel)
        if self.world > 1:
            from parallel import GroupChainSync

            # After the parallel context's groups: every rank creates groups in the same order.
            self.sync = GroupChainSync.create(writer=0, timeout_s=handoff_timeout_s, backend="gloo")
        self.pipe = pipe
        self._barrier()
        return {**self.info(), "parallel": self.parallel_note, "backend": backend}

    def _parallelize(self, pipe: Any, spec: str) -> str:
        try:
            from parallel import ParallelContext, ParallelDims, parallelize_dit
        except ImportError as exc:
            if self.world > 1:
                raise RuntimeError(f"a group of {self.world} ranks needs parallel/ ({exc})") from exc
            return "single device"
        if spec == "auto":
            dims = choose_dims(self.world, pipe.dit.cfg, ParallelDims)
        else:
            from cluster.settings import parallel_kwargs

            dims = ParallelDims(**parallel_kwargs(spec, self.world))
        ctx = ParallelContext.create(dims, group=None, device=self.device)
        if parallelize_dit(pipe.dit, ctx) is not pipe.dit:  # the contract: in place
            raise RuntimeError("parallelize_dit returned a new object; the pipeline would keep the old DiT")
        note = f"parallel {dims.describe()}"
        log.info("rank %d: %s", self.rank, note)
        return note

    def _barrier(self) -> None:
        self._all_equal(torch.zeros(2, dtype=torch.float64))

    def _all_equal(self, value: torch.Tensor) -> None:
        import torch.distributed as dist

        if self.world == 1:
            return
        x = value.to(self.device)
        gathered = [torch.empty_like(x) for _ in range(self.world)]
        try:
            dist.all_gather(gathered, x)
        except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses with transport details
            raise GroupCommError(f"rank {self.rank}: group collective failed: {exc}") from exc
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise GroupCommError(f"rank {self.rank}: ranks of group {self.group} diverged "
                                 f"(frame checksums {[g.tolist() for g in gathered]})")

    # --- work ----------------------------------------------------------------------------------

    def _conditioning(self, shot: Any, plan: Any, index: int, settings: Any) -> Any:
        from cluster.shot_work import group_conditioning, segment_conditioning
        from render.shot.condition import shot_prompts

        # Every rank gets the same tasks in the same order, so the caches hit or miss together
        # (a miss on one rank only would leave the others waiting in the broadcast).
        key = (shot.shot_id, index)
        if self._cond_cache is not None and self._cond_cache[0] == key:
            return self._cond_cache[1]

        def make() -> Any:  # the writer only (or a group of one)
            prompt, negative = shot_prompts(shot.prompt, shot.negative_prompt)
            ctx = torch.load(self.run.prompt_file(prompt), map_location="cpu", weights_only=True)
            neg_ctx = torch.load(self.run.prompt_file(negative), map_location="cpu", weights_only=True)
            features_path = self.run.features_file(shot.shot_id, index)
            features = torch.load(features_path, map_location="cpu", weights_only=True)
            return segment_conditioning(self.pipe, shot, plan, index, settings, ctx, neg_ctx, features)

        cond = group_conditioning(self.sync, make)
        self._cond_cache = (key, cond)
        return cond

    def _frames_key(self, shot_id: str) -> str | None:
        """The frames half of the shot's key, written by the driver before the engine starts (the
        writer's only: the other ranks may not see the run folder). None for a key the driver did
        not write; the segment then falls back to hashing its conditioning tensors."""
        if self.rank != 0:
            return None
        from cluster.fingerprint import ShotKey

        key = ShotKey.from_dict(self.run.read_key(shot_id))
        return None if key is None else key.frames

    def render(self, task: dict[str, Any]) -> dict[str, Any]:
        """Render (or resume) one segment; rank 0 commits clips and the segment record."""
        from cluster.shot_work import render_segment
        from render.media.atomic import atomic_write_json
        from render.shot.plan import ShotPlan

        shot, index, attempt = task["shot"], int(task["index"]), int(task["attempt"])
        plan = ShotPlan.from_dict(task["plan"])
        handler = self._attach_log(shot.shot_id, attempt) if self.rank == 0 else None
        t0 = time.time()
        try:
            settings = self.settings.render_settings(shot)
            log.info("rank %d of %s: shot %s segment %d attempt %d (%s)", self.rank, self.group,
                     shot.shot_id, index, attempt, self.parallel_note)
            progress = None
            if self.rank == 0:  # the writer records each committed clip for `s2v run` / `s2v status`
                from cluster.progress import SegmentProgressWriter

                progress = SegmentProgressWriter(self.run.shot_dir(shot.shot_id), index,
                                                 plan.segments[index].num_clips, attempt, self.group)
            timer = _ClipTimer(self._rank_metrics() if self.rank == 0 else None, settings.steps, progress)
            work_dir = self.run.work_dir(shot.shot_id)
            oom_message = None
            try:
                with _simulated_oom(self.pipe.dit, shot.shot_id):
                    cond = self._conditioning(shot, plan, index, settings)
                    outcome = render_segment(self.pipe, cond, plan, index, settings, work_dir, sync=self.sync,
                                             on_clip=lambda clip: timer.clip_done(settings.infer_frames, clip),
                                             on_step=timer.on_step, before_commit=self._fence,
                                             inputs_key=self._frames_key(shot.shot_id))
            except Exception as exc:
                from render.model.out_of_memory import is_out_of_memory, out_of_memory_message

                if is_out_of_memory(exc):  # the shot's own failure: built here, raised once exc is gone
                    log.error("rank %d: %s segment %d ran out of GPU memory:\n%s", self.rank, shot.shot_id, index,
                              traceback.format_exc())
                    oom_message = out_of_memory_message(exc, width=plan.width, height=plan.height,
                                                        size=settings.size, device=self.device,
                                                        offload=self.offload, group_size=self.world)
                else:
                    if self.sync is not None:
                        from parallel import ChainSyncError

                        if isinstance(exc, ChainSyncError):  # a dead, hung or diverged peer: the group's failure
                            raise GroupCommError(f"rank {self.rank} of group {self.group}: {exc}") from exc
                    raise
            if oom_message is not None:
                self._free_after_oom()
                from render.model.out_of_memory import ShotOutOfMemory

                raise ShotOutOfMemory(oom_message)
            if self.rank == 0:
                self._fence()
                atomic_write_json(self.run.segment_record(shot.shot_id, index), {
                    "shot_id": shot.shot_id, "index": index, "frames": outcome.frames, "attempt": attempt,
                    "clips": plan.segments[index].num_clips, "clips_rendered": outcome.clips_rendered,
                    "resumed_from_clip": outcome.resumed_from, "group": self.group, "work_dir": str(work_dir),
                    "committed_at": time.time(),
                })
                log.info("segment %d of %s committed: %d clips rendered, resumed from clip %d, %.1f s",
                         index, shot.shot_id, outcome.clips_rendered, outcome.resumed_from, outcome.seconds)
            return {"rank": self.rank, "pid": os.getpid(), "clips_rendered": outcome.clips_rendered,
                    "resumed_from": outcome.resumed_from, "seconds": time.time() - t0}
        except BaseException:
            log.error("rank %d: attempt %d of %s failed:\n%s", self.rank, attempt, shot.shot_id,
                      traceback.format_exc())
            raise
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()

    def _free_after_oom(self) -> None:
        """Drop what the failed shot left on the device, so the group can render the next one."""
        from render.model.out_of_memory import free_device_memory

        self._cond_cache = None
        offload = getattr(self.pipe.dit, "offload", None)
        if offload is not None:
            offload.release_all()
        free_device_memory(self.device)

    def _fence(self) -> None:
        """Before every commit: stop if this rank's run no longer holds the run directory's lease."""
        if self.lease_token is not None:
            from cluster.lease import check_fence

            check_fence(self.run.path, self.lease_token)

    def _attach_log(self, shot_id: str, attempt: int) -> logging.Handler:
        path = self.run.attempt_log(shot_id, attempt)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        return handler

    def _rank_metrics(self) -> Any:
        if self._metrics is None:
            from cluster.metrics import RankMetrics

            self._metrics = RankMetrics(self.run_id, self.group)
        return self._metrics


def _apply_memory_cap(device: torch.device) -> None:
    """The test hook of ``S2V_CUDA_MEMORY_CAP_GIB``: the rank's caching allocator may hold at most
    that much of its GPU, so a real out-of-memory error can be provoked on a large card (a shot
    too big for the cap fails, the next one renders)."""
    cap = os.environ.get(MEMORY_CAP_ENV, "").strip()
    if not cap:
        return
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, float(cap) * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device.index)
    log.warning("%s=%s: this rank may use %.1f%% of %s (%.1f GiB)", MEMORY_CAP_ENV, cap, 100 * fraction,
                torch.cuda.get_device_name(device), total / 2**30)


@contextmanager
def _simulated_oom(dit: Any, shot_id: str) -> Iterator[None]:
    """The test hook of ``S2V_SIMULATE_OOM_SHOTS``: the DiT's forwards of the named shots raise
    the CUDA allocator's error (with its figures), from inside the sampling loop."""
    shots = {s.strip() for s in os.environ.get(SIMULATE_OOM_ENV, "").split(",") if s.strip()}
    if shot_id not in shots:
        yield
        return

    def denoise(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which "
            f"1.91 GiB is free. (simulated by {SIMULATE_OOM_ENV})")

    dit.denoise = denoise  # an instance attribute: the class's method again once deleted
    try:
        yield
    finally:
        del dit.denoise


def _gpu_done_time() -> float:
    """Now, once the GPU has finished what was queued: without the wait a step's time is when its
    kernels were launched, and the CPU runs up to a forward ahead (on an H100 the unsynchronised
    timer read 4.1 s per 832x448 step that takes 5.8 s). One wait per step costs nothing measurable."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.time()


class _ClipTimer:
    """Seconds per sampling step and frames per second of each clip, for the metrics and the
    run directory's progress records (``cluster.progress``)."""

    def __init__(self, metrics: Any, steps: int, progress: Any = None):
        self.metrics, self.steps, self.progress = metrics, steps, progress
        self.clip_start = time.time()
        self.last_step = self.clip_start

    def on_step(self, clip: int, step: int, steps: int) -> None:
        self.last_step = _gpu_done_time()

    def clip_done(self, frames: int, clip: int = 0) -> None:
        now = _gpu_done_time()
        if self.metrics is not None:
            self.metrics.clip_done(self.steps, now - self.clip_start, self.last_step - self.clip_start, frames)
        if self.progress is not None:
            step_seconds = (self.last_step - self.clip_start) / self.steps if self.steps else None
            self.progress.clip_done(clip, step_seconds)
        self.clip_start = self.last_step = now


def choose_dims(world: int, dit_cfg: Any, dims_cls: Any) -> Any:
    """Parallel dims for a group of ``world`` ranks: Ulysses when the degree divides the heads,
    else ring (exact for any sequence length). CFG-parallel is not chosen: whether a shot uses
    guidance is a per-shot setting, while a group's dims are fixed when it forms."""
    ulysses = world if dit_cfg.num_heads % world == 0 else 1
    return dims_cls(ulysses=ulysses, ring=world // ulysses, cfg=1)
