"""The ``s2v`` command line: --help/--version, usage errors, validate's listing, submit's parsing."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import submit as submit_mod
from manifests.schema import write_manifest
from s2v.cli import main, package_version, parse_args
from s2v.cli_run import submission_from_args
from tests.manifests.malformed_cases import make_media, rows

SUBCOMMANDS = ["render-shot", "demo", "validate", "run", "status", "submit", "assemble", "qa"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code or 0


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_answers_help(cmd, capsys):
    assert _exit_code([cmd, "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: s2v " + cmd)


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_usage_errors_exit_2(cmd, capsys):
    assert _exit_code([cmd, "--no-such-option"]) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["run", "m.parquet", "--run-dir", "r", "--ckpt", "c", "--stepz", "3"],
    ["render-shot", "--ckpt", "c", "--audio", "a.wav", "--image", "i.png", "--prompt", "p", "--out", "o.mp4",
     "--stepz", "3"],
    ["-v", "qa", "v.mp4", "--stepz", "3"],
])
def test_an_unknown_option_shows_the_subcommands_usage(argv, capsys):
    cmd = next(x for x in argv if not x.startswith("-"))
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: s2v {cmd} [-h]"), err
    assert err.rstrip().endswith(f"s2v {cmd}: error: unrecognized arguments: --stepz 3"), err


def test_an_unknown_option_before_the_subcommand_shows_the_top_usage(capsys):
    assert _exit_code(["--stepz", "run", "m.parquet", "--run-dir", "r", "--ckpt", "c"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: s2v [-h]") and "unrecognized arguments: --stepz" in err, err


def test_version_and_no_subcommand(capsys):
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"s2v {package_version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", package_version())
    assert _exit_code([]) == 2


def test_version_from_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "s2v", "--version"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("s2v ")


# --- validate ----------------------------------------------------------------------------------

@pytest.fixture
def bad_manifest(tmp_path) -> Path:
    """200 rows, each with steps out of range; every 4th also with an unknown sampler: 250 errors."""
    make_media(tmp_path)
    table = rows(n=200)
    for i, row in enumerate(table):
        row["steps"] = 0
        if i % 4 == 0:
            row["sampler"] = "euler-ish"
    write_manifest(table, tmp_path / "bad.parquet")
    return tmp_path / "bad.parquet"


def _listed(out: str) -> int:
    return len(re.findall(r"(?m)^\d+\s+shot\d+\s", out))


def test_validate_options_before_the_manifest(tmp_path, capsys):
    make_media(tmp_path)
    write_manifest(rows(), tmp_path / "m.parquet")
    assert main(["validate", "--json", "--no-media-check", str(tmp_path / "m.parquet")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["rows"] == 2 and data["problems"] == []
    assert main(["validate", "--allowed-root", str(tmp_path), str(tmp_path / "m.parquet"), "--all"]) == 0
    out = capsys.readouterr().out
    assert "OK (2 shot(s))" in out and out.rstrip().splitlines()[-1].startswith("summary: 0 error(s)")
    assert _exit_code(["validate"]) == 2  # no manifest: usage


def test_validate_summary_and_cap(bad_manifest, capsys):
    assert main(["validate", str(bad_manifest), "--no-media-check"]) == 2
    out = capsys.readouterr().out
    assert _listed(out) == 50
    lines = out.rstrip().splitlines()
    assert lines[-1] == ("summary: 250 error(s), 0 warning(s); 200 of 200 row(s) with problems; "
                         f"by rule: range 200, {_sampler_rule(bad_manifest)} 50")
    assert "200 more problem(s) not listed" in out
    assert len(lines) < 70

    assert main(["validate", "--max-problems", "7", str(bad_manifest), "--no-media-check"]) == 2
    assert _listed(capsys.readouterr().out) == 7
    assert main(["validate", "--all", str(bad_manifest), "--no-media-check"]) == 2
    out = capsys.readouterr().out
    assert _listed(out) == 250 and "not listed" not in out

    assert main(["validate", "--json", str(bad_manifest), "--no-media-check"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert len(data["problems"]) == data["errors"] == 250 and data["rows_with_problems"] == 200
    assert data["by_rule"]["range"] == 200 and sum(data["by_rule"].values()) == 250
    assert data["summary"] == lines[-1]


def _sampler_rule(manifest: Path) -> str:
    from manifests import validate_manifest

    return next(p.rule for p in validate_manifest(manifest, check_media=False).problems if p.column == "sampler")


def test_run_json_prints_a_summary_on_stdout(tmp_path, tiny_ckpt, capsys):
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 but not really")
    code = main(["run", str(tmp_path / "junk.parquet"), "--run-dir", str(tmp_path / "run"), "--ckpt", str(tiny_ckpt),
                 "--no-media-check", "--json"])
    out, err = capsys.readouterr()
    assert code == 3
    data = json.loads(out)  # stdout holds only the JSON summary; the problem listing went to stderr
    assert (data["exit_code"], data["meaning"], data["status"]) == (3, "manifest unreadable", None)
    assert data["run_dir"] == str(tmp_path / "run") and "not-parquet" in err


# --- submit ------------------------------------------------------------------------------------

def test_submit_splits_its_own_options_from_the_run_options(tmp_path):
    a = parse_args(["-v", "submit", "m.parquet", "--run-dir", "runs/b1", "--wait", "--json", "--python", "/py",
                    "--", "--ckpt", "/models/a b", "--groups", "8", "--wait"])
    assert (a.cmd, a.manifest, a.run_dir, a.wait, a.json) == ("submit", "m.parquet", "runs/b1", True, True)
    assert a.run_args == ["--ckpt", "/models/a b", "--groups", "8", "--wait"]
    sub = submission_from_args(a)
    assert sub.argv == ["/py", "-m", "s2v", "run", str(Path("m.parquet").absolute()),
                        "--run-dir", str(Path("runs/b1").absolute()), "--address", "auto",
                        "--ckpt", "/models/a b", "--groups", "8", "--wait"]
    assert shlex.split(sub.entrypoint) == sub.argv and sub.runtime_env == {}
    # options may come in any order before "--"; no "--" means no run options
    a = parse_args(["submit", "--wait", "--run-dir", "D", "m.parquet"])
    assert a.run_args == [] and a.manifest == "m.parquet" and a.wait


def test_submit_runtime_env_and_working_dir(tmp_path):
    (tmp_path / "env.yaml").write_text("pip:\n  - requests\nenv_vars:\n  OMP_NUM_THREADS: '1'\n")
    a = parse_args(["submit", "m.parquet", "--run-dir", "D", "--runtime-env", str(tmp_path / "env.yaml"),
                    "--working-dir", str(tmp_path), "--", "--ckpt", "C"])
    env = submission_from_args(a).runtime_env
    assert env == {"pip": ["requests"], "env_vars": {"OMP_NUM_THREADS": "1"}, "working_dir": str(tmp_path)}
    (tmp_path / "env.json").write_text('{"env_vars": {"A": "1"}}')
    a = parse_args(["submit", "m", "--run-dir", "D", "--runtime-env", str(tmp_path / "env.json")])
    assert submission_from_args(a).runtime_env == {"env_vars": {"A": "1"}}


def test_submit_usage_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(submit_mod, "_make_client", lambda address: pytest.fail("no job may be submitted"))
    # run options without "--" are not guessed at
    assert _exit_code(["submit", "m.parquet", "--run-dir", "D", "--ckpt", "C"]) == 2
    assert _exit_code(["submit", "m.parquet", "--", "--ckpt", "C"]) == 2  # --run-dir is required
    capsys.readouterr()
    assert main(["submit", "m.parquet", "--run-dir", "D", "--", "--run-dir", "E"]) == 2
    assert "give it before `--`" in capsys.readouterr().err
    assert main(["submit", "m.parquet", "--run-dir", "D", "--runtime-env", str(tmp_path / "nope.yaml")]) == 2
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert main(["submit", "m.parquet", "--run-dir", "D", "--runtime-env", str(tmp_path / "list.yaml")]) == 2
    assert "expected a mapping" in capsys.readouterr().err


def _raise(exc):
    def make(address):
        raise exc
    return make


@pytest.mark.parametrize("kind", ["ray", "http"])
def test_submit_authentication_error_is_one_actionable_line(kind, capsys, monkeypatch):
    if kind == "ray":
        from ray.exceptions import AuthenticationError

        exc = AuthenticationError("Authentication failed: the request had no token")
    else:
        exc = RuntimeError("Request failed with status code 401: Unauthorized.")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(submit_mod, "_make_client", _raise(exc))
    code = main(["submit", "m.parquet", "--run-dir", "D", "--address", "http://head:8265", "--", "--ckpt", "C"])
    out, err = capsys.readouterr()
    assert code == submit_mod.EXIT_JOB_SERVER == 7 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "http://head:8265" in err and "RAY_AUTH_MODE=token" in err and "RAY_AUTH_MODE is not set" in err
    assert "~/.ray/auth_token" in err and "RAY_AUTH_TOKEN_PATH" in err and "RAY_AUTH_TOKEN" in err


def test_submit_unreachable_job_server(capsys, monkeypatch):
    monkeypatch.setattr(submit_mod, "_make_client", _raise(ConnectionError("Failed to connect to Ray")))
    assert main(["submit", "m.parquet", "--run-dir", "D"]) == 7
    assert "cannot reach the Ray job server at http://127.0.0.1:8265" in capsys.readouterr().err


class FakeJobs:
    """A JobSubmissionClient stand-in: a job that logs two chunks and ends with s2v run's exit 6."""

    def __init__(self):
        self.submitted = {}

    def submit_job(self, **kw):
        self.submitted = kw
        return "raysubmit_1"

    async def tail_job_logs(self, job_id):
        yield "rendering shot00\n"
        yield "done: 1 failed\n"

    def get_job_status(self, job_id):
        return "FAILED"

    def get_job_info(self, job_id):
        return type("Info", (), {"status": "FAILED", "driver_exit_code": 6})()

    def get_job_logs(self, job_id):  # pragma: no cover - only when streaming fails
        raise AssertionError("logs were streamed")


