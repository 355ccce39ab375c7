"""The diagnostics bundle: named files, every one redacted, packed as one tar.gz.

A bundle is a mapping of paths (``server/config.toml``, ``nodes/n1/log.txt``...) to
bytes. :func:`pack` redacts each file with :func:`aether.ops.redact.redact` (and the
secret values the caller knows), cuts each to ``MAX_FILE`` bytes (the newest end is
kept) and adds ``manifest.json``: what is in the bundle and what could not be had.

The parts come from :mod:`aether.server.api.diag` (the server's, and each node's, which
the node sends over the API: :func:`host_part`).
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aether import __version__
from aether.model.diag import MAX_FILE, MAX_NODE_PART
from aether.ops.redact import redact_bytes

__all__ = ["MAX_FILE", "MAX_NODE_PART", "as_json", "host_part", "pack", "versions"]

_ENGINES = (
    ("bwrap", ["bwrap", "--version"]),
    ("criu", ["criu", "--version"]),
    ("firecracker", ["firecracker", "--version"]),
    ("etcd", ["etcd", "--version"]),
)


def as_json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n"


def versions() -> dict[str, Any]:
    """Aether's, Python's, the OS's and the engines' found on this host."""
    engines: dict[str, str | None] = {}
    for name, command in _ENGINES:
        if shutil.which(command[0]) is None:
            engines[name] = None
            continue
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=3, check=False)
            engines[name] = (done.stdout or done.stderr).strip().splitlines()[0][:200]
        except (OSError, subprocess.SubprocessError, IndexError):
            engines[name] = "present (version unknown)"
    return {
        "aether": __version__,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "engines": engines,
    }


def host_part(
    *, log_lines: list[str], config: str, capabilities: Any, doctor: str
) -> dict[str, str]:
    """A node's own part, as it sends it: file name to text (redacted again on packing)."""
    return {
        "log.txt": "\n".join(log_lines) + "\n",
        "config.toml": config,
        "capabilities.json": as_json(capabilities).decode(),
        "versions.json": as_json(versions()).decode(),
        "doctor.txt": doctor,
    }


def _capped(data: bytes) -> bytes:
    """At most ``MAX_FILE`` bytes: the newest end, from a line's start (a secret cut in
    half at the edge would not be recognised by the redaction that follows)."""
    if len(data) <= MAX_FILE:
        return data
    tail = data[-MAX_FILE:]
    return b"[... cut to the last %d bytes ...]\n" % MAX_FILE + tail[tail.find(b"\n") + 1 :]


def pack(
    files: Mapping[str, bytes], known: Iterable[str], missing: Mapping[str, str], since: float
) -> bytes:
    """The tar.gz of ``files`` (each redacted and capped) and ``manifest.json``, which
    also says why each of ``missing`` (path: reason) is not there."""
    secrets = list(known)
    now = time.time()
    out = io.BytesIO()
    contents: dict[str, int] = {}
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path in sorted(files):
            data = redact_bytes(_capped(files[path]), secrets)
            contents[path] = len(data)
            _add(tar, f"aether-diag/{path}", data, now)
        manifest = {
            "created_at": now,
            "since_seconds": since,
            "aether": __version__,
            "files": contents,
            "missing": dict(missing),
            "redacted": "tokens (ae_...), private keys, URL passwords, Authorization "
            "headers, values of keys naming a password/secret/token/key, known secret values",
        }
        _add(tar, "aether-diag/manifest.json", redact_bytes(as_json(manifest), secrets), now)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))
