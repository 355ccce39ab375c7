"""The client's pack cache: per tree, what the last pack learnt, so a redeploy re-reads little.

For one tree (keyed by its real path) it keeps, in the deploy cache directory:

- the **file table**: ``path -> (size, mtime_ns, ctime_ns, inode, sha256)``. A file
  whose stat still matches is not read again; any change (content, chmod, a
  replaced file) changes at least one of them. Entries whose mtime or ctime lie
  within ``RACY_NS`` of the moment the table is saved are not kept ("racy": a
  write in the same clock tick could go unseen), so they are re-hashed next time;
- the **data members**: each file content's compressed data segment
  (``aether.artifacts.framing``), so an unchanged file is not compressed again.
  A member is checked against its sha256 and size when it is used (inflating
  and hashing it costs a fraction of compressing), so a damaged cache can cost
  time but never change an artifact;
- the **server's blobs**: per server URL, the file contents that server was last
  known to hold, so a redeploy asks it only about the others. It is only a
  hint: if the server lost one, assembly says so and the client asks again.

Everything is written atomically (a new file, then a rename); an unreadable cache
is treated as empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether.artifacts.framing import padding

__all__ = ["RACY_NS", "PackCache", "StatKey", "stat_key"]

#: Files changed this recently (before the save) are not trusted to the table.
RACY_NS = 2_000_000_000
#: Members kept per tree at most (bytes); beyond it files are compressed each pack.
MAX_MEMBER_BYTES = 256 << 20
_VERSION = 1

StatKey = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class PackCache:
    """One tree's cache; ``load`` it, use it for one pack, ``save`` it."""

    directory: Path
    key: str
    files: dict[str, tuple[StatKey, str]] = field(default_factory=dict)
    members: dict[str, bytes] = field(default_factory=dict)
    servers: dict[str, list[str]] = field(default_factory=dict)
    _used_files: dict[str, tuple[StatKey, str]] = field(default_factory=dict)
    _used_members: dict[str, bytes] = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def load(cls, directory: Path, root: Path) -> PackCache:
        key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:32]
        cache = cls(Path(directory), key)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            cache._read()
        return cache

    @property
    def _index(self) -> Path:
        return self.directory / f"{self.key}.json"

    def _read(self) -> None:
        index: Any = json.loads(self._index.read_bytes())
        if index.get("version") != _VERSION:
            return
        blob = (self.directory / str(index["members_file"])).read_bytes()
        members: dict[str, bytes] = {}
        for sha, (start, length) in index["members"].items():
            members[str(sha)] = blob[int(start) : int(start) + int(length)]
        files: dict[str, tuple[StatKey, str]] = {}
        for rel, (size, mtime, ctime, ino, sha) in index["files"].items():
            files[str(rel)] = ((int(size), int(mtime), int(ctime), int(ino)), str(sha))
        servers = {str(url): [str(d) for d in ds] for url, ds in index["servers"].items()}
        self.files, self.members, self.servers = files, members, servers

    # ---------------------------------------------------------------- during a pack

    def digest_of(self, rel: str, key: StatKey) -> str | None:
        """The sha256 of ``rel`` if its stat is what it was when it was hashed."""
        known = self.files.get(rel)
        return known[1] if known is not None and known[0] == key else None

    def member_of(self, sha256: str, size: int) -> bytes | None:
        """The cached data member of this content, checked; None when absent or wrong."""
        member = self.members.get(sha256)
        if member is None:
            return None
        try:
            content = zlib.decompress(member, wbits=16 + zlib.MAX_WBITS)
        except zlib.error:
            return None
        pad = len(padding(size))
        if len(content) != size + pad or hashlib.sha256(content[:size]).hexdigest() != sha256:
            return None
        if pad and content[size:].count(0) != pad:
            return None
        return member

    def record(self, rel: str, key: StatKey, sha256: str, member: bytes | None) -> None:
        """What this pack learnt about ``rel`` (called for every file packed)."""
        if self.files.get(rel) != (key, sha256):
            self.dirty = True
        self._used_files[rel] = (key, sha256)
        if member is not None:
            if sha256 not in self.members:
                self.dirty = True
            self._used_members[sha256] = member

    # ---------------------------------------------------------------- the server

    def server_blobs(self, url: str) -> set[str]:
        """Digests (``sha256:<hex>``) the server at ``url`` was last known to hold."""
        return set(self.servers.get(url, ()))

    def set_server_blobs(self, url: str, digests: set[str]) -> None:
        self.servers = {url: sorted(digests)}  # one server remembered per tree
        self.dirty = True

    # ---------------------------------------------------------------- saving

    def finish_pack(self) -> None:
        """Keep only what the pack just used (the next pack starts from this tree)."""
        if set(self._used_files) != set(self.files) or set(self._used_members) != set(self.members):
            self.dirty = True
        self.files, self.members = self._used_files, self._used_members
        self._used_files, self._used_members = {}, {}

    def save(self, now_ns: int | None = None) -> None:
        """Write the cache atomically (nothing when nothing changed); errors are ignored."""
        if not self.dirty:
            return
        now_ns = time.time_ns() if now_ns is None else now_ns
        with contextlib.suppress(OSError):
            self._write(now_ns)
            self.dirty = False

    def _write(self, now_ns: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        files = {
            rel: [*key, sha]
            for rel, (key, sha) in self.files.items()
            if max(key[1], key[2]) < now_ns - RACY_NS
        }
        offsets: dict[str, list[int]] = {}
        chunks: list[bytes] = []
        total = 0
        for sha, member in self.members.items():
            if total + len(member) > MAX_MEMBER_BYTES:
                continue
            offsets[sha] = [total, len(member)]
            chunks.append(member)
            total += len(member)
        old = self._old_members_file()
        members_file = f"{self.key}.{os.urandom(6).hex()}.bin"
        _atomic_write(self.directory / members_file, b"".join(chunks))
        index = {
            "version": _VERSION,
            "members_file": members_file,
            "members": offsets,
            "files": files,
            "servers": self.servers,
        }
        _atomic_write(self._index, json.dumps(index, separators=(",", ":")).encode())
        if old is not None and old != members_file:
            with contextlib.suppress(OSError):
                (self.directory / old).unlink()

    def _old_members_file(self) -> str | None:
        try:
            return str(json.loads(self._index.read_bytes())["members_file"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
