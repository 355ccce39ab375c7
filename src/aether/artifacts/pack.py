"""Pack an app directory into a canonical ``tar.gz`` whose sha256 is the artifact's address.

Canonical means the bytes depend only on the tree's paths, file contents, link
targets and executable bits: entries are sorted, times, owners and permission
noise are normalised, and the gzip members carry no name or time (the framing,
one gzip member per segment, is ``aether.artifacts.framing``). So the same
tree packs to the same digest on every run and machine (with the same Python
``tarfile`` and zlib), which is what lets ``deploy`` skip an upload the server
already has.

The per-file manifest is returned beside the archive, not stored in it: it is
derived data (recomputable by extracting) and keeping it out avoids a second
source of truth inside the signed bytes.

A ``PackPlan`` lists the archive's entries in order (directories, files by sha256,
size and mode, symlinks by target): everything that decides the bytes except the
file contents. ``write_plan`` writes the very same archive from a plan and a
function that opens a file's content by sha256, which is how the server assembles
an artifact from per-file blobs it already has (incremental uploads); since each
file's content is its own gzip member, the server reuses the compressed member of
every content it has compressed before instead of compressing the tree again.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import posixpath
import stat
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from aether.artifacts.digest import Hasher
from aether.artifacts.framing import (
    COMPRESSLEVEL,
    TAR_FORMAT,
    MemberCompressor,
    data_member,
    frame_archive,
    gzip_member,
    padding,
    tar_header,
    tar_info,
)
from aether.artifacts.ignore import IgnoreRules
from aether.artifacts.pack_cache import PackCache, StatKey
from aether.artifacts.plan import PLAN_FORMAT_V1, PackPlan, PlanEntry
from aether.errors import BadRequestError, DigestMismatchError

__all__ = [
    "COMPRESSLEVEL",
    "TAR_FORMAT",
    "ManifestEntry",
    "MemberSource",
    "PackResult",
    "manifest_json",
    "pack",
    "pack_bytes",
    "parse_manifest_json",
    "plan_tree",
    "tree_opener",
    "write_plan",
]

_CHUNK = 1 << 20
#: Files up to this size are read whole and compressed on a worker thread; larger
#: ones are streamed through the writing thread.
_INLINE_MAX = 8 << 20
#: Files hashed and compressed ahead of the writer at most (bounds memory).
_LOOKAHEAD = 64
_EMPTY_SHA = hashlib.sha256(b"").hexdigest()
_DIR_MODE = 0o755
_EXEC_MODE = 0o755
_FILE_MODE = 0o644
_LINK_MODE = 0o777


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One regular file of an artifact; ``sha256`` is the bare lowercase hex of its content."""

    path: str
    size: int
    sha256: str
    mode: int


@dataclass(frozen=True, slots=True)
class PackResult:
    """What ``pack`` produced: the archive's address and size, and its per-file manifest.

    ``plan`` is the ordered entry list the archive was written from (for incremental
    uploads); it is derived data, so it takes no part in equality.
    """

    digest: str
    size_bytes: int
    manifest: tuple[ManifestEntry, ...]
    file_count: int
    plan: PackPlan | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class _Entry:
    rel: str
    kind: Literal["dir", "file", "symlink"]
    abspath: str
    mode: int = _DIR_MODE
    size: int = 0
    linkname: str = ""
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0

    @property
    def key(self) -> StatKey:
        return (self.size, self.mtime_ns, self.ctime_ns, self.ino)


def manifest_json(entries: Iterable[ManifestEntry]) -> bytes:
    """Canonical JSON of a manifest (sorted by path and keys, no spaces), for signing."""
    items = sorted(entries, key=lambda e: e.path.encode("utf-8"))
    data = [{"mode": e.mode, "path": e.path, "sha256": e.sha256, "size": e.size} for e in items]
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_manifest_json(data: bytes) -> list[ManifestEntry]:
    """Inverse of ``manifest_json``; BadRequestError(code="bad_manifest") on malformed input."""
    try:
        raw: Any = json.loads(data)
        if not isinstance(raw, list):
            raise TypeError("manifest must be a JSON list")
        out: list[ManifestEntry] = []
        for item in raw:
            if not isinstance(item, dict) or set(item) != {"mode", "path", "sha256", "size"}:
                raise TypeError(f"bad manifest entry {item!r}")
            path, size, sha, mode = item["path"], item["size"], item["sha256"], item["mode"]
            if not (
                isinstance(path, str)
                and isinstance(sha, str)
                and type(size) is int
                and type(mode) is int
            ):
                raise TypeError(f"bad manifest entry {item!r}")
            out.append(ManifestEntry(path=path, size=size, sha256=sha, mode=mode))
        return out
    except (ValueError, TypeError) as exc:
        raise BadRequestError(f"invalid manifest: {exc}", code="bad_manifest") from exc


