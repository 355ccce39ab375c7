"""``aether tenants create|ls|get|rm``: the cluster admin's tenants.

``create`` prints the new tenant's first admin token (shown once: hand it to the
tenant's admin); ``rm`` refuses while the tenant runs something unless ``--force``.
"""

from __future__ import annotations

import argparse
from typing import Any

from aether.cli.output import emit, table
from aether.cli.session import api_client

__all__ = ["run"]


def _row(t: dict[str, Any]) -> list[str]:
    return [
        t["name"],
        t["display_name"],
        str(t["apps"]),
        str(t["instances"]),
        str(t["tasks"]),
        str(t["sandboxes"]),
        t["created_at"][:19],
    ]


_HEADERS = ["name", "display name", "apps", "instances", "tasks", "sandboxes", "created"]


def _created(t: dict[str, Any]) -> str:
    if not t["admin_token"]:
        return f"tenant {t['name']} created"
    return (
        f"tenant {t['name']} created; its first admin token (shown once, hand it to the "
        f"tenant's admin):\n{t['admin_token']}"
    )


def _deleted(t: dict[str, Any]) -> str:
    return (
        f"tenant {t['name']} deleted: {t['apps_deleted']} app(s), "
        f"{t['instances_stopping']} instance(s) stopping, {t['tasks_cancelled']} task(s) "
        f"cancelled, {t['sandboxes_deleted']} sandbox(es) deleted, {t['tokens_revoked']} "
        f"token(s) revoked, {t['artifacts_deleted']} artifact(s) deleted"
    )


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.tenants_command == "create":
            body = {
                "name": args.name,
                "display_name": args.display_name,
                "description": args.description,
                "admin_token": not args.no_admin_token,
            }
            created = await client.create_tenant(body)
            emit(args, created, _created(created))
        elif args.tenants_command == "get":
            tenant = await client.get_tenant(args.name)
            emit(args, tenant, table([_row(tenant)], _HEADERS))
        elif args.tenants_command == "rm":
            deleted = await client.delete_tenant(args.name, force=args.force)
            emit(args, deleted, _deleted(deleted))
        else:
            tenants = await client.list_tenants()
            emit(args, {"tenants": tenants}, table([_row(t) for t in tenants], _HEADERS))
    return 0
