"""Small durable-write helpers for the run directory: temp file + fsync + rename + fsync dir.

Built on ``render.publish.publish_atomically`` so the ledger and the final outputs share one
implementation of "a reader sees the old file or the complete new one".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from render.publish import publish_atomically, temp_path_for


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    with open(tmp, "xb") as fh:
        fh.write(data)
    return publish_atomically(tmp, path, verify=None)  # fsyncs the file and the directory


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any | None:
    """The parsed file, or None when it does not exist (a torn file cannot exist: writes are atomic)."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
