"""``s2v run`` / ``s2v status`` / ``s2v submit`` (registered into the ``s2v`` command).

Exit codes of ``s2v run``: see ``cluster.exit_codes`` and docs/cluster.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _run(a: argparse.Namespace) -> int:
    from cluster.driver import RunRequest, run
    from cluster.settings import EngineOptions, RunSettings
    from s2v.cli_segments import check_segment_sizes

    check_segment_sizes(a.segment_seconds, a.overlap_seconds)  # a shot's mode may be auto/parallel
    from render.model.hub import resolve_checkpoint

    ckpt = resolve_checkpoint(a.ckpt)  # a repo id: its snapshot in this machine's Hugging Face cache
    from render.model.checkpoint import DiTConfig, check_checkpoint_folder

    # What every rank's loader (S2VModels) would refuse, refused here: before Ray starts and the run
    # directory is touched, rather than as one failed attempt per shot.
    DiTConfig.from_json(check_checkpoint_folder(ckpt) / "config.json")
    settings = RunSettings(
        ckpt=str(ckpt.resolve()), crf=a.crf, infer_frames=a.infer_frames, motion_frames=a.motion_frames,
        official_frame_drop=a.official_frame_drop, start_from_ref=a.start_from_ref, cfg_batch=not a.no_cfg_batch,
        run_seed=a.run_seed, text_encoder_dtype=a.text_encoder_dtype, segment_seconds=a.segment_seconds,
        overlap_seconds=a.overlap_seconds, min_parallel_seconds=a.min_parallel_seconds, fast=a.fast,
        fp8=a.fp8, vae_dtype=a.vae_dtype,
    )
    if a.fast:
        if a.group_size != 1:
            raise ValueError(f"--fast with --group-size {a.group_size}: step caching runs on one GPU per shot; "
                             "use --group-size 1 (and --groups N for more GPUs)")
        import sys

        from render.model.fast.preset import FAST_SAMPLING

        print(f"--fast: fast-mode sampling {FAST_SAMPLING} for every shot whose manifest 'fast' cell is null "
              "(add --fp8 --vae-dtype bf16 for the rest of render-shot's --fast: the ranks' models)",
              file=sys.stderr, flush=True)
    engine = EngineOptions(
        group_size=a.group_size, groups=a.groups, slot_resource=a.slot_resource,
        collective_timeout_s=a.collective_timeout, handoff_timeout_s=a.handoff_timeout,
        group_start_timeout_s=a.group_start_timeout,
        group_start_retries=a.start_retries, node_max_failures=a.node_max_failures,
        shot_max_failures=a.max_failures, cpu_threads_per_rank=a.cpu_threads_per_rank,
        prep_threads=a.prep_threads, prep_text_encoder_device=a.text_encoder_device, keep_work=a.keep_work,
        parallel=a.parallel, offload=a.offload,
    )
    req = RunRequest(
        manifest=Path(a.manifest), run_dir=Path(a.run_dir), settings=settings, engine=engine, address=a.address,
        restart=a.restart, retry_failed=a.retry_failed, bind_public=a.bind_public,
        allowed_roots=[Path(p) for p in a.allowed_root] or None, check_media=not a.no_media_check,
        num_cpus=a.num_cpus, rerender=[sid for group in a.rerender for sid in group], strict=a.strict,
    )
    if not a.json:
        return run(req)
    import contextlib
    import json
    import sys

    from cluster import exit_codes

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON summary
        code = run(req)
    summary: dict[str, Any] = {"exit_code": code, "meaning": exit_codes.DESCRIPTIONS.get(code, "unknown"),
                               "manifest": str(Path(a.manifest).absolute()),
                               "run_dir": str(Path(a.run_dir).absolute()), "status": None}
    try:
        from cluster.status import status_dict

        summary["status"] = status_dict(a.run_dir)
    except (FileNotFoundError, ValueError, OSError):
        pass  # e.g. an invalid manifest: nothing was written to the run directory
    print(json.dumps(summary, indent=1, default=str))
    return code


def _status(a: argparse.Namespace) -> int:
    from cluster.status import main_status

    if a.html:
        import sys

        from cluster.report import write_report

        print(f"wrote {write_report(a.run_dir)}", file=sys.stderr)  # stderr: --json keeps stdout
    return main_status(a.run_dir, watch=a.watch, as_json=a.json)


def _submit(a: argparse.Namespace) -> int:
    from cluster.submit import main_submit

    return main_submit(a.manifest, a.run_dir, a.run_args, a.address, a.wait, a.python, a.submission_id,
                       runtime_env=a.runtime_env, working_dir=a.working_dir, as_json=a.json)


def submission_from_args(a: argparse.Namespace):
    """The job ``s2v submit`` would submit for parsed arguments (no Ray contacted)."""
    from cluster.submit import build_submission

    return build_submission(a.manifest, a.run_dir, a.run_args, python=a.python, runtime_env=a.runtime_env,
                            working_dir=a.working_dir, submission_id=a.submission_id)


def register(subparsers: Any) -> None:
    from render.model.hub import CKPT_HELP
    from render.settings import (
        DEFAULT_MIN_PARALLEL_SECONDS,
        DEFAULT_OVERLAP_SECONDS,
        DEFAULT_TARGET_SECONDS,
    )
    from render.settings import DEFAULT_SETTINGS as defaults

    p = subparsers.add_parser(
        "run", help="render a manifest on Ray (starts or joins a cluster); resumable",
        description="Render every shot of a manifest with render groups on Ray. The run directory is "
                    "the ledger and follows the manifest shot by shot: a rerun renders new shots and shots whose "
                    "inputs or settings changed, stitches again those whose crf/output changed, leaves the rest "
                    "alone and reports removed rows. Exit codes: 0 all done, 2 invalid manifest/usage, 3 "
                    "unreadable manifest, 4 another run holds the lease, 6 finished with failed shots (invalid rows "
                    "included) or shots the cluster could not render (pending: a rerun renders them), "
                    "130 interrupted.")
    p.add_argument("manifest", help="Parquet shot manifest (see s2v validate)")
    p.add_argument("--run-dir", required=True, help="run directory (ledger, logs, results.parquet)")
    p.add_argument("--ckpt", required=True, help=CKPT_HELP + "; the folder must be readable by every node")
    p.add_argument("--address", default="local",
                   help="'local' (start a private Ray on 127.0.0.1, default), 'auto' or HOST:PORT (join)")
    p.add_argument("--group-size", type=int, default=1, help="GPUs (ranks) per render group")
    p.add_argument("--groups", type=int, default=1, help="render groups")
    p.add_argument("--parallel", default="auto",
                   help="parallel dims of a group, e.g. 'ulysses=4', 'ulysses=2,cfg=2', 'ring=2,shard_weights=1' "
                        "(default auto: Ulysses when it divides the heads, else ring)")
    p.add_argument("--offload", action="store_true",
                   help="GPUs smaller than the model: each rank keeps the DiT's blocks in pinned host memory "
                        "(~27 GiB of pinned RAM per GPU) and streams them to its GPU one block ahead; same frames "
                        "(groups of one GPU)")
    p.add_argument("--restart", action="store_true", help="discard the run directory's state and start over")
    p.add_argument("--rerender", action="append", nargs="+", default=[], metavar="SHOT_ID",
                   help="discard these shots' work and render them again (repeatable)")
    p.add_argument("--retry-failed", action="store_true", help="give shots marked failed new attempts")
    p.add_argument("--allowed-root", action="append", default=[],
                   help="directory manifest paths must stay inside (repeatable; default: the manifest's)")
    p.add_argument("--no-media-check", action="store_true", help="skip decoding media during validation")
    p.add_argument("--strict", action="store_true",
                   help="refuse the whole run (exit 2, nothing rendered) when any manifest row is invalid; "
                        "by default invalid rows become failed shots (stage 'validation') and the rest render")
    p.add_argument("--run-seed", type=int, default=0, help="seeds of shots with a null seed derive from it")
    p.add_argument("--crf", type=int, default=defaults.crf,
                   help=f"H.264 quality, 0 (lossless) .. 51 (default {defaults.crf})")
    p.add_argument("--infer-frames", type=int, default=defaults.infer_frames,
                   help=f"frames per clip, a multiple of 4 (default {defaults.infer_frames}, official)")
    p.add_argument("--motion-frames", type=int, default=defaults.motion_frames,
                   help=f"frames handed to the next clip, 1 + 4k (default {defaults.motion_frames}, "
                        "official)")
    p.add_argument("--official-frame-drop", action="store_true",
                   help="drop clip 0's first 3 frames like the official code (video 3 frames ahead of audio)")
    p.add_argument("--start-from-ref", action="store_true", help="official --start_from_ref")
    p.add_argument("--no-cfg-batch", action="store_true", help="run the two CFG passes one after the other")
    p.add_argument("--fast", action="store_true",
                   help="fast mode's sampling (the audio-aware step cache) for shots whose manifest "
                        "'fast' cell is null; groups of one GPU only")
    p.add_argument("--fp8", action="store_true",
                   help="fp8 e4m3 linear layers in every rank's DiT (GPU sm89+; changes numbers slightly)")
    p.add_argument("--vae-dtype", default="fp32", choices=["fp32", "bf16"],
                   help="the writer rank's VAE precision (bf16: faster decode, slightly different pixels)")
    p.add_argument("--segment-seconds", type=float, default=DEFAULT_TARGET_SECONDS,
                   help="target segment length of shots split into parallel segments "
                        f"(default {DEFAULT_TARGET_SECONDS:g} s)")
    p.add_argument("--overlap-seconds", type=float, default=DEFAULT_OVERLAP_SECONDS,
                   help=f"overlap of neighbouring segments (default {DEFAULT_OVERLAP_SECONDS:g} s)")
    p.add_argument("--min-parallel-seconds", type=float, default=DEFAULT_MIN_PARALLEL_SECONDS,
                   help="segment_mode auto splits shots longer than this "
                        f"(default {DEFAULT_MIN_PARALLEL_SECONDS:g} s)")
    p.add_argument("--keep-work", action="store_true", help="keep segment intermediates after publishing")
    p.add_argument("--text-encoder-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="umT5 runs on CPU once per unique prompt")
    p.add_argument("--slot-resource", default=None,
                   help="Ray resource one rank takes (GPU, render_slot, CPU; default: detected)")
    p.add_argument("--collective-timeout", type=float, default=30.0,
                   help="seconds before a group collective with a dead peer fails")
    p.add_argument("--handoff-timeout", type=float, default=600.0,
                   help="seconds the other ranks of a group wait for the writer rank's VAE decode/encode and "
                        "file writes of one clip (or one segment's conditioning)")
    p.add_argument("--group-start-timeout", type=float, default=300.0)
    p.add_argument("--start-retries", type=int, default=3, help="failed starts of a group before it is given up")
    p.add_argument("--node-max-failures", type=int, default=3, help="failures before a node is excluded")
    p.add_argument("--max-failures", type=int, default=3,
                   help="failed attempts of one shot (of any kind) before it is marked failed")
    p.add_argument("--cpu-threads-per-rank", type=int, default=1, help="torch threads of a CPU rank")
    p.add_argument("--prep-threads", type=int, default=4,
                   help="torch threads of the actor that embeds prompts and computes audio features")
    p.add_argument("--text-encoder-device", default="cpu", metavar="cpu|cuda",
                   help="where the preparation actor runs umT5-XXL: cpu (default; stays loaded) or cuda (the node's "
                        "GPU, loaded per chunk of prompts and released at once; needs ~11 GiB (bf16) / 21 GiB "
                        "(float32) free on the card meanwhile). Prompts embedded on a GPU differ at rounding level, "
                        "so switching renders the run's shots again")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: detected)")
    p.add_argument("--bind-public", action="store_true",
                   help="bind the local dashboard/job server to all interfaces (requires Ray token auth)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary (exit code, run directory state) on stdout at the end; "
                        "progress messages go to stderr")
    p.set_defaults(fn=_run)

    p = subparsers.add_parser("status", help="print the state of a run directory (live or finished)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="refresh every SECONDS")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", action="store_true",
                   help="also rewrite RUN_DIR/index.html now (the run's driver rewrites it as it goes)")
    p.set_defaults(fn=_status)

    p = subparsers.add_parser(
        "submit", help="submit `s2v run` to a Ray cluster through the Jobs API",
        usage="s2v submit [-h] MANIFEST --run-dir DIR [--address URL] [--wait] [--runtime-env FILE] "
              "[--working-dir DIR] [--python PY] [--submission-id ID] [--json] [-- RUN_OPTIONS...]",
        description="Submit `s2v run MANIFEST --run-dir DIR --address auto RUN_OPTIONS` as a Ray job. Options of "
                    "`s2v submit` come before `--`; everything after `--` goes, as given, to `s2v run` (e.g. "
                    "-- --ckpt /models/Wan2.2-S2V-14B --groups 8). Paths must be valid on the cluster. "
                    "Ray token authentication: run with RAY_AUTH_MODE=token and the cluster's token in "
                    "~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN). Exit codes: 0 submitted "
                    "(with --wait: the job's `s2v run` exit code, 1 when it has none), 2 usage, 7 job server "
                    "unreachable or authentication refused, 130 interrupted while waiting (the job keeps "
                    "running).")
    p.add_argument("manifest", help="Parquet shot manifest, as the cluster sees it")
    p.add_argument("--run-dir", required=True, help="run directory, as the cluster sees it")
    p.add_argument("--address", default=None, help="job server URL (default http://127.0.0.1:8265)")
    p.add_argument("--wait", action="store_true",
                   help="stream the job's log while it runs; exit with its `s2v run` exit code")
    p.add_argument("--runtime-env", default=None, metavar="FILE",
                   help="Ray runtime environment of the job: a JSON or YAML file (or an inline JSON object)")
    p.add_argument("--working-dir", default=None, metavar="DIR",
                   help="upload DIR as the job's working directory (runtime_env working_dir)")
    p.add_argument("--python", default=None, help="python of the cluster's environment (default: this one)")
    p.add_argument("--submission-id", default=None)
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout (job id, entrypoint; with --wait status and exit code); "
                        "the job's log goes to stderr")
    p.set_defaults(fn=_submit, run_args=[])
