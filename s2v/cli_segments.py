"""``s2v`` pieces for long shots: segment options of render-shot, ``s2v assemble``, ``s2v qa``.

``register(subparsers)`` adds the subcommands (assemble's from s2v.cli_assemble) and, if
``render-shot`` is already registered, its segment options; ``segment_options(args)`` turns those
into ``SegmentOptions`` for render_shot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK = 0


def add_segment_options(p: argparse.ArgumentParser) -> None:
    from render.settings import (
        DEFAULT_MIN_PARALLEL_SECONDS,
        DEFAULT_OVERLAP_SECONDS,
        DEFAULT_SEGMENT_MODE,
        DEFAULT_TARGET_SECONDS,
        SEGMENT_MODES,
    )

    g = p.add_argument_group("long shots (segments)")
    g.add_argument("--segment-mode", default=DEFAULT_SEGMENT_MODE, choices=SEGMENT_MODES,
                   help="sequential: one chain of clips (official); parallel: split at pauses into segments "
                        "rendered independently and crossfaded; auto: parallel above --min-parallel-seconds "
                        f"(default {DEFAULT_SEGMENT_MODE})")
    g.add_argument("--segment-seconds", type=float, default=DEFAULT_TARGET_SECONDS,
                   help=f"target segment length (default {DEFAULT_TARGET_SECONDS:g} s)")
    g.add_argument("--overlap-seconds", type=float, default=DEFAULT_OVERLAP_SECONDS,
                   help=f"crossfaded overlap between segments (default {DEFAULT_OVERLAP_SECONDS:g} s)")
    g.add_argument("--min-parallel-seconds", type=float, default=DEFAULT_MIN_PARALLEL_SECONDS,
                   help="auto mode splits shots longer than this "
                        f"(default {DEFAULT_MIN_PARALLEL_SECONDS:g} s)")
    g.add_argument("--work-dir", default=None,
                   help="segment intermediates and state (default: .<out name>.segments beside --out); "
                        "an interrupted render resumes from it after its last finished clip. A shot of one "
                        "segment (the default case) streams into --out without one unless --work-dir or "
                        "--keep-work is given: then its clips are committed here too (resumable; one more encode)")
    g.add_argument("--keep-work", action="store_true",
                   help="keep the segment intermediates after publishing (a one-segment shot then renders "
                        "through the work folder too)")
    g.add_argument("--output-fps", type=int, default=None, choices=[25, 30],
                   help="convert to 25 or 30 fps by blending neighbouring frames (default: the model's 16)")
    g.add_argument("--codec", default="h264", choices=["h264", "h265"])
    g.add_argument("--colour-match", action="store_true",
                   help="match the later segment's colour statistics inside each overlap")
    g.add_argument("--qa-report", default=None, help="write seam and colour-drift metrics (JSON) here")


def check_segment_sizes(segment_seconds: float, overlap_seconds: float) -> None:
    """A usage error (ValueError, exit 2) when the overlap leaves nothing of a segment: parallel
    planning would otherwise silently render the whole shot as one segment."""
    if overlap_seconds >= segment_seconds:
        raise ValueError(f"--overlap-seconds {overlap_seconds:g} must be smaller than --segment-seconds "
                         f"{segment_seconds:g} (parallel segments overlap by part of their length)")


def segment_options(a: argparse.Namespace):
    """SegmentOptions from render-shot's arguments (None when the options are not registered)."""
    if not hasattr(a, "segment_mode"):
        return None
    from render.shot.plan import SegmentOptions

    return SegmentOptions(
        mode=a.segment_mode, target_seconds=a.segment_seconds, overlap_seconds=a.overlap_seconds,
        min_parallel_seconds=a.min_parallel_seconds, work_dir=Path(a.work_dir) if a.work_dir else None,
        keep_work=a.keep_work, output_fps=a.output_fps, codec={"h264": "libx264", "h265": "libx265"}[a.codec],
        colour_match=a.colour_match, qa_report=Path(a.qa_report) if a.qa_report else None)


