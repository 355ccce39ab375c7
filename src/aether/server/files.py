"""The server's data directory is private: 0700 directories, 0600 files.

It holds the state store, the records (tokens' hashes, secrets of apps), their
WAL files, logs, artifacts and the bootstrap tokens. While a server runs, its
umask is 077, so everything it creates (SQLite's -wal and -shm files included,
which SQLite creates with its own default mode) is private from the start;
:func:`make_private` fixes what an older version or a restore left open.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "make_private", "private_umask"]

PRIVATE_UMASK = 0o077
_SQLITE = ("state.db", "records.db")
_SECRETS = ("admin.token", "join.token", "secrets.key")
_DIRS = ("logs", "artifacts", "blobs")


def make_private(data_dir: Path) -> None:
    """Create ``data_dir`` 0700 if needed; make it and the server's files in it private."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    for name in _SQLITE:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(data_dir / f"{name}{suffix}", 0o600)
    for name in _SECRETS:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(data_dir / name, 0o600)
    for name in _DIRS:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(data_dir / name, 0o700)
    logs = data_dir / "logs"
    if logs.is_dir():
        for root, dirs, files in os.walk(logs):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
            for f in files:
                os.chmod(os.path.join(root, f), 0o600)


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created inside are private (the umask is process-wide: a server's, not a library's)."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)