def _file_mode(st_mode: int) -> int:
    return _EXEC_MODE if st_mode & 0o111 else _FILE_MODE


def _check_symlink(root: str, real_root: str, rel: str, target: str) -> None:
    """Refuse links that would point outside the app once extracted somewhere else."""
    if not target:
        raise BadRequestError(f"symlink {rel!r} has an empty target", code="link_escape")
    if posixpath.isabs(target):
        raise BadRequestError(
            f"symlink {rel!r} -> {target!r} is absolute; only relative links that stay "
            "inside the app directory can be packed (or add it to .aetherignore)",
            code="link_escape",
        )
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    # Resolving on disk as well catches chains such as ``d -> .`` plus ``x -> d/../y``
    # that look harmless lexically but leave the root through another link.
    resolved = os.path.realpath(os.path.join(root, rel))
    inside_on_disk = resolved == real_root or resolved.startswith(real_root + os.sep)
    if lexical == ".." or lexical.startswith("../") or not inside_on_disk:
        raise BadRequestError(
            f"symlink {rel!r} -> {target!r} points outside the app directory "
            "(refused: it would not resolve after extraction; add it to .aetherignore)",
            code="link_escape",
        )


def _scan(root: str, rules: IgnoreRules, skip: Callable[[str], bool]) -> list[_Entry]:
    """Walk ``root`` without following links, applying the ignore rules, sorted by path bytes."""
    real_root = os.path.realpath(root)
    entries: list[_Entry] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        with os.scandir(abs_dir) as it:
            children = list(it)
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequestError(
                    f"path {rel!r} is not valid UTF-8; rename it or add it to .aetherignore",
                    code="bad_path",
                ) from None
            st = child.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if rules.is_ignored(rel, is_dir=is_dir) or (not is_dir and skip(rel)):
                continue
            if is_dir:
                entries.append(_Entry(rel, "dir", child.path))
                pending.append(rel)
            elif stat.S_ISREG(st.st_mode):
                entries.append(
                    _Entry(
                        rel,
                        "file",
                        child.path,
                        mode=_file_mode(st.st_mode),
                        size=st.st_size,
                        mtime_ns=st.st_mtime_ns,
                        ctime_ns=st.st_ctime_ns,
                        ino=st.st_ino,
                    )
                )
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(child.path)
                _check_symlink(root, real_root, rel, target)
                entries.append(_Entry(rel, "symlink", child.path, mode=_LINK_MODE, linkname=target))
            else:
                raise BadRequestError(
                    f"{rel!r} is a special file (device, fifo or socket); artifacts hold only "
                    "files, directories and symlinks (add it to .aetherignore)",
                    code="special_file",
                )
    entries.sort(key=lambda e: e.rel.encode("utf-8"))
    return entries


def _changed(entry: _Entry, st: os.stat_result) -> bool:
    return st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns


def _file_changed(entry: _Entry) -> BadRequestError:
    return BadRequestError(f"{entry.rel!r} changed while packing", code="file_changed")


def _hash_file(entry: _Entry) -> ManifestEntry:
    h = Hasher()
    with open(entry.abspath, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        if _changed(entry, os.fstat(f.fileno())) or h.size != entry.size:
            raise _file_changed(entry)
    return ManifestEntry(path=entry.rel, size=h.size, sha256=h.hexdigest(), mode=entry.mode)


class _HashingWriter:
    """Sink for the gzip stream that hashes and counts exactly the bytes written."""

    def __init__(self, sink: io.BufferedIOBase | io.BytesIO | IO[bytes]) -> None:
        self._sink = sink
        self.hasher = Hasher()

    def write(self, data: bytes, /) -> int:
        self._sink.write(data)
        self.hasher.update(data)
        return len(data)

    def flush(self) -> None:
        self._sink.flush()


@contextlib.contextmanager
def _canonical_tar_v1(sink: _HashingWriter) -> Iterator[tarfile.TarFile]:
    """The ``aether-tar-gz/1`` framing: one gzip stream over the whole tar."""
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=sink, compresslevel=COMPRESSLEVEL, mtime=0
        ) as gz,
        tarfile.open(fileobj=gz, mode="w", format=TAR_FORMAT, encoding="utf-8") as tf,
    ):
        yield tf


