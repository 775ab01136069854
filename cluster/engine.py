"""The scheduling loop of a run (driver side): keeps every render group busy until all shots are
done or failed.

Work items and where they run:

* planning (audio decode, geometry, segments) — the driver, once per shot, persisted;
* prompt embeddings + audio features — one ``PrepWorker`` actor, in dispatch order;
* segments — the render groups (``cluster.group``), longest and highest priority first;
* stitch + publish — Ray CPU tasks, overlapping the groups' sampling.

Every state change is written to the run directory before it is acted on, so killing the
driver at any point loses at most the segments in flight (and a rerun resumes those from their
last committed clip).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import Any

import ray

from cluster.engine_prep import PrepFeeding
from cluster.group import GroupSpec, GroupStartError, RenderGroup, form_group, teardown
from cluster.ledger import Failure, RunDir, ShotStatus
from cluster.metrics import RunMetrics
from cluster.ray_errors import cause_of, describe_exception, looks_collective, ray_process_died
from cluster.report import refresh_report
from cluster.results import stitch_and_record, write_run_results
from cluster.run_progress import ClipTally, ProgressDisplay, shot_states
from cluster.scheduler import (
    ERROR,
    INFRA,
    NOT_RETRIED,
    NodeHealth,
    SegmentQueue,
    SegmentTask,
    failure_signature,
    judge_failure,
)
from cluster.settings import EngineOptions, RunSettings
from cluster.shot_work import plan_manifest_shot, segment_finished
from manifests import Shot
from manifests.results import ResultsError
from render.media.atomic import check_writable, describe_os_error
from render.shot.condition import shot_prompts
from render.shot.plan import ShotPlan

log = logging.getLogger(__name__)

stitch_remote = ray.remote(stitch_and_record).options(num_cpus=1, max_retries=0)
# failure_type of the shots earlier versions failed when no render group could be started
_NO_GROUP_FAILURE = "GroupStartError"


@dataclass
class Job:
    task: SegmentTask
    attempt: int
    refs: list[Any]
    started: float
    results: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class GroupSlot:
    name: str
    generation: int = 0
    group: RenderGroup | None = None
    forming: Future | None = None
    start_failures: int = 0
    next_try_at: float = 0.0
    given_up: str | None = None
    job: Job | None = None


class RunEngine(PrepFeeding):
    # Set (by the lease's heartbeat) when another run took the run directory over: from then on
    # this engine writes nothing there (its manifest and shot states are older than the new run's).
    lease_lost: Event | None = None

    def __init__(self, run: RunDir, run_id: str, shots: list[Shot], settings: RunSettings, engine: EngineOptions,
                 slot_resource: str, *, retry_failed: bool = False, stop: Event | None = None,
                 lease_token: str | None = None, progress: ProgressDisplay | None = None,
                 lease_lost: Event | None = None):
        self.run, self.run_id, self.settings, self.opts = run, run_id, settings, engine
        self.lease_lost = lease_lost
        self.shots = {s.shot_id: s for s in shots}
        self.order = [s.shot_id for s in shots]
        self.retry_failed = retry_failed
        self.stop = stop or Event()
        self.spec = GroupSpec(str(run.path), run_id, settings.to_dict(), engine.group_size, slot_resource,
                              engine.collective_timeout_s, engine.group_start_timeout_s, engine.cpu_threads_per_rank,
                              engine.parallel, engine.handoff_timeout_s, lease_token, engine.offload)
        self.plans: dict[str, ShotPlan] = {}
        self.status: dict[str, ShotStatus] = {}
        self.queue = SegmentQueue()
        self.prepared: set[str] = set()
        self.slots = [GroupSlot(f"g{i}") for i in range(engine.groups)]
        self.health = NodeHealth(engine.node_max_failures)
        self.inflight: dict[Any, tuple[str, Any]] = {}  # ref -> ("render", slot) | ("stitch", id) | ("prep", ids)
        self.stitching: set[str] = set()
        self.prep_actor: Any = None
        self.prep_restarts = 0  # times a dead preparation actor was replaced (bounded by prep_max_restarts)
        self.prep_tries: Counter[str] = Counter()  # failed preparations per shot (bounded by prep_retries)
        self.prep_retry_due: list[tuple[float, list[str]]] = []  # (when, chunk): retries after a pause
        self.metrics = RunMetrics(run_id)
        self.executor = ThreadPoolExecutor(max_workers=max(1, engine.groups), thread_name_prefix="s2v-form")
        self._results_at = 0.0
        self.rendered_segments = 0  # segments this driver rendered (a rerun of a finished run: 0)
        self.progress = progress  # the live display of `s2v run` (the caller closes it)
        self.tally = ClipTally(run, self.plans)
        self._progress_at = 0.0

    # --- setup ---------------------------------------------------------------------------------

    def _terminal(self, shot_id: str) -> bool:
        return self.status[shot_id].state in ("done", "failed")

    def _load(self) -> None:
        self._load_states()
        self._load_plans()

    def _load_states(self) -> None:
        """Each shot's state at this start, from its status.json: published -> done; failed stays
        failed (unless --retry-failed); anything else, a shot an earlier run left running included,
        is pending."""
        for sid in self.order:
            st = self.run.read_status(sid)
            stored = st.state
            if self.run.is_published(sid):
                st.state = "done"
            elif st.state == "failed" and (self.retry_failed or st.failure_type == _NO_GROUP_FAILURE):
                # Run directories of earlier versions failed shots no render group could take; they
                # stay pending now (the cluster was busy or down, the shot had no fair try).
                st = st.retried()
            elif st.state != "failed":
                st.state = "pending"
            self.status[sid] = st
            if st.state != stored:
                # On disk too: `s2v status`, the report page and results.parquet read status.json, and
                # a shot the last run left "running" would read so until it is dispatched again.
                self._save_status(sid, st)
        skipped = sum(1 for s in self.status.values() if s.state == "done")
        if skipped:
            log.info("%d shots already published: skipped", skipped)

    def _load_plans(self) -> None:
        """Each shot still to render gets its plan (the stored one, else made now); a shot whose
        output folder cannot be written or whose audio cannot be planned fails alone."""
        unwritable: dict[Path, str | None] = {}  # one probe per output directory, not per shot
        for sid in self.order:
            if self._terminal(sid):
                continue
            shot = self.shots[sid]
            out_dir = Path(shot.output).parent
            if out_dir not in unwritable:
                unwritable[out_dir] = _unwritable_output(shot)
            reason = unwritable[out_dir]
            if reason is not None:  # fails this shot alone, before anything of it is rendered
                self._fail(sid, reason, "output", "OSError")
                continue
            plan = self.run.read_plan(sid)
            if plan is None:
                try:
                    plan = plan_manifest_shot(shot, self.settings.render_settings(shot),
                                                self.settings.segment_options(shot))
                except Exception as exc:  # undecodable despite validation, unsupported settings...
                    self._fail(sid, f"planning failed: {type(exc).__name__}: {exc}", "planning", type(exc).__name__)
                    continue
                self.run.write_plan(sid, plan.to_dict())
            else:
                plan = ShotPlan.from_dict(plan)
            self.plans[sid] = plan
            committed = self._committed(sid)
            todo = [s for s in plan.segments if s.index not in committed]
            for seg in todo:
                self.queue.push(SegmentTask.make(sid, seg.index, shot.priority, seg.num_frames, shot.row or 0))
            if not todo:
                self._start_stitch(sid)
            if committed:
                log.info("shot %s: %d of %d segments already committed", sid, len(committed), len(plan.segments))
        for sid, plan in self.plans.items():
            if all(self.run.features_file(sid, s.index).is_file() for s in plan.segments) and all(
                    self.run.prompt_file(p).is_file() for p in shot_prompts(self.shots[sid].prompt, self.shots[sid].negative_prompt)):
                self.prepared.add(sid)

    def _committed(self, sid: str) -> set[int]:
        """Segments with a ledger record whose intermediate is still complete (a record without
        its files — work folder removed by hand — is dropped and the segment rendered again)."""
        out = set()
        for index in self.run.committed_segments(sid):
            if segment_finished(self.run.work_dir(sid), index):
                out.add(index)
            else:
                log.warning("shot %s: segment %d has a commit record but no finished intermediate; "
                            "rendering it again", sid, index)
                self.run.segment_record(sid, index).unlink(missing_ok=True)
        return out

    # --- the loop ------------------------------------------------------------------------------

    def run_loop(self) -> dict[str, int]:
        self._load()
        self._start_prep()
        try:
            while not all(self._terminal(s) for s in self.order):
                if self.stop.is_set():
                    raise KeyboardInterrupt("stop requested")
                self._maintain_groups()
                self._dispatch()
                self._submit_due_prep()
                if not self._progress_possible():
                    break
                self._wait_and_handle(0.5)
                self._publish_state()
        except BaseException:
            self._wind_down()
            raise
        self._shutdown()
        self._publish_state(force=True, ended=True)
        return {state: sum(1 for s in self.status.values() if s.state == state) for state in ("done", "failed", "pending")}

    def _wind_down(self) -> None:
        """A stopped or failed run: groups and tasks ended, then a results file that still shows
        what was published until now (it is otherwise rewritten only every results_interval_s)."""
        self._shutdown()
        self._settle_stitches()
        if self._lease_lost():
            log.warning("the lease was taken over: %s and index.html are left to the run that holds it",
                        self.run.results_file)
            return
        try:
            self._publish_state(force=True, ended=True)
        except Exception:
            log.exception("writing the results file after the run stopped failed")

    def _lease_lost(self) -> bool:
        return self.lease_lost is not None and self.lease_lost.is_set()

    def _save_status(self, sid: str, st: ShotStatus) -> None:
        """Persist a shot's state, unless the run directory belongs to another run now."""
        if not self._lease_lost():
            self.run.write_status(sid, st)

    def _settle_stitches(self, timeout_s: float = 15.0) -> None:
        """A stopped run: end the stitch tasks still in flight (a publish is atomic: it landed or
        it did not; a rerun stitches the others again from their committed segments), then count
        every shot whose publish landed as done, so the results file written next matches the
        output folder. Without this a publish finishing during the stop was on disk, yet listed
        as still running."""
        refs = [ref for ref, (kind, _) in self.inflight.items() if kind == "stitch"]
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if refs:
            with contextlib.suppress(Exception):
                ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for sid in self.order:
            st = self.status[sid]
            if st.state != "done" and self.run.is_published(sid):
                record = self.run.read_published(sid) or {}
                st.state, st.finished_at, st.error = "done", record.get("published_at", time.time()), None
                self._save_status(sid, st)
                log.info("shot %s published while the run stopped", sid)

    def _remaining_render_work(self) -> bool:
        return len(self.queue) > 0 or any(s.job for s in self.slots)

    def _maintain_groups(self) -> None:
        now = time.time()
        for slot in self.slots:
            if slot.forming is not None and slot.forming.done():
                self._formed(slot, slot.forming)
            if (slot.group is None and slot.forming is None and slot.given_up is None and now >= slot.next_try_at
                    and len(self.queue) > 0):
                slot.generation += 1
                slot.forming = self.executor.submit(form_group, self.spec, slot.name, slot.generation,
                                                    set(self.health.excluded))

    def _formed(self, slot: GroupSlot, fut: Future) -> None:
        slot.forming = None
        try:
            slot.group = fut.result()
            slot.start_failures = 0
        except Exception as exc:
            node = exc.node if isinstance(exc, GroupStartError) else None
            slot.start_failures += 1
            if self.health.record(node):
                log.error("node %s excluded after %d failures", node, self.health.max_failures)
            slot.next_try_at = time.time() + min(30.0, 2.0 ** slot.start_failures)
            log.warning("group %s start %d/%d failed: %s", slot.name, slot.start_failures,
                        self.opts.group_start_retries, exc)
            if slot.start_failures >= self.opts.group_start_retries:
                slot.given_up = str(exc)
                log.error("group %s given up after %d failed starts", slot.name, slot.start_failures)

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.group is None or slot.job is not None:
                continue
            task = self.queue.pop_ready(lambda sid: sid in self.prepared and not self._terminal(sid))
            if task is None:
                return
            sid = task.shot_id
            st = self.status[sid]
            st.attempts += 1
            st.state, st.pending_reason = "running", None
            st.started_at = st.started_at or time.time()
            st.device = "gpu" if self.spec.slot_resource == "GPU" else "cpu"
            attempt = self.run.next_attempt(sid)
            self._save_status(sid, st)
            self._attempt_note(sid, attempt, f"attempt {attempt}: segment {task.index} on group "
                                             f"{slot.group.label} (node {slot.group.node_id}, pids {slot.group.pids})")
            payload = {"shot": self.shots[sid], "index": task.index, "attempt": attempt,
                       "plan": self.plans[sid].to_dict()}
            refs = [a.render.remote(payload) for a in slot.group.actors]
            slot.job = Job(task, attempt, refs, time.time())
            for ref in refs:
                self.inflight[ref] = ("render", slot)

    def _progress_possible(self) -> bool:
        if self.inflight or self.prep_retry_due or any(s.forming for s in self.slots):
            return True
        if self._remaining_render_work() and all(s.given_up for s in self.slots):
            # The cluster, not the shots: busy, placement timing out, every node excluded, a model
            # that does not load. The shots never got a fair try, so they stay pending and the next
            # run (the next cron firing) renders them; failing them would need --retry-failed.
            reason = "; ".join(sorted({s.given_up or "" for s in self.slots}))
            for sid in self.queue.shot_order():
                self._leave_pending(sid, f"not rendered: no render group could be started: {reason}")
            return False
        return True

    def _wait_and_handle(self, timeout: float) -> None:
        refs = list(self.inflight)
        if not refs:
            time.sleep(min(timeout, 0.2))
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            if ref not in self.inflight:  # consumed by a group failure handled earlier in this batch
                continue
            kind, what = self.inflight.pop(ref)
            if kind == "render":
                self._render_returned(what, ref)
            elif kind == "stitch":
                self._stitch_returned(what, ref)
            else:
                self._prep_returned(what, ref)

    # --- render results ------------------------------------------------------------------------

    def _render_returned(self, slot: GroupSlot, ref: Any) -> None:
        job = slot.job
        assert job is not None
        try:
            result = ray.get(ref)
        except Exception as exc:
            self._group_failed(slot, exc)
            return
        job.results[result["rank"]] = result
        if len(job.results) < len(job.refs):
            return
        slot.job = None
        sid, index = job.task.shot_id, job.task.index
        st = self.status[sid]
        st.gpu_seconds += (time.time() - job.started) * len(job.refs)
        if index not in self.run.committed_segments(sid):  # rank 0 writes it before returning
            self._record_failure(slot, job, ERROR, "MissingCommit", f"segment {index} returned without a commit record")
            return
        self.rendered_segments += 1
        self.metrics.segment_done()
        r0 = job.results[0]
        self._attempt_note(sid, job.attempt, f"segment {index} committed: {r0['clips_rendered']} clips rendered, "
                                             f"resumed from clip {r0['resumed_from']}, {r0['seconds']:.1f} s")
        self._save_status(sid, st)
        plan = self.plans[sid]
        if not self._terminal(sid) and all(s.index in self.run.committed_segments(sid) for s in plan.segments):
            self._start_stitch(sid)

    def _group_failed(self, slot: GroupSlot, first: BaseException) -> None:
        job, group = slot.job, slot.group
        assert job is not None and group is not None
        others = [r for r in job.refs if r in self.inflight]
        errors: list[BaseException] = [first]
        if others:  # collect the other ranks' outcome briefly: a dead rank explains the rest
            done, _ = ray.wait(others, num_returns=len(others), timeout=2.0)
            for r in done:
                try:
                    ray.get(r)
                except Exception as exc:
                    errors.append(exc)
        for r in job.refs:
            self.inflight.pop(r, None)
        # Every rank returned the shot's own out-of-memory error (and freed its memory): the group
        # is whole and in step, so it stays and renders the next shot.
        kept = len(errors) == len(job.refs) and all(type(cause_of(e)).__name__ in NOT_RETRIED for e in errors)
        if kept:
            slot.job = None
        else:
            teardown(group)
            slot.group, slot.job = None, None
            self.metrics.group_restarted(slot.name)
        died = [e for e in errors if isinstance(e, ray.exceptions.RayActorError)]
        if died:
            kind, exc_type, message = INFRA, "RankDied", f"a rank of group {group.label} died: {describe_exception(died[0])}"
        else:
            app = [e for e in errors if not looks_collective(e)]
            chosen = app[0] if app else errors[0]
            kind = ERROR if app else INFRA
            exc_type, message = type(cause_of(chosen)).__name__, describe_exception(chosen)
        if kind == INFRA and self.health.record(group.node_id):
            log.error("node %s excluded after %d failures", group.node_id, self.health.max_failures)
        log.warning("group %s failed on %s segment %d%s: %s", group.label, job.task.shot_id, job.task.index,
                    " (group kept)" if kept else "", message)
        self.status[job.task.shot_id].gpu_seconds += (time.time() - job.started) * len(job.refs)
        self._record_failure(slot, job, kind, exc_type, message, node=group.node_id, group_label=group.label)

    def _record_failure(self, slot: GroupSlot, job: Job, kind: str, exc_type: str, message: str,
                        node: str | None = None, group_label: str | None = None) -> None:
        sid = job.task.shot_id
        self.metrics.segment_failed()
        self._attempt_note(sid, job.attempt, f"attempt {job.attempt} failed ({kind}): {message}")
        failure = Failure(job.attempt, kind, failure_signature(kind, exc_type, message), message, time.time(),
                          group_label, node)
        if self._terminal(sid):  # another segment of this shot already failed it
            self.status[sid].failures.append(failure)
            self._save_status(sid, self.status[sid])
            return
        verdict = judge_failure(self.status[sid], failure, self.opts.shot_max_failures,
                                retryable=exc_type not in NOT_RETRIED)
        if verdict.retry:
            self.queue.push(job.task)  # resumes from the segment's last committed clip
            self._save_status(sid, self.status[sid])
        else:
            self._fail(sid, verdict.reason, "render", exc_type)

    # --- stitch and prep -------------------------------------------------------------------------

    def _start_stitch(self, sid: str) -> None:
        if sid in self.stitching:
            return
        self.stitching.add(sid)
        ref = stitch_remote.remote(str(self.run.path), self.shots[sid], self.plans[sid].to_dict(),
                                   self.settings.to_dict(), self.opts.keep_work)
        self.inflight[ref] = ("stitch", sid)

    def _stitch_returned(self, sid: str, ref: Any) -> None:
        self.stitching.discard(sid)
        st = self.status[sid]
        try:
            record = ray.get(ref)
        except Exception as exc:
            message = f"stitch/publish failed: {describe_exception(exc)}"
            # A worker or node that died under the task (OOM killer, node loss) is the cluster's
            # trouble, not the shot's: its constant message must not read as "the same error twice".
            kind = INFRA if ray_process_died(exc) else ERROR
            log.warning("shot %s: %s (%s)", sid, message, kind)
            failure = Failure(st.attempts, kind, failure_signature(kind, type(cause_of(exc)).__name__, message),
                              message, time.time())
            verdict = judge_failure(st, failure, self.opts.shot_max_failures)
            if verdict.retry:
                st.attempts += 1  # the stitch retry is an attempt: `attempts` never trails "N failed attempts"
                self._save_status(sid, st)
                self._start_stitch(sid)
            else:
                self._fail(sid, verdict.reason, "stitch", type(cause_of(exc)).__name__)
            return
        st.state, st.finished_at, st.error = "done", record["published_at"], None
        self._save_status(sid, st)
        if st.started_at is not None:
            self.metrics.shot_published(st.finished_at - st.started_at)
        log.info("shot %s published: %s (%d frames, sha256 %s)", sid, record["output"], record["frames"],
                 record["sha256"][:12])

    # --- bookkeeping ---------------------------------------------------------------------------

    def _fail(self, sid: str, reason: str, stage: str, failure_type: str | None = None) -> None:
        st = self.status.setdefault(sid, ShotStatus())
        st.state, st.error, st.finished_at = "failed", reason, time.time()
        st.failure_stage, st.failure_type = stage, failure_type
        self.queue.drop_shot(sid)
        self._save_status(sid, st)
        log.error("shot %s failed: %s", sid, reason)

    def _leave_pending(self, sid: str, reason: str) -> None:
        """The run ends without rendering ``sid`` for a reason that is not the shot's: it stays
        pending (``reason`` shown by ``s2v status`` and in results.parquet) for the next run."""
        st = self.status.setdefault(sid, ShotStatus())
        st.state, st.pending_reason = "pending", reason
        self.queue.drop_shot(sid)
        self._save_status(sid, st)
        log.error("shot %s left pending: %s; a rerun renders it", sid, reason)

    def _attempt_note(self, sid: str, attempt: int, text: str) -> None:
        path = self.run.attempt_log(sid, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} driver: {text}\n")

    def _publish_state(self, force: bool = False, ended: bool = False) -> None:
        """Metrics, results.parquet and index.html (at most every results_interval_s unless
        ``force``). ``ended``: nothing of this run renders any more, so a shot still marked running
        was interrupted, and the results file says so."""
        counts = {state: 0 for state in ("pending", "running", "done", "failed")}
        for st in self.status.values():
            counts[st.state if st.state in counts else "pending"] += 1
        self.metrics.set_shots(counts)
        self.metrics.set_queue(len(self.queue), sum(1 for s in self.slots if s.group is not None))
        now = time.time()
        if (force or now - self._results_at >= self.opts.results_interval_s) and not self._lease_lost():
            self._results_at = now
            try:
                write_run_results(self.run, [self.shots[s] for s in self.order], rendering=not ended)
            except ResultsError as exc:
                if force:  # the run's last write: the driver says so (the ledger keeps every state)
                    raise
                # A file that cannot be written is no reason to stop the groups rendering.
                log.error("%s not written (tried again at the end of the run): %s", self.run.results_file, exc)
            else:
                refresh_report(self.run, live=not ended)  # RUN_DIR/index.html, from the results just written
        self._show_progress(force)

    def _show_progress(self, force: bool = False) -> None:
        """Clips done and the ETA to the display, at most once a second (it reads the run directory)."""
        now = time.time()
        if self.progress is None or (not force and now - self._progress_at < 1.0):
            return
        self._progress_at = now
        ready = sum(1 for s in self.slots if s.group is not None)
        segments_left = len(self.queue) + sum(1 for s in self.slots if s.job is not None)
        self.progress.update(self.tally.snapshot(shot_states(self.order, self.status),
                                                 max(1, min(ready, segments_left))))

    def _shutdown(self) -> None:
        for slot in self.slots:
            if slot.group is not None:
                teardown(slot.group)
                slot.group = None
        self.executor.shutdown(wait=True, cancel_futures=True)  # lets starts in progress finish...
        for slot in self.slots:  # ...so that the groups they formed can be torn down too
            fut, slot.forming = slot.forming, None
            if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                teardown(fut.result())
        if self.prep_actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.prep_actor)
            self.prep_actor = None


def _unwritable_output(shot: Shot) -> str | None:
    """One line saying why the shot's output directory cannot be written (full, read-only,
    forbidden), or None when a probe file could be created and removed there."""
    out_dir = Path(shot.output).parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        check_writable(out_dir)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(out_dir)
        return f"output directory not writable: {describe_os_error(exc)}"
    return None
