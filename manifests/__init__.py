"""Shot manifests (Parquet): schema, validation with row/column-precise problems, results files."""

from __future__ import annotations

from manifests.problems import ManifestError, Problem, ValidationReport
from manifests.results import ResultRow, read_results, write_results
from manifests.schema import Shot, derive_seed, parse_size, write_manifest
from manifests.validate import main_validate, read_manifest, read_manifest_partial, validate_manifest

__all__ = [
    "ManifestError",
    "Problem",
    "ResultRow",
    "Shot",
    "ValidationReport",
    "derive_seed",
    "main_validate",
    "parse_size",
    "read_manifest",
    "read_manifest_partial",
    "read_results",
    "validate_manifest",
    "write_manifest",
    "write_results",
]
