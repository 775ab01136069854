"""Atomic Parquet writes: a reader sees the old file or the complete new one, never a partial one."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is; some platforms cannot open a
    # directory for fsync, which is then best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_table(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` via a temp file in the same directory, fsync, then rename."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    # The temp name is hidden, unique per writer and ends in .tmp so leftovers are recognisable.
    tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return path
