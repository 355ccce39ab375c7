"""Secret files in an instance's tree (``[secrets.files]`` in aether.toml).

Each is written just before the instance starts, mode 0400, owned by the instance's
uid (or the node's where the instance runs as the node's uid). The path is inside
the app's tree: a path whose directories lead out of it (a symlink the artifact
shipped) is refused, and the file itself is created without following a link.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["SecretFileError", "write_secret_files"]


class SecretFileError(Exception):
    """A secret file could not be written where the app asked (the message says why)."""


def write_secret_files(app_dir: Path, files: dict[str, str], uid: int | None) -> None:
    """Write ``files`` (relative path -> content) under ``app_dir``, 0400."""
    root = app_dir.resolve()
    for rel, content in files.items():
        target = root / rel
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not parent.resolve().is_relative_to(root):
            raise SecretFileError(f"secret file {rel!r} leads out of the app's directory")
        if uid is not None:
            for directory in _created_dirs(root, parent):
                os.lchown(directory, uid, uid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)  # never write through what was there (a link, a shared file)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        except OSError as exc:
            raise SecretFileError(f"secret file {rel!r}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(content.encode())
            os.fchmod(fh.fileno(), 0o400)
            if uid is not None:
                os.fchown(fh.fileno(), uid, uid)


def _created_dirs(root: Path, parent: Path) -> list[Path]:
    """``parent`` and its ancestors below ``root`` (to give them to the instance)."""
    out: list[Path] = []
    while parent != root and parent.is_relative_to(root):
        out.append(parent)
        parent = parent.parent
    return out