@dataclass(frozen=True, slots=True)
class _Packed:
    """One non-empty file, hashed and compressed: its manifest row and data member."""

    manifest: ManifestEntry
    member: bytes | None  # None: too large to hold, streamed by ``_stream_member``


def _read_exact(entry: _Entry) -> bytes:
    with open(entry.abspath, "rb") as f:
        data = f.read(entry.size + 1)
        if len(data) != entry.size or _changed(entry, os.fstat(f.fileno())):
            raise _file_changed(entry)
    return data


def _pack_file(entry: _Entry, cache: PackCache | None) -> _Packed:
    """Hash and compress one file, or take both from the cache when its stat is unchanged."""
    if entry.size > _INLINE_MAX:
        return _Packed(ManifestEntry(entry.rel, entry.size, "", entry.mode), None)
    if cache is not None:
        sha = cache.digest_of(entry.rel, entry.key)
        member = cache.member_of(sha, entry.size) if sha is not None else None
        if sha is not None and member is not None:
            cache.record(entry.rel, entry.key, sha, member)
            return _Packed(ManifestEntry(entry.rel, entry.size, sha, entry.mode), member)
    content = _read_exact(entry)
    sha = hashlib.sha256(content).hexdigest()
    member = data_member(content)
    if cache is not None:
        cache.record(entry.rel, entry.key, sha, member)
    return _Packed(ManifestEntry(entry.rel, entry.size, sha, entry.mode), member)


def _stream_member(entry: _Entry, hashed: list[ManifestEntry]) -> Iterator[bytes]:
    """A large file's data member, read and compressed in chunks; its manifest row appended."""
    member = MemberCompressor(entry.size + len(padding(entry.size)))
    h = Hasher()
    with open(entry.abspath, "rb") as f:
        while chunk := f.read(min(_CHUNK, entry.size + 1 - h.size)):
            h.update(chunk)
            if h.size > entry.size:
                raise _file_changed(entry)
            yield member.update(chunk)
        if h.size != entry.size or _changed(entry, os.fstat(f.fileno())):
            raise _file_changed(entry)
    yield member.update(padding(entry.size))
    yield member.finish()
    hashed.append(ManifestEntry(entry.rel, entry.size, h.hexdigest(), entry.mode))


def _in_order(
    pool: ThreadPoolExecutor, files: Sequence[_Entry], cache: PackCache | None
) -> Iterator[_Packed]:
    """``_pack_file`` of each file on the pool, in order, with a bounded look-ahead."""
    ahead: deque[Future[_Packed]] = deque()
    it = iter(files)
    try:
        for entry in it:
            ahead.append(pool.submit(_pack_file, entry, cache))
            if len(ahead) >= _LOOKAHEAD:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:
        for fut in ahead:
            fut.cancel()


def _header(e: _Entry, cache: PackCache | None) -> bytes:
    if cache is None:
        return tar_header(e.rel, e.kind, e.mode, e.size, e.linkname)
    key = (e.rel, e.kind, e.mode, e.size, e.linkname)
    return cache.header(key, lambda: tar_header(e.rel, e.kind, e.mode, e.size, e.linkname))


def _write_archive(
    sink: _HashingWriter,
    entries: Sequence[_Entry],
    workers: int | None,
    cache: PackCache | None,
) -> list[ManifestEntry]:
    """Write the ``aether-tar-gz/2`` archive of ``entries``; the manifest (file order)."""
    nonempty = [e for e in entries if e.kind == "file" and e.size > 0]
    manifest: list[ManifestEntry] = []
    by_path: dict[str, ManifestEntry] = {}
    framed = [(_header(e, cache), e.size if e.kind == "file" else 0) for e in entries]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aether-pack") as pool:
        packed = _in_order(pool, nonempty, cache)

        def data(index: int) -> Iterator[bytes]:
            entry = entries[index]
            done = next(packed)
            if done.member is not None:
                by_path[entry.rel] = done.manifest
                yield done.member
                return
            streamed: list[ManifestEntry] = []
            yield from _stream_member(entry, streamed)
            by_path[entry.rel] = streamed[0]

        meta = gzip_member if cache is None else cache.meta_member
        for chunk in frame_archive(framed, data, meta):
            sink.write(chunk)
    for e in entries:
        if e.kind == "file":
            if e.size == 0:
                if cache is not None:
                    cache.record(e.rel, e.key, _EMPTY_SHA, None)
                manifest.append(ManifestEntry(e.rel, 0, _EMPTY_SHA, e.mode))
            else:
                manifest.append(by_path[e.rel])
    return manifest


