"""What a provenance statement says about the source: read from the disk and from git.

The shell half of ``aether.artifacts.provenance``: the source tree's digest (its
files as the build copies them, ``.aetherignore`` and the default ignores
applied, ``node_modules`` left out), the digests of the lockfiles at its top,
and, when the tree is in a git repository, ``git rev-parse HEAD``, the
``origin`` remote and whether the work tree is dirty.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from aether.artifacts.build.staging import Wanted, walk_tree
from aether.artifacts.ignore import IgnoreRules
from aether.artifacts.provenance import SourceFacts

__all__ = ["LOCKFILES", "read_source_facts"]

LOCKFILES = (
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "requirements.txt",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
    "pdm.lock",
)
_GIT_TIMEOUT = 10.0


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """``sha256:`` over the sorted lines ``kind path mode sha256-or-target`` of the tree."""
    wanted: dict[str, Wanted] = {}
    walk_tree(root, "", IgnoreRules.for_root(root, ("node_modules/",)), wanted, False)
    digest = hashlib.sha256()
    for rel in sorted(wanted):
        entry = wanted[rel]
        if entry.kind == "file":
            mode = os.stat(entry.src).st_mode & 0o777
            line = f"file {rel} {mode:o} {_file_sha256(Path(entry.src))}\n"
        elif entry.kind == "symlink":
            line = f"symlink {rel} {entry.target}\n"
        else:
            line = f"dir {rel}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return "sha256:" + digest.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def public_remote(url: str) -> str:
    """``url`` without any user or password (an https remote may carry a token)."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def read_source_facts(root: Path) -> SourceFacts:
    """The facts about ``root`` a provenance statement records."""
    locks = tuple(
        (name, _file_sha256(root / name)) for name in LOCKFILES if (root / name).is_file()
    )
    commit = _git(root, "rev-parse", "--verify", "HEAD")
    remote = dirty = None
    if commit:
        origin = _git(root, "remote", "get-url", "origin")
        remote = public_remote(origin) if origin else None
        status = _git(root, "status", "--porcelain", "--", ".")
        dirty = bool(status) if status is not None else None
    return SourceFacts(
        tree_digest=tree_digest(root),
        lockfiles=locks,
        git_commit=commit or None,
        git_remote=remote,
        git_dirty=dirty,
    )
