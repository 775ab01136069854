"""Shared helpers of the cluster tests: tiny inputs, manifests, run options, ledger probes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cluster.driver import RunRequest
from cluster.settings import EngineOptions, RunSettings
from manifests import write_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Small and fast on 2 loaded cores: 64x64, 16-frame clips handing 9 frames on, 1 sampling step.
CLIP_FRAMES, MOTION_FRAMES = 16, 9


def make_media(d: Path, seconds: Sequence[float]) -> tuple[list[Path], list[Path]]:
    from tinymodel.demo_assets import cartoon_face, speech_like_audio, write_wav

    d.mkdir(parents=True, exist_ok=True)
    audios = [write_wav(d / f"a{i}.wav", speech_like_audio(s, seed=i)) for i, s in enumerate(seconds)]
    images = [cartoon_face(d / f"f{i}.png", (80, 64), seed=i) for i in range(3)]
    return audios, images


def shot_rows(d: Path, seconds: Sequence[float], out_dir: Path, **overrides: Any) -> list[dict[str, Any]]:
    audios, images = make_media(d / "media", seconds)
    rows = []
    for i, audio in enumerate(audios):
        rows.append(dict(
            shot_id=f"shot{i:02d}", audio=str(audio), image=str(images[i % 3]),
            # A prompt full of shell syntax: nothing from a manifest may ever reach a shell.
            prompt=f"a face talks {i % 4}; $(touch {d}/pwned) `touch {d}/pwned2` | rm -rf {d}",
            output=str(out_dir / f"shot{i:02d}.mp4"), size="64*64", steps=1, seed=100 + i, priority=0,
        ))
        rows[-1].update(overrides)
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    return write_manifest(rows, path)


def run_settings(ckpt: Path, **kw: Any) -> RunSettings:
    return RunSettings(ckpt=str(ckpt), infer_frames=CLIP_FRAMES, motion_frames=MOTION_FRAMES, **kw)


def engine_options(**kw: Any) -> EngineOptions:
    base = dict(group_size=2, groups=2, slot_resource="render_slot", collective_timeout_s=10.0,
                group_start_timeout_s=120.0, results_interval_s=0.5, prep_threads=1)
    base.update(kw)
    return EngineOptions(**base)


def request(manifest: Path, run_dir: Path, ckpt: Path, *, settings: dict | None = None,
            engine: dict | None = None, **kw: Any) -> RunRequest:
    return RunRequest(manifest=manifest, run_dir=run_dir, settings=run_settings(ckpt, **(settings or {})),
                      engine=engine_options(**(engine or {})), **kw)


def cli_args(manifest: Path, run_dir: Path, ckpt: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "s2v", "run", str(manifest), "--run-dir", str(run_dir), "--ckpt", str(ckpt),
            "--address", address, "--groups", "2", "--group-size", "2", "--infer-frames", str(CLIP_FRAMES),
            "--motion-frames", str(MOTION_FRAMES), "--collective-timeout", "10", "--slot-resource", "render_slot",
            "--prep-threads", "1",
            *extra]


def start_driver(args: list[str], log_path: Path) -> subprocess.Popen:
    fh = open(log_path, "w")  # noqa: SIM115 - closed with the process by the caller's wait
    return subprocess.Popen(args, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def attempt_pids(run_dir: Path, shot_id: str, attempt: int) -> list[int]:
    """The pids of the group that runs ``attempt`` of ``shot_id`` (from the driver's log line)."""
    text = (run_dir / "logs" / shot_id / f"{attempt}.log").read_text()
    m = re.search(r"pids \[([0-9, ]+)\]", text)
    assert m, text
    return [int(p) for p in m.group(1).split(",")]


def decoded_frames(path: Path) -> list[bytes]:
    import av
    import numpy as np

    with av.open(str(path)) as f:
        return [np.ascontiguousarray(fr.to_ndarray(format="rgb24")).tobytes() for fr in f.decode(video=0)]


def file_stamps(paths: Sequence[Path]) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in paths:
        st = p.stat()
        out[str(p)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def request_from_cli(monkeypatch: Any, run_dir: Path, ckpt: Path, *extra: str) -> RunRequest:
    """The RunRequest that `s2v run m.parquet --run-dir RUN_DIR --ckpt CKPT EXTRA...` builds
    (the driver itself is replaced: nothing runs)."""
    import argparse

    import cluster.driver
    from s2v.cli_run import register

    seen: dict[str, RunRequest] = {}
    monkeypatch.setattr(cluster.driver, "run", lambda req: seen.setdefault("req", req) and 0)
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    a = sub.choices["run"].parse_args(["m.parquet", "--run-dir", str(run_dir), "--ckpt", str(ckpt), *extra])
    a.fn(a)
    return seen["req"]