def _pack_into(
    root: Path,
    sink: io.BufferedIOBase | io.BytesIO,
    *,
    extra_ignore: Iterable[str],
    workers: int | None,
    skip: Callable[[str], bool] = lambda rel: False,
    cache: PackCache | None = None,
) -> PackResult:
    if not root.is_dir():
        raise BadRequestError(f"{root} is not a directory", code="bad_path")
    rules = IgnoreRules.for_root(root, extra_ignore)
    entries = _scan(str(root), rules, skip)
    writer = _HashingWriter(sink)
    # Files are hashed and compressed on worker threads (hashlib and zlib release
    # the GIL), each into its own gzip member, while this thread writes them out
    # in order; every read is checked against the scanned size and mtime.
    manifest = _write_archive(writer, entries, workers, cache)
    if cache is not None:
        cache.finish_pack()
    return PackResult(
        digest=writer.hasher.digest(),
        size_bytes=writer.hasher.size,
        manifest=tuple(manifest),
        file_count=len(manifest),
        plan=_plan_of(entries, manifest),
    )


def _plan_of(entries: Sequence[_Entry], manifest: Sequence[ManifestEntry]) -> PackPlan:
    """The scanned entries with their hashes (``manifest`` is in the same order as the files)."""
    hashed = iter(manifest)
    out: list[PlanEntry] = []
    for entry in entries:
        if entry.kind == "dir":
            out.append(PlanEntry.dir(entry.rel))
        elif entry.kind == "symlink":
            out.append(PlanEntry.symlink(entry.rel, entry.linkname))
        else:
            m = next(hashed)
            out.append(PlanEntry.file(m.path, m.sha256, m.size, m.mode))
    return PackPlan(tuple(out))


def plan_tree(
    root: Path, *, extra_ignore: Iterable[str] = (), workers: int | None = None
) -> PackPlan:
    """The plan ``pack`` would write ``root`` from, hashing files in parallel (no archive)."""
    root = Path(root)
    if not root.is_dir():
        raise BadRequestError(f"{root} is not a directory", code="bad_path")
    entries = _scan(str(root), IgnoreRules.for_root(root, extra_ignore), lambda rel: False)
    files = [e for e in entries if e.kind == "file"]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aether-plan") as pool:
        manifest = list(pool.map(_hash_file, files))
    return _plan_of(entries, manifest)


