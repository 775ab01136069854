"""SIGTERM (``timeout``, ``kill``, job schedulers) stops an ``s2v`` command like Ctrl-C: exit 130,
one line, no temporary file left beside the output; and the temporaries' names are flat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from render.media.atomic import final_name_of, sweep_stale_temps, temp_path_for

REPO_ROOT = Path(__file__).resolve().parents[2]

# render-shot with the model replaced: the real streaming writer (render.shot.direct, an
# Mp4Writer inside a verified publish: two temporary files) gets one clip, then the process
# receives SIGTERM while "sampling" the second.
_RENDER_SHOT_TERMINATED = textwrap.dedent(r"""
    import os, signal, sys, time
    from pathlib import Path
    import torch
    import render.model.components as components
    import render.shot.pipeline as pipeline
    from render.shot.direct import render_direct
    from render.shot.plan import plan_shot
    from s2v.cli import main

    class Renderer:
        sync = None
        calls = 0
        def initial_state(self, cond):
            return None
        def render_clip(self, cond, state):
            self.calls += 1
            if self.calls == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(60)
            return torch.zeros(3, 80, self.h, self.w), state

    def render_shot(pipe, audio, image, prompt, out, settings, **kw):
        plan = plan_shot(audio, image, settings)
        r = Renderer()
        r.h, r.w = plan.height, plan.width
        render_direct(r, None, plan, settings, audio, Path(out))

    components.S2VModels = lambda *a, **k: "models"
    pipeline.render_shot = render_shot
    d = Path(sys.argv[1])
    sys.exit(main(["render-shot", "--ckpt", str(d / "ckpt"), "--audio", str(d / "in" / "a.wav"), "--image",
                   str(d / "in" / "f.png"), "--prompt", "p", "--out", str(d / "out" / "o.mp4"), "--device", "cpu",
                   "--size", "64*64", "--quiet"]))
""")


def test_render_shot_stopped_by_sigterm_exits_130_and_leaves_no_temporary(tmp_path):
    from tinymodel.demo_assets import cartoon_face, speech_like_audio, write_wav

    for name in ("ckpt", "in", "out"):
        (tmp_path / name).mkdir()
    write_wav(tmp_path / "in" / "a.wav", speech_like_audio(6.0))
    cartoon_face(tmp_path / "in" / "f.png", (64, 64))
    script = tmp_path / "render_shot_terminated.py"
    script.write_text(_RENDER_SHOT_TERMINATED)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=300)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "s2v render-shot: interrupted by SIGTERM; no partial output was left" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_a_temporary_of_a_temporary_is_named_after_the_final_file(tmp_path):
    final = tmp_path / "long.mp4"
    outer = temp_path_for(final)
    inner = temp_path_for(outer)  # Mp4Writer's video-only file inside a publish's temporary
    assert inner.name.count(".tmp-") == 1 and inner.name.startswith(".long.mp4.tmp-"), inner.name
    assert final_name_of(inner.name) == final_name_of(outer.name) == "long.mp4"
    assert final_name_of("long.mp4") == "long.mp4"


def test_sweep_removes_a_dead_writers_doubled_temporary(tmp_path):
    """The doubled names of earlier versions ("..long.mp4.tmp-P-a.mp4.tmp-P-b.mp4") are this
    output's too: the next render of it removes them once their writer is gone."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    doubled = tmp_path / f"..long.mp4.tmp-{proc.pid}-381db547.mp4.tmp-{proc.pid}-6d815025.mp4"
    doubled.write_bytes(b"x" * 48)
    other = tmp_path / f"..other.mp4.tmp-{proc.pid}-381db547.mp4.tmp-{proc.pid}-6d815025.mp4"
    other.write_bytes(b"x")
    assert sweep_stale_temps(tmp_path / "long.mp4") == [doubled]
    assert other.exists()


def test_main_gives_the_sigterm_handler_back(monkeypatch):
    """In-process callers (tests, notebooks) keep their own SIGTERM handler after ``main``."""
    from s2v import cli

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "cmd_validate", lambda a: 0)
    try:
        cli.main(["validate", "m.parquet"])
    except SystemExit:
        pass
    assert signal.getsignal(signal.SIGTERM) is before
