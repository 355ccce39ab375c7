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
- the **tar headers** by entry (path, kind, mode, size, link target) and the
  compressed **meta members** (runs of headers) by the sha256 of their bytes, so
  an unchanged tree's headers are neither built nor compressed again (each header
  is checked against its sha256, each meta member inflated and compared; the
  cache is dropped when the Python version changes, as its tarfile builds them);
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
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether.artifacts.framing import gzip_member, padding

__all__ = ["RACY_NS", "HeaderKey", "PackCache", "StatKey", "stat_key"]

#: Files changed this recently (before the save) are not trusted to the table.
RACY_NS = 2_000_000_000
#: Members kept per tree at most (bytes); beyond it files are compressed each pack.
MAX_MEMBER_BYTES = 256 << 20
_VERSION = 2

StatKey = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
HeaderKey = tuple[str, str, int, int, str]  # path, kind, mode, size, link target


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
    headers: dict[HeaderKey, bytes] = field(default_factory=dict)
    metas: dict[str, bytes] = field(default_factory=dict)
    _used_files: dict[str, tuple[StatKey, str]] = field(default_factory=dict)
    _used_members: dict[str, bytes] = field(default_factory=dict)
    _used_headers: dict[HeaderKey, bytes] = field(default_factory=dict)
    _used_metas: dict[str, bytes] = field(default_factory=dict)
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
        if index.get("version") != _VERSION or index.get("python") != sys.version:
            return  # another tarfile may build other headers: start afresh
        blob = (self.directory / str(index["members_file"])).read_bytes()
        members: dict[str, bytes] = {}
        for sha, (start, length) in index["members"].items():
            members[str(sha)] = blob[int(start) : int(start) + int(length)]
        files: dict[str, tuple[StatKey, str]] = {}
        for rel, (size, mtime, ctime, ino, sha) in index["files"].items():
            files[str(rel)] = ((int(size), int(mtime), int(ctime), int(ino)), str(sha))
        servers = {str(url): [str(d) for d in ds] for url, ds in index["servers"].items()}
        headers: dict[HeaderKey, bytes] = {}
        for path, kind, mode, size, target, start, length, sha in index["headers"]:
            key = (str(path), str(kind), int(mode), int(size), str(target))
            data = blob[int(start) : int(start) + int(length)]
            if hashlib.sha256(data).hexdigest() == sha:  # a damaged one is built again
                headers[key] = data
        metas = {
            str(sha): blob[int(start) : int(start) + int(length)]
            for sha, (start, length) in index["metas"].items()
        }
        self.files, self.members, self.servers = files, members, servers
        self.headers, self.metas = headers, metas

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

    def header(self, key: HeaderKey, build: Callable[[], bytes]) -> bytes:
        """The tar header of an entry, from the cache or ``build()``."""
        data = self.headers.get(key)
        if data is None:
            data = build()
            self.dirty = True
        self._used_headers[key] = data
        return data

    def meta_member(self, meta: bytes | bytearray) -> bytes:
        """The gzip member of a run of headers, from the cache or compressed now.

        Keyed by the sha256 of the bytes, and a hit is used only if it inflates to
        exactly them (cheap: header runs are small).
        """
        sha = hashlib.sha256(meta).hexdigest()
        member = self.metas.get(sha)
        if member is not None:
            try:
                if zlib.decompress(member, wbits=16 + zlib.MAX_WBITS) != meta:
                    member = None
            except zlib.error:
                member = None
        if member is None:
            member = gzip_member(meta)
            self.dirty = True
        self._used_metas[sha] = member
        return member

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
        if (
            set(self._used_files) != set(self.files)
            or set(self._used_members) != set(self.members)
            or set(self._used_headers) != set(self.headers)
            or set(self._used_metas) != set(self.metas)
        ):
            self.dirty = True
        self.files, self.members = self._used_files, self._used_members
        self.headers, self.metas = self._used_headers, self._used_metas
        self._used_files, self._used_members = {}, {}
        self._used_headers, self._used_metas = {}, {}

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
        header_rows: list[list[Any]] = []
        for (path, kind, mode, size, target), data in self.headers.items():
            sha = hashlib.sha256(data).hexdigest()
            header_rows.append([path, kind, mode, size, target, total, len(data), sha])
            chunks.append(data)
            total += len(data)
        meta_rows: dict[str, list[int]] = {}
        for sha, member in self.metas.items():
            meta_rows[sha] = [total, len(member)]
            chunks.append(member)
            total += len(member)
        old = self._old_members_file()
        members_file = f"{self.key}.{os.urandom(6).hex()}.bin"
        _atomic_write(self.directory / members_file, b"".join(chunks))
        index = {
            "version": _VERSION,
            "python": sys.version,
            "members_file": members_file,
            "members": offsets,
            "files": files,
            "servers": self.servers,
            "headers": header_rows,
            "metas": meta_rows,
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
