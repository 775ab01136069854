"""Resolving manifest paths and keeping them inside the allowed roots.

A manifest is untrusted input: a path may try to leave the allowed directories with ``..``, an
absolute path, a symlink, or a URL that a media library would happily fetch. Paths here are only
ever resolved and compared as strings / stat'ed; nothing is passed to a shell.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# "scheme://..." in general, plus the schemes FFmpeg or PIL plugins understand without slashes
# ("file:x", "http:x", "concat:a|b", "data:..."): no URLs of any kind are accepted.
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_BARE_SCHEME_RE = re.compile(
    r"^(file|https?|ftps?|rtmps?|rtsp|s3|gs|data|concat|subfile|pipe|tcp|udp|async|cache):",
    re.IGNORECASE,
)


def looks_like_url(value: str) -> bool:
    return bool(_URL_RE.match(value) or _BARE_SCHEME_RE.match(value))


@dataclass(frozen=True)
class AllowedRoots:
    """Allowed directories, both as written (normalised) and with symlinks resolved."""

    lexical: tuple[str, ...]
    real: tuple[str, ...]

    @classmethod
    def from_paths(cls, roots: Sequence[str | Path]) -> AllowedRoots:
        lexical: list[str] = []
        real: list[str] = []
        for root in roots:
            absolute = os.path.normpath(os.path.abspath(os.fspath(root)))
            resolved = os.path.realpath(absolute)
            # A root reached through a symlink (e.g. /tmp -> /private/tmp) may be spelled either way.
            lexical.extend(p for p in (absolute, resolved) if p not in lexical)
            if resolved not in real:
                real.append(resolved)
        return cls(tuple(lexical), tuple(real))

    def describe(self) -> str:
        return ", ".join(self.real)


# How a user allows media outside the roots; every command that reads manifests takes the option.
ALLOW_HINT = ("to allow it, pass --allowed-root DIR (repeatable) to s2v run / s2v validate / s2v assemble; "
              "without it the only allowed root is the manifest's folder")


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    for root in roots:
        try:
            if os.path.commonpath([path, root]) == root:
                return True
        except ValueError:  # different drives on Windows
            continue
    return False


@dataclass(frozen=True)
class ResolvedPath:
    path: Path  # absolute, normalised, symlinks kept (what the user wrote)
    real: Path  # symlinks resolved (what would actually be opened)


@dataclass(frozen=True)
class PathIssue:
    rule: str
    message: str


def resolve_manifest_path(
    value: str, base_dir: Path, roots: AllowedRoots
) -> tuple[ResolvedPath | None, PathIssue | None]:
    """Resolve one manifest path against ``base_dir`` and check it stays inside ``roots``."""
    if "\x00" in value:
        return None, PathIssue("bad-path", "a path must not contain NUL characters")
    if looks_like_url(value):
        return None, PathIssue(
            "url", "a local file path is expected; URLs (file://, http://, ...) are refused"
        )
    joined = value if os.path.isabs(value) else os.path.join(os.fspath(base_dir), value)
    lexical = os.path.normpath(os.path.abspath(joined))
    if not _inside(lexical, roots.lexical):
        return None, PathIssue(
            "path-escape", f"resolves to {lexical}, outside the allowed roots ({roots.describe()}); {ALLOW_HINT}"
        )
    # realpath of the un-normalised path: "link/.." means the link target's parent to the OS.
    real = os.path.realpath(joined)
    if not _inside(real, roots.real):
        return None, PathIssue(
            "symlink",
            f"a symlink makes it resolve to {real}, outside the allowed roots ({roots.describe()}); {ALLOW_HINT}",
        )
    return ResolvedPath(Path(lexical), Path(real)), None
