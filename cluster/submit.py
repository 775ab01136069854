"""``s2v submit``: send ``s2v run`` to a Ray cluster through the Ray Jobs API.

The job's entrypoint is a shell command line (that is how Ray runs it). It is built only from
the submitter's own command-line arguments, each quoted with ``shlex``; no manifest value is
ever part of it (the job reads the manifest itself). ``s2v submit``'s own options come before
``--``; everything after ``--`` is passed, as given, to the ``s2v run`` the job starts.

The default job server address is the loopback one that ``s2v run --address local`` / a
loopback head uses. Ray's token authentication (on by default in Ray 2.60) needs the client to
run with ``RAY_AUTH_MODE=token`` and the cluster's token in ``~/.ray/auth_token``, the file
named by ``RAY_AUTH_TOKEN_PATH`` or the ``RAY_AUTH_TOKEN`` variable; a refused request is
reported in one line saying so (exit 7), never as a traceback.

Exit codes: without ``--wait`` 0 submitted; with ``--wait`` the job's ``s2v run`` exit code
(docs/cluster.md), 1 if the job ended without one (stopped, or its runtime environment failed);
2 usage error; 7 the job server could not be reached or refused authentication; 130 interrupted
while waiting (the job keeps running).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

DEFAULT_JOB_SERVER = "http://127.0.0.1:8265"
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

EXIT_OK, EXIT_NO_CODE, EXIT_USAGE, EXIT_JOB_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 7, 130

#: ``s2v run`` options that ``s2v submit`` sets itself; given after ``--`` they are refused.
_OWN_RUN_OPTIONS = ("--run-dir", "--address")


class SubmitUsageError(ValueError):
    """Bad ``s2v submit`` arguments (exit 2)."""


@dataclass
class Submission:
    """What ``s2v submit`` sends: the job's command (argv and its shell form) and runtime env."""

    argv: list[str]
    runtime_env: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    submission_id: str | None = None

    @property
    def entrypoint(self) -> str:
        return shlex.join(self.argv)


def build_entrypoint(manifest: str | Path, run_dir: str | Path, run_args: list[str], python: str) -> str:
    return shlex.join(_run_argv(manifest, run_dir, run_args, python))


def _run_argv(manifest: str | Path, run_dir: str | Path, run_args: list[str], python: str) -> list[str]:
    return [python, "-m", "s2v", "run", str(Path(manifest).absolute()), "--run-dir", str(Path(run_dir).absolute()),
            "--address", "auto", *run_args]


def load_runtime_env(value: str) -> dict[str, Any]:
    """``--runtime-env``: a JSON or YAML file (or an inline JSON object) holding a mapping."""
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise SubmitUsageError(f"--runtime-env {value}: file not found")
        text = path.read_text()
    try:
        env = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            env = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SubmitUsageError(f"--runtime-env {value}: neither JSON nor YAML ({exc})") from None
    if not isinstance(env, dict):
        raise SubmitUsageError(f"--runtime-env {value}: expected a mapping (e.g. {{\"pip\": [...]}}), "
                               f"got {type(env).__name__}")
    return env


def build_submission(manifest: str, run_dir: str, run_args: list[str], *, python: str | None = None,
                     runtime_env: str | None = None, working_dir: str | None = None,
                     submission_id: str | None = None) -> Submission:
    """The job ``s2v submit`` would submit, without contacting Ray."""
    if run_args and run_args[0] == "--":
        run_args = run_args[1:]
    for arg in run_args:
        name = arg.split("=", 1)[0]
        if name in _OWN_RUN_OPTIONS:
            raise SubmitUsageError(f"{name} is an `s2v submit` option: give it before `--`, not among the "
                                   "`s2v run` options after it")
    env = load_runtime_env(runtime_env) if runtime_env else {}
    if working_dir is not None:
        if not Path(working_dir).is_dir():
            raise SubmitUsageError(f"--working-dir {working_dir}: not a directory")
        env["working_dir"] = str(Path(working_dir).absolute())
    argv = _run_argv(manifest, run_dir, list(run_args), python or sys.executable)
    return Submission(argv=argv, runtime_env=env, submission_id=submission_id,
                      metadata={"s2v_run_dir": str(Path(run_dir).absolute())})


