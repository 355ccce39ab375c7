"""Commands that change or follow an app: ``scale``, ``rollback``, ``logs``."""

from __future__ import annotations

import argparse
import sys
import uuid

from aether.cli.commands.deploy import router_url, wait_for_rollout
from aether.cli.output import CliError, emit
from aether.cli.session import api_client

__all__ = ["run"]


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.command == "scale":
            app, sep, count = args.target.partition("=")
            if not sep or not count.isdigit():
                raise CliError(f"scale takes APP=N, got {args.target!r}", kind="usage")
            result = await client.scale(app, int(count))
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
            async for line in client.logs(app, tail=args.tail, follow=args.follow):
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
    return 0
