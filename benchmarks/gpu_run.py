"""`s2v run` on a GPU node, the product path end to end: a manifest of speech shots at 480p and
720p rendered by one render group of one GPU on a Ray started by `s2v run` itself.

    here:    python benchmarks/gpu_run.py inputs .gpuin        # audio (8 / 20 / 60 s) + references
    device:  (carried wheels installed, 14B test checkpoint written: see benchmarks/gpu_carry.sh)
             python benchmarks/gpu_run.py run --ckpt /tmp/s2v14b --inputs .gpuin --work /tmp/gpurun \
                 --steps 2 --out "$OUT"
             python benchmarks/gpu_run.py run ... --only s720 --scrape-metrics 10 --prep-threads 14

Few sampling steps keep the run inside one device call; 40-step figures are derived from the
measured seconds per step (see benchmarks/results/gpu_run.md). Prints a table per shot and
writes results.parquet, the run's logs and a JSON summary to --out.

``--scrape-metrics S`` reads the run's Ray metrics endpoint (the port the driver log names as
``metrics_export_port``: what the Ray dashboard and Prometheus read) every S seconds while
`s2v run` renders and saves its ``s2v_*`` lines to --out/metrics/ (what the dashboard shows).
``--only s720`` renders the 720p shot alone (two clips at 1280x704: fits one 10-minute call).
``--only s720 s08 --cap-gib 54``: a real out-of-memory error through the product - the 720p shot
(58.5 GiB at its peak) fails with the product's message, the group frees its memory and renders the
480p shot (42.8 GiB) next.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
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


# After --stop-after: how long the graceful stop may take (a render group still loading the 14B
# model finishes that first) before the driver is killed. Leave this much of a call's limit free.
STOP_GRACE_S = 90

# The driver logs the Ray connection, e.g. "ray: {'address': ..., 'metrics_export_port': 38277}".
_METRICS_PORT = re.compile(r"'metrics_export_port': (\d+)")


class MetricsScraper:
    """Reads the node's Prometheus endpoint while the run renders; keeps the ``s2v_`` lines.

    Ray exports the run's custom metrics (cluster/metrics.py) there with a ``ray_`` prefix about
    8 s after they are set, so the first scrapes may show none yet."""

    def __init__(self, driver_log: Path, folder: Path, every_s: float):
        self.driver_log, self.folder, self.every_s = driver_log, folder, every_s
        # The driver appends to its log: a resumed run's log holds the previous run's port first.
        self.log_offset = driver_log.stat().st_size if driver_log.is_file() else 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
        self.port: int | None = None
        self.scrapes: list[dict] = []

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.thread.start()

    def _find_port(self) -> int | None:
        try:
            with self.driver_log.open("rb") as fh:
                fh.seek(self.log_offset)
                m = _METRICS_PORT.search(fh.read().decode(errors="replace"))
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def scrape_once(self) -> dict:
        """One read of the endpoint: the s2v_ lines to a file, a summary returned."""
        t = time.time()
        url = f"http://127.0.0.1:{self.port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return {"t": round(t, 1), "error": f"{type(exc).__name__}: {exc}"}
        lines = [ln for ln in text.splitlines() if "s2v_" in ln]
        name = self.folder / f"scrape_{len(self.scrapes):03d}.txt"
        name.write_text(f"# {url} at {time.strftime('%H:%M:%S', time.gmtime(t))} UTC\n" + "\n".join(lines) + "\n")
        return {"t": round(t, 1), "file": name.name, "lines": len(text.splitlines()), "s2v_lines": len(lines)}

    def _loop(self) -> None:
        while not self.stop_event.is_set() and self.port is None:
            self.port = self._find_port()
            self.stop_event.wait(1.0)
        while not self.stop_event.is_set():
            self.scrapes.append(self.scrape_once())
            self.stop_event.wait(self.every_s)

    def stop(self) -> dict:
        self.stop_event.set()
        self.thread.join(timeout=10)
        summary = {"port": self.port, "scrapes": self.scrapes}
        (self.folder / "scrapes.json").write_text(json.dumps(summary, indent=1))
        with_s2v = [x for x in self.scrapes if x.get("s2v_lines")]
        return {"port": self.port, "scrapes": len(self.scrapes), "with_s2v_lines": len(with_s2v),
                "last": self.scrapes[-1] if self.scrapes else None}


def pack_loose_files(out: Path) -> None:
    """The logs and metric scrapes (dozens of files) into one run_files.tar.gz: the device tool
    returns a limited number of files per call, and left out the scrapes of the first GPU run."""
    import tarfile

    folders = [out / name for name in ("logs", "metrics", "shots") if (out / name).is_dir()]
    if not folders:
        return
    with tarfile.open(out / "run_files.tar.gz", "w:gz") as tar:
        for folder in folders:
            tar.add(folder, arcname=folder.name)
    for folder in folders:
        shutil.rmtree(folder)


def run(a: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from manifests.schema import write_manifest

    inputs, work, out = Path(a.inputs).resolve(), Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # The 720p shot goes first (priority): it holds the run's memory peak, and a call cut short by
    # its time limit should lose a 480p shot rather than the only 720p one.
    rows = [dict(shot_id=sid, audio=str(inputs / f"{sid}.wav"), image=str(inputs / f"{sid}.png"), prompt=prompt,
                 size=size, steps=a.steps, seed=1, output=str(work / "out" / f"{sid}.mp4"), segment_mode="sequential",
                 priority=1 if sid == "s720" else 0)
            for sid, _, size, _, prompt in SHOTS if not a.only or sid in a.only]
    (work / "out").mkdir(exist_ok=True)
    manifest = work / "manifest.parquet"
    write_manifest(rows, manifest)
    cmd = [sys.executable, "-m", "s2v", "run", str(manifest), "--run-dir", str(work / "run"), "--ckpt", a.ckpt,
           "--groups", "1", "--group-size", "1", "--allowed-root", "/"] + a.extra
    if a.prep_threads:
        cmd += ["--prep-threads", str(a.prep_threads)]
    print("+", " ".join(cmd), flush=True)
    # GPU memory and utilisation every 2 s, stopped with the run (a background `nvidia-smi -l` left
    # in the device call's shell would keep the call open until its time limit).
    nvsmi = None
    if shutil.which("nvidia-smi"):
        nvsmi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,memory.used,utilization.gpu", "--format=csv",
                                  "-l", "2"], stdout=(out / "nvsmi.csv").open("w"), stderr=subprocess.DEVNULL)
    scraper = None
    if a.scrape_metrics:
        scraper = MetricsScraper(work / "run" / "logs" / "driver.log", out / "metrics", a.scrape_metrics)
        scraper.start()
    t0 = time.time()
    env = dict(os.environ)
    if a.cap_gib:  # the ranks' allocator capped: a real out-of-memory error on a large card
        env["S2V_CUDA_MEMORY_CAP_GIB"] = str(a.cap_gib)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        rc = proc.wait(timeout=a.stop_after or None)
    except subprocess.TimeoutExpired:
        # SIGTERM = the driver's graceful stop (exit 130, committed clips kept; a rerun of this
        # command with the same --work resumes), so the logs and results below still reach --out.
        print(f"--stop-after {a.stop_after:.0f} s: stopping s2v run (a rerun with the same --work resumes)",
              flush=True)
        proc.terminate()
        try:
            rc = proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    wall = time.time() - t0
    if nvsmi is not None:
        nvsmi.terminate()
        nvsmi.wait()
    summary = {"exit": rc, "wall_s": round(wall, 1), "steps": a.steps, "cmd": cmd, "cap_gib": a.cap_gib or None}
    if scraper is not None:
        summary["metrics"] = scraper.stop()
        print(f"metrics: {summary['metrics']}")
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
    pack_loose_files(out)
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
    r.add_argument("--scrape-metrics", type=float, default=0.0, metavar="S",
                   help="read the Ray metrics endpoint every S seconds while rendering (0: off)")
    r.add_argument("--prep-threads", type=int, default=0,
                   help="torch threads of the preparation actor (umT5 and wav2vec on the CPU; 0: s2v run's default)")
    r.add_argument("--stop-after", type=float, default=0.0, metavar="S",
                   help="stop `s2v run` gracefully after S seconds (resumable); keep S + 90 s + the copying "
                        "under the device call's limit")
    r.add_argument("--cap-gib", type=float, default=0.0, metavar="G",
                   help="cap each rank's GPU memory at G GiB (S2V_CUDA_MEMORY_CAP_GIB): e.g. 54 on an 80 GB card "
                        "makes the 720p shot run out of memory while the 480p shots render")
    r.add_argument("extra", nargs=argparse.REMAINDER, help="more `s2v run` options after --")
    a = p.parse_args()
    if a.cmd == "inputs":
        make_inputs(Path(a.folder))
        return 0
    a.extra = [x for x in a.extra if x != "--"]
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
