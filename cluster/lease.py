"""The run directory's lease: at most one ``s2v run`` renders into a run directory at a time.

Two mechanisms, because run directories live on shared storage:

* an exclusive ``fcntl.flock`` on ``lease.lock`` — exact on one host (the kernel drops it when
  the holder dies, even on ``kill -9``), but not reliable across hosts on every network file
  system;
* ``lease.json`` with the holder's host, pid, a random token and a heartbeat time refreshed
  every ``heartbeat_s`` — what a run on *another* host goes by: it takes the lease over only
  when the heartbeat is older than ``stale_after`` heartbeats.

A second start while the lease is held raises ``LeaseHeld`` (``s2v run`` exits 4) before it
touches anything else in the run directory. Ranks fence their commits with the token
(:func:`check_fence`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from render.media.atomic import atomic_write_json, read_json

log = logging.getLogger(__name__)

LOCK_FILE = "lease.lock"
LEASE_FILE = "lease.json"
DEFAULT_HEARTBEAT_S = 5.0
DEFAULT_STALE_AFTER = 6  # heartbeats


class LeaseHeld(RuntimeError):
    """Another run holds the lease; the message names its host, pid and heartbeat age."""


@dataclass(frozen=True)
class LeaseInfo:
    host: str
    pid: int
    token: str
    acquired_at: float
    heartbeat_at: float
    heartbeat_s: float

    @staticmethod
    def from_dict(d: dict) -> LeaseInfo:
        return LeaseInfo(str(d["host"]), int(d["pid"]), str(d["token"]), float(d["acquired_at"]),
                         float(d["heartbeat_at"]), float(d.get("heartbeat_s", DEFAULT_HEARTBEAT_S)))

    def age_s(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.heartbeat_at

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, last heartbeat {self.age_s():.1f} s ago"


class LeaseLost(RuntimeError):
    """The run directory's lease belongs to another run now: this run's ranks must not commit."""


def check_fence(run_dir: str | Path, token: str) -> None:
    """Raise :class:`LeaseLost` unless ``lease.json`` still names ``token``.

    Ranks call this right before every commit into the run directory (clip files, segment state
    and records): a rank orphaned by a driver that died, or whose run was taken over as stale,
    stops at its next commit instead of writing beside the new run (the window left is the one
    between this read and the rename that follows it).
    """
    info = read_lease(run_dir)
    if info is None or info.token != token:
        holder = "nobody (the lease file is gone)" if info is None else info.describe()
        raise LeaseLost(f"{run_dir}: the lease is held by {holder}, not by this rank's run (token {token}); "
                        "not committing")


def read_lease(run_dir: str | Path) -> LeaseInfo | None:
    raw = read_json(Path(run_dir) / LEASE_FILE)
    if not isinstance(raw, dict):
        return None
    try:
        return LeaseInfo.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lease_is_live(info: LeaseInfo | None, stale_after: int = DEFAULT_STALE_AFTER) -> bool:
    """Best guess without taking the lock (for ``s2v status``)."""
    if info is None:
        return False
    if info.host == socket.gethostname():
        return _pid_alive(info.pid) and info.age_s() < stale_after * info.heartbeat_s
    return info.age_s() < stale_after * info.heartbeat_s


class Lease:
    """``with Lease(run_dir):`` holds the lease and heartbeats in a daemon thread."""

    def __init__(self, run_dir: str | Path, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                 stale_after: int = DEFAULT_STALE_AFTER):
        self.run_dir = Path(run_dir)
        self.heartbeat_s = heartbeat_s
        self.stale_after = stale_after
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.token = secrets.token_hex(8)
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()  # set when another run took the lease over (we must stop)
        self.acquired_at = 0.0

    # --- acquire / release -------------------------------------------------------------------

    def acquire(self) -> Lease:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_lease(self.run_dir)
            who = holder.describe() if holder else "a process on this host"
            raise LeaseHeld(f"run directory {self.run_dir} is leased by another run ({who})") from None
        try:
            holder = read_lease(self.run_dir)
            if holder is not None and holder.host != self.host:
                # The flock cannot see a holder on another host; its heartbeat decides.
                limit = self.stale_after * holder.heartbeat_s
                if holder.age_s() < limit:
                    raise LeaseHeld(
                        f"run directory {self.run_dir} is leased by another run ({holder.describe()}); "
                        f"it becomes stale after {limit:.0f} s without a heartbeat"
                    )
                log.warning("taking over a stale lease (%s)", holder.describe())
            elif holder is not None:
                # Same host: we hold the flock, so the recorded holder is gone (or never released).
                log.info("previous lease holder is gone (%s); taking the lease", holder.describe())
            self.acquired_at = time.time()
            self._write()
        except BaseException:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self._fd = fd
        self._thread = threading.Thread(target=self._beat, name="s2v-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
            self._thread = None
        if self._fd is None:
            return
        try:
            current = read_lease(self.run_dir)
            if current is not None and current.token == self.token:
                with contextlib.suppress(FileNotFoundError):
                    (self.run_dir / LEASE_FILE).unlink()
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- heartbeat ---------------------------------------------------------------------------

    def _write(self) -> None:
        now = time.time()
        atomic_write_json(self.run_dir / LEASE_FILE, {
            "host": self.host, "pid": self.pid, "token": self.token, "acquired_at": self.acquired_at,
            "heartbeat_at": now, "heartbeat_s": self.heartbeat_s,
        })

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = read_lease(self.run_dir)
            if current is not None and current.token != self.token:
                log.error("the lease was taken over by %s; stopping", current.describe())
                self.lost.set()
                return
            try:
                self._write()
            except OSError as exc:  # shared storage hiccup: keep trying, the stale limit is generous
                log.warning("lease heartbeat failed: %s", exc)
