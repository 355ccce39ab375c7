"""Removing a directory tree the node owns, whatever its instance or sandbox did to it."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

__all__ = ["remove_tree"]


def remove_tree(path: Path) -> None:
    """``rm -rf path`` without following links; gone already is fine.

    The node runs as root in production, which removes an instance's or a
    sandbox's files whatever their modes; a node that is not root may meet a
    directory the app made unwritable (chmod 000): those are opened up first.
    """
    if not path.exists() and not path.is_symlink():
        return
    try:
        shutil.rmtree(path)
    except OSError:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                sub = os.path.join(dirpath, name)
                if not os.path.islink(sub):
                    with contextlib.suppress(OSError):
                        os.chmod(sub, 0o700)
        shutil.rmtree(path)
