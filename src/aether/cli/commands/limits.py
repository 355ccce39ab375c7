"""``aether limits get|set TENANT``: a tenant's request rate and quotas, and its use.

``get`` without TENANT shows the caller's own tenant (``GET /api/v1/limits``);
``set`` changes only the values given (``default`` puts one back to the cluster
default) and is for the cluster admin.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client

__all__ = ["FLAGS", "run"]

#: flag → (field of the limits, its type); ``default`` clears a value.
FLAGS: dict[str, tuple[str, type]] = {
    "rate": ("rate_per_minute", int),
    "burst": ("burst", int),
    "instances": ("instances", int),
    "cpu": ("cpu", float),
    "memory": ("memory_mb", int),
    "tasks": ("tasks", int),
    "sandboxes": ("sandboxes", int),
    "artifact_bytes": ("artifact_bytes", int),
}


def _path(tenant: str | None) -> str:
    return f"/api/v1/tenants/{quote(tenant, safe='')}/limits" if tenant else "/api/v1/limits"


def _value(flag: str, raw: str, kind: type) -> Any:
    if raw == "default":
        return None
    try:
        return kind(raw)
    except ValueError:
        raise CliError(
            f"--{flag.replace('_', '-')} takes a number or 'default', not {raw!r}", kind="usage"
        ) from None


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    return {
        field: _value(flag, raw, kind)
        for flag, (field, kind) in FLAGS.items()
        if (raw := getattr(args, flag, None)) is not None
    }


def _show(limits: dict[str, Any]) -> str:
    usage = limits["usage"]
    rows = []
    for field, _ in FLAGS.values():
        limit = limits["effective"].get(field)
        own = limits["configured"].get(field) is not None
        shown = "unlimited" if limit is None else str(limit)
        rows.append([field, shown, "tenant" if own else "default", str(usage.get(field, ""))])
    return f"tenant {limits['tenant']}\n" + table(rows, ["limit", "value", "set by", "in use"])


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.limits_command == "set":
            changes = _changes(args)
            if not changes:
                raise CliError(
                    "nothing to set: give at least one of "
                    + ", ".join(f"--{f.replace('_', '-')}" for f in FLAGS),
                    kind="usage",
                )
            current = await client.json("GET", _path(args.tenant))
            body = {**current["configured"], **changes}
            limits = await client.json("PUT", _path(args.tenant), json=body)
        else:
            limits = await client.json("GET", _path(args.tenant))
    emit(args, limits, _show(limits))
    return 0
