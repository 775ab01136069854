"""Atomic, durable file writes: a reader sees the old file or the complete new one, never a part.

Every file the renderer, the run ledger and the manifests write goes the same way: write under a
hidden temporary name in the same folder (``temp_path_for``), fsync it, ``os.replace`` it over
the final name (atomic on POSIX within one filesystem), fsync the folder so the rename itself
survives a power cut. Anything that fails before the rename removes the temporary file and
leaves the final path as it was.

This module imports nothing from the rest of the project, so every layer (media, shot, cluster,
manifests) can use it without import cycles.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Keep temp names within the usual 255-byte file-name limit even for long final names.
_MAX_NAME_BYTES = 255

# What ``temp_path_for`` makes: "." + final name (maybe shortened) + ".tmp-<pid>-<8 hex>" + suffix.
_TEMP_NAME = re.compile(r"^\.(.+)\.tmp-(\d+)-[0-9a-f]{8}(\.[^.]*)?$")

# fsync on a folder fails with these on filesystems that cannot sync folders (some network and
# FUSE mounts). By then the rename is done and nothing more can be done, so they are ignored.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def temp_path_for(final_path: str | Path) -> Path:
    """Hidden sibling name for writing ``final_path``: same folder (so the final rename stays on
    one filesystem), pid + random suffix (no clashes between processes or retries; the pid also
    lets ``sweep_dead_temps`` find leftovers of killed writers) and the same extension (so
    PyAV/FFmpeg pick the right muxer from the name)."""
    final_path = Path(final_path)
    tag = f".tmp-{os.getpid()}-{secrets.token_hex(4)}{final_path.suffix}"
    # A temporary of a temporary (Mp4Writer's video-only file inside a verified publish's
    # temporary) is named after the real final file, not nested: one flat name that
    # ``sweep_stale_temps(final)`` recognises, instead of "..x.mp4.tmp-1-a.mp4.tmp-1-b.mp4".
    stem = final_name_of(final_path.name)
    budget = _MAX_NAME_BYTES - len(tag.encode()) - 1
    while len(stem.encode()) > budget:
        stem = stem[:-1]
    return final_path.with_name(f".{stem}{tag}")


def final_name_of(name: str) -> str:
    """The final file name a ``temp_path_for`` name belongs to (maybe shortened); unwraps the
    doubled names older versions gave a temporary of a temporary. Other names come back as they are."""
    while (m := _TEMP_NAME.match(name)) is not None:
        name = m.group(1)
    return name


def fsync_file(path: str | Path) -> None:
    """Flush a file's data to stable storage (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | Path) -> None:
    """Flush a folder's entries (a rename is only durable once its folder is)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def remove_quietly(path: str | Path) -> None:
    """Remove a temporary file on the way out of a failure. Any error of the removal itself
    (already gone, EROFS, EACCES, EIO...) is suppressed so that it never masks the original one."""
    with contextlib.suppress(OSError):
        os.unlink(path)


# Errors of the environment (not of the input or the code): reported in one line, not a traceback.
ENVIRONMENT_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
                                           getattr(errno, "EDQUOT", None)) if e is not None)


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks (memory does not grow with the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_writable(directory: str | Path) -> None:
    """Create and remove a probe file in ``directory``: raises the ``OSError`` (ENOSPC, EROFS,
    EACCES...) a later write there would hit, with ``filename`` set, before any work is done."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"output directory {str(directory)!r} does not exist")
    probe = temp_path_for(directory / "write-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
    except OSError as e:
        remove_quietly(probe)
        if e.filename is None:
            e.filename = str(directory)
        raise
    os.unlink(probe)


def environment_error(exc: BaseException) -> OSError | None:
    """The OSError of the environment (full disk, read-only or forbidden location) that caused
    ``exc`` (itself or along its ``__cause__``/``__context__`` chain), else None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in ENVIRONMENT_ERRNOS:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def describe_os_error(e: OSError) -> str:
    """One line: the path and the errno's meaning, e.g. "/out: Read-only file system (EROFS)"."""
    code = errno.errorcode.get(e.errno or 0, str(e.errno))
    meaning = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
    path = e.filename if e.filename is not None else "(unknown path)"
    return f"{path}: {meaning} ({code})"


def commit(tmp_path: str | Path, final_path: str | Path, check: Callable[[Path], None] | None = None,
           *, durable: bool = True) -> Path:
    """Move a complete ``tmp_path`` onto ``final_path``: fsync it, run ``check(tmp_path)``,
    ``os.replace``, fsync the folder. If anything before the rename fails (``check`` raising
    included) ``tmp_path`` is removed and the exception propagates; ``final_path`` is untouched.

    ``durable=False`` skips both fsyncs, for a file that is itself a temporary of a later durable
    publish (fsyncing twice would only cost time)."""
    tmp_path, final_path = Path(tmp_path), Path(final_path)
    try:
        if durable:
            fsync_file(tmp_path)
        if check is not None:
            check(tmp_path)
        os.replace(tmp_path, final_path)
    except BaseException:
        remove_quietly(tmp_path)
        raise
    if durable:
        fsync_dir(final_path.parent)
    return final_path


def atomic_write(path: str | Path, write: Callable[[Path], T], *, durable: bool = True) -> T:
    """Call ``write(tmp)`` to write the whole file at a temporary path, then ``commit`` it onto
    ``path``. Returns what ``write`` returns. On any failure (in ``write`` or after) the
    temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        result = write(tmp)
    except BaseException:
        remove_quietly(tmp)
        raise
    commit(tmp, path, durable=durable)
    return result


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; the folder is created if missing
    (run-directory records live in folders made on demand). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        # "x": the name is fresh by construction; never write through into someone else's file.
        with open(tmp, "xb") as fh:
            fh.write(data)

    atomic_write(path, write)
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON with sorted keys and a final newline, so equal records give byte-equal files."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any | None:
    """The parsed file, or None when it does not exist (a torn file cannot exist: writes are atomic)."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def sweep_dead_temps(directory: str | Path, belongs: Callable[[str], bool] = lambda name: True) -> list[Path]:
    """Remove ``temp_path_for`` files in ``directory`` whose writer pid is gone and whose final
    name satisfies ``belongs(name)`` (the name possibly shortened, see ``temp_path_for``).
    Assumes one writer per output at a time (the run lease guarantees it); pids are host-local."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP_NAME.match(p.name)
        if m and belongs(final_name_of(p.name)) and not _pid_alive(int(m.group(2))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def sweep_stale_temps(final_path: str | Path) -> list[Path]:
    """Remove temporary files of ``final_path`` left by writers that no longer run (killed)."""
    final_path = Path(final_path)
    return sweep_dead_temps(final_path.parent, lambda name: final_path.name.startswith(name))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
    "commit",
    "describe_os_error",
    "environment_error",
    "final_name_of",
    "fsync_dir",
    "fsync_file",
    "read_json",
    "remove_quietly",
    "sweep_dead_temps",
    "sweep_stale_temps",
    "temp_path_for",
]