@pytest.mark.parametrize("as_json", [False, True])
def test_submit_wait_streams_logs_and_exits_with_the_jobs_code(as_json, tmp_path, capsys, monkeypatch):
    jobs = FakeJobs()
    monkeypatch.setattr(submit_mod, "_make_client", lambda address: jobs)
    argv = ["submit", "m.parquet", "--run-dir", str(tmp_path / "run"), "--wait", "--working-dir", str(tmp_path),
            *(["--json"] if as_json else []), "--", "--ckpt", "C"]
    assert main(argv) == 6
    out, err = capsys.readouterr()
    assert jobs.submitted["runtime_env"] == {"working_dir": str(tmp_path)}
    assert jobs.submitted["metadata"] == {"s2v_run_dir": str(tmp_path / "run")}
    log = err if as_json else out
    assert "rendering shot00\ndone: 1 failed\n" in log and "job raysubmit_1: FAILED (s2v run exit code 6)" in log
    if as_json:
        data = json.loads(out)
        assert (data["job_id"], data["status"], data["exit_code"]) == ("raysubmit_1", "FAILED", 6)
        assert shlex.split(data["entrypoint"])[-4:] == ["--address", "auto", "--ckpt", "C"]


def _read_only_probe(monkeypatch, directory: Path) -> None:
    """Root ignores permission bits: a write in ``directory`` fails the way a read-only mount does."""
    import errno
    import os

    real_open = os.open

    def fake_open(path, flags, *args, **kw):
        if Path(path).parent == directory and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", fake_open)


