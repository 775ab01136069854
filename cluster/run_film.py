"""The shots of a run directory as a film's plan, for ``s2v assemble --run-dir``.

results.parquet says what became of each shot (status, output, duration, failure). It does not
carry the manifest's ``sequence``/``order``/``audio``: those come from the run's normalised
manifest (``manifest.parquet`` in the ledger, rows that passed validation). A row refused by
validation is not in that manifest; its cells are read from the source manifest named in
run.json, when that file is still there, so its slate lands at its place in the cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.ledger import RunDir
from manifests.results import ResultRow, read_results
from render.film_slate import FilmShot

_PLAN_COLUMNS = ("shot_id", "sequence", "order", "audio", "output")
_ERROR_CHARS = 200  # a failure's message in a warning or EDL comment: its first line, this long at most


def _read_columns(path: Path) -> list[dict[str, Any]]:
    """The plan columns of a Parquet manifest, one dict per row (absent columns read as None)."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"cannot read manifest {path}: {exc}") from exc
    names = [c for c in _PLAN_COLUMNS if c in table.column_names]
    return [{c: r.get(c) for c in _PLAN_COLUMNS} for r in table.select(names).to_pylist()]


def _clean_source_row(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """A refused row's cells, only where they have a usable type (the row failed validation)."""
    seq, order, audio = raw.get("sequence"), raw.get("order"), raw.get("audio")
    return {"sequence": seq if isinstance(seq, str) and seq else None,
            "order": order if isinstance(order, int) and not isinstance(order, bool) else None,
            "audio": (base / audio) if isinstance(audio, str) and audio else None}


def _source_rows(run: RunDir) -> list[dict[str, Any]] | None:
    source = (run.read_run() or {}).get("manifest_source")
    if not source or not Path(source).is_file():
        return None
    try:
        return _read_columns(Path(source))
    except ValueError:
        return None  # the source manifest changed into something unreadable: its cells stay unknown


def _problem(r: ResultRow, output: Path | None) -> str | None:
    if r.status == "done":
        if output is None:
            return "status done but the results name no output"
        return None if output.is_file() else f"rendered output {output} is missing (status done)"
    if r.status == "failed":
        text = (r.error or "").strip()
        first = text.splitlines()[0] if text else "no error recorded"
        if len(first) > _ERROR_CHARS:
            first = first[:_ERROR_CHARS - 3] + "..."
        return f"failed ({r.failure_stage or 'render'}): {first}"
    return f"{r.status}: not rendered"


@dataclass
class RunFilmShots:
    """``shots``: every shot of the run whose place in the cut is known (results rows, plus manifest
    shots the results do not list yet), in no particular order (``render.assembly.film_shots``
    picks a sequence and sorts it). ``unplaced``: rows refused by validation whose source manifest
    is gone or unreadable, so their sequence and order are unknown."""

    shots: list[FilmShot] = field(default_factory=list)
    unplaced: list[FilmShot] = field(default_factory=list)


def run_film_shots(run_dir: str | Path) -> RunFilmShots:
    """The shots of the run directory ``run_dir`` (see ``RunFilmShots``)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise FileNotFoundError(f"--run-dir {run.path}: no such directory")
    if not run.results_file.is_file():
        raise FileNotFoundError(f"--run-dir {run.path}: no {run.results_file.name} there; is it the RUN_DIR "
                                "of an `s2v run` that has started? (or pass the manifest instead)")
    results = read_results(run.results_file)  # a ResultsError (ValueError) names the bad column
    planned = {r["shot_id"]: r for r in _read_columns(run.manifest_file)} if run.manifest_file.is_file() else {}
    source: list[dict[str, Any]] | None = None
    source_read = False
    found = RunFilmShots()
    for r in results:
        plan = planned.get(r.shot_id)
        if plan is None and r.manifest_row is not None:
            if not source_read:
                source, source_read = _source_rows(run), True
            if source is not None and r.manifest_row < len(source):
                src = Path((run.read_run() or {})["manifest_source"]).parent
                plan = _clean_source_row(source[r.manifest_row], src)
        placed = plan is not None
        plan = plan or {}
        output = r.output or plan.get("output")
        output = Path(output) if output else None
        audio = plan.get("audio")
        shot = FilmShot(r.shot_id, plan.get("sequence"), plan.get("order"), r.manifest_row, output,
                        Path(audio) if audio else None, _problem(r, output), r.duration_s)
        (found.shots if placed else found.unplaced).append(shot)
    recorded = {r.shot_id for r in results}
    for sid, plan in planned.items():
        if sid not in recorded:
            found.shots.append(FilmShot(sid, plan.get("sequence"), plan.get("order"), None,
                                  Path(plan["output"]) if plan.get("output") else None,
                                  Path(plan["audio"]) if plan.get("audio") else None,
                                  "not in results.parquet yet (the run has not recorded it)"))
    return found
