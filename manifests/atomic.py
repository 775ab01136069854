"""Atomic Parquet writes: a reader sees the old file or the complete new one, never a partial one.

The temporary-name / fsync / rename / fsync-folder mechanics are ``render.media.atomic``'s (the
same for every file the project writes); only the Parquet encoding is here.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from render.media.atomic import atomic_write


def atomic_write_table(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` atomically and durably. Returns ``path``."""
    path = Path(path)

    def write(tmp: Path) -> None:
        # "x": the temporary name is fresh by construction; never write through into another file.
        with open(tmp, "xb") as fh:
            pq.write_table(table, fh)

    atomic_write(path, write)
    return path
