"""The node's store of shipped files, shared read-only between instances by hard links.

An artifact's files are the same from one version to the next but for what
changed, and the same for every instance of one version. Creating a file costs
far more than linking one (0.87 ms against 0.03 ms per file on a busy ext4),
so a node keeps each content once, as ``contents/{sha256}`` (``.x`` for an
executable), owned by the node and read-only (0444, or 0555), and an instance's
tree gets a hard link to it: unpacking a new version creates only the files
whose content the node has not seen.

Why sharing is safe: the linked file is neither owned by nor writable for the
instance's uid (``runner`` hands an instance its directories and its own files,
never a linked one), so no instance can change what another reads. It can still
replace a shipped file in its own tree (unlink, write, rename: the directories
are its own), which is the rule apps live by: **shipped files are read-only in
place**; an app's writable state is its ``state_dir`` (never linked) and new
files. Linking is used only where the instance runs as its own uid (the bwrap
driver); a trusted ``process`` instance runs as the node and gets plain files.

Files over ``artifacts.extract.SHARED_MAX_BYTES`` are written out as the
instance's own. A content whose last instance is gone has one link left, the store's own:
``prune`` removes those.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from pathlib import Path

__all__ = ["ContentStore"]

#: A half-written temporary file older than this is a crash's leftover.
_STALE_SECONDS = 3600.0


class ContentStore:
    """``contents/`` under a node's data directory (same file system as its instances)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def link(self, data: bytes, executable: bool, dest: str) -> None:
        """Make ``dest`` (a new path) a hard link to the stored copy of ``data``."""
        path = self.root / (hashlib.sha256(data).hexdigest() + (".x" if executable else ""))
        for _ in range(2):
            if not path.exists():
                self._store(path, data, executable)
            try:
                os.link(path, dest, follow_symlinks=False)
                return
            except FileNotFoundError:
                if not os.path.isdir(os.path.dirname(dest)):
                    raise
                continue  # pruned between the check and the link: store it again
        raise FileNotFoundError(f"could not keep {path.name} in {self.root}")

    def _store(self, path: Path, data: bytes, executable: bool) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".new-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                os.fchmod(out.fileno(), 0o555 if executable else 0o444)
            os.replace(tmp, path)  # two extractions of one content: either copy will do
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def prune(self) -> int:
        """Remove the contents no instance links to any more; how many went."""
        removed = 0
        now = time.time()
        with os.scandir(self.root) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    continue
                temporary = entry.name.startswith(".new-")
                if (temporary and now - st.st_mtime > _STALE_SECONDS) or (
                    not temporary and st.st_nlink == 1
                ):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        return removed
