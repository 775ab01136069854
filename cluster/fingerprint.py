"""The run fingerprint: what a run's frames depend on, hashed in parts.

* ``manifest`` — the normalised shots (resolved absolute paths, resolved seeds, defaults applied)
* ``settings`` — the run-level render settings (``RunSettings``)
* ``model`` — every file of the checkpoint folder: relative path, size and mtime (hashing 60 GB
  of weights on every start would take minutes; a re-download or edit changes size or mtime)
* ``code`` — the package version and the source of the packages that shape frames (or the
  value of ``S2V_CODE_VERSION`` when set)

A resume is refused when any part differs (``s2v run`` exits 5 and says which parts); the parts
are stored separately so the message can say what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from cluster.settings import RunSettings
from manifests import Shot

#: packages whose source changes what is rendered (cluster/ only schedules, so it is left out)
FRAME_PACKAGES = ("render", "parallel", "kernels", "manifests")
PARTS = ("manifest", "settings", "model", "code")
CODE_VERSION_ENV = "S2V_CODE_VERSION"


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def manifest_digest(shots: Sequence[Shot]) -> str:
    return _sha([s.to_row() for s in shots])


def model_digest(ckpt_dir: str | Path) -> str:
    root = Path(ckpt_dir)
    listing = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.stat()
            listing.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return _sha(listing)


def code_digest() -> str:
    """Hash of the package version and the frame-shaping source; ``S2V_CODE_VERSION`` (e.g. a
    release tag or commit) replaces it for deployments that name their code versions."""
    import importlib

    pinned = os.environ.get(CODE_VERSION_ENV)
    if pinned:
        return _sha(["pinned", pinned])
    h = hashlib.sha256()
    try:
        h.update(metadata.version("s2v-render").encode())
    except metadata.PackageNotFoundError:
        h.update(b"unversioned")
    for package in FRAME_PACKAGES:
        try:
            mod = importlib.import_module(package)
        except ImportError:
            continue
        root = Path(mod.__file__).parent
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root.parent).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def compute_fingerprint(shots: Sequence[Shot], settings: RunSettings) -> dict[str, str]:
    parts = {
        "manifest": manifest_digest(shots),
        "settings": _sha(settings.to_dict()),
        "model": model_digest(settings.ckpt),
        "code": code_digest(),
    }
    parts["combined"] = _sha([parts[p] for p in PARTS])
    return parts


def changed_parts(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return [p for p in PARTS if old.get(p) != new.get(p)]
