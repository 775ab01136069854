"""``s2v submit``: send ``s2v run`` to a Ray cluster through the Ray Jobs API.

The job's entrypoint is a shell command line (that is how Ray runs it). It is built only from
the submitter's own command-line arguments, each quoted with ``shlex``; no manifest value is
ever part of it (the job reads the manifest itself). The default job server address is the
loopback one that ``s2v run --address local`` / a loopback head uses; Ray's token
authentication (on by default) is used by the client as configured for the user.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

DEFAULT_JOB_SERVER = "http://127.0.0.1:8265"
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def build_entrypoint(manifest: str | Path, run_dir: str | Path, run_args: list[str], python: str) -> str:
    argv = [python, "-m", "s2v", "run", str(Path(manifest).absolute()), "--run-dir", str(Path(run_dir).absolute()),
            "--address", "auto", *run_args]
    return shlex.join(argv)


def main_submit(manifest: str, run_dir: str, run_args: list[str], address: str | None, wait: bool,
                python: str | None, submission_id: str | None = None) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    if run_args and run_args[0] == "--":
        run_args = run_args[1:]
    entrypoint = build_entrypoint(manifest, run_dir, run_args, python or sys.executable)
    client = JobSubmissionClient(address or DEFAULT_JOB_SERVER)
    job_id = client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                               metadata={"s2v_run_dir": str(Path(run_dir).absolute())})
    print(f"submitted job {job_id}: {entrypoint}", flush=True)
    if not wait:
        return 0
    while True:
        status = client.get_job_status(job_id)
        if str(status) in _TERMINAL or status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(1.0)
    info = client.get_job_info(job_id)
    sys.stdout.write(client.get_job_logs(job_id))
    code = getattr(info, "driver_exit_code", None)
    print(f"job {job_id}: {info.status} (s2v run exit code {code})", flush=True)
    if code is not None:
        return int(code)
    return 0 if info.status == JobStatus.SUCCEEDED else 1
