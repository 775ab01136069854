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
                        "an interrupted render resumes from it")
    g.add_argument("--keep-work", action="store_true", help="keep the segment intermediates after publishing")
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
    from render.quality.qa import qa_video

    rep = qa_video(a.video, a.plan, a.image, lipsync=a.lipsync, audio=a.audio)
    text = json.dumps(rep, indent=1)
    if a.json_out:
        Path(a.json_out).write_text(text)
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
    if not a.json_out:
        sys.stdout.write(text + "\n")
    return EXIT_OK


def register(subparsers) -> None:
    rs = subparsers.choices.get("render-shot")
    if rs is not None:
        add_segment_options(rs)

    from s2v.cli_assemble import register_assemble

    register_assemble(subparsers)

    p = subparsers.add_parser("qa", help="seam and colour-drift metrics of a stitched shot (and lip-sync of "
                              "the tiny model's characters)")
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
    p.add_argument("--json-out", default=None)
    p.set_defaults(fn=cmd_qa)