def cmd_qa(a: argparse.Namespace) -> int:
    import contextlib

    from render.quality.qa import qa_video

    rep = qa_video(a.video, a.plan, a.image, lipsync=a.lipsync, audio=a.audio)
    text = json.dumps(rep, indent=1)
    if a.json_out:
        from render.media.atomic import atomic_write_text

        atomic_write_text(Path(a.json_out), text + "\n")  # creates the folder, as --curves-dir does
    # --json: stdout carries only the report; the summary and the curves' table go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
        _print_summary(rep)
        if not a.no_curves:
            _write_curves(a)
    if a.json:
        sys.stdout.write(text + "\n")
    return EXIT_OK


def _print_summary(rep: dict) -> None:
    inside = rep["inside"]
    print(f"inside clips: p50 {inside['p50']:.3f}  p95 {inside['p95']:.3f}  p99 {inside['p99']:.3f}  "
          "(mean |dRGB| per frame pair)")
    if rep["clip_boundaries"]:
        worst = max(rep["clip_boundaries"], key=lambda b: b["value"])
        print(f"clip seams: {len(rep['clip_boundaries'])}, largest {worst['value']:.3f} at frame {worst['frame']}"
              + (f" ({worst['value'] / inside['p99']:.2f}x p99)" if inside["p99"] > 0 else ""))
    for j in rep["joins"]:
        print(f"join {j['index']} at frame {j['frame']}: {j['value']:.3f}  ({j['ratio_p95']}x p95)")
    for k, s in enumerate(rep["colour"]["segments"]):
        print(f"segment {k}: Lab mean {s['mean']} std {s['std']}" +
              (f"  mean-ref {s['mean_minus_ref']}" if "mean_minus_ref" in s else ""))
    if "lipsync" in rep:
        ls = rep["lipsync"]
        print(f"lip-sync: corr {ls['corr']:.3f} at lag {ls['lag']:+d} frames (lag 0: {ls['corr_lag0']:.3f}), "
              f"{ls['frames']} frames, audio {ls['audio']}  [tiny-model characters only]")


def _write_curves(a: argparse.Namespace) -> None:
    """The per-clip quality curves (render/quality/curves.py): table and flags printed, the JSON,
    plot and seam contact sheet written (atomically) beside the video or into --curves-dir."""
    from render.quality.curves import QualityThresholds, plan_curves, shot_curves
    from render.quality.plots import QaFiles, files_beside, format_table, write_qa_files
    from render.quality.qa import read_plan_file

    thresholds = QualityThresholds(seam_ratio=a.seam_ratio, colour_drift_de=a.colour_drift,
                                   face_similarity=a.face_similarity, lipsync_corr=a.lipsync_corr)
    audio = a.audio if a.audio is not None else (a.video if a.lipsync else None)
    if a.plan:
        curves = plan_curves(a.video, read_plan_file(a.plan), a.image, audio, thresholds=thresholds)
    else:
        curves = shot_curves(a.video, a.image, audio, thresholds=thresholds)
    files = files_beside(a.video)
    if a.curves_dir:
        d = Path(a.curves_dir)
        files = QaFiles(d / files.json.name, d / files.plot.name, d / files.sheet.name)
    print(format_table(curves))
    try:
        write_qa_files(curves, files)
    except OSError:
        print(f"s2v qa: the curves' files cannot be written in {files.json.parent}: choose another folder with "
              "--curves-dir, or skip them with --no-curves", file=sys.stderr)
        raise
    print(f"wrote {files.json}, {files.plot}, {files.sheet}")


