"""``aether blueprint apply|ls|get|rm``: blueprint files, several deployed apps and
slices with their instance counts applied in one go (``docs/operations.md``).

``apply FILE`` sends the file as it is (TOML, or YAML/JSON by its ``.yaml``/``.yml``/
``.json`` suffix); its name is the file's ``name``, else ``--name``, else the file's
stem. The server checks it (a bad file is refused with what is wrong).
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client

__all__ = ["run"]

_HEADERS = ["name", "apps", "applied", "by"]
_KINDS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
_YAML_NAME = re.compile(r"""^name:\s*["']?([a-z0-9-]+)["']?\s*(#.*)?$""", re.MULTILINE)


def _name_in(text: str, kind: str) -> str | None:
    """The ``name`` the file gives itself, if it can be read here (the server checks)."""
    if kind == "toml":
        try:
            name = tomllib.loads(text).get("name")
        except tomllib.TOMLDecodeError:
            return None
        return name if isinstance(name, str) else None
    if kind == "yaml":
        found = _YAML_NAME.search(text)
        return found.group(1) if found else None
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _read(args: argparse.Namespace) -> tuple[str, str, str]:
    """``(name, text, kind)`` of the file to apply."""
    path = Path(args.file)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{args.file}: {exc}", kind="io") from None
    kind = _KINDS.get(path.suffix.lower(), "toml")
    own = _name_in(text, kind)
    if args.name and own and args.name != own:
        raise CliError(f"{args.file} is blueprint {own!r}, not --name {args.name!r}", kind="usage")
    return args.name or own or path.stem, text, kind


def _apps(bp: dict[str, Any]) -> str:
    return ",".join(f"{app}={want['instances']}" for app, want in bp["apps"].items())


def _detail(bp: dict[str, Any]) -> str:
    lines = [f"blueprint {bp['name']}  applied {bp['applied_at'][:19]} by {bp['applied_by']}"]
    rows = []
    for app, a in bp["apps"].items():
        pin = f"v{a['version']}" if a.get("version") else "-"
        now = f"v{a['version_now']}" if a.get("version_now") else "not deployed"
        counts = [str(a[k]) for k in ("instances_desired", "instances_active")]
        rows.append([app, str(a["instances"]), pin, now, *counts])
    lines.append(table(rows, ["app", "instances", "pinned", "running", "desired", "active"]))
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    command = args.blueprint_command
    # the file is read (and a bad one refused) before any call
    name, text, kind = _read(args) if command == "apply" else ("", "", "")
    async with api_client(args) as client:
        if command == "apply":
            applied = await client.apply_blueprint(name, text, kind)
            emit(args, applied, f"blueprint {name} applied\n{_detail(applied)}")
        elif command == "ls":
            listed = await client.list_blueprints()
            rows = [[b["name"], _apps(b), b["applied_at"][:19], b["applied_by"]] for b in listed]
            emit(args, {"blueprints": listed}, table(rows, _HEADERS) if listed else "no blueprints")
        elif command == "get":
            found = await client.get_blueprint(args.name)
            emit(args, found, _detail(found))
        else:
            gone = await client.remove_blueprint(args.name, scale_to_zero=args.scale_to_zero)
            scaled = gone["scaled_to_zero"]
            also = f"; scaled to 0: {', '.join(scaled)}" if scaled else ""
            emit(args, gone, f"blueprint {args.name} forgotten{also}")
    return 0
