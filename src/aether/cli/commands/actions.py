"""Commands that change or follow an app: ``scale``, ``rollback``, ``logs``, ``apps rm``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from typing import Any

from aether.cli.commands.deploy import router_url, wait_for_rollout
from aether.cli.output import CliError, emit
from aether.cli.session import api_client

__all__ = ["log_record", "run", "scale_target"]

_LABEL = re.compile(r"^\[v(\d+)/(\d+)@([^\]]*)\] ?(.*)$", re.DOTALL)


def scale_target(target: str, count: str | None) -> tuple[str, int]:
    """``APP=N`` or ``APP N`` → (app, n); anything else is a usage error."""
    if count is None:
        app, sep, count = target.partition("=")
    else:
        app, sep = target, "="
    if not app or not sep or not count.isdigit():
        shown = target if count is None else f"{target} {count}"
        raise CliError(f"scale takes APP=N or APP N, got {shown!r}", kind="usage")
    return app, int(count)


def log_record(app: str, line: str) -> dict[str, Any]:
    """One line of ``GET /apps/{app}/logs`` (``[vVERSION/N@NODE] text``) as a JSON object."""
    match = _LABEL.match(line)
    if match is None:  # not written by a node: pass it on as it is
        return {"app": app, "instance": None, "version": None, "node": None, "line": line}
    version, n, node, text = match.groups()
    return {
        "app": app,
        "instance": f"{app}/{n}",
        "version": int(version),
        "node": node,
        "line": text,
    }


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.command == "scale":
            app, count = scale_target(args.target, args.count)
            result = await client.scale(app, count)
            emit(
                args,
                result.model_dump(mode="json"),
                f"{app}: {result.instances_desired} instance(s) desired, "
                f"{result.instances_active} active",
            )
        elif args.command == "rollback":
            deployment = await client.rollback(args.app, args.to, idempotency_key=uuid.uuid4().hex)
            if not args.no_wait:
                deployment = await wait_for_rollout(client, deployment, args.timeout)
            url = await router_url(client, args.app)
            data = deployment.model_dump(mode="json", exclude={"instance_list", "events"})
            data["url"] = url
            emit(
                args,
                data,
                f"rolled {args.app} back to v{deployment.rollback_of} "
                f"as v{deployment.version} ({deployment.status})",
            )
        elif args.command == "gc":
            params = {"dry_run": "true" if args.dry_run else "false"}
            result = await client.json("POST", "/api/v1/gc", params=params)
            verb = "would delete" if args.dry_run else "deleted"
            emit(
                args,
                result,
                f"{verb} {len(result['deleted_artifacts'])} artifact(s) and "
                f"{result['deleted_blobs']} file blob(s), aborted "
                f"{result.get('aborted_uploads', 0)} orphaned upload(s); "
                f"kept {result['kept_artifacts']}",
            )
        elif args.command == "apps-rm":
            deleted = await client.delete_app(args.app, force=args.force)
            emit(
                args,
                deleted.model_dump(mode="json"),
                f"deleted {args.app}"
                + (f" (was v{deleted.version})" if deleted.version else "")
                + f"; {deleted.instances_stopping} instance(s) stopping",
            )
        elif args.command == "promote":
            blueprint = await client.promote(args.app)
            emit(
                args,
                blueprint,
                f"{args.app}: v{blueprint['version']} promoted; the rollout goes on",
            )
        else:
            app = args.app or args.app_option
            if not app:
                raise CliError("logs needs an app: aether logs APP (or --app APP)", kind="usage")
            as_json = args.format == "json"
            async for line in client.logs(app, tail=args.tail, follow=args.follow):
                out = json.dumps(log_record(app, line)) if as_json else line
                sys.stdout.write(out + "\n")
                sys.stdout.flush()
    return 0
