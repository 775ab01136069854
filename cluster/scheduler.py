"""Scheduling policy without Ray: the segment queue, the failure rules, node health.

* Queue order: higher ``priority`` first, then longer segments first (long work started early
  keeps every group busy until the end instead of one group finishing a long shot alone), then
  manifest row, then segment index. A running segment is never interrupted: a higher-priority
  segment takes the next group that finishes a segment ("preemption at segment boundaries").
* A segment is dispatchable once its shot's inputs are prepared (prompt embeddings, features).
* Failures: an attempt that raised an error is compared with the shot's earlier failures — the
  same signature twice marks the shot failed; every shot also has a budget of failed attempts
  of any kind, so a shot that keeps killing its group (e.g. out of memory) cannot loop forever.
* An error that every attempt would repeat (``NOT_RETRIED``: out of GPU memory at the shot's
  size) fails the shot at once; when every rank reported it, the group stays for the next shot.
* A node with ``node_max_failures`` failures (group starts or rank deaths) is excluded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cluster.ledger import Failure, ShotStatus

INFRA = "infrastructure"
ERROR = "error"
# Errors (exception type names) that every attempt would repeat: the shot fails at its first one.
# Out of GPU memory at a shot's size (render/model/out_of_memory.py) names the options that fit.
NOT_RETRIED = frozenset({"ShotOutOfMemory"})


@dataclass(frozen=True, order=True)
class SegmentTask:
    sort_key: tuple[int, int, int, int]
    shot_id: str = field(compare=False)
    index: int = field(compare=False)
    num_frames: int = field(compare=False)

    @staticmethod
    def make(shot_id: str, index: int, priority: int, num_frames: int, row: int) -> SegmentTask:
        return SegmentTask((-priority, -num_frames, row, index), shot_id, index, num_frames)


class SegmentQueue:
    """Pending segments in dispatch order (a sorted list: dispatch scans for the first ready one)."""

    def __init__(self, tasks: Iterable[SegmentTask] = ()):
        self._tasks: list[SegmentTask] = sorted(tasks)

    def push(self, task: SegmentTask) -> None:
        # Requeued work goes back to its place in the order (bisect would do; lists are short).
        self._tasks.append(task)
        self._tasks.sort()

    def pop_ready(self, ready: Callable[[str], bool]) -> SegmentTask | None:
        for i, task in enumerate(self._tasks):
            if ready(task.shot_id):
                return self._tasks.pop(i)
        return None

    def drop_shot(self, shot_id: str) -> int:
        before = len(self._tasks)
        self._tasks = [t for t in self._tasks if t.shot_id != shot_id]
        return before - len(self._tasks)

    def shot_order(self) -> list[str]:
        """Shot ids in the order their first segment will be dispatched (preparation order)."""
        seen: dict[str, None] = {}
        for t in self._tasks:
            seen.setdefault(t.shot_id, None)
        return list(seen)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self):
        return iter(list(self._tasks))


_HEX_OR_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\b\d+(\.\d+)?\b")


def failure_signature(kind: str, exc_type: str, message: str) -> str:
    """What "failing the same way" compares: kind, exception type and the first line of the
    message with numbers and addresses blanked (pids, ports, timings differ between attempts)."""
    first = (message.strip().splitlines() or [""])[0]
    return f"{kind}:{exc_type}:{_HEX_OR_NUMBER.sub('#', first)[:300]}"


@dataclass(frozen=True)
class Verdict:
    retry: bool
    reason: str  # why the shot failed (when not retried)


def judge_failure(status: ShotStatus, failure: Failure, max_failures: int, retryable: bool = True) -> Verdict:
    """Record ``failure`` in ``status`` and decide whether the shot gets another attempt
    (never when ``retryable`` is False: an error that every attempt would repeat)."""
    same = [f for f in status.failures if f.signature == failure.signature]
    status.failures.append(failure)
    if not retryable:
        return Verdict(False, failure.message)
    if same and failure.kind == ERROR:
        return Verdict(False, f"failed the same way twice (attempts {same[0].attempt} and {failure.attempt}): "
                              f"{failure.message}")
    if len(status.failures) >= max_failures:
        return Verdict(False, f"{len(status.failures)} failed attempts (limit {max_failures}); "
                              f"last: {failure.message}")
    return Verdict(True, "")


class NodeHealth:
    def __init__(self, max_failures: int):
        self.max_failures = max_failures
        self.failures: Counter[str] = Counter()

    def record(self, node: str | None) -> bool:
        """Count a failure on ``node``; True when the node has just become excluded."""
        if not node:
            return False
        self.failures[node] += 1
        return self.failures[node] == self.max_failures

    @property
    def excluded(self) -> set[str]:
        return {n for n, c in self.failures.items() if c >= self.max_failures}
