"""``s2v run``: validate the manifest, take the lease, bring the ledger in line with the manifest
shot by shot (cluster.fingerprint: per-shot keys), start or join Ray, run the engine, write
results.parquet, return the exit code (cluster.exit_codes).

Nothing in the run directory is touched before the manifest is valid and the lease is held.
A row-level problem (missing media, bad value...) only sets that row aside: it is recorded as a
failed shot (failure stage ``validation``) and the valid rows render; manifest-level problems, or
any problem with ``strict``, refuse the run (exit 2). A
run directory follows its manifest: appended rows are rendered, changed shots rendered (or, for
encode-only changes, stitched) again, removed rows reported and left on disk.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster import exit_codes as ec
from cluster.fingerprint import (
    FRAME_PARTS,
    InputHashes,
    ShotKey,
    changed_parts,
    environment,
    json_digest,
    prompt_environment,
    shot_key,
)
from cluster.lease import Lease, LeaseHeld
from cluster.ledger import RunDir
from cluster.settings import EngineOptions, RunSettings
from manifests import ManifestError, Shot, read_manifest, read_manifest_partial
from manifests.problems import DEFAULT_MAX_PROBLEMS, Problem, ValidationReport
from manifests.results import ResultsError
from manifests.validate import InvalidRow, PartialManifest

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
    rerender: Sequence[str] = ()  # shot ids whose work is discarded and rendered again
    # A published shot whose key changed exits 5 instead of being rendered again (s2v demo: a
    # demo folder rerun with other options asks for --restart rather than overwriting the video).
    refuse_changed: bool = False
    # --strict: any invalid row refuses the whole run (exit 2), as before partial runs existed.
    strict: bool = False
    # Live progress (cluster.run_progress): a bar on a terminal, else a line at most this often.
    progress_interval_s: float = 30.0


def _say(message: str) -> None:
    print(f"s2v run: {message}", file=sys.stderr, flush=True)


def load_shots(req: RunRequest) -> list[Shot] | int:
    """The valid shots of the manifest (invalid rows left out unless ``req.strict``), or an exit code."""
    loaded = load_manifest(req)
    return loaded if isinstance(loaded, int) else loaded.shots


def load_manifest(req: RunRequest) -> PartialManifest | int:
    """The manifest's valid shots, invalid rows and pass-through columns, or an exit code."""
    try:
        if req.strict:
            shots = read_manifest(req.manifest, req.allowed_roots, run_seed=req.settings.run_seed,
                                  check_media=req.check_media)
            partial = read_manifest_partial(req.manifest, req.allowed_roots, run_seed=req.settings.run_seed,
                                            check_media=False) if _has_passthrough(req.manifest) else None
            loaded = PartialManifest(ValidationReport(req.manifest), shots, [],
                                     partial.passthrough if partial else None)
        else:
            loaded = read_manifest_partial(req.manifest, req.allowed_roots, run_seed=req.settings.run_seed,
                                           check_media=req.check_media)
    except ManifestError as exc:
        _say(f"manifest {req.manifest} is {'unreadable' if exc.report.file_unreadable else 'invalid'}:\n"
             f"{exc.report.format_table(max_problems=DEFAULT_MAX_PROBLEMS)}")
        return ec.EXIT_UNREADABLE if exc.report.file_unreadable else ec.EXIT_INVALID
    loaded = _set_aside_rows_this_run_cannot_render(req, loaded)
    if isinstance(loaded, int):
        return loaded
    if loaded.invalid:
        problems = [p for r in loaded.invalid for p in r.problems]
        table = ValidationReport(req.manifest, problems, loaded.report.num_rows).format_table(
            max_problems=DEFAULT_MAX_PROBLEMS)
        _say(f"{len(loaded.invalid)} of {loaded.report.num_rows} rows of {req.manifest} are invalid: they are not "
             "rendered and are recorded as failed shots (failure stage 'validation'; --strict refuses the run "
             f"instead):\n{table}")
    return loaded


