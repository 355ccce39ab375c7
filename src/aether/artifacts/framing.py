"""The canonical archive framing ``aether-tar-gz/2``: a tar stream as concatenated gzip members.

The tar stream is the same as before (PAX format, entries in plan order, times,
owners and modes normalised, two zero blocks and padding to a 10 KiB record at
the end). What changed from ``aether-tar-gz/1`` (one gzip stream over the whole
tar) is how it is compressed: the tar bytes are cut into *segments* and each
segment is its own gzip member (RFC 1952 allows any number; ``gzip -d``, GNU
tar, Python's ``gzip``/``tarfile`` read them as one stream):

- a **meta** segment: the tar headers from just after the previous file's data
  up to and including the next non-empty file's header (directories, symlinks,
  empty files and that file's header);
- a **data** segment: one non-empty file's content plus its NUL padding to the
  next 512-byte block. Its member depends on the content alone, so it is
  compressed once per content and reused, by the client (its pack cache) and by
  the server (assembling a new artifact from the previous one's members);
- a final meta segment: the headers after the last file, the two zero blocks
  and the record padding.

Every member has the fixed 10-byte header ``1f 8b 08 00 00000000 00 ff`` (no
name, mtime 0, unknown OS), raw deflate at level 6 with the default strategy,
then the CRC-32 and the length mod 2**32, little endian. The deflate window is
the smallest power of two (2**9 to 2**15) holding the whole segment, and the
memory level ``window bits - 7`` (8, zlib's default, for the 32 KiB window):
setting up zlib's full-size state costs ~10x more than compressing a small
segment, and most segments are small. Both follow from the segment's length, so
they are part of the format. The bytes depend only on the plan and the file contents (and zlib's
deflate, as before), so the same tree gives the same digest whether the client
packs it or the server assembles it.

Pure functions only: no files are opened here.
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final, Literal

__all__ = [
    "ARCHIVE_FORMAT",
    "COMPRESSLEVEL",
    "TAR_FORMAT",
    "MemberCompressor",
    "data_member",
    "frame_archive",
    "gzip_member",
    "padding",
    "tar_header",
    "tar_info",
    "window_bits",
]

#: Names this framing; plans say which framing they are to be written with.
ARCHIVE_FORMAT = "aether-tar-gz/2"
#: Fixed so the compressed bytes do not depend on a default.
COMPRESSLEVEL = 6
#: PAX: no limits on path length, size or non-ASCII names; tarfile only emits the
#: extended header when a field needs it, so common entries stay plain ustar.
TAR_FORMAT: Final = tarfile.PAX_FORMAT

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def window_bits(length: int) -> int:
    """The deflate window (bits) of a segment of ``length`` bytes: the smallest that holds it."""
    return min(zlib.MAX_WBITS, max(9, (length - 1).bit_length()))


class MemberCompressor:
    """One gzip member of ``length`` bytes, fed in chunks; ``update``/``finish`` return bytes."""

    __slots__ = ("_crc", "_size", "_z", "started")

    def __init__(self, length: int) -> None:
        bits = window_bits(length)
        self._z = zlib.compressobj(COMPRESSLEVEL, zlib.DEFLATED, -bits, bits - 7)
        self._crc = 0
        self._size = 0
        self.started = False

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._z.compress(data)
        if not self.started:
            self.started = True
            return _GZIP_HEADER + out
        return out

    def finish(self) -> bytes:
        head = b"" if self.started else _GZIP_HEADER
        self.started = True
        return head + self._z.flush() + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)


def gzip_member(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as one canonical gzip member."""
    member = MemberCompressor(len(data))
    return member.update(data) + member.finish()


def padding(size: int) -> bytes:
    """The NULs that follow ``size`` bytes of file content up to the next tar block."""
    return b"\0" * (-size % _BLOCK)


def data_member(content: bytes | bytearray | memoryview) -> bytes:
    """The data segment's member of a file holding ``content`` (padding included)."""
    pad = padding(len(content))
    member = MemberCompressor(len(content) + len(pad))
    return member.update(content) + member.update(pad) + member.finish()


def tar_info(
    path: str, kind: Literal["dir", "file", "symlink"], mode: int, size: int, target: str
) -> tarfile.TarInfo:
    """The entry's TarInfo, as every Aether archive writes it (owner 0, time 0)."""
    # Built by hand rather than with gettarinfo(): that would copy owners and times
    # from disk and turn files with several links into hardlink entries.
    ti = tarfile.TarInfo(path)
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = mode
    if kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = target
    else:
        ti.type = tarfile.REGTYPE
        ti.size = size
    return ti


def tar_header(
    path: str, kind: Literal["dir", "file", "symlink"], mode: int, size: int, target: str
) -> bytes:
    """The tar header block(s) of one entry (a PAX extended header first when needed)."""
    return tar_info(path, kind, mode, size, target).tobuf(TAR_FORMAT, "utf-8", "surrogateescape")


#: An entry to frame: ``(header bytes, content size)``; a size > 0 means a data segment follows.
Framed = tuple[bytes, int]


def frame_archive(
    entries: Sequence[Framed] | Iterable[Framed],
    data: Callable[[int], Iterable[bytes]],
    meta_member: Callable[[bytearray], bytes] = gzip_member,
) -> Iterator[bytes]:
    """The archive's bytes, member after member.

    ``data(i)`` gives the compressed data member (in chunks) of entry ``i``; it is
    called, in order, only for entries with a size > 0. ``meta_member`` compresses
    a run of headers (a cache may answer instead; it must give ``gzip_member``'s bytes).
    """
    meta = bytearray()
    offset = 0
    for index, (header, size) in enumerate(entries):
        meta += header
        offset += len(header)
        if size > 0:
            yield meta_member(meta)
            meta.clear()
            yield from data(index)
            offset += size + (-size % _BLOCK)
    meta += b"\0" * (2 * _BLOCK)
    offset += 2 * _BLOCK
    meta += b"\0" * (-offset % _RECORD)
    yield meta_member(meta)
