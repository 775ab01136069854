"""The shot manifest: one Parquet row per shot to render.

This module is the single description of the manifest's columns (names, kinds, defaults), the
normalised ``Shot`` a validated row becomes, and ``write_manifest``. The render parameters'
defaults, limits and the size rule are ``render.settings``'s, so a manifest accepts exactly what
``s2v render-shot`` accepts. Validation itself (every problem with row, column, value and rule)
lives in ``manifests.validate`` (``read_manifest``).

Decisions recorded here (see also the module constants):

* ``size`` is a *maximum area*, parsed by ``render.settings.size_dims`` (``W*H`` or ``WxH``); a
  valid size is stored in its canonical ``W*H`` spelling.
* ``seed`` must be in [0, 2**32). A null seed is *derived* from the run seed and the shot id
  (``derive_seed``) and recorded in ``Shot.seed`` with ``Shot.seed_source == "derived"``; a
  random seed is never drawn.
* ``negative_prompt`` null or empty means "use the model's default negative prompt", as the
  official CLI treats ``""``.
* Row numbers everywhere are 0-based indices into the Parquet file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from manifests.atomic import atomic_write_table
from render.settings import (
    DEFAULT_SEGMENT_MODE,
    DEFAULT_SETTINGS,
    GUIDANCE_RANGE,
    SAMPLERS,
    SEGMENT_MODES,
    STEPS_RANGE,
    parse_size,
)
from render.settings import SEED_LIMIT as SEED_LIMIT  # re-exported: s2v.demo checks seeds with it

# --- limits and choices -------------------------------------------------------------------------

#: shot ids become file and directory names in a run directory, hence the conservative alphabet;
#: ids made only of dots ("." / "..") are refused on top of the pattern because they would name
#: the current or parent directory.
SHOT_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_PROMPT_CHARS = 10_000

# The render parameters' defaults are RenderSettings' (named here for the column table and Shot).
DEFAULT_SIZE = DEFAULT_SETTINGS.size
DEFAULT_STEPS = DEFAULT_SETTINGS.steps
DEFAULT_GUIDANCE = DEFAULT_SETTINGS.guidance
DEFAULT_SHIFT = DEFAULT_SETTINGS.shift
DEFAULT_SAMPLER = DEFAULT_SETTINGS.sampler
OUTPUT_SUFFIX = ".mp4"
INT64_RANGE = (-(2**63), 2**63 - 1)

# --- columns ------------------------------------------------------------------------------------

STRING, PATH, INT, FLOAT, BOOL = "string", "path", "int", "float", "bool"


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str  # STRING, PATH, INT, FLOAT or BOOL
    required: bool
    default: Any
    arrow_type: pa.DataType
    doc: str


COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("shot_id", STRING, True, None, pa.string(), "unique id, [A-Za-z0-9._-]{1,128}"),
    ColumnSpec("audio", PATH, True, None, pa.string(), "driving audio file"),
    ColumnSpec("image", PATH, True, None, pa.string(), "reference image file"),
    ColumnSpec("prompt", STRING, True, None, pa.string(), "non-empty text, at most 10k characters"),
    ColumnSpec("negative_prompt", STRING, False, None, pa.string(), "null/empty -> model default"),
    ColumnSpec("size", STRING, False, DEFAULT_SIZE, pa.string(), "max area 'W*H' or 'WxH'"),
    ColumnSpec("seed", INT, False, None, pa.int64(), "[0, 2**32); null -> derived from run seed"),
    ColumnSpec("steps", INT, False, DEFAULT_STEPS, pa.int64(), "sampling steps, {}..{}".format(*STEPS_RANGE)),
    ColumnSpec(
        "guidance", FLOAT, False, DEFAULT_GUIDANCE, pa.float64(), "CFG scale, {:g}..{:g}".format(*GUIDANCE_RANGE)
    ),
    ColumnSpec("sampler", STRING, False, DEFAULT_SAMPLER, pa.string(), " or ".join(map(repr, SAMPLERS))),
    ColumnSpec("shift", FLOAT, False, DEFAULT_SHIFT, pa.float64(), "noise schedule shift, > 0"),
    ColumnSpec("pose_video", PATH, False, None, pa.string(), "optional pose driving video"),
    ColumnSpec("output", PATH, True, None, pa.string(), "output file, must end in .mp4"),
    ColumnSpec("priority", INT, False, 0, pa.int64(), "higher renders earlier"),
    ColumnSpec("sequence", STRING, False, None, pa.string(), "groups shots into one film"),
    ColumnSpec("order", INT, False, None, pa.int64(), "position in the film, >= 0"),
    ColumnSpec("segment_mode", STRING, False, DEFAULT_SEGMENT_MODE, pa.string(), "|".join(SEGMENT_MODES)),
    ColumnSpec("fast", BOOL, False, None, pa.bool_(),
               "fast mode's sampling (the audio-aware step cache); null -> the run's --fast"),
)
COLUMN_BY_NAME: dict[str, ColumnSpec] = {c.name: c for c in COLUMNS}
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.required)
PATH_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind == PATH)
INPUT_PATH_COLUMNS: tuple[str, ...] = ("audio", "image", "pose_video")
#: columns named with this prefix are the user's own (a take number, an edit id...): validation
#: ignores them and ``s2v run`` copies them unchanged (same name, same Arrow type) into
#: results.parquet. Any other unknown column is an error.
PASSTHROUGH_PREFIX = "x_"


def is_passthrough_column(name: str) -> bool:
    return name.startswith(PASSTHROUGH_PREFIX) and len(name) > len(PASSTHROUGH_PREFIX)


def columns_markdown() -> str:
    """The manifest's columns as a Markdown table (the README's is this text; a test keeps them equal)."""
    lines = ["| column | type | required | default | what |", "|---|---|---|---|---|"]
    for c in COLUMNS:
        default = "" if c.default is None else f"`{c.default}`"
        what = c.doc.replace("|", "\\|")
        lines.append(f"| `{c.name}` | {c.kind} | {'yes' if c.required else ''} | {default} | {what} |")
    return "\n".join(lines)

#: canonical Arrow schema written by ``write_manifest`` (readers accept wider variants).
MANIFEST_SCHEMA = pa.schema([pa.field(c.name, c.arrow_type, nullable=not c.required) for c in COLUMNS])


# --- value helpers ------------------------------------------------------------------------------


def is_valid_shot_id(text: str) -> bool:
    return bool(SHOT_ID_PATTERN.fullmatch(text)) and set(text) != {"."}


def derive_seed(run_seed: int, shot_id: str) -> int:
    """Seed for a shot whose manifest seed is null: a pure function of (run seed, shot id).

    SHA-256 rather than Python's ``hash`` because the latter is salted per process; the result is
    the same on every machine and every rerun, in [0, 2**32).
    """
    digest = hashlib.sha256(f"s2v-shot-seed\0{int(run_seed)}\0{shot_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


# --- the normalised row -------------------------------------------------------------------------


@dataclass(frozen=True)
class Shot:
    """A validated manifest row: defaults applied, paths absolute, seed resolved."""

    shot_id: str
    audio: Path
    image: Path
    prompt: str
    output: Path
    negative_prompt: str | None = None
    size: str = DEFAULT_SIZE
    seed: int = 0
    seed_source: str = "manifest"  # "manifest" or "derived" (see derive_seed)
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    sampler: str = DEFAULT_SAMPLER
    shift: float = DEFAULT_SHIFT
    pose_video: Path | None = None
    priority: int = 0
    sequence: str | None = None
    order: int | None = None
    segment_mode: str = DEFAULT_SEGMENT_MODE
    fast: bool | None = None  # None: the run's --fast decides
    row: int | None = field(default=None, compare=False)  # 0-based row in the source manifest

    @property
    def max_area(self) -> int:
        return parse_size(self.size)

    def to_row(self) -> dict[str, Any]:
        """The manifest row of this shot (paths as strings, the resolved seed written out)."""
        row: dict[str, Any] = {}
        for spec in COLUMNS:
            value = getattr(self, spec.name)
            row[spec.name] = str(value) if isinstance(value, Path) else value
        return row


# --- writing ------------------------------------------------------------------------------------


def _fits(kind: str, value: Any) -> bool:
    if value is None:
        return True
    if kind in (STRING, PATH):
        return isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):  # bool is an int subclass, but never a valid number here
        return False
    return isinstance(value, int) if kind == INT else isinstance(value, int | float)


def _column_array(name: str, values: list[Any], strict: bool) -> pa.Array:
    spec = COLUMN_BY_NAME.get(name)
    if spec is None:
        return pa.array(values)
    if spec.kind == PATH:
        values = [str(v) if isinstance(v, Path) else v for v in values]
    # Arrow would silently truncate 2.5 into an int64 column or turn True into 1.0; check first.
    misfit = next((i for i, v in enumerate(values) if not _fits(spec.kind, v)), None)
    if misfit is None:
        if spec.kind == FLOAT:
            values = [float(v) if v is not None else None for v in values]
        return pa.array(values, type=spec.arrow_type)
    if strict:
        raise ValueError(
            f"write_manifest: row {misfit}, column {name!r}: {values[misfit]!r} does not fit "
            f"{spec.arrow_type} ({spec.doc})"
        )
    return pa.array(values)  # non-strict: let Arrow infer (tests build malformed manifests)


def rows_to_table(rows: Iterable[Shot | Mapping[str, Any]], *, strict: bool = True) -> pa.Table:
    """Rows (``Shot`` or mappings) -> Arrow table; known columns first, in schema order."""
    dict_rows = [r.to_row() if isinstance(r, Shot) else dict(r) for r in rows]
    names: list[str] = [c.name for c in COLUMNS if any(c.name in r for r in dict_rows)]
    for r in dict_rows:
        names.extend(k for k in r if k not in names)
    if not dict_rows:
        return MANIFEST_SCHEMA.empty_table()
    arrays = [_column_array(n, [r.get(n) for r in dict_rows], strict) for n in names]
    return pa.Table.from_arrays(arrays, names=names)


def write_manifest(
    shots_or_rows: Sequence[Shot | Mapping[str, Any]] | pa.Table,
    path: str | Path,
    *,
    strict: bool = True,
) -> Path:
    """Write a manifest atomically. Known columns get their canonical types.

    ``strict=False`` lets values that do not fit a column's type through with Arrow's inferred
    type instead of raising; that is how tests produce malformed manifests.
    """
    table = (
        shots_or_rows if isinstance(shots_or_rows, pa.Table) else rows_to_table(shots_or_rows, strict=strict)
    )
    return atomic_write_table(table, Path(path))