def register(subparsers) -> None:
    rs = subparsers.choices.get("render-shot")
    if rs is not None:
        add_segment_options(rs)

    from render.quality.curves import SEAM_WINDOW_FRAMES, QualityThresholds

    th = QualityThresholds()
    p = subparsers.add_parser(
        "qa", help="seam and colour-drift metrics of a stitched shot (and lip-sync of the tiny model's characters)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Seam and colour-drift report of a stitched shot, then its quality curves per clip: colour "
                    "drift vs the reference (dE76), face-region similarity to the reference (NCC), lip-sync "
                    "(tiny-model characters only) and the jump at every clip boundary and segment join. "
                    "Writes NAME.qa.json, NAME.qa.png (the curves over time) and NAME.seams.png (the reference "
                    "and the frames around the worst seams) beside NAME.mp4 (or into --curves-dir).",
        epilog="thresholds (a shot beyond one is FLAGGED, not failed; the exit status stays 0):\n"
               f"  --seam-ratio {th.seam_ratio:g}: a seam's jump / the within-clip p95 of the same measure at the same\n"
               "      frame distance; the picture change (mean |dRGB|) between the frames either side of the\n"
               f"      transition, and the dE76 of the mean colours of up to {SEAM_WINDOW_FRAMES} frames either side of it, so a\n"
               "      drift hidden inside a crossfade still counts in full (denominators at least "
               f"{th.seam_picture_floor:g} and {th.seam_colour_floor:g})\n"
               f"  --colour-drift {th.colour_drift_de:g}: dE76 of a clip's mean Lab colour vs the reference's\n"
               f"  --face-similarity {th.face_similarity:g}: a clip's mean NCC of the central face region vs the "
               "reference\n"
               f"  --lipsync-corr {th.lipsync_corr:g}: the shot's lip-sync correlation (only where the tiny model's "
               "mouth colour is found)")
    p.add_argument("video")
    p.add_argument("--plan", default=None, help="the shot's plan.json (default: one segment covering the video)")
    p.add_argument("--image", default=None, help="reference image for colour drift")
    p.add_argument("--lipsync", action="store_true",
                   help="add lip-sync: correlation of the audio's loudness with the mouth opening per frame at the "
                        "best lag of -4..4 frames (positive = mouth late), and at lag 0. Meaningful ONLY for videos "
                        "of the tiny trained model's procedural characters: the mouth opening is measured as the "
                        "area of their mouth colour (render.quality.lipsync.MOUTH_RGB); it does not measure real faces")
    p.add_argument("--audio", default=None,
                   help="audio to score lip-sync against (implies --lipsync; default: the video's own audio track)")
    p.add_argument("--json", action="store_true",
                   help="print the full seam report (JSON) on stdout; the summary then goes to stderr")
    p.add_argument("--json-out", default=None, metavar="FILE",
                   help="write the full seam report (JSON) to FILE (its folder is created)")
    g = p.add_argument_group("quality curves")
    g.add_argument("--no-curves", action="store_true", help="only the seam report: no per-clip curves or pictures")
    g.add_argument("--curves-dir", default=None,
                   help="write NAME.qa.json, NAME.qa.png, NAME.seams.png here (default: beside the video)")
    g.add_argument("--seam-ratio", type=float, default=th.seam_ratio, metavar="X",
                   help=f"flag a seam above X times the within-clip p95 (default {th.seam_ratio:g})")
    g.add_argument("--colour-drift", type=float, default=th.colour_drift_de, metavar="DE",
                   help=f"flag a clip whose mean colour is more than DE (CIE76) from the reference's "
                        f"(default {th.colour_drift_de:g})")
    g.add_argument("--face-similarity", type=float, default=th.face_similarity, metavar="NCC",
                   help=f"flag a clip whose face region correlates less than NCC with the reference's "
                        f"(default {th.face_similarity:g})")
    g.add_argument("--lipsync-corr", type=float, default=th.lipsync_corr, metavar="R",
                   help=f"flag a shot whose lip-sync correlation is below R (default {th.lipsync_corr:g}; "
                        "tiny-model characters only)")
    p.set_defaults(fn=cmd_qa)
