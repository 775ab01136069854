"""``s2v assemble``: the shots of a sequence as one film, plus EDL, CSV and OpenTimelineIO sidecars.

Two sources: a manifest (its ``output`` files) or a run directory (``--run-dir``: its
results.parquet, with the sequence/order of the run's manifest, see ``cluster.run_film``).
A shot without a rendered output (failed, pending, file gone) becomes a slate by default, is left
out with ``--skip-failed``, or stops the command with ``--strict``; each case is one warning line.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK = 0

DESCRIPTION = """\
Join the rendered shots of one sequence into a film (MP4), ordered by the manifest's order column,
each shot's sound at its place. Beside the film: FILM.edl (CMX 3600), FILM.csv and FILM.otio
(OpenTimelineIO), with timecodes at the film's frame rate (the shots' rate).
Give either a manifest or --run-dir RUN_DIR (an `s2v run` run directory: its results.parquet).
A shot that is not rendered (failed, pending, output missing) becomes a slate (black card naming
it, silence, its planned length) unless --skip-failed (left out) or --strict (error, exit 2)."""


def register_assemble(subparsers) -> None:
    from render.film_slate import DEFAULT_SLATE_SECONDS
    from render.settings import DEFAULT_SETTINGS

    p = subparsers.add_parser("assemble", help="join the rendered shots of a manifest or a run into one film",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", default=None,
                   help="shot manifest (Parquet); shots ordered by its sequence/order columns")
    p.add_argument("--run-dir", default=None, metavar="RUN_DIR",
                   help="assemble from an `s2v run` run directory (its results.parquet) instead of a manifest")
    p.add_argument("--out", required=True,
                   help="film MP4; .edl, .csv and .otio files of its shots and timecodes go beside it")
    p.add_argument("--sequence", default=None, help="which sequence (needed when there are several)")
    missing = p.add_mutually_exclusive_group()
    missing.add_argument("--skip-failed", action="store_true",
                         help="leave shots that are not rendered out of the film (default: a slate per shot, "
                              f"its planned length, else {DEFAULT_SLATE_SECONDS:g} s)")
    missing.add_argument("--strict", action="store_true",
                         help="stop with an error naming the shots that are not rendered")
    p.add_argument("--size", default=None, help="film frame W*H (default: the largest shot; others letterboxed)")
    p.add_argument("--crf", type=int, default=DEFAULT_SETTINGS.crf,
                   help=f"H.264 quality, 0 (lossless) .. 51 (default {DEFAULT_SETTINGS.crf})")
    p.add_argument("--codec", default="h264", choices=["h264", "h265"])
    p.add_argument("--audio-source", default="original", choices=["original", "output"],
                   help="each shot's sound from its original audio file (default) or its rendered MP4")
    p.add_argument("--allowed-root", action="append", default=[], help="manifest paths must stay inside")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON: output, sidecars, and every entry with its timecodes")
    p.set_defaults(fn=cmd_assemble)


def _planned_shots(a: argparse.Namespace, warn) -> tuple[list, list]:
    """(the shots to cut, shots left out because their place is unknown)."""
    from render.film_slate import with_output_checked

    if (a.manifest is None) == (a.run_dir is None):
        raise ValueError("give either a manifest or --run-dir RUN_DIR (not both)" if a.manifest
                         else "give a manifest or --run-dir RUN_DIR")
    if a.run_dir is not None:
        if a.allowed_root:
            raise ValueError("--allowed-root applies to a manifest, not to --run-dir")
        from cluster.run_film import run_film_shots

        found = run_film_shots(a.run_dir)
        for s in found.unplaced:
            warn(f"shot {s.shot_id}: {s.problem}; not in the run's manifest and its source manifest (run.json) "
                 "is gone or unreadable, so its sequence/order are unknown: left out of the film")
        return found.shots, found.unplaced
    from manifests.validate import read_manifest

    shots = read_manifest(a.manifest, a.allowed_root or None, check_media=False)
    return [with_output_checked(s) for s in shots], []


def _report(r, skipped, warnings) -> dict:
    from render.film_sidecars import timecode

    return {"output": str(r.output), "width": r.width, "height": r.height, "fps": r.fps,
            "shots": sum(1 for e in r.entries if not e.slate), "frames": r.frames, "duration_s": r.duration_s,
            "edl": str(r.edl), "csv": str(r.csv), "otio": str(r.otio), "wall_s": r.wall_s,
            "entries": [{"index": e.index, "shot_id": e.shot_id, "kind": "slate" if e.slate else "shot",
                         "record_in": timecode(e.start_frame, r.fps),
                         "record_out": timecode(e.start_frame + e.frames, r.fps),
                         "start_frame": e.start_frame, "frames": e.frames,
                         "video": None if e.video is None else str(e.video), "reason": e.reason}
                        for e in r.entries],
            "slates": [e.shot_id for e in r.entries if e.slate],
            "skipped": [{"shot_id": s.shot_id, "reason": s.problem} for s in skipped],
            "warnings": warnings}


def cmd_assemble(a: argparse.Namespace) -> int:
    from render.assembly import assemble_film, film_shots
    from render.film_slate import resolve_missing

    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        print(f"s2v assemble: warning: {text}", file=sys.stderr)

    from s2v.arguments import check_mp4_output

    check_mp4_output("--out", a.out)
    shots, unplaced = _planned_shots(a, warn)
    if unplaced and a.strict:
        raise ValueError(f"{len(unplaced)} shot(s) not rendered and of unknown place (--strict): "
                         + ", ".join(s.shot_id for s in unplaced))
    chosen = film_shots(shots, a.sequence)
    policy = "strict" if a.strict else "skip" if a.skip_failed else "slate"
    items, skipped = resolve_missing(chosen, policy, warn)
    skipped = [*unplaced, *skipped]
    r = assemble_film(items, a.out, size=a.size, crf=a.crf,
                      codec={"h264": "libx264", "h265": "libx265"}[a.codec], audio_source=a.audio_source)
    if a.json:
        print(json.dumps(_report(r, skipped, warnings), indent=1))
        return EXIT_OK
    slates = sum(1 for e in r.entries if e.slate)
    extra = "".join([f", {slates} slates" if slates else "", f", {len(skipped)} left out" if skipped else ""])
    print(f"wrote {r.output} ({r.width}x{r.height}, {len(r.entries) - slates} shots{extra}, {r.frames} frames at "
          f"{r.fps} fps, {r.duration_s:.2f} s) + {r.edl.name}, {r.csv.name}, {r.otio.name} in {r.wall_s:.1f} s")
    return EXIT_OK
