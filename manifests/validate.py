"""Manifest validation: every problem, with row, shot id, column, value, rule and message.

``validate_manifest`` never stops at the first problem. ``read_manifest`` runs the same checks
and returns normalised ``Shot``s, or raises ``ManifestError`` carrying all problems.
``main_validate`` is the ``s2v validate`` command. Nothing here runs a shell or a subprocess.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from manifests.columns import check_columns, load_table
from manifests.paths import AllowedRoots, ResolvedPath
from manifests.problems import (
    DEFAULT_MAX_PROBLEMS,
    WARNING,
    ManifestError,
    Problem,
    ValidationReport,
    short_repr,
)
from manifests.rows import RowChecker
from manifests.schema import COLUMNS, INPUT_PATH_COLUMNS, PATH_COLUMNS, Shot, derive_seed

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE, EXIT_USAGE = 0, 2, 3, 2

VALIDATE_DESCRIPTION = (
    "Check a shot manifest and list every problem (the listing is capped, see --max-problems; a summary "
    "line ends it). Exit status: 0 valid (warnings allowed), 2 invalid manifest or usage error, 3 unreadable."
)


def _validate(
    path: str | Path,
    allowed_roots: Sequence[str | Path] | None,
    check_media: bool,
    base_dir: str | Path | None,
) -> tuple[ValidationReport, list[dict[str, Any]], pa.Table | None]:
    """The report, the normalised rows (complete only when the report is ok) and the pass-through
    (``x_``) columns of the manifest as a table (None when the file could not be read)."""
    manifest = Path(path)
    report = ValidationReport(manifest=manifest)
    table, problems = load_table(manifest)
    report.problems.extend(problems)
    if table is None:
        return report, [], None
    report.num_rows = table.num_rows
    manifest_dir = manifest.resolve().parent
    base = Path(base_dir) if base_dir is not None else manifest_dir
    roots = AllowedRoots.from_paths(list(allowed_roots) if allowed_roots else [manifest_dir])

    data, problems = check_columns(table)
    report.problems.extend(problems)
    passthrough = table.select(data.passthrough) if data.passthrough else None
    if table.num_rows == 0:
        report.problems.append(
            _file_problem(
                manifest, "no-rows", f"manifest {manifest} has no rows; at least one shot is expected"
            )
        )
        return report, [], passthrough

    checker = RowChecker(base, roots, check_media)
    rows: list[dict[str, Any]] = []
    for row in range(table.num_rows):
        shot_id = data.shot_ids[row]
        # "_bad": columns whose cell failed; "_raw": cells as written, for cross-row messages
        normal: dict[str, Any] = {"row": row, "_bad": set(), "_raw": {}, "_label": shot_id}
        for spec in COLUMNS:
            if spec.name in data.values:
                raw = normal["_raw"][spec.name] = data.values[spec.name][row]
                ok, value = checker.check_cell(row, shot_id, spec.name, raw)
                normal[spec.name] = value if ok else None
                if not ok:
                    normal["_bad"].add(spec.name)
            elif spec.name not in data.present:
                normal[spec.name] = spec.default  # absent optional column (absent required: reported)
        rows.append(normal)
    _cross_row_checks(rows, checker)
    report.problems.extend(checker.problems)
    return report, rows, passthrough


def _file_problem(manifest: Path, rule: str, message: str) -> Problem:
    return Problem(None, None, None, short_repr(str(manifest)), rule, message)


def _good(row: dict[str, Any], column: str) -> bool:
    return row.get(column) is not None and column not in row["_bad"]


def _cross_row_checks(rows: list[dict[str, Any]], checker: RowChecker) -> None:
    ids: dict[str, int] = {}
    folded_ids: dict[str, int] = {}
    outputs: dict[Path, int] = {}
    folded_outputs: dict[str, int] = {}
    inputs: dict[Path, tuple[int, str]] = {}
    orders: dict[tuple[str, int], int] = {}
    for r in rows:
        for column in INPUT_PATH_COLUMNS:
            if _good(r, column):
                inputs.setdefault(r[column].real, (r["row"], column))

    for r in rows:
        row, sid = r["row"], r["_label"]
        if _good(r, "shot_id"):
            if sid in ids:
                checker.add(
                    row,
                    sid,
                    "shot_id",
                    sid,
                    "duplicate-id",
                    f"shot_id {sid!r} is already used by row {ids[sid]}",
                )
            else:
                ids[sid] = row
                first = folded_ids.setdefault(sid.casefold(), row)
                if first != row:
                    checker.add(
                        row,
                        sid,
                        "shot_id",
                        sid,
                        "duplicate-id-case",
                        f"shot_id {sid!r} differs only in case from row {first}'s; they collide on "
                        "case-insensitive file systems",
                        WARNING,
                    )
        if _good(r, "output"):
            out: ResolvedPath = r["output"]
            if out.real in outputs:
                checker.add(
                    row,
                    sid,
                    "output",
                    r["_raw"]["output"],
                    "duplicate-output",
                    f"output resolves to {out.real}, the same file as row {outputs[out.real]}'s output",
                )
            else:
                outputs[out.real] = row
                first = folded_outputs.setdefault(str(out.real).casefold(), row)
                if first != row:
                    checker.add(
                        row,
                        sid,
                        "output",
                        r["_raw"]["output"],
                        "output-case-collision",
                        f"output {out.real} differs only in case from row {first}'s output; they collide "
                        "on case-insensitive file systems",
                        WARNING,
                    )
            if out.real in inputs:
                in_row, in_col = inputs[out.real]
                checker.add(
                    row,
                    sid,
                    "output",
                    r["_raw"]["output"],
                    "output-is-input",
                    f"output {out.real} is the {in_col} input of row {in_row}; rendering would overwrite it",
                )
        if _good(r, "order"):
            if not _good(r, "sequence"):
                if "sequence" not in r["_bad"]:
                    checker.add(
                        row,
                        sid,
                        "order",
                        r["order"],
                        "order-without-sequence",
                        "order is ignored because sequence is empty",
                        WARNING,
                    )
            else:
                key = (r["sequence"], r["order"])
                if key in orders:
                    checker.add(
                        row,
                        sid,
                        "order",
                        r["order"],
                        "duplicate-order",
                        f"sequence {key[0]!r} already has order {key[1]} at row {orders[key]}",
                    )
                else:
                    orders[key] = row


def validate_manifest(
    path: str | Path,
    allowed_roots: Sequence[str | Path] | None = None,
    check_media: bool = True,
    *,
    base_dir: str | Path | None = None,
) -> ValidationReport:
    """Check a manifest and list every problem.

    ``allowed_roots`` defaults to the manifest's directory; relative paths are resolved against
    ``base_dir`` (default: the manifest's directory). ``check_media=False`` skips decoding the
    media (existence and path rules are still checked).
    """
    return _validate(path, allowed_roots, check_media, base_dir)[0]


def read_manifest(
    path: str | Path,
    allowed_roots: Sequence[str | Path] | None = None,
    base_dir: str | Path | None = None,
    *,
    run_seed: int = 0,
    check_media: bool = True,
) -> list[Shot]:
    """Validated, normalised shots in manifest order; raises ManifestError listing all problems.

    A null seed becomes ``derive_seed(run_seed, shot_id)`` and ``seed_source == "derived"``.
    """
    report, rows, _ = _validate(path, allowed_roots, check_media, base_dir)
    if not report.ok:
        raise ManifestError(report)
    for warning in report.warnings:
        log.warning("%s row %s (%s): %s", report.manifest, warning.row, warning.column, warning.message)
    return [_to_shot(r, run_seed) for r in rows]


def _to_shot(r: dict[str, Any], run_seed: int) -> Shot:
    fields = {spec.name: r[spec.name] for spec in COLUMNS}
    for column in PATH_COLUMNS:
        if fields[column] is not None:
            fields[column] = fields[column].real
    derived = fields["seed"] is None
    if derived:
        fields["seed"] = derive_seed(run_seed, fields["shot_id"])
    return Shot(**fields, seed_source="derived" if derived else "manifest", row=r["row"])


#: row-level rules that still refuse the whole manifest in partial mode: two rows claiming one
#: shot id leave no way to tell which row a shot's record (run directory, results) belongs to.
MANIFEST_LEVEL_ROW_RULES = frozenset({"duplicate-id"})


@dataclass
class InvalidRow:
    """A manifest row that failed validation: it is not rendered, it is reported as a failed shot."""

    row: int  # 0-based row in the manifest
    shot_id: str | None  # the cell as written when it is a string, else None
    problems: list[Problem]

    @property
    def label(self) -> str:
        """The shot id to report it under (``row-N`` when the shot id cell is unusable)."""
        return self.shot_id if self.shot_id else f"row-{self.row}"


@dataclass
class PartialManifest:
    """``read_manifest_partial``: the valid rows' shots, the invalid rows, the user's columns."""

    report: ValidationReport
    shots: list[Shot] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)
    passthrough: pa.Table | None = None  # the x_ columns, one row per manifest row


def manifest_level_errors(report: ValidationReport) -> list[Problem]:
    """Errors that concern the whole file (unreadable, missing/unknown/mistyped column, no rows,
    duplicate shot ids): with any of them no row can be trusted."""
    return [p for p in report.errors if p.row is None or p.rule in MANIFEST_LEVEL_ROW_RULES]


def read_manifest_partial(
    path: str | Path,
    allowed_roots: Sequence[str | Path] | None = None,
    base_dir: str | Path | None = None,
    *,
    run_seed: int = 0,
    check_media: bool = True,
) -> PartialManifest:
    """Like ``read_manifest``, but a row-level problem (missing media, bad value...) only sets its
    row aside as an ``InvalidRow``; the other rows become shots. Manifest-level problems
    (``manifest_level_errors``) still raise ManifestError."""
    report, rows, passthrough = _validate(path, allowed_roots, check_media, base_dir)
    if manifest_level_errors(report):
        raise ManifestError(report)
    for warning in report.warnings:
        log.warning("%s row %s (%s): %s", report.manifest, warning.row, warning.column, warning.message)
    by_row: dict[int, list[Problem]] = {}
    for p in report.sorted_problems():
        if p.is_error and p.row is not None:
            by_row.setdefault(p.row, []).append(p)
    out = PartialManifest(report=report, passthrough=passthrough)
    for r in rows:
        problems = by_row.get(r["row"])
        if problems:
            label = r["_raw"].get("shot_id")
            out.invalid.append(InvalidRow(r["row"], label if isinstance(label, str) and label else None, problems))
        else:
            out.shots.append(_to_shot(r, run_seed))
    return out


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """``s2v validate``'s arguments (options may come before or after the manifest)."""
    parser.add_argument("manifest", help="manifest Parquet file")
    parser.add_argument(
        "--allowed-root",
        action="append",
        default=[],
        metavar="DIR",
        help="directory that manifest paths may point into (repeatable; default: the manifest's directory)",
    )
    parser.add_argument(
        "--no-media-check", action="store_true", help="do not decode audio, images and videos"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON (every problem and the summary)"
    )
    parser.add_argument(
        "--max-problems",
        type=int,
        default=DEFAULT_MAX_PROBLEMS,
        metavar="N",
        help=f"list at most N problems (default {DEFAULT_MAX_PROBLEMS}); the summary counts all of them",
    )
    parser.add_argument("--all", action="store_true", help="list every problem")


def run_validate(args: argparse.Namespace) -> int:
    """Run ``s2v validate`` on parsed arguments; the exit status."""
    report = validate_manifest(args.manifest, args.allowed_root or None, check_media=not args.no_media_check)
    if args.json:
        print(report.to_json())
    else:
        print(report.format_table(max_problems=None if args.all else args.max_problems))
    if report.file_unreadable:
        return EXIT_UNREADABLE
    return EXIT_OK if report.ok else EXIT_INVALID


def main_validate(argv: list[str]) -> int:
    """``s2v validate [--allowed-root DIR]... [--no-media-check] [--json] [--max-problems N | --all] MANIFEST``.

    Exit status: 0 valid (warnings allowed), 2 invalid or bad usage (usage errors print
    ``usage:`` on stderr), 3 manifest file unreadable.
    """
    parser = argparse.ArgumentParser(prog="s2v validate", description=VALIDATE_DESCRIPTION)
    add_validate_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help exits 0; usage errors exit EXIT_USAGE (2, like every s2v command)
        return int(exc.code or 0)
    return run_validate(args)
