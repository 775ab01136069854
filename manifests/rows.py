"""Per-cell checks of a manifest row: nulls, ranges, choices, paths and media.

Each cell yields at most one problem (the first rule it breaks) so a report never buries the
real issue under consequences of it. A cell that passes yields its normalised value.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from manifests import media_checks
from manifests.columns import INVALID
from manifests.paths import AllowedRoots, ResolvedPath, resolve_manifest_path
from manifests.problems import ERROR, Problem, short_repr
from manifests.schema import (
    COLUMN_BY_NAME,
    INT64_RANGE,
    MAX_PROMPT_CHARS,
    OUTPUT_SUFFIX,
    PATH,
    is_valid_shot_id,
)
from render.settings import GUIDANCE_RANGE, SAMPLERS, SEED_LIMIT, SEGMENT_MODES, STEPS_RANGE, normalize_size


class CellError(Exception):
    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule
        self.message = message


def _int_in(value: int, lo: int, hi: int, what: str) -> int:
    if not lo <= value <= hi:
        raise CellError("range", f"{what} must be in [{lo}, {hi}]")
    return value


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise CellError("range", f"{what} must be a finite number")
    return value


def _text(value: str, name: str, *, allow_empty: bool) -> str | None:
    if not value.strip():
        if allow_empty:
            return None  # empty negative prompt = model default, as in the official CLI
        raise CellError("empty", f"{name} must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise CellError("too-long", f"{name} has {len(value)} characters; at most {MAX_PROMPT_CHARS} allowed")
    return value


def _choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise CellError("choice", f"{name} must be one of {', '.join(choices)}")
    return value


def _identifier(value: str, name: str) -> str:
    if not is_valid_shot_id(value):
        raise CellError("bad-id", f"{name} must be 1-128 characters of A-Z a-z 0-9 . _ - (not only dots)")
    return value


def _size(value: str) -> str:
    # The renderer's own parser: the manifest accepts exactly the sizes render-shot accepts.
    try:
        return normalize_size(value)
    except ValueError as exc:
        raise CellError("bad-size", str(exc)) from exc


def _guidance(value: float) -> float:
    lo, hi = GUIDANCE_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise CellError("range", f"guidance must be a finite number in [{lo:g}, {hi:g}]")
    return value


def _shift(value: float) -> float:
    if not (_finite(value, "shift") > 0):
        raise CellError("range", "shift must be a finite number > 0")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise CellError("type", f"{name} must be true or false")
    return value


# Value checks by column for non-path columns; each returns the normalised value or raises.
_VALUE_CHECKS = {
    "shot_id": lambda v: _identifier(v, "shot_id"),
    "prompt": lambda v: _text(v, "prompt", allow_empty=False),
    "negative_prompt": lambda v: _text(v, "negative_prompt", allow_empty=True),
    "size": _size,
    "seed": lambda v: _int_in(v, 0, SEED_LIMIT - 1, "seed"),
    "steps": lambda v: _int_in(v, *STEPS_RANGE, "steps"),
    "guidance": _guidance,
    "sampler": lambda v: _choice(v, SAMPLERS, "sampler"),
    "shift": _shift,
    "priority": lambda v: _int_in(v, *INT64_RANGE, "priority"),
    "sequence": lambda v: _identifier(v, "sequence"),
    "order": lambda v: _int_in(v, 0, INT64_RANGE[1], "order"),
    "segment_mode": lambda v: _choice(v, SEGMENT_MODES, "segment_mode"),
    "fast": lambda v: _flag(v, "fast"),
}

_MEDIA_RULES = {"audio": "undecodable-audio", "pose_video": "undecodable-video"}


class RowChecker:
    """Checks cells and collects problems; media probes are cached per resolved file."""

    def __init__(self, base_dir: Path, roots: AllowedRoots, check_media: bool):
        self.base_dir = base_dir
        self.roots = roots
        self.check_media = check_media
        self.problems: list[Problem] = []
        self._media_cache: dict[tuple[str, Path], tuple[str, str] | None] = {}

    def add(
        self,
        row: int | None,
        shot_id: str | None,
        column: str | None,
        value: Any,
        rule: str,
        message: str,
        severity: str = ERROR,
    ) -> None:
        self.problems.append(Problem(row, shot_id, column, short_repr(value), rule, message, severity))

    def check_cell(self, row: int, shot_id: str | None, column: str, value: Any) -> tuple[bool, Any]:
        """(True, normalised value) or (False, None) after recording the problem."""
        if value is INVALID:  # type problem already recorded
            return False, None
        spec = COLUMN_BY_NAME[column]
        if value is None:
            if spec.required:
                self.add(row, shot_id, column, None, "null", f"{column} is required; a value is expected")
                return False, None
            return True, spec.default
        try:
            if spec.kind == PATH:
                return True, self._path(column, value)
            return True, _VALUE_CHECKS[column](value)
        except CellError as err:
            self.add(row, shot_id, column, value, err.rule, err.message)
            return False, None

    # --- paths -----------------------------------------------------------------------------

    def _path(self, column: str, value: str) -> ResolvedPath:
        if not value.strip():
            raise CellError("empty", f"{column} must be a non-empty file path")
        resolved, issue = resolve_manifest_path(value, self.base_dir, self.roots)
        if issue is not None:
            raise CellError(issue.rule, f"{column}: {issue.message}")
        assert resolved is not None
        if column == "output":
            if not resolved.path.name.lower().endswith(OUTPUT_SUFFIX) or resolved.path.name == OUTPUT_SUFFIX:
                raise CellError("bad-extension", f"output must be a file name ending in {OUTPUT_SUFFIX}")
            if os.path.isdir(resolved.real):
                raise CellError("output-is-dir", f"output {resolved.real} is an existing directory")
            return resolved
        if not os.path.exists(resolved.real):
            raise CellError("missing-file", f"{column} file {resolved.path} does not exist")
        if not os.path.isfile(resolved.real):
            raise CellError("not-a-file", f"{column} path {resolved.path} is not a regular file")
        if self.check_media:
            failure = self._probe(column, resolved.real)
            if failure is not None:
                raise CellError(*failure)
        return resolved

    def _probe(self, column: str, real: Path) -> tuple[str, str] | None:
        key = (column, real)
        if key not in self._media_cache:
            if column == "image":
                result = media_checks.check_image(real)
            else:
                probe = media_checks.check_audio if column == "audio" else media_checks.check_video
                message = probe(real)
                result = None if message is None else (_MEDIA_RULES[column], message)
            self._media_cache[key] = result
        return self._media_cache[key]