def test_render_shot_to_a_read_only_output_directory_is_one_line_before_anything_loads(tmp_path, capsys,
                                                                                        monkeypatch):
    import render.model.components as components

    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    for name in ("a.wav", "f.png"):
        (tmp_path / name).write_bytes(b"x")
    _read_only_probe(monkeypatch, out_dir)
    monkeypatch.setattr(components, "S2VModels", lambda *a, **k: pytest.fail("no model may be loaded"))
    code = main(["render-shot", "--ckpt", str(tmp_path), "--audio", str(tmp_path / "a.wav"), "--image",
                 str(tmp_path / "f.png"), "--prompt", "p", "--out", str(out_dir / "o.mp4"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 7, err
    assert len(err.strip().splitlines()) == 1, err
    assert str(out_dir) in err and "Read-only file system (EROFS)" in err


def test_run_fails_a_shot_with_an_unwritable_output_directory_alone(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cluster.engine import _unwritable_output

    ro, ok = tmp_path / "ro", tmp_path / "ok"
    ro.mkdir()
    _read_only_probe(monkeypatch, ro)
    reason = _unwritable_output(SimpleNamespace(output=str(ro / "s.mp4")))
    assert reason is not None and "\n" not in reason
    assert str(ro) in reason and "EROFS" in reason
    assert _unwritable_output(SimpleNamespace(output=str(ok / "s.mp4"))) is None
    assert ok.is_dir() and list(ok.iterdir()) == []  # the probe file was removed


@pytest.mark.parametrize("cmd", ["render-shot", "run"])
def test_overlap_not_shorter_than_the_segment_is_a_usage_error(cmd, tmp_path, capsys):
    for name in ("a.wav", "f.png", "m.parquet"):
        (tmp_path / name).write_bytes(b"x")
    if cmd == "render-shot":
        argv = ["render-shot", "--ckpt", str(tmp_path), "--audio", str(tmp_path / "a.wav"), "--image",
                str(tmp_path / "f.png"), "--prompt", "p", "--out", str(tmp_path / "o.mp4"), "--device", "cpu",
                "--segment-mode", "parallel"]
    else:
        argv = ["run", str(tmp_path / "m.parquet"), "--run-dir", str(tmp_path / "run"), "--ckpt", str(tmp_path)]
    code = main([*argv, "--segment-seconds", "4", "--overlap-seconds", "4"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--overlap-seconds 4 must be smaller than --segment-seconds 4" in err
    assert not (tmp_path / "run").exists()
