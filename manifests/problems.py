"""Problems found in a manifest, the report that lists them all, and the error that carries them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manifests.schema import COLUMNS

MAX_VALUE_CHARS = 60

#: rules that mean the manifest file itself could not be read (CLI exit code 3).
FILE_RULES = frozenset({"not-found", "not-a-file", "not-parquet", "unreadable"})

ERROR, WARNING = "error", "warning"


def short_repr(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr`` of a value, truncated so one huge cell cannot flood a report."""
    if value is None:
        return ""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest.

    ``row`` is the 0-based Parquet row (None for file- or column-level problems); ``value`` is the
    offending value's truncated repr (or a type name for column-level type problems); ``rule`` is
    a short stable id; ``message`` says what was expected.
    """

    row: int | None
    shot_id: str | None
    column: str | None
    value: str
    rule: str
    message: str
    severity: str = ERROR

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def key(self) -> tuple[int | None, str | None, str]:
        return (self.row, self.column, self.rule)


_TABLE_HEADER = ("row", "shot_id", "column", "value", "rule", "message")


def _cell(text: str | None, limit: int | None = MAX_VALUE_CHARS) -> str:
    """One table cell: control characters escaped (a newline in a shot id must not break the
    table), long labels clipped."""
    if not text:
        return "-"
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _table(problems: Sequence[Problem]) -> str:
    cells = [_TABLE_HEADER] + [
        (
            "-" if p.row is None else str(p.row),
            _cell(p.shot_id, 40),
            _cell(p.column, 40),
            _cell(p.value),
            p.rule,
            _cell(p.message, None),
        )
        for p in problems
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(_TABLE_HEADER) - 1)]
    lines = []
    for r in cells:
        # message is the last column and is never padded, so long messages do not widen the table
        lines.append("  ".join([c.ljust(w) for c, w in zip(r[:-1], widths)] + [r[-1]]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(_TABLE_HEADER[-1]))
    return "\n".join(lines)


_COLUMN_POSITION = {c.name: i for i, c in enumerate(COLUMNS)}


def _sort_key(p: Problem) -> tuple[int, int, int]:
    # file/column-level problems first, then by row and the column's place in the schema
    position = _COLUMN_POSITION.get(p.column or "", len(_COLUMN_POSITION))
    return (-1 if p.row is None else p.row, position, 0 if p.is_error else 1)


@dataclass
class ValidationReport:
    """Every problem found in one manifest (errors and warnings)."""

    manifest: Path
    problems: list[Problem] = field(default_factory=list)
    num_rows: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.is_error]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings do not block a run)."""
        return not self.errors

    @property
    def file_unreadable(self) -> bool:
        return any(p.rule in FILE_RULES for p in self.problems)

    def sorted_problems(self) -> list[Problem]:
        # stable sort: within a row, problems keep the order the checks found them in
        return sorted(self.problems, key=_sort_key)

    def format_table(self) -> str:
        """Aligned text table of errors, then warnings; a one-line summary when there are none."""
        problems = self.sorted_problems()
        errors = [p for p in problems if p.is_error]
        warnings = [p for p in problems if not p.is_error]
        parts = []
        if errors:
            parts.append(f"{self.manifest}: {len(errors)} error(s)\n{_table(errors)}")
        if warnings:
            parts.append(f"{self.manifest}: {len(warnings)} warning(s)\n{_table(warnings)}")
        if not errors:
            parts.insert(0, f"{self.manifest}: OK ({self.num_rows} shot(s))")
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest),
            "ok": self.ok,
            "rows": self.num_rows,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [asdict(p) for p in self.sorted_problems()],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


class ManifestError(ValueError):
    """A manifest failed validation; ``problems`` holds every problem, ``report`` the full report."""

    def __init__(self, report: ValidationReport):
        self.report = report
        self.problems: list[Problem] = report.sorted_problems()
        super().__init__(f"invalid manifest {report.manifest}\n{report.format_table()}")