def _make_client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _is_auth_error(exc: BaseException) -> bool:
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # pragma: no cover - ray is installed with the cluster extra
        AuthenticationError = ()  # type: ignore[assignment]  # noqa: N806
    if AuthenticationError and isinstance(exc, AuthenticationError):
        return True
    text = getattr(exc, "message", None) or str(exc)
    return isinstance(exc, RuntimeError) and ("status code 401" in text or "status code 403" in text)


def auth_error_line(address: str, exc: BaseException) -> str:
    """The one line printed when the job server refuses authentication."""
    mode = os.environ.get("RAY_AUTH_MODE")
    now = f"RAY_AUTH_MODE is {mode!r}" if mode else "RAY_AUTH_MODE is not set"
    detail = (getattr(exc, "message", None) or str(exc)).splitlines()[0].rstrip(".")
    return (f"s2v submit: error: the Ray job server at {address} refused authentication ({detail}). "
            f"{now}: run with RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token "
            "(or the file named by RAY_AUTH_TOKEN_PATH, or in RAY_AUTH_TOKEN); see docs/cluster.md, Security.")


async def _stream_logs(client, job_id: str, out: TextIO) -> None:
    async for lines in client.tail_job_logs(job_id):
        out.write(lines)
        out.flush()


def _wait(client, job_id: str, log_out: TextIO) -> tuple[str, int | None]:
    """Stream the job's logs until it ends; its final status and driver exit code."""
    try:
        asyncio.run(_stream_logs(client, job_id, log_out))
        streamed = True
    except Exception as exc:  # noqa: BLE001 - tailing is best effort; the outcome comes from polling
        print(f"s2v submit: log streaming stopped ({exc}); polling the job instead", file=sys.stderr, flush=True)
        streamed = False
    while str(client.get_job_status(job_id)) not in _TERMINAL:
        time.sleep(1.0)
    if not streamed:
        log_out.write(client.get_job_logs(job_id))
        log_out.flush()
    info = client.get_job_info(job_id)
    return str(info.status), getattr(info, "driver_exit_code", None)


def main_submit(manifest: str, run_dir: str, run_args: list[str], address: str | None, wait: bool,
                python: str | None, submission_id: str | None = None, *, runtime_env: str | None = None,
                working_dir: str | None = None, as_json: bool = False) -> int:
    try:
        sub = build_submission(manifest, run_dir, run_args, python=python, runtime_env=runtime_env,
                               working_dir=working_dir, submission_id=submission_id)
    except SubmitUsageError as exc:
        print(f"s2v submit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    address = address or DEFAULT_JOB_SERVER
    job_id = None
    try:
        client = _make_client(address)
        job_id = client.submit_job(entrypoint=sub.entrypoint, submission_id=sub.submission_id,
                                   runtime_env=sub.runtime_env or None, metadata=sub.metadata)
        summary: dict[str, Any] = {"job_id": job_id, "address": address, "entrypoint": sub.entrypoint,
                                   "runtime_env": sub.runtime_env}
        # with --json, stdout carries only the JSON summary; messages and the job's log go to stderr
        log_out = sys.stderr if as_json else sys.stdout
        print(f"submitted job {job_id}: {sub.entrypoint}", file=log_out, flush=True)
        if not wait:
            if as_json:
                print(json.dumps(summary, indent=1))
            return EXIT_OK
        status, code = _wait(client, job_id, log_out)
    except KeyboardInterrupt:
        if job_id is None:
            print("s2v submit: interrupted; nothing was submitted", file=sys.stderr)
        else:
            print(f"s2v submit: interrupted; job {job_id} keeps running (`ray job stop --address {address} "
                  f"{job_id}` stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConnectionError as exc:
        print(f"s2v submit: error: cannot reach the Ray job server at {address} ({exc}); start the cluster "
              "or give --address http://HEAD:8265", file=sys.stderr)
        return EXIT_JOB_SERVER
    except Exception as exc:
        if _is_auth_error(exc):
            print(auth_error_line(address, exc), file=sys.stderr)
            return EXIT_JOB_SERVER
        raise
    exit_code = int(code) if code is not None else (EXIT_OK if status == "SUCCEEDED" else EXIT_NO_CODE)
    print(f"job {job_id}: {status} (s2v run exit code {code})", file=log_out, flush=True)
    if as_json:
        print(json.dumps(summary | {"status": status, "driver_exit_code": code, "exit_code": exit_code},
                         indent=1))
    return exit_code
