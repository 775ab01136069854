"""``s2v run``: validate the manifest, take the lease, check the fingerprint, start or join Ray,
run the engine, write results.parquet, return the exit code (cluster.exit_codes).

Nothing is rendered, and nothing in the run directory is touched, before the lease is held and
the fingerprint matches (or ``restart`` was given).
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster import exit_codes as ec
from cluster.fingerprint import changed_parts, compute_fingerprint
from cluster.lease import Lease, LeaseHeld
from cluster.ledger import RunDir
from cluster.settings import EngineOptions, RunSettings
from manifests import ManifestError, Shot, read_manifest

log = logging.getLogger("cluster")


@dataclass
class RunRequest:
    manifest: Path
    run_dir: Path
    settings: RunSettings
    engine: EngineOptions
    address: str = "local"
    restart: bool = False
    retry_failed: bool = False
    bind_public: bool = False
    allowed_roots: Sequence[Path] | None = None
    check_media: bool = True
    num_cpus: int | None = None  # local Ray only


def _say(message: str) -> None:
    print(f"s2v run: {message}", file=sys.stderr, flush=True)


def load_shots(req: RunRequest) -> list[Shot] | int:
    try:
        return read_manifest(req.manifest, req.allowed_roots, run_seed=req.settings.run_seed,
                             check_media=req.check_media)
    except ManifestError as exc:
        _say(f"manifest {req.manifest} is {'unreadable' if exc.report.file_unreadable else 'invalid'}:\n"
             f"{exc.report.format_table()}")
        return ec.EXIT_UNREADABLE if exc.report.file_unreadable else ec.EXIT_INVALID


def _prepare_run_dir(run: RunDir, shots: list[Shot], req: RunRequest) -> tuple[str, int | None]:
    """(run id, None) when the run may go on, else (_, exit code)."""
    fingerprint = compute_fingerprint(shots, req.settings)
    record = run.read_run()
    if record is not None and req.restart:
        _say(f"--restart: discarding the state in {run.path} (old logs kept under logs/previous/)")
        run.reset()
        record = None
    elif record is not None and record.get("fingerprint", {}).get("combined") != fingerprint["combined"]:
        parts = changed_parts(record.get("fingerprint", {}), fingerprint)
        _say(f"run directory {run.path} belongs to a different run: {', '.join(parts) or 'fingerprint'} changed "
             f"since it was started ({time.ctime(record.get('created_at', 0))}). Use --restart to start over "
             "(re-renders everything), or a new --run-dir.")
        return "", ec.EXIT_FINGERPRINT_CHANGED
    now = time.time()
    if record is None:
        record = {"run_id": secrets.token_hex(4), "created_at": now, "fingerprint": fingerprint,
                  "settings": req.settings.to_dict(), "manifest_source": str(req.manifest.resolve()),
                  "shots": len(shots), "starts": []}
        run.write_manifest(shots)
    record["starts"] = [*record.get("starts", []), now][-50:]
    run.write_run(record)
    return record["run_id"], None


def _attach_driver_log(run: RunDir) -> logging.Handler:
    run.driver_log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.driver_log, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    if logging.getLogger().level > logging.INFO or logging.getLogger().level == logging.NOTSET:
        logging.getLogger().setLevel(logging.INFO)
    return handler


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def run(req: RunRequest) -> int:
    try:
        req.engine.validate()
    except ValueError as exc:
        _say(str(exc))
        return ec.EXIT_INVALID
    shots = load_shots(req)
    if isinstance(shots, int):
        return shots
    run_dir = RunDir(req.run_dir)
    try:
        lease = Lease(run_dir.path).acquire()
    except LeaseHeld as exc:
        _say(f"{exc}; nothing was rendered")
        return ec.EXIT_LEASE_HELD
    handler: logging.Handler | None = None
    try:
        run_id, code = _prepare_run_dir(run_dir, shots, req)
        if code is not None:
            return code
        handler = _attach_driver_log(run_dir)
        log.info("run %s: %d shots, run directory %s (pid lease %s)", run_id, len(shots), run_dir.path, lease.token)
        code = _finished_already(req, run_dir, shots)
        if code is not None:
            return code
        try:
            return _run_engine(req, run_dir, run_id, shots, lease)
        except Exception:  # a bug, not bad input: exit 1 (2 means the manifest/options are wrong)
            log.exception("run %s stopped by an internal error", run_id)
            _say(f"internal error (traceback in {run_dir.driver_log}); committed work is kept, a rerun resumes")
            return ec.EXIT_INTERNAL
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        lease.release()


def _finished_already(req: RunRequest, run_dir: RunDir, shots: list[Shot]) -> int | None:
    """Every shot published (or failed, without --retry-failed): no need for Ray at all — a cron
    job that fires after the work is done costs a second, not a cluster start."""
    from cluster.results import state_counts, write_run_results

    counts = state_counts(run_dir, shots)
    if counts["done"] + (0 if req.retry_failed else counts["failed"]) != len(shots):
        return None
    write_run_results(run_dir, shots)
    _say(f"nothing to do: {counts['done']} done, {counts['failed']} failed of {len(shots)} shots "
         f"(results: {run_dir.results_file})")
    return ec.EXIT_FAILED_SHOTS if counts["failed"] else ec.EXIT_OK


def _run_engine(req: RunRequest, run_dir: RunDir, run_id: str, shots: list[Shot], lease: Lease) -> int:
    from cluster.ray_runtime import RaySecurityError, connect

    # connect() first: it must set Ray's loopback switch before anything imports ray.
    started_here = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    try:
        info = connect(req.address, bind_public=req.bind_public,
                       render_slots=req.engine.groups * req.engine.group_size, num_cpus=req.num_cpus)
    except RaySecurityError as exc:
        _say(str(exc))
        return ec.EXIT_INVALID
    import ray

    from cluster.engine import RunEngine
    from cluster.group import detect_slot_resource

    log.info("ray: %s", info)
    stop = threading.Event()
    _stop_on_signals(stop)
    # The lease watchdog: a run that lost its lease (taken over as stale) must stop rendering.
    watchdog = threading.Thread(target=lambda: (lease.lost.wait(), stop.set()), daemon=True)
    watchdog.start()
    try:
        slot = req.engine.slot_resource or detect_slot_resource(req.engine.group_size)
        engine = RunEngine(run_dir, run_id, shots, req.settings, req.engine, slot, retry_failed=req.retry_failed,
                           stop=stop, lease_token=lease.token)
        t0 = time.time()
        try:
            counts = engine.run_loop()
        except KeyboardInterrupt:
            if lease.lost.is_set():
                _say("the lease was taken over by another run; stopped")
                return ec.EXIT_LEASE_HELD
            _say("interrupted; committed work is kept and a rerun resumes")
            return ec.EXIT_INTERRUPTED
        wall = time.time() - t0
        log.info("run finished in %.1f s: %d done, %d failed, %d segments rendered by this driver", wall,
                 counts["done"], counts["failed"], engine.rendered_segments)
        _say(f"{counts['done']} done, {counts['failed']} failed of {len(shots)} shots in {wall:.1f} s "
             f"(results: {run_dir.results_file})")
        return ec.EXIT_FAILED_SHOTS if counts["failed"] else ec.EXIT_OK
    finally:
        if started_here:
            ray.shutdown()
