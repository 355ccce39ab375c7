"""Extract an artifact archive that is hostile until proven otherwise.

Nothing here relies on ``tarfile``'s extraction helpers or filters: members are
read one by one from a streaming ``tarfile`` and every file, directory and link
is created by this module after its own checks, so a Python upgrade that changes
tarfile's defaults cannot loosen them. The rules:

* names: no absolute paths, no ``..`` component anywhere, never written through a
  symlink (each parent directory is ``lstat``-ed), no two entries for one path;
* symlinks: relative targets only, staying inside the destination both lexically
  and after resolving the links already extracted (re-checked once all entries are
  in, so link chains such as ``d -> .`` + ``x -> d/../y`` are caught);
* hardlinks: only to a regular file extracted earlier from the same archive;
* no devices, fifos, sparse or unknown entry types;
* sizes: declared member sizes are summed before any data is read, the decompressed
  stream itself is capped (metadata included), so a decompression bomb is refused
  after reading about ``max_bytes`` at most, without filling the disk or memory;
* integrity: the gzip stream must be complete (CRC checked) and the tar must end
  with its zero blocks and nothing else, so a truncated archive is not mistaken
  for a smaller valid one.

Work happens in a temporary sibling directory that is renamed onto ``dest`` only
once everything passed; on any failure it is removed and ``dest`` never appears.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Protocol, Self

from aether.errors import ConflictError, UnsafeArchiveError

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_ENTRIES",
    "SharedFiles",
    "safe_extract",
    "scan_archive",
]

#: What nodes extract at most, and what the server's upload scan refuses above.
MAX_ARCHIVE_BYTES = 1 << 30
MAX_ARCHIVE_ENTRIES = 100_000

_CHUNK = 1 << 20
_DIR_MODE = 0o755
#: Largest pax / GNU long-name block accepted: real ones hold a path (< 4 KiB on Linux).
_MAX_META_BYTES = 64 << 10
#: Allowance for tar headers, metadata blocks and padding on top of ``max_bytes``.
_SLACK_BASE = 1 << 20
_SLACK_PER_ENTRY = 16 << 10
#: How much of the decompressed stream is kept to check the end-of-archive blocks.
_TAIL_KEEP = 256 << 10
_META_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)
_FILE_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, RecursionError)


class SharedFiles(Protocol):
    """Where a node keeps each shipped content once (``node.contents``): a file is
    placed as a hard link to the shared copy instead of written out."""

    def link(self, data: bytes, executable: bool, dest: str) -> None: ...


#: Files up to this size may be shared (they are read whole to be hashed first).
SHARED_MAX_BYTES = 4 << 20


def _corrupt(detail: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"not a valid tar.gz archive: {detail}", code="corrupt_archive")


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses oversized pax/long-name blocks before tarfile reads them into memory."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        obj = super().frombuf(buf, encoding, errors)
        if obj.type in _META_TYPES and obj.size > _MAX_META_BYTES:
            raise UnsafeArchiveError(
                f"archive has a {obj.size}-byte metadata header (limit {_MAX_META_BYTES})",
                code="archive_too_large",
            )
        return obj


class _BoundedReader:
    """The decompressed tar stream: counts every byte, caps the total, keeps the tail."""

    def __init__(self, src: gzip.GzipFile, budget: Callable[[], int], max_bytes: int) -> None:
        self._src = src
        self._budget = budget
        self._max_bytes = max_bytes
        self.pos = 0
        self._tail = bytearray()
        self._tail_start = 0

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            size = _CHUNK
        try:
            data = self._src.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            raise _corrupt(f"gzip stream: {exc}") from exc
        self.pos += len(data)
        if self.pos > self._budget():
            raise UnsafeArchiveError(
                f"archive expands beyond the {self._max_bytes}-byte limit",
                code="archive_too_large",
            )
        self._tail += data
        if len(self._tail) > 2 * _TAIL_KEEP:
            cut = len(self._tail) - _TAIL_KEEP
            del self._tail[:cut]
            self._tail_start += cut
        return data

    def tail_from(self, offset: int) -> bytes | None:
        if offset < self._tail_start:
            return None
        return bytes(self._tail[offset - self._tail_start :])

    # The rest only satisfies tarfile's file-object protocol; streaming mode never seeks.
    def write(self, data: bytes, /) -> int:
        raise OSError("read-only stream")

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, /) -> int:
        raise OSError("stream is not seekable")

    def close(self) -> None:
        pass


def _member_path(raw: str, *, what: str, escape_code: str | None = None) -> str | None:
    """Normalised relative path of a member name, or None for the archive root itself."""
    if not raw or "\x00" in raw:
        raise _corrupt(f"{what} has an empty or invalid name {raw!r}")
    if raw.startswith("/"):
        raise UnsafeArchiveError(
            f"{what} {raw!r} is an absolute path", code=escape_code or "absolute_path"
        )
    parts = raw.split("/")
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{what} {raw!r} contains a '..' component", code=escape_code or "path_traversal"
        )
    kept = [p for p in parts if p not in ("", ".")]
    return "/".join(kept) if kept else None


def _inside(path: str, real_root: str) -> bool:
    return path == real_root or path.startswith(real_root + os.sep)


class _Extractor:
    def __init__(
        self,
        root: str,
        max_bytes: int,
        max_entries: int,
        shared: SharedFiles | None = None,
        own: Callable[[str], bool] = lambda rel: False,
    ) -> None:
        self.root = root
        self.shared = shared
        self.own = own
        self.real_root = os.path.realpath(root)
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.entries = 0
        self.declared = 0
        self.written = 0
        self.symlinks: list[str] = []

    def budget(self) -> int:
        return self.max_bytes + _SLACK_BASE + _SLACK_PER_ENTRY * (self.entries + 1)

    def run(self, archive: Path) -> None:
        with open(archive, "rb") as raw:
            self.read(raw)

    def read(self, raw: Readable) -> None:
        """Every entry of the gzipped tar stream ``raw``, by the rules, then the links."""
        gz = gzip.GzipFile(filename="", mode="rb", fileobj=raw)
        with gz:
            reader = _BoundedReader(gz, self.budget, self.max_bytes)
            tf = self._open(reader)
            with tf:
                while (member := self._next(tf)) is not None:
                    self.entries += 1
                    if self.entries > self.max_entries:
                        raise UnsafeArchiveError(
                            f"archive has more than {self.max_entries} entries",
                            code="too_many_entries",
                        )
                    self._extract_member(tf, member)
                end = tf.offset
            self._check_end(reader, end)
        self._check_symlinks()

    @staticmethod
    def _open(reader: _BoundedReader) -> tarfile.TarFile:
        try:
            return tarfile.open(fileobj=reader, mode="r|", tarinfo=_GuardedTarInfo)
        except UnsafeArchiveError:
            raise
        except _READ_ERRORS as exc:
            raise _corrupt(str(exc)) from exc

    @staticmethod
    def _next(tf: tarfile.TarFile) -> tarfile.TarInfo | None:
        try:
            return tf.next()
        except UnsafeArchiveError:
            raise
        except _READ_ERRORS as exc:
            raise _corrupt(str(exc)) from exc

    def _check_end(self, reader: _BoundedReader, end: int) -> None:
        """tarfile treats a bad header after the first as end-of-archive; we do not."""
        tail = reader.tail_from(end)
        if tail is None:
            raise _corrupt("cannot verify the end of the archive")
        zeros = len(tail)
        clean = not tail.strip(b"\x00")
        while clean and (chunk := reader.read(_CHUNK)):
            zeros += len(chunk)
            clean = not chunk.strip(b"\x00")
        if not clean:
            raise _corrupt("unexpected data where the archive should end")
        if zeros < 2 * tarfile.BLOCKSIZE:
            raise _corrupt("archive is truncated (no end-of-archive marker)")

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def _prepare_parent(self, rel: str, name: str) -> None:
        """Create missing parent directories; refuse to go through a symlink or a file."""
        parts = rel.split("/")[:-1]
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            path = self._abs(prefix)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path)
                os.chmod(path, _DIR_MODE)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeArchiveError(
                    f"entry {name!r} would be written through the symlink {prefix!r}",
                    code="link_escape",
                )
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeArchiveError(
                    f"entry {name!r} needs {prefix!r} to be a directory, but it is a file",
                    code="path_conflict",
                )

    def _refuse_existing(self, rel: str, name: str, *, allow_dir: bool = False) -> None:
        try:
            st = os.lstat(self._abs(rel))
        except FileNotFoundError:
            return
        if allow_dir and stat.S_ISDIR(st.st_mode):
            return
        raise UnsafeArchiveError(
            f"entry {name!r} collides with an earlier entry for the same path",
            code="path_conflict",
        )

    def _extract_member(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        rel = _member_path(name, what="entry")
        if member.type not in (*_FILE_TYPES, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE) or (
            member.sparse is not None
        ):
            raise UnsafeArchiveError(
                f"entry {name!r} is a device, fifo or other special file "
                f"(type {member.type!r}); artifacts hold only files, directories and links",
                code="special_file",
            )
        if rel is None:
            if member.type == tarfile.DIRTYPE:
                return  # "./": the destination itself
            raise UnsafeArchiveError(
                f"non-directory entry {name!r} names the archive root", code="path_conflict"
            )
        try:
            self._prepare_parent(rel, name)
            if member.type == tarfile.DIRTYPE:
                self._refuse_existing(rel, name, allow_dir=True)
                path = self._abs(rel)
                if not os.path.isdir(path):
                    os.mkdir(path)
                os.chmod(path, _DIR_MODE)
            elif member.type == tarfile.SYMTYPE:
                self._refuse_existing(rel, name)
                self._symlink(rel, name, member.linkname)
            elif member.type == tarfile.LNKTYPE:
                self._refuse_existing(rel, name)
                self._hardlink(rel, name, member.linkname)
            else:
                self._refuse_existing(rel, name)
                self._file(tf, member, rel)
        except OSError as exc:
            if exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
                raise _corrupt(f"entry {name!r} cannot be created: {exc.strerror}") from exc
            raise

    def _symlink(self, rel: str, name: str, target: str) -> None:
        if not target or "\x00" in target:
            raise _corrupt(f"symlink {name!r} has an empty or invalid target")
        if posixpath.isabs(target):
            raise UnsafeArchiveError(
                f"symlink {name!r} -> {target!r} is absolute", code="link_escape"
            )
        lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if lexical == ".." or lexical.startswith("../"):
            raise UnsafeArchiveError(
                f"symlink {name!r} -> {target!r} points outside the destination",
                code="link_escape",
            )
        path = self._abs(rel)
        os.symlink(target, path)
        self.symlinks.append(rel)
        self._check_symlink(rel)

    def _check_symlink(self, rel: str) -> None:
        resolved = os.path.realpath(self._abs(rel))
        if not _inside(resolved, self.real_root):
            raise UnsafeArchiveError(
                f"symlink {rel!r} -> {os.readlink(self._abs(rel))!r} resolves outside the "
                "destination through other links",
                code="link_escape",
            )

    def _check_symlinks(self) -> None:
        # A link that was harmless when created can be redirected by a later link
        # (``x -> y/../z`` first, ``y -> .`` afterwards); judge the final tree.
        for rel in self.symlinks:
            self._check_symlink(rel)

    def _hardlink(self, rel: str, name: str, linkname: str) -> None:
        target = _member_path(linkname, what=f"hardlink {name!r} target", escape_code="link_escape")
        if target is None:
            raise UnsafeArchiveError(
                f"hardlink {name!r} points at the archive root", code="link_escape"
            )
        parts = target.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISLNK(os.lstat(self._abs(prefix)).st_mode):
                    raise UnsafeArchiveError(
                        f"hardlink {name!r} -> {linkname!r} goes through the symlink {prefix!r}",
                        code="link_escape",
                    )
        try:
            st = os.lstat(self._abs(target))
        except FileNotFoundError:
            raise _corrupt(
                f"hardlink {name!r} -> {linkname!r}: target is not an earlier entry"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeArchiveError(
                f"hardlink {name!r} -> {linkname!r} does not point at a regular file",
                code="link_escape",
            )
        os.link(self._abs(target), self._abs(rel), follow_symlinks=False)

    def _file(self, tf: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        size = member.size
        if size < 0 or self.declared + size > self.max_bytes:
            raise UnsafeArchiveError(
                f"archive contents exceed the {self.max_bytes}-byte limit "
                f"(entry {member.name!r} declares {size} bytes)",
                code="archive_too_large",
            )
        self.declared += size
        src = self._member_stream(tf, member)
        executable = bool(member.mode & 0o111)
        if self.shared is not None and size <= SHARED_MAX_BYTES and not self.own(rel):
            data = b"".join(self._chunks(src, member, size))
            self.shared.link(data, executable, self._abs(rel))
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._abs(rel), flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            for chunk in self._chunks(src, member, size):
                out.write(chunk)
            os.fchmod(out.fileno(), 0o755 if executable else 0o644)

    def _chunks(self, src: IO[bytes], member: tarfile.TarInfo, size: int) -> Iterator[bytes]:
        """The member's ``size`` bytes, counted against the limit as they are read."""
        remaining = size
        while remaining > 0:
            chunk = self._read(src, min(_CHUNK, remaining))
            if not chunk:
                raise _corrupt(f"entry {member.name!r} is truncated")
            remaining -= len(chunk)
            self.written += len(chunk)
            if self.written > self.max_bytes:  # belt and braces: declared sizes lied
                raise UnsafeArchiveError(
                    f"archive contents exceed the {self.max_bytes}-byte limit",
                    code="archive_too_large",
                )
            yield chunk

    @staticmethod
    def _member_stream(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
        try:
            src = tf.extractfile(member)
        except UnsafeArchiveError:
            raise
        except _READ_ERRORS as exc:
            raise _corrupt(str(exc)) from exc
        if src is None:
            raise _corrupt(f"entry {member.name!r} has no data")
        return src

    @staticmethod
    def _read(src: IO[bytes], n: int) -> bytes:
        try:
            return src.read(n)
        except UnsafeArchiveError:
            raise
        except _READ_ERRORS as exc:
            raise _corrupt(str(exc)) from exc


def safe_extract(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_entries: int = MAX_ARCHIVE_ENTRIES,
    shared: SharedFiles | None = None,
    own: Callable[[str], bool] = lambda rel: False,
) -> None:
    """Extract the ``tar.gz`` at ``archive`` into the new directory ``dest``, all or nothing.

    With ``shared``, each regular file of up to ``SHARED_MAX_BYTES`` is placed as a
    hard link to the shared copy of its content (``SharedFiles.link``), except the
    paths ``own`` keeps (relative to ``dest``), which are written out as usual.

    Raises UnsafeArchiveError (codes ``absolute_path``, ``path_traversal``,
    ``link_escape``, ``special_file``, ``archive_too_large``, ``too_many_entries``,
    ``corrupt_archive``, ``path_conflict``) for a refused archive and ConflictError if
    ``dest`` already exists. Blocking: call it through ``asyncio.to_thread`` from async code.
    """
    archive = Path(archive)
    dest = Path(dest)
    if os.path.lexists(dest):
        raise ConflictError(f"extraction target {dest} already exists")
    if not archive.is_file():
        raise FileNotFoundError(errno.ENOENT, "archive not found", str(archive))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent)
    try:
        os.chmod(tmp, _DIR_MODE)
        _Extractor(tmp, max_bytes, max_entries, shared, own).run(archive)
        if os.path.lexists(dest):
            raise ConflictError(f"extraction target {dest} already exists")
        try:
            os.rename(tmp, dest)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise ConflictError(f"extraction target {dest} already exists") from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- the same rules without a destination: the server's upload scan -------------------------


