"""``aether secrets set|ls|rm|rotate-key``: the tenant's named secrets (an app's env
and files, an http tool's headers, what policies redact).

``set NAME`` takes the value from ``--value V``, ``--from-file F`` or else stdin (one
trailing newline dropped); prefer a file or stdin: an argument lands in the shell's
history and in ``ps``. Values are never shown: ``ls`` lists names, timestamps and the
apps that use each. ``rotate-key`` (the cluster admin) replaces the key-encryption key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client

__all__ = ["run"]

_HEADERS = ["name", "created", "updated", "used by"]


def _row(s: dict[str, Any]) -> list[str]:
    used = ",".join(s.get("used_by") or []) or "-"
    return [s["name"], s["created_at"][:19], s["updated_at"][:19], used]


def _one_line_end(text: str) -> str:
    """``text`` without one trailing newline (a file's or a pipe's)."""
    return text.removesuffix("\n").removesuffix("\r")


def _value(args: argparse.Namespace) -> str:
    """The value of ``set``: ``--value``, ``--from-file``, else stdin."""
    if args.value is not None and args.from_file is not None:
        raise CliError("give the value by one of --value or --from-file (or stdin)", kind="usage")
    if args.value is not None:
        value = str(args.value)
        source = "--value"
    elif args.from_file is not None:
        try:
            value = _one_line_end(Path(args.from_file).read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--from-file {args.from_file}: {exc}", kind="io") from None
        source = f"--from-file {args.from_file}"
    else:
        value = _one_line_end(sys.stdin.read())
        source = "stdin"
    if not value:
        raise CliError(f"secret {args.name}: {source} gave an empty value", kind="usage")
    return value


async def run(args: argparse.Namespace) -> int:
    command = args.secrets_command
    value = _value(args) if command == "set" else None  # stdin is read before any call
    async with api_client(args) as client:
        if command == "set":
            path = f"/{quote(args.name, safe='')}"
            made = await client.secrets("PUT", path, body={"value": value})
            emit(args, made, f"secret {made['name']} set (stored encrypted)")
        elif command == "rotate-key":
            done = await client.secrets("POST", ":rotate-key")
            left = done["remaining"]
            note = f"; {sum(left.values())} value(s) still name an old key" if left else ""
            emit(
                args,
                done,
                f"key {done['key_id']} now wraps every secret ({done['rewrapped']} re-wrapped; "
                f"replaced {', '.join(done['previous']) or 'none'}){note}",
            )
        elif command == "ls":
            listed = await client.secrets("GET")
            emit(args, {"secrets": listed}, table([_row(s) for s in listed], _HEADERS))
        else:
            gone = await client.secrets("DELETE", f"/{quote(args.name, safe='')}")
            emit(args, gone, f"secret {gone['name']} removed")
    return 0
