"""Staging: the built tree kept between builds and synced, not rebuilt."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aether.artifacts.ignore import IGNORE_FILE, IgnoreRules
from aether.errors import BadRequestError

__all__ = ["Wanted", "locked", "sync_tree", "walk_tree"]


@dataclass(frozen=True, slots=True)
class Wanted:
    kind: Literal["dir", "file", "symlink"]
    src: str = ""
    link: bool = False  # hardlink from the cache instead of copying
    target: str = ""


def walk_tree(
    root: Path, prefix: str, rules: IgnoreRules | None, out: dict[str, Wanted], link: bool
) -> None:
    """Add ``root``'s tree (not following symlinks) to ``out`` under ``prefix``."""
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            children = list(it)
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            st = child.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if rules is not None and rules.is_ignored(rel, is_dir=is_dir):
                continue
            dest = f"{prefix}{rel}"
            if is_dir:
                out[dest] = Wanted("dir")
                pending.append(rel)
            elif stat.S_ISREG(st.st_mode):
                out[dest] = Wanted("file", src=child.path, link=link)
            elif stat.S_ISLNK(st.st_mode):
                out[dest] = Wanted("symlink", target=os.readlink(child.path))
            else:
                raise BadRequestError(
                    f"{root / rel} is a special file (device, fifo or socket); apps hold only "
                    f"files, directories and symlinks (add it to {IGNORE_FILE})",
                    code="special_file",
                )


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk_a, chunk_b = fa.read(1 << 16), fb.read(1 << 16)
            if chunk_a != chunk_b:
                return False
            if not chunk_a:
                return True


def _up_to_date(want: Wanted, have: os.stat_result, staged: str) -> bool:
    """Whether the staged file already equals ``want.src``, without reading it if possible.

    Dependencies are hardlinked, so the same inode proves equality; a link to
    another inode (an older cache entry) is replaced, and only a private copy (a
    filesystem without hardlinks) is compared byte for byte: npm gives every
    extracted file the same mtime, so size and mtime prove nothing there. Source
    files are copies: equal size, mtime and exec bit, and a source ctime older
    than the copy (ctime cannot be set by tools, unlike mtime, which ``tar`` or
    ``touch -r`` restore) mean it was not rewritten since.
    """
    src = os.stat(want.src, follow_symlinks=False)
    if (src.st_dev, src.st_ino) == (have.st_dev, have.st_ino):
        return True
    if (src.st_mode & 0o111) != (have.st_mode & 0o111) or src.st_size != have.st_size:
        return False
    if want.link:
        return have.st_nlink == 1 and _same_bytes(want.src, staged)
    return (
        have.st_nlink == 1
        and src.st_mtime_ns == have.st_mtime_ns
        and src.st_ctime_ns < have.st_ctime_ns
    )


def _place_file(want: Wanted, dest: Path) -> None:
    """Put ``want.src`` at ``dest`` without ever writing into an existing inode."""
    with contextlib.suppress(FileNotFoundError):
        dest.unlink()
    if want.link:
        try:
            os.link(want.src, dest, follow_symlinks=False)
            return
        except OSError:
            pass  # another filesystem, or no hardlinks there: copy
    tmp = dest.with_name(f".{dest.name}.aether-tmp")
    shutil.copy2(want.src, tmp, follow_symlinks=False)
    os.replace(tmp, dest)


def _remove(path: Path, is_dir: bool) -> None:
    if is_dir:
        shutil.rmtree(path)
    else:
        path.unlink()


def sync_tree(staging: Path, wanted: dict[str, Wanted]) -> tuple[int, int]:
    """Make ``staging`` hold exactly ``wanted``; returns (files written, entries removed)."""
    staging.mkdir(parents=True, exist_ok=True)
    existing: dict[str, os.stat_result] = {}
    removed = 0
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(staging / rel_dir if rel_dir else staging) as it:
            children = list(it)
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            st = child.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            want = wanted.get(rel)
            kind = "dir" if is_dir else "file" if stat.S_ISREG(st.st_mode) else "other"
            if stat.S_ISLNK(st.st_mode):
                kind = "symlink"
            if want is None or want.kind != kind:
                _remove(Path(child.path), is_dir)
                removed += 1
                continue
            existing[rel] = st
            if is_dir:
                pending.append(rel)
    written = 0
    for rel in sorted(wanted):  # parents sort before their children
        want = wanted[rel]
        dest = staging / rel
        have = existing.get(rel)
        if want.kind == "dir":
            if have is None:
                dest.mkdir()
        elif want.kind == "symlink":
            if have is None or os.readlink(dest) != want.target:
                with contextlib.suppress(FileNotFoundError):
                    dest.unlink()
                os.symlink(want.target, dest)
                written += 1
        elif have is None or not _up_to_date(want, have, str(dest)):
            _place_file(want, dest)
            written += 1
    return written, removed


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
