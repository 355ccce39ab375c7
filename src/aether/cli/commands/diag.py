"""``aether diag bundle``: one archive of what a bug report needs, secrets redacted."""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

from aether.cli.durations import duration_seconds
from aether.cli.output import CliError, emit
from aether.cli.session import api_client

__all__ = ["contents", "run"]


def contents(data: bytes) -> dict[str, Any]:
    """The bundle's manifest (what it holds, what is missing), read from its bytes."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("aether-diag/manifest.json")
        if member is None:
            raise CliError("the server's answer is not a diagnostics bundle")
        manifest: dict[str, Any] = json.loads(member.read())
        return manifest


def _text(path: Path, manifest: dict[str, Any]) -> str:
    files: dict[str, int] = manifest.get("files", {})
    lines = [f"wrote {path} ({path.stat().st_size} bytes): {len(files)} files"]
    lines += [f"  {name}  ({size} bytes)" for name, size in sorted(files.items())]
    for name, why in sorted(manifest.get("missing", {}).items()):
        lines.append(f"  missing {name}: {why}")
    lines.append(f"redacted: {manifest.get('redacted', '')}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    since = duration_seconds(args.since)
    if since is None or since <= 0:
        raise CliError(f"--since {args.since!r}: give a duration such as 30m, 1h, 2d", kind="usage")
    out = Path(args.output or time.strftime("aether-diag-%Y%m%dT%H%M%SZ.tar.gz", time.gmtime()))
    async with api_client(args) as client:
        data = await client.diag_bundle(since, args.nodes, args.wait)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:  # redacted, but still the cluster's inner workings
        fh.write(data)
    manifest = contents(data)
    emit(args, {"path": str(out), **manifest}, _text(out, manifest))
    return 0