def _set_aside_rows_this_run_cannot_render(req: RunRequest, loaded: PartialManifest) -> PartialManifest | int:
    """Rows valid on their own that this run's options cannot render: a ``fast`` cell that is true
    in a run whose render groups have several GPUs (the step cache runs on one GPU per shot).
    They become invalid rows like any other (--strict: the run is refused)."""
    if req.engine.group_size == 1:
        return loaded
    bad = [s for s in loaded.shots if s.fast]
    if not bad:
        return loaded
    problems = {s.shot_id: Problem(s.row, s.shot_id, "fast", "True", "fast-needs-one-gpu",
                                   f"fast mode renders a shot on one GPU; this run has --group-size "
                                   f"{req.engine.group_size}: set the cell to false or null, or run with "
                                   "--group-size 1 (and --groups N for more GPUs)") for s in bad}
    if req.strict:
        table = ValidationReport(req.manifest, list(problems.values()), len(loaded.shots)).format_table(
            max_problems=DEFAULT_MAX_PROBLEMS)
        _say(f"manifest {req.manifest} is invalid for this run:\n{table}")
        return ec.EXIT_INVALID
    invalid = [*loaded.invalid, *(InvalidRow(s.row, s.shot_id, [problems[s.shot_id]]) for s in bad)]
    invalid.sort(key=lambda r: (r.row is None, r.row or 0))
    return PartialManifest(loaded.report, [s for s in loaded.shots if not s.fast], invalid, loaded.passthrough)


def _has_passthrough(manifest: Path) -> bool:
    import pyarrow.parquet as pq

    from manifests.schema import is_passthrough_column

    return any(is_passthrough_column(n) for n in pq.read_schema(manifest).names)


# What a start does with each shot of the manifest (see _decide).
NEW, KEEP, RERENDER, RESTITCH, ADOPT = "new", "keep", "rerender", "restitch", "adopt"