class _VerifyingReader:
    """Hands ``tarfile`` a file's bytes while hashing them, to check them against the plan."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.hasher = Hasher()

    def read(self, n: int = -1, /) -> bytes:
        data = self._f.read(n)
        self.hasher.update(data)
        return data


class MemberSource(Protocol):
    """Compressed data members already known by content (``aether.artifacts.members``)."""

    def get(self, sha256_hex: str) -> bytes | None: ...

    def put(self, sha256_hex: str, member: bytes) -> None: ...


def write_plan(
    plan: PackPlan,
    sink: IO[bytes],
    open_blob: Callable[[str], IO[bytes]],
    members: MemberSource | None = None,
) -> PackResult:
    """Write the canonical archive of ``plan`` to ``sink``: the same bytes ``pack`` writes.

    ``open_blob(sha256_hex)`` opens a file's content (the caller's stream is closed
    here). Every content read is hashed as it is compressed: one that does not
    match its sha256 and size in the plan raises DigestMismatchError and the
    archive is void. With ``members``, a content whose compressed data member is
    known is not read at all (``aether-tar-gz/2`` plans), and the members
    compressed here are added to it. A plan of format ``aether-tar-gz/1`` is
    written in that older framing (one gzip stream), for older clients.
    """
    if plan.format == PLAN_FORMAT_V1:
        return _write_plan_v1(plan, sink, open_blob)
    writer = _HashingWriter(sink)
    entries = plan.entries
    framed = [(tar_header(e.path, e.kind, e.mode, e.size, e.target), e.size) for e in entries]

    def data(index: int) -> Iterator[bytes]:
        entry = entries[index]
        known = members.get(entry.sha256) if members is not None else None
        if known is not None:
            yield known
            return
        member = MemberCompressor(entry.size + len(padding(entry.size)))
        h = Hasher()
        out: list[bytes] = []
        with open_blob(entry.sha256) as f:
            while chunk := f.read(min(_CHUNK, entry.size + 1 - h.size)):
                h.update(chunk)
                if h.size > entry.size:
                    break
                piece = member.update(chunk)
                if members is not None and entry.size <= _INLINE_MAX:
                    out.append(piece)
                yield piece
        if h.size != entry.size or h.hexdigest() != entry.sha256:
            raise DigestMismatchError(
                f"content of {entry.path!r} does not match sha256 {entry.sha256} "
                f"and size {entry.size} in the plan"
            )
        tail = member.update(padding(entry.size)) + member.finish()
        yield tail
        if members is not None and entry.size <= _INLINE_MAX:
            members.put(entry.sha256, b"".join([*out, tail]))

    for chunk in frame_archive(framed, data):
        writer.write(chunk)
    manifest = tuple(ManifestEntry(e.path, e.size, e.sha256, e.mode) for e in plan.files())
    return PackResult(
        digest=writer.hasher.digest(),
        size_bytes=writer.hasher.size,
        manifest=manifest,
        file_count=len(manifest),
        plan=plan,
    )


def _write_plan_v1(
    plan: PackPlan, sink: IO[bytes], open_blob: Callable[[str], IO[bytes]]
) -> PackResult:
    writer = _HashingWriter(sink)
    manifest: list[ManifestEntry] = []
    with _canonical_tar_v1(writer) as tf:
        for entry in plan.entries:
            ti = tar_info(entry.path, entry.kind, entry.mode, entry.size, entry.target)
            if entry.kind != "file":
                tf.addfile(ti)
                continue
            with open_blob(entry.sha256) as f:
                reader = _VerifyingReader(f)
                try:
                    tf.addfile(ti, reader)
                except OSError as exc:  # tarfile: "unexpected end of data"
                    raise DigestMismatchError(
                        f"content of {entry.path!r} is shorter than the plan's {entry.size} bytes"
                    ) from exc
                if reader.hasher.hexdigest() != entry.sha256 or f.read(1):
                    raise DigestMismatchError(
                        f"content of {entry.path!r} does not match sha256 {entry.sha256} "
                        f"and size {entry.size} in the plan"
                    )
            manifest.append(ManifestEntry(entry.path, entry.size, entry.sha256, entry.mode))
    return PackResult(
        digest=writer.hasher.digest(),
        size_bytes=writer.hasher.size,
        manifest=tuple(manifest),
        file_count=len(manifest),
        plan=plan,
    )


def tree_opener(root: Path, plan: PackPlan) -> Callable[[str], IO[bytes]]:
    """``open_blob`` for ``write_plan`` reading the plan's files from the tree at ``root``."""
    by_sha = {e.sha256: Path(root, e.path) for e in plan.files()}

    def open_blob(sha256: str) -> IO[bytes]:
        path = by_sha.get(sha256)
        if path is None:
            raise BadRequestError(f"no file with sha256 {sha256} in the plan", code="bad_plan")
        return open(path, "rb")

    return open_blob


def _skip_for(root: Path, out: Path) -> Callable[[str], bool]:
    """Matches the output file (and its temp siblings) if they live inside ``root``."""
    try:
        rel_dir = out.parent.resolve().relative_to(root.resolve())
    except ValueError:
        return lambda rel: False
    prefix = "" if str(rel_dir) == "." else rel_dir.as_posix() + "/"
    exact, temp = prefix + out.name, f"{prefix}.{out.name}."
    return lambda rel: rel == exact or (rel.startswith(temp) and "/" not in rel[len(temp) :])


def pack(
    root: Path,
    out: Path,
    *,
    extra_ignore: Iterable[str] = (),
    workers: int | None = None,
    cache: PackCache | None = None,
    durable: bool = True,
) -> PackResult:
    """Write the canonical ``tar.gz`` of ``root`` to ``out`` (atomically) and describe it.

    With ``cache`` (``PackCache.load``), files whose stat did not change since the
    cached pack are neither read nor compressed again; the caller saves the cache.
    ``durable=False`` skips the fsync (a temporary archive).

    Raises BadRequestError (codes ``link_escape``, ``special_file``, ``bad_path``,
    ``file_changed``, ``bad_ignore_pattern``) for trees that cannot be packed faithfully.
    """
    root = Path(root)
    out = Path(out)
    skip = _skip_for(root, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            result = _pack_into(
                root, f, extra_ignore=extra_ignore, workers=workers, skip=skip, cache=cache
            )
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return result


def pack_bytes(
    root: Path, *, extra_ignore: Iterable[str] = (), workers: int | None = None
) -> bytes:
    """The canonical archive of ``root`` in memory (small trees and tests)."""
    buf = io.BytesIO()
    _pack_into(Path(root), buf, extra_ignore=extra_ignore, workers=workers)
    return buf.getvalue()
