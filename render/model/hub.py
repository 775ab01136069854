"""``--ckpt`` as given on a command line: a checkpoint folder, or a Hugging Face repo id.

Every CLI entry that takes ``--ckpt`` calls :func:`resolve_checkpoint`. A value that is an
existing path is used as it is; a value shaped like ``owner/name`` that is no path here (e.g.
``Wan-AI/Wan2.2-S2V-14B``) is fetched with ``huggingface_hub.snapshot_download`` into the
Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` only an already
cached copy is used. When neither works the error is one line naming the download command.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from render.model.checkpoint import CheckpointError

OFFICIAL_REPO = "Wan-AI/Wan2.2-S2V-14B"
# owner/name as the Hub spells them: letters, digits, '-', '_', '.'; no leading '.' or '-'.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def is_hub_repo_id(value: str) -> bool:
    """True for ``owner/name`` that is no path on this machine. A value whose first part is an
    existing folder (``models/missing``) is a mistyped path, not a repo id: it keeps the plain
    "not found" error instead of a download attempt."""
    if not _REPO_ID.fullmatch(value) or ".." in value or "--" in value or value.endswith(".git"):
        return False
    return not Path(value).exists() and not Path(value.split("/")[0]).exists()


def download_command(repo_id: str) -> str:
    """The shell command that downloads ``repo_id`` with the installed huggingface_hub's CLI
    (``hf``; older releases ship only ``huggingface-cli``)."""
    folder = "./" + repo_id.split("/")[1]
    cli = "hf" if shutil.which("hf") or not shutil.which("huggingface-cli") else "huggingface-cli"
    return f"{cli} download {repo_id} --local-dir {folder}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _download_error(repo_id: str, why: str) -> CheckpointError:
    command = download_command(repo_id)
    folder = command.rsplit(" ", 1)[1]
    return CheckpointError(f"--ckpt {repo_id}: {why}; download it (tens of GB) with `{command}` "
                           f"and pass --ckpt {folder}")


def resolve_checkpoint(ckpt: str | Path) -> Path:
    """The checkpoint folder for ``--ckpt``: an existing path as it is, a repo id's snapshot in
    the Hugging Face cache (downloaded unless offline). Raises :class:`CheckpointError`."""
    value = str(ckpt)
    path = Path(value).expanduser()
    if path.exists() or not is_hub_repo_id(value):
        if not path.is_dir():
            raise CheckpointError(f"--ckpt {value}: checkpoint folder not found")
        return path
    offline = _offline()
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise _download_error(value, "is a Hugging Face repo id but huggingface_hub is not installed") from None
    try:
        folder = snapshot_download(value, local_files_only=offline)
    except Exception as e:  # offline and not cached, no network, unknown or gated repo, disk full...
        why = ("is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it" if offline
               else f"download from the Hugging Face Hub failed ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else 'no message'})")
        raise _download_error(value, why) from None
    return Path(folder)


# What a --ckpt option accepts, for every command that has one.
CKPT_HELP = ("checkpoint folder (official Wan2.2-S2V-14B layout), or a Hugging Face repo id such as "
             "Wan-AI/Wan2.2-S2V-14B: downloaded into the Hugging Face cache (HF_HOME) unless HF_HUB_OFFLINE=1")
