"""Manifest validation: every problem, with row, shot id, column, value, rule and message.

``validate_manifest`` never stops at the first problem. ``read_manifest`` runs the same checks
and returns normalised ``Shot``s, or raises ``ManifestError`` carrying all problems.
``main_validate`` is the ``s2v validate`` command. Nothing here runs a shell or a subprocess.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from manifests.columns import check_columns, load_table
from manifests.paths import AllowedRoots, ResolvedPath
from manifests.problems import WARNING, ManifestError, Problem, ValidationReport, short_repr
from manifests.rows import RowChecker
from manifests.schema import COLUMNS, INPUT_PATH_COLUMNS, PATH_COLUMNS, Shot, derive_seed

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE, EXIT_USAGE = 0, 2, 3, 64


def _validate(
    path: str | Path,
    allowed_roots: Sequence[str | Path] | None,
    check_media: bool,
    base_dir: str | Path | None,
) -> tuple[ValidationReport, list[dict[str, Any]]]:
    """The report plus the normalised rows (complete only when the report is ok)."""
    manifest = Path(path)
    report = ValidationReport(manifest=manifest)
    table, problems = load_table(manifest)
    report.problems.extend(problems)
    if table is None:
        return report, []
    report.num_rows = table.num_rows
    manifest_dir = manifest.resolve().parent
    base = Path(base_dir) if base_dir is not None else manifest_dir
    roots = AllowedRoots.from_paths(list(allowed_roots) if allowed_roots else [manifest_dir])

    data, problems = check_columns(table)
    report.problems.extend(problems)
    if table.num_rows == 0:
        report.problems.append(
            _file_problem(
                manifest, "no-rows", f"manifest {manifest} has no rows; at least one shot is expected"
            )
        )
        return report, []

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
    return report, rows


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
    report, rows = _validate(path, allowed_roots, check_media, base_dir)
    if not report.ok:
        raise ManifestError(report)
    for warning in report.warnings:
        log.warning("%s row %s (%s): %s", report.manifest, warning.row, warning.column, warning.message)
    shots = []
    for r in rows:
        fields = {spec.name: r[spec.name] for spec in COLUMNS}
        for column in PATH_COLUMNS:
            if fields[column] is not None:
                fields[column] = fields[column].real
        derived = fields["seed"] is None
        if derived:
            fields["seed"] = derive_seed(run_seed, fields["shot_id"])
        shots.append(Shot(**fields, seed_source="derived" if derived else "manifest", row=r["row"]))
    return shots


class _ArgumentParser(argparse.ArgumentParser):
    """argparse exits with status 2 on bad usage, which would read as "manifest invalid"."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def main_validate(argv: list[str]) -> int:
    """``s2v validate MANIFEST [--allowed-root DIR]... [--no-media-check] [--json]``.

    Exit status: 0 valid (warnings allowed), 2 invalid, 3 manifest file unreadable, 64 bad usage.
    """
    parser = _ArgumentParser(prog="s2v validate", description="Check a shot manifest and list every problem.")
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
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help exits 0; usage errors exit EXIT_USAGE
        return int(exc.code or 0)
    report = validate_manifest(args.manifest, args.allowed_root or None, check_media=not args.no_media_check)
    print(report.to_json() if args.json else report.format_table())
    if report.file_unreadable:
        return EXIT_UNREADABLE
    return EXIT_OK if report.ok else EXIT_INVALID
