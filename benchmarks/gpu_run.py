"""`s2v run` on a GPU node, the product path end to end: a manifest of speech shots at 480p and
720p rendered by one render group of one GPU on a Ray started by `s2v run` itself.

    here:    python benchmarks/gpu_run.py inputs .gpuin        # audio (8 / 20 / 60 s) + references
    device:  (carried wheels installed, 14B test checkpoint written: see benchmarks/gpu_carry.sh)
             python benchmarks/gpu_run.py run --ckpt /tmp/s2v14b --inputs .gpuin --work /tmp/gpurun \
                 --steps 2 --out "$OUT"

Few sampling steps keep the run inside one device call; 40-step figures are derived from the
measured seconds per step (see benchmarks/results/gpu_run.md). Prints a table per shot and
writes results.parquet, the run's logs and a JSON summary to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (shot id, audio seconds, size, reference size, prompt): two shots share a prompt.
SHOTS = (
    ("s08", 8.0, "832*480", (832, 480), "a woman talks to the camera in a studio"),
    ("s20", 20.0, "832*480", (832, 480), "a woman talks to the camera in a studio"),
    ("s60", 60.0, "832*480", (832, 480), "a man gives a long speech outdoors"),
    ("s720", 8.0, "1280*720", (1280, 720), "a presenter speaks in a newsroom"),
)


def make_inputs(folder: Path) -> None:
    import numpy as np

    from render.media.audio import decode_audio
    from tinymodel.demo_assets import cartoon_face, write_wav

    folder.mkdir(parents=True, exist_ok=True)
    speech = decode_audio(ROOT / "tinymodel/assets/demo_speech.ogg").samples  # 16 kHz mono, ~20 s
    for sid, seconds, _, ref, _ in SHOTS:
        n = int(seconds * 16000)
        tiled = np.tile(speech, n // len(speech) + 1)[:n]
        write_wav(folder / f"{sid}.wav", tiled, 16000)
        cartoon_face(folder / f"{sid}.png", size=ref, seed=len(sid))
    print("inputs in", folder, sum(p.stat().st_size for p in folder.iterdir()) // 1024, "KiB")


def run(a: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from manifests.schema import write_manifest

    inputs, work, out = Path(a.inputs).resolve(), Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    rows = [dict(shot_id=sid, audio=str(inputs / f"{sid}.wav"), image=str(inputs / f"{sid}.png"), prompt=prompt,
                 size=size, steps=a.steps, seed=1, output=str(work / "out" / f"{sid}.mp4"), segment_mode="sequential")
            for sid, _, size, _, prompt in SHOTS if not a.only or sid in a.only]
    (work / "out").mkdir(exist_ok=True)
    manifest = work / "manifest.parquet"
    write_manifest(rows, manifest)
    cmd = [sys.executable, "-m", "s2v", "run", str(manifest), "--run-dir", str(work / "run"), "--ckpt", a.ckpt,
           "--groups", "1", "--group-size", "1", "--allowed-root", "/"] + a.extra
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    wall = time.time() - t0
    summary = {"exit": rc, "wall_s": round(wall, 1), "steps": a.steps, "cmd": cmd}
    res = work / "run" / "results.parquet"
    if res.is_file():
        table = pq.read_table(res).to_pylist()
        shutil.copy(res, out / "results.parquet")
        summary["shots"] = [{k: r.get(k) for k in ("shot_id", "status", "width", "height", "frames", "duration_s",
                                                     "wall_s", "gpu_seconds", "error", "failure_stage")}
                            for r in table]
        print(f"{'shot':6} {'state':9} {'size':>10} {'frames':>6} {'video s':>8} {'wall s':>8} {'GPU s':>8}")
        for r in summary["shots"]:
            print(f"{r['shot_id']:6} {str(r['status']):9} {str(r['width'])+'x'+str(r['height']):>10} "
                  f"{str(r['frames']):>6} {str(r['duration_s']):>8} {str(r['wall_s']):>8} {str(r['gpu_seconds']):>8}"
                  f"  {r['error'] or ''}")
    logs = work / "run" / "logs"
    if logs.is_dir():
        shutil.copytree(logs, out / "logs", dirs_exist_ok=True)
    for shot_dir in (work / "run" / "shots").glob("*"):
        for f in shot_dir.rglob("*.log"):
            dst = out / "shots" / f.relative_to(work / "run" / "shots")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"s2v run exit {rc}, wall {wall:.1f} s")
    return rc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inputs", help="write the shots' audio and reference images")
    i.add_argument("folder")
    r = sub.add_parser("run", help="write the manifest and run `s2v run` on it")
    r.add_argument("--ckpt", required=True)
    r.add_argument("--inputs", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--steps", type=int, default=2)
    r.add_argument("--only", nargs="*", help="shot ids to include (default: all)")
    r.add_argument("extra", nargs=argparse.REMAINDER, help="more `s2v run` options after --")
    a = p.parse_args()
    if a.cmd == "inputs":
        make_inputs(Path(a.folder))
        return 0
    a.extra = [x for x in a.extra if x != "--"]
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
