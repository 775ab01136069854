"""Exit codes of ``s2v run`` (documented in docs/cluster.md; cron wrappers rely on them)."""

from __future__ import annotations

EXIT_OK = 0  # every shot of the manifest is done
EXIT_INTERNAL = 1  # unexpected internal error (traceback printed)
EXIT_INVALID = 2  # invalid manifest or command-line usage (message says which row/column/option)
EXIT_UNREADABLE = 3  # the manifest file cannot be read at all
EXIT_LEASE_HELD = 4  # another run holds the run directory's lease; nothing was rendered
EXIT_FINGERPRINT_CHANGED = 5  # only with RunRequest.refuse_changed (s2v demo): a published shot changed
# the run finished but some shots failed, manifest rows were invalid, or shots were left pending for
# want of a render group (cluster busy...: a rerun renders them) (results.parquet, s2v status)
EXIT_FAILED_SHOTS = 6
# the run directory's location is full, read-only or forbidden (one line names the path), or no Ray
# cluster answers at --address (one line says how to start one)
EXIT_ENVIRONMENT = 7
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM; committed work is kept, a rerun resumes

DESCRIPTIONS: dict[int, str] = {
    EXIT_OK: "all shots done",
    EXIT_INTERNAL: "internal error",
    EXIT_INVALID: "invalid manifest or usage",
    EXIT_UNREADABLE: "manifest unreadable",
    EXIT_LEASE_HELD: "another run holds the lease",
    EXIT_FINGERPRINT_CHANGED: "a published shot changed and changes were refused (use --restart)",
    EXIT_FAILED_SHOTS: "finished with failed or unrendered shots",
    EXIT_ENVIRONMENT: "the environment: run directory full, read-only or forbidden, or no Ray cluster at --address",
    EXIT_INTERRUPTED: "interrupted; rerun to resume",
}