class Readable(Protocol):
    """A file read from start to end (``seek`` may raise: it is never needed)."""

    def read(self, size: int, /) -> bytes: ...
    def seek(self, offset: int, /) -> object: ...


def _is_special(member: tarfile.TarInfo) -> bool:
    allowed = (*_FILE_TYPES, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
    return member.type not in allowed or member.sparse is not None


class _Scanner(_Extractor):
    """``_Extractor``'s rules over a tree kept in memory: nothing is written anywhere.

    Names, types, sizes, entry counts and the lexical link rules are the extractor's
    own code; the checks it makes on the filesystem (a parent that is a symlink, a
    path given twice, a hardlink's target, where a symlink resolves through others)
    are answered from the entries seen so far, with the same codes.
    """

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        super().__init__("/dev/null/scan", max_bytes, max_entries)  # never written to
        self.kinds: dict[str, str] = {}  # rel → "dir" | "file" | "link"
        self.targets: dict[str, str] = {}  # symlink rel → its target

    # the filesystem-facing steps of _Extractor, on the in-memory tree
    def _prepare_parent(self, rel: str, name: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            kind = self.kinds.setdefault(prefix, "dir")
            if kind == "link":
                raise UnsafeArchiveError(
                    f"entry {name!r} would be written through the symlink {prefix!r}",
                    code="link_escape",
                )
            if kind != "dir":
                raise UnsafeArchiveError(
                    f"entry {name!r} needs {prefix!r} to be a directory, but it is a file",
                    code="path_conflict",
                )

    def _refuse_existing(self, rel: str, name: str, *, allow_dir: bool = False) -> None:
        kind = self.kinds.get(rel)
        if kind is None or (allow_dir and kind == "dir"):
            return
        raise UnsafeArchiveError(
            f"entry {name!r} collides with an earlier entry for the same path",
            code="path_conflict",
        )

    def _extract_member(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = _member_path(member.name, what="entry")
        if rel is not None and not _is_special(member) and member.type == tarfile.DIRTYPE:
            self._prepare_parent(rel, member.name)
            self._refuse_existing(rel, member.name, allow_dir=True)
            self.kinds[rel] = "dir"
            return
        super()._extract_member(tf, member)

    def _symlink(self, rel: str, name: str, target: str) -> None:
        if not target or "\x00" in target:
            raise _corrupt(f"symlink {name!r} has an empty or invalid target")
        if posixpath.isabs(target):
            raise UnsafeArchiveError(
                f"symlink {name!r} -> {target!r} is absolute", code="link_escape"
            )
        lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if lexical == ".." or lexical.startswith("../"):
            raise UnsafeArchiveError(
                f"symlink {name!r} -> {target!r} points outside the destination",
                code="link_escape",
            )
        self.kinds[rel] = "link"
        self.targets[rel] = target
        self.symlinks.append(rel)
        self._check_symlink(rel)

    def _check_symlink(self, rel: str) -> None:
        if not self._resolves_inside(rel):
            raise UnsafeArchiveError(
                f"symlink {rel!r} -> {self.targets[rel]!r} resolves outside the "
                "destination through other links",
                code="link_escape",
            )

    def _resolves_inside(self, rel: str) -> bool:
        """Like ``realpath`` staying under the root, over the links seen so far."""
        stack: list[str] = []
        todo = rel.split("/")
        follows = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return False
                stack.pop()
                continue
            path = "/".join([*stack, part])
            if self.kinds.get(path) == "link":
                follows += 1
                if follows > 40:  # a loop: it resolves nowhere, so not outside either
                    return True
                todo = self.targets[path].split("/") + todo
                continue
            stack.append(part)
        return True

    def _hardlink(self, rel: str, name: str, linkname: str) -> None:
        target = _member_path(linkname, what=f"hardlink {name!r} target", escape_code="link_escape")
        if target is None:
            raise UnsafeArchiveError(
                f"hardlink {name!r} points at the archive root", code="link_escape"
            )
        parts = target.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if self.kinds.get(prefix) == "link":
                raise UnsafeArchiveError(
                    f"hardlink {name!r} -> {linkname!r} goes through the symlink {prefix!r}",
                    code="link_escape",
                )
        kind = self.kinds.get(target)
        if kind is None:
            raise _corrupt(f"hardlink {name!r} -> {linkname!r}: target is not an earlier entry")
        if kind != "file":
            raise UnsafeArchiveError(
                f"hardlink {name!r} -> {linkname!r} does not point at a regular file",
                code="link_escape",
            )
        self.kinds[rel] = "file"

    def _file(self, tf: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        size = member.size
        if size < 0 or self.declared + size > self.max_bytes:
            raise UnsafeArchiveError(
                f"archive contents exceed the {self.max_bytes}-byte limit "
                f"(entry {member.name!r} declares {size} bytes)",
                code="archive_too_large",
            )
        self.declared += size
        self.kinds[rel] = "file"  # its data is skipped (read and counted) by the next header


def scan_archive(
    raw: Readable,
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_entries: int = MAX_ARCHIVE_ENTRIES,
) -> None:
    """Check the ``tar.gz`` read from ``raw`` by ``safe_extract``'s rules, extracting nothing.

    Raises UnsafeArchiveError with the code ``safe_extract`` would answer for the first
    bad entry (``corrupt_archive`` for bytes that are not a complete tar.gz). Reads
    ``raw`` sequentially to the end of the archive; never seeks. Blocking.
    """
    try:
        _Scanner(max_bytes, max_entries).read(raw)
    except UnsafeArchiveError:
        raise
    except _READ_ERRORS as exc:
        raise _corrupt(str(exc)) from exc
