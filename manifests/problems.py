"""Problems found in a manifest, the report that lists them all, and the error that carries them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manifests.schema import COLUMNS

MAX_VALUE_CHARS = 60

#: problems listed by ``s2v validate`` (and in a ManifestError's message) unless told otherwise;
#: the JSON report and ``ManifestError.problems`` always hold all of them.
DEFAULT_MAX_PROBLEMS = 50

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

    def rule_counts(self) -> dict[str, int]:
        """Problems per rule, most frequent first."""
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.rule] = counts.get(p.rule, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def rows_with_problems(self) -> int:
        return len({p.row for p in self.problems if p.row is not None})

    def summary(self) -> str:
        """One line: errors, warnings, rows with problems of all rows, counts per rule."""
        errors, warnings = len(self.errors), len(self.warnings)
        line = (f"summary: {errors} error(s), {warnings} warning(s); {self.rows_with_problems} of "
                f"{self.num_rows} row(s) with problems")
        if self.problems:
            line += "; by rule: " + ", ".join(f"{rule} {n}" for rule, n in self.rule_counts().items())
        return line

    def format_table(self, max_problems: int | None = None) -> str:
        """Aligned text table of errors, then warnings (a line saying OK when there is no error),
        then a summary line. ``max_problems`` caps the listing (None: all); the summary and a
        "not shown" line still count everything."""
        problems = self.sorted_problems()
        errors = [p for p in problems if p.is_error]
        warnings = [p for p in problems if not p.is_error]
        shown = len(problems) if max_problems is None else max(0, max_problems)
        shown_errors = errors[:shown]
        shown_warnings = warnings[: max(0, shown - len(shown_errors))]
        parts = []
        if errors:
            head = f"{self.manifest}: {len(errors)} error(s)"
            if len(shown_errors) < len(errors):
                head += f", the first {len(shown_errors)} listed"
            parts.append(head + (f"\n{_table(shown_errors)}" if shown_errors else ""))
        if warnings:
            head = f"{self.manifest}: {len(warnings)} warning(s)"
            if len(shown_warnings) < len(warnings):
                head += f", the first {len(shown_warnings)} listed"
            parts.append(head + (f"\n{_table(shown_warnings)}" if shown_warnings else ""))
        if not errors:
            parts.insert(0, f"{self.manifest}: OK ({self.num_rows} shot(s))")
        hidden = len(problems) - len(shown_errors) - len(shown_warnings)
        tail = self.summary()
        if hidden:
            tail = (f"... {hidden} more problem(s) not listed (s2v validate --max-problems N, --all, "
                    f"or --json for every one)\n{tail}")
        parts.append(tail)
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest),
            "ok": self.ok,
            "rows": self.num_rows,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "rows_with_problems": self.rows_with_problems,
            "by_rule": self.rule_counts(),
            "summary": self.summary(),
            "problems": [asdict(p) for p in self.sorted_problems()],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


class ManifestError(ValueError):
    """A manifest failed validation; ``problems`` holds every problem, ``report`` the full report."""

    def __init__(self, report: ValidationReport):
        self.report = report
        self.problems: list[Problem] = report.sorted_problems()
        super().__init__(
            f"invalid manifest {report.manifest}\n{report.format_table(max_problems=DEFAULT_MAX_PROBLEMS)}"
        )
