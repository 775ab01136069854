"""Per-shot identity: what one shot's output depends on, hashed in parts.

A shot's key has two halves:

* ``frames`` — everything the sampled frames depend on:

  * ``inputs`` — the bytes of the shot's audio, image and pose video (content, not path: moving
    or renaming an input does not re-render; editing it does). Hashing is streamed and cached in
    the run directory by (path, size, mtime, inode), so a long WAV is read once, not on every
    cron firing;
  * ``render`` — the manifest row's render columns (prompt, negative prompt, size, resolved seed,
    steps, guidance, sampler, shift, segment mode) and the run-level settings that shape frames
    (clip geometry, noise mode, segment sizes, text encoder dtype...);
  * ``model`` — every file of the checkpoint folder: relative path, size and mtime (hashing 60 GB
    of weights on every start would take minutes; a re-download or edit changes size or mtime);
  * ``code`` — the package version and the source of the packages that shape frames (or the
    value of ``S2V_CODE_VERSION`` when set).

* ``encode`` — what only the final encode uses: ``crf`` and the output path. A change here
  re-stitches the committed segments without sampling again (when they are still on disk).

Columns that only schedule (``priority``, ``sequence``, ``order``) are in neither half.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from cluster.settings import RunSettings
from manifests import Shot
from render.media.atomic import atomic_write_json, file_sha256, read_json
from render.model.checkpoint import checkpoint_digest

#: packages whose source changes what is rendered (cluster/ mostly schedules, so it is left out)
FRAME_PACKAGES = ("render", "parallel", "kernels", "manifests")
#: the modules of cluster/ that shape a shot's conditioning (prepared embeddings and features, the
#: segment's conditioning): segment work is named by the shot's key, not by the conditioning's bits
FRAME_MODULES = ("cluster.shot_work", "cluster.prep")
CODE_VERSION_ENV = "S2V_CODE_VERSION"
FRAME_PARTS = ("inputs", "render", "model", "code")
PARTS = (*FRAME_PARTS, "encode")
#: RunSettings fields only the final encode reads (render.shot.stitch); the segment
#: intermediates do not depend on them (render.shot.segment leaves crf out of its own fingerprint).
ENCODE_SETTINGS = ("crf",)
# ckpt is the model part; run_seed reaches the frames only through each shot's resolved seed.
_RUN_NOT_FRAMES = frozenset({"ckpt", "run_seed", *ENCODE_SETTINGS})
_INPUT_COLUMNS = ("audio", "image", "pose_video")
# Manifest columns that are not render columns: inputs (hashed by content), the output (encode
# half) and the scheduling columns.
_ROW_NOT_RENDER = frozenset({"shot_id", *_INPUT_COLUMNS, "output", "priority", "sequence", "order"})
# Options added after run directories existed are keyed only when not at their default, so that
# shots rendered before an option existed keep their keys (they would otherwise all render again
# under a pinned S2V_CODE_VERSION). Fast mode is keyed by its effective value (the row's cell,
# else the run's --fast).
_FAST = "fast"
_RUN_KEYED_WHEN_SET = {"fp8": False, "vae_dtype": "fp32"}


def json_digest(obj: object) -> str:
    """sha256 of the canonical JSON of ``obj`` (also what older run directories' fingerprints used)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_digest() -> str:
    """Hash of the package version and the frame-shaping source; ``S2V_CODE_VERSION`` (e.g. a
    release tag or commit) replaces it for deployments that name their code versions."""
    import importlib

    pinned = os.environ.get(CODE_VERSION_ENV)
    if pinned:
        return json_digest(["pinned", pinned])
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
    for module in FRAME_MODULES:
        path = Path(importlib.import_module(module).__file__)
        h.update(module.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def environment(settings: RunSettings, text_encoder_device: str = "cpu") -> dict[str, str]:
    """The run-wide parts of every shot's key (computed once per start). Prompts embedded by umT5
    on a GPU differ from the CPU's at rounding level, so where umT5 runs is part of the code."""
    code = code_digest()
    if text_encoder_device != "cpu":
        code = json_digest([code, "text encoder on", text_encoder_device.split(":")[0]])
    return {"model": checkpoint_digest(settings.ckpt), "code": code}


class InputHashes:
    """sha256 of input files, cached in a JSON file of the run directory.

    A cache entry is reused while the file's size, mtime and inode are unchanged: an edit in place
    changes the mtime, a replacement by rename changes the inode. Anything else is hashed again
    (streamed, 1 MiB at a time, so a long WAV never sits in memory whole)."""

    def __init__(self, path: Path):
        self.path = path
        raw = read_json(path)
        self.entries: dict[str, dict[str, Any]] = raw if isinstance(raw, dict) else {}
        self.used: set[str] = set()
        self.hashed = 0  # files read this time (the rest came from the cache)

    def digest(self, file: str | Path) -> str:
        name = str(file)
        st = os.stat(name)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        self.used.add(name)
        entry = self.entries.get(name)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        sha = file_sha256(name)
        self.entries[name] = {"stamp": stamp, "sha256": sha}
        self.hashed += 1
        return sha

    def save(self) -> None:
        """Keep only the files of this start's manifest (the cache cannot grow without bound)."""
        self.entries = {k: v for k, v in self.entries.items() if k in self.used}
        atomic_write_json(self.path, self.entries)


@dataclass(frozen=True)
class ShotKey:
    frames: str
    encode: str
    parts: dict[str, str] = field(default_factory=dict)  # each part's hash, to say what changed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Any) -> ShotKey | None:
        if not isinstance(d, dict) or not isinstance(d.get("frames"), str) or not isinstance(d.get("encode"), str):
            return None
        return ShotKey(d["frames"], d["encode"], dict(d.get("parts") or {}))


def shot_key(shot: Shot, settings: RunSettings, env: dict[str, str], hashes: InputHashes) -> ShotKey:
    row = shot.to_row()
    inputs = {c: (hashes.digest(row[c]) if row.get(c) else None) for c in _INPUT_COLUMNS}
    render_row = {k: v for k, v in row.items() if k not in _ROW_NOT_RENDER and k != _FAST}
    run = {k: v for k, v in settings.to_dict().items() if k not in _RUN_NOT_FRAMES and k != _FAST
           and not (k in _RUN_KEYED_WHEN_SET and v == _RUN_KEYED_WHEN_SET[k])}
    fast = shot.fast if shot.fast is not None else settings.fast
    render = [render_row, run] + ([{_FAST: True}] if fast else [])
    parts = {"inputs": json_digest(inputs), "render": json_digest(render), "model": env["model"], "code": env["code"]}
    encode = json_digest([{k: getattr(settings, k) for k in ENCODE_SETTINGS}, str(shot.output)])
    parts["encode"] = encode
    return ShotKey(json_digest([parts[p] for p in FRAME_PARTS]), encode, parts)


def changed_parts(old: ShotKey, new: ShotKey, parts: Iterable[str] = PARTS) -> list[str]:
    return [p for p in parts if old.parts.get(p) != new.parts.get(p)]


def prompt_environment(settings: RunSettings, env: dict[str, str]) -> str:
    """What the cached prompt embeddings (``prompts/``) depend on besides the text."""
    return json_digest([env["model"], env["code"], settings.text_encoder_dtype])
