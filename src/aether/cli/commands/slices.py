"""``aether slice ls|get|call``: the tenant's slices (apps whose runtime is ``slice``).

``call SLICE ENTRY --json '{...}'`` calls an entry point through the server on one
ACTIVE instance: a JSON object is the keyword arguments, an array the positional
ones (no ``--json``: no arguments). The result is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client

__all__ = ["run"]

_HEADERS = ["name", "entries", "instances"]


def _arguments(text: str | None) -> tuple[list[Any] | None, dict[str, Any] | None]:
    """``(args, kwargs)`` of ``--json``: an array is args, an object kwargs."""
    if text is None:
        return None, None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--json is not valid JSON: {exc}", kind="usage") from None
    if isinstance(value, list):
        return value, None
    if isinstance(value, dict):
        return None, value
    raise CliError(
        "--json must be a JSON object (keyword arguments) or array (positional ones)",
        kind="usage",
    )


def _params(schema: dict[str, Any] | None) -> str:
    """An entry point's arguments as ``name: type, …`` from its JSON schema."""
    if not schema:
        return "(not described yet)"
    params = schema.get("params") or {}
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    shown = [
        f"{name}{'' if name in required else '?'}: {prop.get('type', 'any')}"
        for name, prop in props.items()
        if isinstance(prop, dict)
    ]
    returns = (schema.get("returns") or {}).get("type", "any")
    flags = [flag for flag in ("idempotent",) if schema.get(flag)]
    if schema.get("batch"):
        flags.append(f"batch {schema['batch'].get('max_size')}")
    extra = f"  [{', '.join(flags)}]" if flags else ""
    return f"({', '.join(shown)}) -> {returns}{extra}"


def _detail(found: dict[str, Any]) -> str:
    lines = [f"slice {found['name']}", "entry points:"]
    lines += [f"  {e['name']}{_params(e.get('schema'))}" for e in found["entries"]] or ["  -"]
    lines.append(f"instances ACTIVE: {len(found['instances'])}")
    lines += [f"  {i['node']}:{i['n']}  v{i['version']}  {i['url']}" for i in found["instances"]]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    command = args.slice_command
    call_args, call_kwargs = _arguments(args.json) if command == "call" else (None, None)
    async with api_client(args) as client:
        if command == "ls":
            listed = await client.list_slices()
            rows = [
                [s["name"], ",".join(s["entries"]) or "-", str(s["instances_active"])]
                for s in listed
            ]
            emit(args, {"slices": listed}, table(rows, _HEADERS) if listed else "no slices")
        elif command == "get":
            found = await client.get_slice(args.slice)
            emit(args, found, _detail(found))
        else:
            result = await client.call_slice(
                args.slice, args.entry, args=call_args, kwargs=call_kwargs, timeout=args.timeout
            )
            emit(args, {"result": result}, json.dumps(result, indent=2, default=str))
    return 0
