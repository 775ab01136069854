"""`s2v run` with render groups of several GPUs: scaling, a long shot over groups, rank faults, FSDP.

Every measurement goes through the product (`s2v run` forming render groups of Ray actors), never
through a model-only benchmark. Four parts, each one `s2v run` per configuration:

    scaling  the same manifest (a 480p and a 720p shot) on 1 GPU, on N groups of 1, on one group
             of N (--parallel auto) and on one group of N as cfg=2 x ulysses=N/2: seconds per clip,
             scaling vs the 1-GPU run of the same call, peak GPU memory per rank, and the seconds
             per clip the group spends outside sampling (the writer's VAE decode / motion re-encode
             and clip commit, during which the other ranks wait in the hand-off).
    long     one long speech shot in parallel segment mode on G groups of S GPUs: makespan vs the
             sum of the segments' GPU time / G, and where the joins fell (pause or speech).
    faults   kill -9 of one rank of a group mid-segment, then SIGSTOP of one rank (a hung
             collective): detection time, what was redone, frames equal to an undisturbed run,
             GPU memory left behind by the dead group.
    fsdp     one group of S with --parallel ...,shard_weights=1 vs without: memory per GPU, s/step.

On a GPU machine (wheels carried and the 14B test checkpoint written, see benchmarks/gpu_carry.sh):

    python benchmarks/gpu_run_multi.py scaling --ckpt /tmp/s2v14b --work /tmp/multi --out "$OUT" --gpus 4
    python benchmarks/gpu_run_multi.py long --ckpt /tmp/s2v14b --work /tmp/multi --out "$OUT" --groups 2 --group-size 2
    python benchmarks/gpu_run_multi.py faults --ckpt /tmp/s2v14b --work /tmp/multi --out "$OUT"
    python benchmarks/gpu_run_multi.py fsdp --ckpt /tmp/s2v14b --work /tmp/multi --out "$OUT" --gpus 2 4

Rehearsal on CPU ranks (gloo, the tiny random checkpoint, 64x64, 16-frame clips): add ``--cpu``
(``--ckpt`` may then be omitted). Options the script does not know go to `s2v run`. Each part prints its table and writes ``<part>.json`` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPU_SIZES = {"480p": "832*480", "720p": "1280*720"}
CPU_SIZES = {"480p": "64*64", "720p": "96*64"}  # rehearsal stand-ins
CPU_CLIP = ["--infer-frames", "16", "--motion-frames", "9", "--slot-resource", "CPU", "--num-cpus", "8",
            "--collective-timeout", "10",
            "--prep-threads", "1"]


@dataclass
class Mode:
    """GPU (the real thing) or a CPU rehearsal of the same commands."""

    cpu: bool
    ckpt: str
    steps: int
    work: Path
    out: Path
    extra: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> dict[str, str]:
        return CPU_SIZES if self.cpu else GPU_SIZES

    def run_args(self) -> list[str]:
        return (CPU_CLIP if self.cpu else []) + self.extra


# --- inputs --------------------------------------------------------------------------------------


def speech(seconds: float):
    """The bundled demo speech (pauses between sentences) tiled to ``seconds``, 16 kHz mono."""
    import numpy as np

    from render.media.audio import decode_audio

    base = decode_audio(ROOT / "tinymodel/assets/demo_speech.ogg").samples
    n = int(seconds * 16000)
    return np.tile(base, n // len(base) + 1)[:n]


def write_inputs(folder: Path, shots: list[tuple[str, float, str]]) -> list[dict[str, Any]]:
    """Audio + reference image per shot; returns manifest rows (without output)."""
    from tinymodel.demo_assets import cartoon_face, write_wav

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for sid, seconds, size in shots:
        w, h = (int(v) for v in size.split("*"))
        audio = write_wav(folder / f"{sid}.wav", speech(seconds), 16000)
        image = cartoon_face(folder / f"{sid}.png", size=(w, h), seed=len(sid))
        rows.append(dict(shot_id=sid, audio=str(audio), image=str(image), size=size, seed=1,
                         prompt="a person talks to the camera in a studio"))
    return rows


# --- one `s2v run` with GPU memory sampling ------------------------------------------------------


class GpuSampler:
    """nvidia-smi every ``interval`` s: peak memory per process and per GPU (empty on CPU)."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.per_pid, self.per_gpu = interval, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @staticmethod
    def query(what: str, fields: str) -> list[list[str]]:
        try:
            out = subprocess.run(["nvidia-smi", f"--query-{what}={fields}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid, mib in self.query("compute-apps", "pid,used_memory"):
                if pid.isdigit() and mib.isdigit():
                    self.per_pid[int(pid)] = max(self.per_pid.get(int(pid), 0), int(mib))
            for idx, mib in self.query("gpu", "index,memory.used"):
                if idx.isdigit() and mib.isdigit():
                    self.per_gpu[int(idx)] = max(self.per_gpu.get(int(idx), 0), int(mib))
            self._stop.wait(self.interval)


def s2v_run(mode: Mode, name: str, rows: list[dict[str, Any]], *, groups: int, group_size: int,
            parallel: str = "auto", segment_mode: str = "sequential", extra: list[str] | None = None,
            background: bool = False) -> dict[str, Any] | subprocess.Popen:
    """Write the manifest and run `s2v run` on it in ``mode.work/name``; returns the run's facts
    (or the process, with ``background``)."""
    from manifests.schema import write_manifest

    base = mode.work / name
    (base / "out").mkdir(parents=True, exist_ok=True)
    shots = [{**r, "steps": mode.steps, "segment_mode": segment_mode, "output": str(base / "out" / f"{r['shot_id']}.mp4")}
             for r in rows]
    manifest = write_manifest(shots, base / "manifest.parquet")
    cmd = [sys.executable, "-m", "s2v", "run", str(manifest), "--run-dir", str(base / "run"), "--ckpt", mode.ckpt,
           "--groups", str(groups), "--group-size", str(group_size), "--parallel", parallel, "--keep-work",
           "--allowed-root", "/", *mode.run_args(), *(extra or [])]
    print("+", " ".join(cmd), flush=True)
    log = open(base / "driver.out", "w")  # noqa: SIM115 - closed when the process ends
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if background:
        return proc
    t0 = time.time()
    with GpuSampler() as gpus:
        rc = proc.wait()
    log.close()
    facts = collect(base / "run")
    facts.update(name=name, exit=rc, wall_s=round(time.time() - t0, 1), groups=groups, group_size=group_size,
                 parallel=parallel, peak_mib_per_pid=gpus.per_pid, peak_mib_per_gpu=gpus.per_gpu)
    if rc != 0:
        print((base / "driver.out").read_text()[-3000:], flush=True)
    return facts


def collect(run_dir: Path) -> dict[str, Any]:
    """Per shot and segment: clips, attempts, seconds per step and per clip, group pids."""
    shots: dict[str, Any] = {}
    for rec_path in sorted((run_dir / "segments").glob("*/*.json")):
        rec = json.loads(rec_path.read_text())
        shot = shots.setdefault(rec["shot_id"], {"segments": {}})
        shot["segments"][rec["index"]] = {k: rec.get(k) for k in ("clips", "clips_rendered", "resumed_from_clip",
                                                                  "attempt", "group", "committed_at")}
    for sid, shot in shots.items():
        for p in (run_dir / "shots" / sid).glob("progress-*.json"):
            d = json.loads(p.read_text())
            seg = shot["segments"].setdefault(int(d["index"]), {})
            seg.update(seconds_per_step=d.get("seconds_per_step"), seconds_per_clip=d.get("seconds_per_clip"))
        status = run_dir / "shots" / sid / "status.json"
        if status.is_file():
            st = json.loads(status.read_text())
            shot["failures"] = st.get("failures", [])
            shot["attempts"] = st.get("attempts")
        shot["pids"] = {log.stem: group_pids(log) for log in sorted((run_dir / "logs" / sid).glob("*.log"))}
    res = run_dir / "results.parquet"
    if res.is_file():
        import pyarrow.parquet as pq

        for r in pq.read_table(res).to_pylist():
            shots.setdefault(r["shot_id"], {"segments": {}}).update(
                status=r.get("status"), wall=r.get("wall_s"), gpu_seconds=r.get("gpu_seconds"),
                frames=r.get("frames"), width=r.get("width"), height=r.get("height"))
    return {"shots": shots}


def group_pids(attempt_log: Path) -> list[int]:
    """The pids of the group that ran an attempt (the driver's line in the attempt's log)."""
    if not attempt_log.is_file():
        return []
    m = re.search(r"pids \[([0-9, ]+)\]", attempt_log.read_text(errors="replace"))
    return [int(p) for p in m.group(1).split(",")] if m else []


def per_clip(shot: dict[str, Any], steps: int) -> dict[str, float | None]:
    """Mean seconds per clip and per step over a shot's segments, and the rest of a clip (outside sampling)."""
    segs = [s for s in shot["segments"].values() if s.get("seconds_per_clip")]
    if not segs:
        return {"clip_s": None, "step_s": None, "outside_s": None}
    clip = sum(s["seconds_per_clip"] for s in segs) / len(segs)
    step = sum(s["seconds_per_step"] or 0.0 for s in segs) / len(segs)
    return {"clip_s": round(clip, 2), "step_s": round(step, 3), "outside_s": round(clip - steps * step, 2)}


def rank_peaks(facts: dict[str, Any], sid: str) -> list[int]:
    pids = [p for ps in facts["shots"].get(sid, {}).get("pids", {}).values() for p in ps]
    return [facts["peak_mib_per_pid"].get(p, 0) for p in dict.fromkeys(pids)]


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    lines = [f"\n## {title}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def device_name(mode: Mode) -> str:
    if mode.cpu:
        return f"CPU rehearsal ({os.cpu_count()} cores, gloo)"
    names = [n for (n,) in GpuSampler.query("gpu", "name")]
    return f"{len(names)} x {names[0]}" if names else "no GPU found"


def save(mode: Mode, part: str, payload: dict[str, Any], text: str) -> None:
    mode.out.mkdir(parents=True, exist_ok=True)
    payload = {"device": device_name(mode), "steps": mode.steps, **payload}
    (mode.out / f"{part}.json").write_text(json.dumps(payload, indent=1, default=str))
    (mode.out / f"{part}.md").write_text(f"# {part} on {payload['device']}, {mode.steps} steps\n{text}\n")


# --- the parts -----------------------------------------------------------------------------------


def part_scaling(mode: Mode, gpus: int, seconds: float) -> None:
    """One shot per size on 1 GPU and on one group of N; N copies per size on N groups of 1 (each
    group renders whole shots: the question there is whether N groups slow each other down)."""
    one = write_inputs(mode.work / "inputs-scaling", [(f"s{k}", seconds, size) for k, size in mode.sizes.items()])
    copies = [{**r, "shot_id": f"{r['shot_id']}-{i}"} for i in range(gpus) for r in one]
    configs = [("1 GPU", 1, 1, "auto", one), (f"{gpus} groups of 1", gpus, 1, "auto", copies),
               (f"1 group of {gpus}, auto", 1, gpus, "auto", one)]
    if gpus >= 4 and gpus % 2 == 0:
        configs.append((f"1 group of {gpus}, cfg 2 x ulysses {gpus // 2}", 1, gpus, f"cfg=2,ulysses={gpus // 2}", one))
    runs = []
    for label, groups, size, parallel, rows in configs:
        name = f"scaling-{groups}x{size}-{parallel.replace('=', '').replace(',', '-')}"
        runs.append((label, size, s2v_run(mode, name, rows, groups=groups, group_size=size, parallel=parallel)))
    base = {r["shot_id"]: per_clip(runs[0][2]["shots"].get(r["shot_id"], {"segments": {}}), mode.steps)["clip_s"]
            for r in one}
    out = []
    for label, size, facts in runs:
        for sid, shot in sorted(facts["shots"].items()):
            pc = per_clip(shot, mode.steps)
            ref = base.get(sid.rsplit("-", 1)[0] if sid not in base else sid)
            speed = round(ref / pc["clip_s"], 2) if ref and pc["clip_s"] else None
            out.append([label, sid, facts["exit"], pc["clip_s"], pc["step_s"], speed,
                        round(speed / size, 2) if speed else None, pc["outside_s"], rank_peaks(facts, sid),
                        facts["wall_s"]])
    text = table("Scaling (seconds per clip; speed-up vs the 1-GPU run of this call)",
                 ["config", "shot", "exit", "s/clip", "s/step", "speed-up per clip", "efficiency per GPU",
                  "s/clip outside sampling", "peak MiB per rank", "run wall s"], out)
    save(mode, "scaling", {"runs": [r[2] for r in runs]}, text)


def part_long(mode: Mode, groups: int, group_size: int, minutes: float, segment_seconds: float) -> None:
    rows = write_inputs(mode.work / "inputs-long", [("long", minutes * 60, mode.sizes["480p"])])
    facts = s2v_run(mode, "long", rows, groups=groups, group_size=group_size, segment_mode="parallel",
                    extra=["--segment-seconds", str(segment_seconds)])
    shot = facts["shots"].get("long", {"segments": {}})
    segs = shot["segments"]
    busy = sum((s.get("seconds_per_clip") or 0) * (s.get("clips_rendered") or 0) for s in segs.values())
    ideal = busy / groups if groups else None
    joins = join_pauses(mode.work / "long" / "run", "long")
    rows_out = [[len(segs), round(busy, 1), round(ideal, 1) if ideal else None, round(shot.get("wall") or 0, 1),
                 round(shot["wall"] / ideal, 3) if ideal and shot.get("wall") else None, joins]]
    text = table(f"A {minutes:g}-minute shot on {groups} groups of {group_size}",
                 ["segments", "sum of segment s", "ideal makespan s", "shot wall s", "ratio (target <= 1.1)",
                  "audio power at the joins"], rows_out)
    save(mode, "long", {"run": facts, "joins": joins}, text)


def join_pauses(run_dir: Path, sid: str) -> str:
    """The audio power (dB) over each segment join's crossfade window, from the saved plan: the
    planner puts joins where it is lowest, so speech-level values mean a join landed in speech."""
    plan = run_dir / "shots" / sid / "plan.json"
    if not plan.is_file():
        return "plan not found"
    energies = [s.get("cut_energy_db") for s in json.loads(plan.read_text())["segments"][1:]]
    return ", ".join("?" if e is None else f"{e:.0f}" for e in energies) + " dB"


def part_faults(mode: Mode, seconds: float) -> None:
    rows = write_inputs(mode.work / "inputs-faults", [("victim", seconds, mode.sizes["480p"])])
    undisturbed = s2v_run(mode, "faults-undisturbed", rows, groups=1, group_size=2)
    out, payload = [], {"undisturbed": undisturbed}
    for how in ("kill", "stop"):
        name = f"faults-{how}"
        proc = s2v_run(mode, name, rows, groups=1, group_size=2, background=True)
        run_dir = mode.work / name / "run"
        state = run_dir / "work" / "victim" / "segment_0000" / "state.pt"
        t_end = time.time() + 900
        with GpuSampler() as gpus:
            while not state.is_file() and time.time() < t_end and proc.poll() is None:
                time.sleep(0.05)
            pids, hit_at = [], None
            while len(pids) != 2 and state.is_file() and time.time() < t_end:
                pids = group_pids(run_dir / "logs" / "victim" / "1.log")
                time.sleep(0.05)
            if len(pids) == 2:
                os.kill(pids[1], signal.SIGKILL if how == "kill" else signal.SIGSTOP)
                hit_at = time.time()
            rc = proc.wait()
            left = GpuSampler.query("compute-apps", "pid,used_memory")
        if how == "stop" and pids:
            with_suppress_kill(pids[1])
        facts = collect(run_dir)
        shot = facts["shots"].get("victim", {"segments": {}})
        seg = shot["segments"].get(0, {})
        fail = (shot.get("failures") or [{}])[0]
        detected = round(fail["at"] - hit_at, 1) if hit_at and fail.get("at") else None
        same = frames_equal(mode.work / "faults-undisturbed" / "out" / "victim.mp4", mode.work / name / "out" / "victim.mp4")
        orphans = [p for p, _ in left if p.isdigit() and int(p) in pids]
        out.append([how if hit_at else f"{how} (not sent: the segment finished first)", rc, fail.get("kind"), detected, seg.get("resumed_from_clip"), seg.get("clips_rendered"),
                    seg.get("clips"), same, orphans or "none", gpus.per_gpu])
        payload[how] = facts
    text = table("A rank of a 2-GPU group killed (SIGKILL) or hung (SIGSTOP) after the first committed clip",
                 ["fault", "exit", "failure kind", "detected after s", "resumed from clip", "clips redone",
                  "clips", "frames equal undisturbed", "GPU memory of the dead ranks left", "peak MiB per GPU"], out)
    save(mode, "faults", payload, text)


def with_suppress_kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def frames_equal(a: Path, b: Path) -> bool | str:
    if not (a.is_file() and b.is_file()):
        return "missing output"
    import av

    def frames(p: Path) -> list[bytes]:
        with av.open(str(p)) as f:
            return [fr.to_ndarray(format="rgb24").tobytes() for fr in f.decode(video=0)]

    fa, fb = frames(a), frames(b)
    return fa == fb if len(fa) == len(fb) else f"{len(fa)} vs {len(fb)} frames"


def part_fsdp(mode: Mode, sizes: list[int], seconds: float) -> None:
    rows = write_inputs(mode.work / "inputs-fsdp", [("f480", seconds, mode.sizes["480p"])])
    out, runs = [], []
    for n in sizes:
        for shard in (False, True):
            parallel = f"ulysses={n}" + (",shard_weights=1" if shard else "")
            facts = s2v_run(mode, f"fsdp-{n}-{int(shard)}", rows, groups=1, group_size=n, parallel=parallel)
            pc = per_clip(facts["shots"].get("f480", {"segments": {}}), mode.steps)
            out.append([n, parallel, facts["exit"], pc["step_s"], pc["clip_s"], rank_peaks(facts, "f480")])
            runs.append(facts)
    text = table("Weight sharding (FSDP2) in a render group", ["GPUs", "parallel", "exit", "s/step", "s/clip",
                                                              "peak MiB per rank"], out)
    save(mode, "fsdp", {"runs": runs}, text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["scaling", "long", "faults", "fsdp"])
    p.add_argument("--ckpt", default=None, help="checkpoint folder (default with --cpu: a tiny random one)")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cpu", action="store_true", help="rehearse on CPU ranks (gloo) with tiny sizes")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--gpus", type=int, nargs="+", default=[2], help="scaling: N; fsdp: group sizes")
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--group-size", type=int, default=2)
    p.add_argument("--minutes", type=float, default=10.0, help="long: the shot's length")
    p.add_argument("--segment-seconds", type=float, default=60.0)
    p.add_argument("--seconds", type=float, default=10.0, help="scaling/faults/fsdp: each shot's length")
    a, extra = p.parse_known_args()  # anything else goes to `s2v run` as it is
    work = Path(a.work)
    ckpt = a.ckpt
    if ckpt is None:
        if not a.cpu:
            p.error("--ckpt is needed on GPUs")
        from tinymodel.checkpoint import write_tiny_checkpoint

        ckpt = str(write_tiny_checkpoint(work / "tiny-ckpt"))
    mode = Mode(a.cpu, ckpt, a.steps, work, Path(a.out), [x for x in extra if x != "--"])
    if a.part == "scaling":
        part_scaling(mode, a.gpus[0], a.seconds)
    elif a.part == "long":
        part_long(mode, a.groups, a.group_size, a.minutes, a.segment_seconds)
    elif a.part == "faults":
        part_faults(mode, a.seconds)
    else:
        part_fsdp(mode, a.gpus, a.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
