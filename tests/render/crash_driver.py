"""Kill writers with SIGKILL at random instants and check what is left (run as a subprocess).

    python -m tests.render.crash_driver WORK_DIR stitch KILLS SEED
    python -m tests.render.crash_driver WORK_DIR segment KILLS SEED

``stitch``: prepares finished segments once, then repeatedly forks a child that stitches them to
the final path and kills it after a random delay drawn over the measured duration of a full
stitch. After every kill the final path must be absent, or hold the previous complete version
(byte-identical), or a new complete, verified file. Half the trials start with a previous
version in place.

``segment``: forks a child rendering a segment (FakeRenderer), kills it at a random instant,
resumes in a new child, repeats; the finished segment's frames must equal an uninterrupted run's.

Prints one JSON line with the counts. Forking keeps each trial cheap (no interpreter start); the
parent runs torch with one thread so no OpenMP pool exists across fork.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _run_child(fn) -> int:
    pid = os.fork()
    if pid == 0:  # child: do the work, never return into the parent's code
        code = 0
        try:
            fn()
        except BaseException:  # noqa: BLE001 - report through the exit code only
            code = 1
        os._exit(code)
    return pid


def _kill_after(pid: int, delay: float) -> bool:
    """SIGKILL ``pid`` after ``delay`` s unless it exited; True if it was killed while running."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


def _prepare_segments(work: Path):
    from render.settings import RenderSettings
    from render.shot.plan import plan_shot_audio
    from render.shot.segment import render_segment
    from tests.render.segment_helpers import FakeRenderer, fake_shot, long_speech
    from tinymodel.demo_assets import write_wav

    s = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9)
    wav = write_wav(work / "a.wav", long_speech(4.0, seed=9)[0])
    plan = plan_shot_audio(wav, s, "parallel", 2.0, 0.5)
    paths = [render_segment(FakeRenderer(s), fake_shot(s), plan, i, s, work / "segs") for i in range(len(plan.segments))]
    return s, wav, plan, paths


def crash_stitch(work: Path, kills: int, seed: int) -> dict:
    from render.media.publish import OutputVerifyError, verify_video
    from render.shot.stitch import stitch_shot

    rng = random.Random(seed)
    s, wav, plan, paths = _prepare_segments(work)
    final = work / "shot.mp4"

    def stitch():
        stitch_shot(plan, paths, wav, final, s, preset="ultrafast")

    t0 = time.monotonic()
    stitch()  # a complete run: its duration sets the range of kill times, its file the "previous version"
    full_s = time.monotonic() - t0
    previous = _sha(final)
    stats = {"kills_mid_run": 0, "completed": 0, "absent_after": 0, "previous_kept": 0, "new_complete": 0,
             "bad": 0, "trials": 0, "full_stitch_s": round(full_s, 3), "kills_leaving_temps": 0}
    deadline = time.monotonic() + 240
    while stats["kills_mid_run"] < kills and time.monotonic() < deadline:
        stats["trials"] += 1
        with_previous = stats["trials"] % 2 == 0
        if not with_previous:
            final.unlink(missing_ok=True)
        elif not final.exists() or _sha(final) != previous:
            stitch()
            previous = _sha(final)
        killed = _kill_after(_run_child(stitch), rng.uniform(0.0, 1.1 * full_s))
        stats["kills_mid_run" if killed else "completed"] += 1
        if killed and any(p.name.startswith(".shot.mp4.tmp-") for p in work.iterdir()):
            stats["kills_leaving_temps"] += 1  # removed by the next stitch's sweep
        if not final.exists():
            stats["absent_after"] += 1
            if with_previous:
                stats["bad"] += 1  # the previous version must never disappear
            continue
        if with_previous and _sha(final) == previous:
            stats["previous_kept"] += 1
            continue
        try:
            verify_video(final, expected_frames=plan.total_frames, expected_duration_s=plan.duration_s)
            stats["new_complete"] += 1
        except OutputVerifyError:
            stats["bad"] += 1
    stats["temps_left_before_sweep"] = len([p for p in work.iterdir() if p.name.startswith(".shot.mp4.tmp-")])
    stitch()  # the next run removes the temporary files of the killed ones
    stats["temps_left_after_sweep"] = len([p for p in work.iterdir() if p.name.startswith(".shot.mp4.tmp-")])
    return stats


def crash_segment(work: Path, kills: int, seed: int) -> dict:
    from render.settings import RenderSettings
    from render.shot.plan import SegmentSpec, ShotPlan
    from render.shot.segment import render_segment, segment_frames_digest
    from tests.render.segment_helpers import FakeRenderer, fake_shot

    rng = random.Random(seed)
    s = RenderSettings(size="64*64", steps=1, infer_frames=16, motion_frames=9)
    plan = ShotPlan("sequential", 16, 200, 200 / 16, (SegmentSpec(0, 0, 200, 0, 13),), infer_frames=16)
    shot = fake_shot(s)
    t0 = time.monotonic()
    reference = render_segment(FakeRenderer(s), shot, plan, 0, s, work / "ref")
    full_s = time.monotonic() - t0
    expected = segment_frames_digest(reference)
    stats = {"kills_mid_run": 0, "resumed_identical": 0, "resumed_different": 0, "runs": 0, "temps_left": 0,
             "full_render_s": round(full_s, 3)}
    deadline = time.monotonic() + 240
    run = 0
    while stats["kills_mid_run"] < kills and time.monotonic() < deadline:
        run += 1
        target = work / f"run{run}"
        while True:  # kill repeatedly until one attempt finishes, then check the result
            stats["runs"] += 1
            pid = _run_child(lambda t=target: render_segment(FakeRenderer(s), shot, plan, 0, s, t))
            if not _kill_after(pid, rng.uniform(0.0, 0.5 * full_s)):
                break
            stats["kills_mid_run"] += 1
        done = render_segment(FakeRenderer(s), shot, plan, 0, s, target)
        stats["temps_left"] += sum(".tmp-" in p.name for p in done.iterdir())
        same = segment_frames_digest(done) == expected
        stats["resumed_identical" if same else "resumed_different"] += 1
    return stats


def main() -> None:
    work, mode, kills, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    stats = crash_stitch(work, kills, seed) if mode == "stitch" else crash_segment(work, kills, seed)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
