"""Hostile artifacts and raw HTTP helpers for the end-to-end bad-input tests.

Archives are built member by member with ``tarfile`` (never from a real tree), so
each one holds exactly the attack it is named after and nothing a packer would
have cleaned up.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

Member = tuple[tarfile.TarInfo, bytes | None]

#: Name fragment of every file an attack tries to plant: none may exist anywhere, ever.
MARKER = "pwned"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> Member:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    ti.mtime = 0
    for key, value in attrs.items():
        setattr(ti, key, value)
    if kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
        ti.size = len(data)
        return ti, data
    return ti, None


def tar_gz(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buf.getvalue(), mtime=0)


def harmless(label: str) -> list[Member]:
    """What a real app would ship first, so the attack is not the archive's only entry."""
    return [
        entry("app.py", data=f"print('{label}')\n".encode()),
        entry("static", tarfile.DIRTYPE),
        entry("static/index.html", data=b"<h1>hi</h1>\n"),
    ]


def gzip_bomb(expanded_bytes: int) -> bytes:
    """A valid ``tar.gz`` whose one file expands to ``expanded_bytes`` of zeros.

    Built cheaply as a multi-member gzip stream (RFC 1952 allows concatenated
    members; ``gzip``/``zcat`` and Python read it as one stream): the header, then
    one pre-compressed 64 MiB block of zeros repeated, then the remainder. About
    1 KB of archive per MB of content.
    """
    if expanded_bytes % tarfile.BLOCKSIZE:
        raise ValueError("expanded_bytes must be a multiple of 512")
    info = tarfile.TarInfo("data/zeros.bin")
    info.size = expanded_bytes
    info.mode = 0o644
    info.mtime = 0
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    # data, then the two zero end-of-archive blocks, padded to a whole tar record
    tail = expanded_bytes + 2 * tarfile.BLOCKSIZE
    tail += -(len(header) + tail) % tarfile.RECORDSIZE
    block = 64 << 20
    parts = [gzip.compress(header, mtime=0)]
    whole = gzip.compress(bytes(block), compresslevel=9, mtime=0)
    parts.extend([whole] * (tail // block))
    if tail % block:
        parts.append(gzip.compress(bytes(tail % block), compresslevel=9, mtime=0))
    return b"".join(parts)


def tree(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file below ``root`` (relative path → (size, inode)), skipping ``skip`` subtrees."""
    out: dict[str, tuple[int, int]] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in [*filenames, *(d for d in dirnames if (here / d).is_symlink())]:
            p = here / name
            try:
                st = p.lstat()
            except FileNotFoundError:  # removed while we walked (a finished upload, say)
                continue
            out[str(p.relative_to(root))] = (st.st_size, st.st_ino)
    return out


def planted(root: Path) -> list[str]:
    """Paths below ``root`` whose name carries the attack marker."""
    return sorted(
        str(Path(dirpath, name).relative_to(root))
        for dirpath, dirnames, filenames in os.walk(root)
        for name in [*dirnames, *filenames]
        if MARKER in name
    )


@dataclass(frozen=True)
class RawResponse:
    status: int | None
    body: bytes


def raw_upload_then_hang_up(
    api: str,
    token: str,
    *,
    digest: str,
    sent: bytes,
    content_length: int | None,
) -> RawResponse:
    """POST /api/v1/artifacts over a raw socket, send ``sent`` and close mid-body.

    ``content_length`` None uses chunked encoding and never sends the last chunk.
    Returns whatever the server answered before the socket closed (usually nothing).
    """
    url = urlsplit(api)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    headers = [
        "POST /api/v1/artifacts HTTP/1.1",
        f"Host: {host}:{port}",
        f"Authorization: Bearer {token}",
        f"X-Aether-Artifact-Digest: {digest}",
        "Content-Type: application/gzip",
    ]
    if content_length is None:
        headers.append("Transfer-Encoding: chunked")
        body = f"{len(sent):x}\r\n".encode() + sent + b"\r\n"
    else:
        headers.append(f"Content-Length: {content_length}")
        body = sent
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        sock.shutdown(socket.SHUT_WR)  # the client is gone: no more bytes will come
        chunks: list[bytes] = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except (TimeoutError, ConnectionResetError):
            pass
    raw = b"".join(chunks)
    status: int | None = None
    if raw.startswith(b"HTTP/1."):
        status = int(raw.split(b" ", 2)[1])
    return RawResponse(status, raw)