def _decide(run: RunDir, shots: list[Shot], keys: dict[str, ShotKey], req: RunRequest,
            legacy_rows: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """shot id -> (action, why), from the key stored with the shot's work and its key now."""
    forced = set(req.rerender)
    out: dict[str, tuple[str, str]] = {}
    for shot in shots:
        sid, new = shot.shot_id, keys[shot.shot_id]
        old = ShotKey.from_dict(run.read_key(sid))
        if sid in forced:
            out[sid] = (RERENDER, "--rerender")
        elif old is None:
            if not run.has_work(sid):
                out[sid] = (NEW, "new shot")
            elif legacy_rows.get(sid) == shot.to_row():
                out[sid] = (ADOPT, "unchanged row of a run directory started before per-shot keys")
            else:  # an older run directory's shot whose row changed, or a discard cut short
                out[sid] = (RERENDER, "work without a key")
        elif old.frames != new.frames:
            out[sid] = (RERENDER, ", ".join(changed_parts(old, new, FRAME_PARTS)) + " changed")
        elif old.encode != new.encode:
            out[sid] = (RESTITCH, "encode settings (crf, output path) changed")
        else:
            out[sid] = (KEEP, "")
    return out


def _legacy_rows(run: RunDir, record: dict | None, req: RunRequest, env: dict[str, str]) -> dict[str, dict]:
    """Rows of a run directory started before per-shot keys whose whole-run fingerprint parts
    (settings, model, code) still hold: their work is adopted rather than rendered again."""
    old = (record or {}).get("fingerprint")
    if not isinstance(old, dict) or not run.manifest_file.is_file():
        return {}
    if (old.get("settings") != json_digest(req.settings.to_dict()) or old.get("model") != env["model"]
            or old.get("code") != env["code"]):
        return {}
    import pyarrow.parquet as pq

    return {r["shot_id"]: r for r in pq.read_table(run.manifest_file).to_pylist()}


def _intermediates_complete(run: RunDir, shot_id: str) -> bool:
    from cluster.shot_work import segment_finished

    plan = run.read_plan(shot_id)
    return bool(plan) and all(segment_finished(run.work_dir(shot_id), s["index"]) for s in plan["segments"])


def _previous_ids(run: RunDir) -> dict[str, str]:
    """shot id -> output of the manifest the previous start stored."""
    if not run.manifest_file.is_file():
        return {}
    import pyarrow.parquet as pq

    return {r["shot_id"]: r["output"] for r in pq.read_table(run.manifest_file, columns=["shot_id", "output"]).to_pylist()}


def _prepare_run_dir(run: RunDir, shots: list[Shot], req: RunRequest,
                     invalid_ids: Sequence[str] = ()) -> tuple[str, int | None, list[str]]:
    """(run id, None, notes) when the run may go on, else (_, exit code, _).

    Brings the ledger in line with the manifest, shot by shot: new shots get a key, shots whose
    frame key changed (or named by --rerender) lose their work, shots whose encode settings
    changed are stitched again, unchanged shots are left alone, and rows gone from the manifest
    are recorded as removed (their outputs and work stay on disk)."""
    record = run.read_run()
    ids = {s.shot_id for s in shots}
    unknown = sorted(set(req.rerender) - ids)
    if unknown:
        _say(f"--rerender: no shot {', '.join(unknown)} in {req.manifest}; nothing was rendered")
        return "", ec.EXIT_INVALID, []
    if record is not None and req.restart:
        _say(f"--restart: discarding the state in {run.path} (old logs kept under logs/previous/)")
        run.reset()
        record = None
    env = environment(req.settings, req.engine.prep_text_encoder_device)
    hashes = InputHashes(run.hashes_file)
    try:
        keys = {s.shot_id: shot_key(s, req.settings, env, hashes) for s in shots}
    except OSError as exc:  # an input vanished between validation and hashing
        _say(f"cannot read an input of the manifest: {exc}; nothing was rendered")
        return "", ec.EXIT_INVALID, []
    decisions = _decide(run, shots, keys, req, _legacy_rows(run, record, req, env))
    if req.refuse_changed:
        changed = sorted(sid for sid, (action, _) in decisions.items()
                         if action in (RERENDER, RESTITCH) and sid not in req.rerender and run.is_published(sid))
        if changed:
            _say(f"run directory {run.path}: published shots changed since they were rendered (manifest row, "
                 f"inputs, settings, model or code): {', '.join(changed)}. Use --restart to start over, or another "
                 "--out-dir.")  # refuse_changed is s2v demo's, whose run directory is OUT_DIR/run
            return "", ec.EXIT_FINGERPRINT_CHANGED, []
    now = time.time()
    notes: list[str] = []
    # Embeddings of prompts are keyed by their text alone: a new model, code or text encoder dtype
    # makes all of them stale (every shot's key changes with it too, so nothing of theirs is kept).
    prompt_env = prompt_environment(req.settings, env)
    if record is not None and record.get("prompt_env") != prompt_env and (run.path / "prompts").exists():
        shutil.rmtree(run.path / "prompts", ignore_errors=True)
        notes.append("model, code or text encoder changed: prompt embeddings discarded")
    summary: dict[str, list[str]] = {NEW: [], RERENDER: [], RESTITCH: [], ADOPT: []}
    for shot in shots:
        sid = shot.shot_id
        action, why = decisions[sid]
        if action == KEEP:
            continue
        summary[action].append(sid)
        if action == RERENDER:
            if run.has_work(sid):
                notes.append(f"shot {sid}: {why}: its earlier work is discarded and it is rendered again")
            run.discard_shot(sid)
        elif action == RESTITCH and run.is_published(sid):
            if _intermediates_complete(run, sid):
                notes.append(f"shot {sid}: {why}: stitched again from its committed segments (no sampling)")
            else:  # the choice documented in docs/cluster.md: keeping every intermediate costs disk
                notes.append(f"shot {sid}: {why}; its segment intermediates were removed after publishing "
                             "(--keep-work was off): its segments are rendered again")
            run.unpublish(sid)
        elif action == RESTITCH and (failed := run.read_status(sid)).state == "failed":
            # Like any other edit of the row (e.g. the output moved to a folder that can be written):
            # the shot is tried again, instead of staying failed without a word.
            notes.append(f"shot {sid}: {why}: it had failed ({(failed.error or '?').splitlines()[0][:200]}); "
                         "it is tried again")
            run.retry(sid)
        run.write_key(sid, keys[sid].to_dict())
    hashes.save()
    previous = _previous_ids(run)
    removed = dict((record or {}).get("removed") or {})
    for sid in ids:
        removed.pop(sid, None)
    newly = sorted(set(previous) - ids - set(invalid_ids) - set(removed))
    for sid in newly:
        removed[sid] = {"output": previous[sid], "removed_at": now, "published": run.is_published(sid)}
    if newly:
        notes.append(f"{len(newly)} shots no longer in the manifest (outputs and work left on disk): "
                     + ", ".join(newly))
    run.write_manifest(shots)
    if record is None:
        record = {"run_id": secrets.token_hex(4), "created_at": now}
    record.pop("fingerprint", None)  # the whole-run fingerprint of older versions
    last = {"at": now, "new": summary[NEW], "rerender": summary[RERENDER], "restitch": summary[RESTITCH],
            "adopted": summary[ADOPT], "removed": newly, "unchanged": sum(1 for a, _ in decisions.values() if a == KEEP),
            "inputs_hashed": hashes.hashed}
    record.update({"settings": req.settings.to_dict(), "manifest_source": str(req.manifest.resolve()),
                   "shots": len(shots), "removed": removed, "prompt_env": prompt_env, "last_start": last})
    record["starts"] = [*record.get("starts", []), now][-50:]
    run.write_run(record)
    for note in notes:
        _say(note)
    return record["run_id"], None, notes


def _attach_driver_log(run: RunDir) -> logging.Handler:
    run.driver_log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.driver_log, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    if logging.getLogger().level > logging.INFO or logging.getLogger().level == logging.NOTSET:
        logging.getLogger().setLevel(logging.INFO)
    return handler


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM sets ``stop`` (a graceful stop); returns the function that puts the caller's
    handler back (library callers and tests run several runs in one process)."""
    def handler(signum: int, _frame: object) -> None:
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, handler)
    # None: a handler installed from C; the default is the closest Python can put back
    return lambda: signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def run(req: RunRequest) -> int:
    try:
        req.engine.validate()
    except ValueError as exc:
        _say(str(exc))
        return ec.EXIT_INVALID
    loaded = load_manifest(req)
    if isinstance(loaded, int):
        return loaded
    shots, invalid = loaded.shots, len(loaded.invalid)
    run_dir = RunDir(req.run_dir)
    try:
        lease = Lease(run_dir.path).acquire()
    except LeaseHeld as exc:
        _say(f"{exc}; nothing was rendered")
        return ec.EXIT_LEASE_HELD
    handler: logging.Handler | None = None
    try:
        run_id, code, notes = _prepare_run_dir(run_dir, shots, req, [r.label for r in loaded.invalid])
        if code is not None:
            return code
        from cluster.results import save_start_rows

        save_start_rows(run_dir, loaded.invalid, loaded.passthrough)
        handler = _attach_driver_log(run_dir)
        log.info("run %s: %d shots, run directory %s (pid lease %s)", run_id, len(shots), run_dir.path, lease.token)
        last = (run_dir.read_run() or {}).get("last_start", {})
        log.info("this start: %d new, %d to render again, %d to stitch again, %d unchanged, %d removed rows; "
                 "%d input files hashed", len(last.get("new", [])), len(last.get("rerender", [])),
                 len(last.get("restitch", [])), last.get("unchanged", 0), len(last.get("removed", [])),
                 last.get("inputs_hashed", 0))
        for note in notes:
            log.info("%s", note)
        try:
            code = _finished_already(req, run_dir, shots, invalid)
            if code is not None:
                return code
            return _run_engine(req, run_dir, run_id, shots, lease, invalid)
        except ResultsError as exc:  # a bug; the shots' states are safe in the ledger, not lost with the file
            log.exception("run %s: %s not written", run_id, run_dir.results_file)
            _say(f"internal error: {run_dir.results_file} not written: {exc}. Every shot's state is kept in "
                 f"{run_dir.path / 'shots'} (s2v status --run-dir {run_dir.path}); committed work is kept, a rerun "
                 f"resumes (traceback in {run_dir.driver_log})")
            return ec.EXIT_INTERNAL
        except Exception as exc:  # a bug, not bad input: exit 1 (2 means the manifest/options are wrong)
            from render.media.atomic import describe_os_error, environment_error

            env = environment_error(exc)
            if env is not None:  # the run directory's disk is full, read-only or forbidden
                log.error("run %s stopped: %s", run_id, describe_os_error(env))
                _say(f"error: {describe_os_error(env)}; committed work is kept, a rerun resumes")
                return ec.EXIT_ENVIRONMENT
            log.exception("run %s stopped by an internal error", run_id)
            _say(f"internal error (traceback in {run_dir.driver_log}); committed work is kept, a rerun resumes")
            return ec.EXIT_INTERNAL
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        lease.release()


def _invalid_note(invalid: int) -> str:
    return f" + {invalid} invalid manifest rows (failed, not rendered)" if invalid else ""


def _finished_already(req: RunRequest, run_dir: RunDir, shots: list[Shot], invalid: int = 0) -> int | None:
    """Every shot published (or failed, without --retry-failed): no need for Ray at all — a cron
    job that fires after the work is done costs a second, not a cluster start."""
    from cluster.results import state_counts, write_run_results

    counts = state_counts(run_dir, shots)
    if counts["done"] + (0 if req.retry_failed else counts["failed"]) != len(shots):
        return None
    write_run_results(run_dir, shots)
    _say(f"nothing to do: {counts['done']} done, {counts['failed']} failed of {len(shots)} shots"
         f"{_invalid_note(invalid)} (results: {run_dir.results_file})")
    return ec.EXIT_FAILED_SHOTS if counts["failed"] or invalid else ec.EXIT_OK


def _run_engine(req: RunRequest, run_dir: RunDir, run_id: str, shots: list[Shot], lease: Lease,
                invalid: int = 0) -> int:
    from cluster.ray_runtime import RaySecurityError, RayUnreachable, connect

    # connect() first: it must set Ray's loopback switch before anything imports ray.
    started_here = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    try:
        info = connect(req.address, bind_public=req.bind_public,
                       render_slots=req.engine.groups * req.engine.group_size, num_cpus=req.num_cpus)
    except RaySecurityError as exc:
        _say(str(exc))
        return ec.EXIT_INVALID
    except RayUnreachable as exc:
        _say(f"{exc}; nothing was rendered, a later start resumes")
        return ec.EXIT_ENVIRONMENT
    import ray

    from cluster.engine import RunEngine
    from cluster.group import detect_slot_resource
    from cluster.run_progress import ProgressDisplay

    log.info("ray: %s", info)
    stop = threading.Event()
    restore_signals = _stop_on_signals(stop)
    # The lease watchdog: a run that lost its lease (taken over as stale) must stop rendering.
    watchdog = threading.Thread(target=lambda: (lease.lost.wait(), stop.set()), daemon=True)
    watchdog.start()
    display = ProgressDisplay(interval_s=req.progress_interval_s)
    try:
        slot = req.engine.slot_resource or detect_slot_resource(req.engine.group_size)
        engine = RunEngine(run_dir, run_id, shots, req.settings, req.engine, slot, retry_failed=req.retry_failed,
                           stop=stop, lease_token=lease.token, progress=display, lease_lost=lease.lost)
        t0 = time.time()
        try:
            counts = engine.run_loop()
        except KeyboardInterrupt:
            if lease.lost.is_set():
                _say("the lease was taken over by another run; stopped")
                return ec.EXIT_LEASE_HELD
            _say("interrupted; committed work is kept and a rerun resumes")
            return ec.EXIT_INTERRUPTED
        finally:
            display.close()  # the last progress line before the summary below
        wall = time.time() - t0
        pending = counts.get("pending", 0)
        log.info("run finished in %.1f s: %d done, %d failed, %d left pending, %d segments rendered by this driver",
                 wall, counts["done"], counts["failed"], pending, engine.rendered_segments)
        left = (f"; {pending} not rendered this time (no render group could be started: left pending, a rerun "
                "renders them)") if pending else ""
        _say(f"{counts['done']} done, {counts['failed']} failed of {len(shots)} shots{left}{_invalid_note(invalid)} "
             f"in {wall:.1f} s (results: {run_dir.results_file})")
        return ec.EXIT_FAILED_SHOTS if counts["failed"] or pending or invalid else ec.EXIT_OK
    finally:
        display.close()
        restore_signals()
        if started_here:
            ray.shutdown()
