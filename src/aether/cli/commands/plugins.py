"""``aether plugins add|ls|rm``: the cluster's policy plugins (WebAssembly risk and guard
rules, docs/plugins.md); the cluster admin's.

``add FILE`` uploads a compiled module (``.wasm``; the server checks it: the ABI's
exports, no imports) under ``--name`` as a ``--kind`` risk or guard rule; the same
name with a new ``--version`` replaces it.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client

__all__ = ["run"]


def _body(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.file)
    try:
        wasm = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", kind="usage") from None
    body: dict[str, Any] = {
        "name": args.name,
        "kind": args.kind,
        "version": args.version,
        "wasm": base64.b64encode(wasm).decode(),
    }
    for field in ("fuel", "memory_bytes", "deadline_ms"):
        if (value := getattr(args, field, None)) is not None:
            body[field] = value
    return body


def _rows(plugins: list[dict[str, Any]]) -> str:
    if not plugins:
        return "no plugins"
    return table(
        [
            [
                p["name"],
                p["kind"],
                p["version"],
                p["sha256"][:12],
                str(p["size"]),
                f"{p['fuel']} fuel, {p['memory_bytes'] // 1024} KiB, {p['deadline_ms']} ms",
            ]
            for p in plugins
        ],
        ["name", "kind", "version", "sha256", "bytes", "limits"],
    )


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.plugins_command == "add":
            plugin = await client.json("POST", "/api/v1/plugins", json=_body(args))
            emit(args, plugin, f"plugin {plugin['name']} v{plugin['version']} ({plugin['kind']})")
        elif args.plugins_command == "rm":
            plugin = await client.json("DELETE", f"/api/v1/plugins/{quote(args.name, safe='')}")
            emit(args, plugin, f"removed plugin {plugin['name']}")
        else:
            plugins = await client.json("GET", "/api/v1/plugins")
            emit(args, plugins, _rows(plugins))
    return 0
