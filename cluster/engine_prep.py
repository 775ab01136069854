"""The engine's side of the preparation actor (prompt embeddings and audio features, one
``PrepWorker`` actor in dispatch order): chunks handed to it, what came back, retries after a pause,
a dead actor replaced. A part of ``RunEngine`` (its state lives there), kept apart for its size."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import ray

from cluster.ledger import Failure, ShotStatus
from cluster.prep import PrepWorker
from cluster.ray_errors import describe_exception
from cluster.scheduler import INFRA, failure_signature

log = logging.getLogger(__name__)

PrepActor = ray.remote(PrepWorker)
# Seconds before a failed preparation is tried again, times the shot's failed tries so far.
PREP_RETRY_PAUSE_S = 5.0


class PrepFeeding:
    """Methods of ``RunEngine`` that feed and answer the preparation actor."""

    def _start_prep(self) -> None:
        need = [sid for sid in self.queue.shot_order() if sid not in self.prepared]
        if not need:
            return
        self._submit_prep([need[i:i + self.opts.prep_chunk] for i in range(0, len(need), self.opts.prep_chunk)])

    def _submit_prep(self, chunks: list[list[str]]) -> None:
        """Hand ``chunks`` to the preparation actor, starting one when there is none (its outputs
        are files in the run directory, so a replacement actor skips whatever a dead one wrote)."""
        if self.prep_actor is None:
            name = f"s2v-{self.run_id}-prep" + (f"-r{self.prep_restarts}" if self.prep_restarts else "")
            self.prep_actor = PrepActor.options(num_cpus=1, name=name).remote(
                str(self.run.path), self.settings.to_dict(), self.opts.prep_threads,
                self.opts.prep_text_encoder_device)
        for chunk in chunks:
            ref = self.prep_actor.prepare.remote([self.shots[s] for s in chunk],
                                                 [self.plans[s].to_dict() for s in chunk])
            self.inflight[ref] = ("prep", chunk)

    def _prep_returned(self, chunk: list[str], ref: Any) -> None:
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._prep_actor_died(chunk, exc)
            return
        except Exception as exc:  # the call itself raised (e.g. umT5 on a card a render group fills)
            outcome = {sid: describe_exception(exc) for sid in chunk}
            whole_call = True
        else:
            whole_call = False
        again = []
        for sid, error in outcome.items():
            if error is None:
                self.prepared.add(sid)
            elif self._terminal(sid):
                continue
            elif self.prep_tries[sid] < self.opts.prep_retries:  # may pass: memory, a file system hiccup
                self.prep_tries[sid] += 1
                log.warning("shot %s: preparation failed (%s); trying again (%d/%d)", sid, error,
                            self.prep_tries[sid], self.opts.prep_retries)
                again.append(sid)
            else:  # "ExceptionType: message" (cluster.prep)
                tries = self.prep_tries[sid] + 1
                self._fail(sid, f"preparation failed{f' {tries} times' if tries > 1 else ''}: {error}", "preparation",
                           error.split(":", 1)[0].strip() or None)
        if again:
            # After a pause (the card or file system may recover), and each shot alone when the
            # whole call raised: one bad prompt must not spend its chunk-mates' tries. The actor is
            # ended below when nothing else is in it, so a retry starts from a fresh one.
            due = time.time() + PREP_RETRY_PAUSE_S * max(self.prep_tries[s] for s in again)
            self.prep_retry_due.extend((due, c) for c in ([[s] for s in again] if whole_call else [again]))
        if not any(k == "prep" for k, _ in self.inflight.values()) and self.prep_actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.prep_actor)  # frees the text encoder's and wav2vec's memory
            self.prep_actor = None

    def _submit_due_prep(self) -> None:
        now = time.time()
        due = [c for t, c in self.prep_retry_due if t <= now]
        if due:
            self.prep_retry_due = [(t, c) for t, c in self.prep_retry_due if t > now]
            self._submit_prep(due)

    def _prep_actor_died(self, chunk: list[str], exc: BaseException) -> None:
        """The preparation actor died (kill -9, OOM, node loss): every chunk it still held is
        lost with it. Restart it and re-submit them, within ``prep_max_restarts``; past that,
        fail their shots as an infrastructure failure."""
        lost = [chunk]
        for r, (kind, what) in list(self.inflight.items()):
            if kind == "prep":
                del self.inflight[r]
                lost.append(what)
        with contextlib.suppress(Exception):
            ray.kill(self.prep_actor)
        self.prep_actor = None
        lost = [[sid for sid in c if not self._terminal(sid)] for c in lost]
        lost = [c for c in lost if c]
        if not lost:
            return
        message = describe_exception(exc)
        if self.prep_restarts < self.opts.prep_max_restarts:
            self.prep_restarts += 1
            log.warning("preparation actor died (%s); restarting it (%d/%d) for %d unfinished shot(s)", message,
                        self.prep_restarts, self.opts.prep_max_restarts, sum(len(c) for c in lost))
            self._submit_prep(lost)
            return
        reason = (f"preparation failed: the preparation actor died {self.prep_restarts + 1} times "
                  f"(restart budget {self.opts.prep_max_restarts} spent): {message}")
        for c in lost:
            for sid in c:
                st = self.status.setdefault(sid, ShotStatus())
                st.attempts += 1  # its preparation was attempted: counted like a render attempt
                st.failures.append(Failure(st.attempts, INFRA, failure_signature(INFRA, "PrepActorDied", message),
                                           message, time.time()))
                self._fail(sid, reason, "preparation", "PrepActorDied")
