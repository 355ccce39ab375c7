"""``aether tokens`` (create, list, revoke) and ``aether nodes revoke|allow NODE``.

Join tokens (``aether tokens join --ttl 1h --uses 1``, or ``create --role join``)
add nodes to the cluster: only a cluster admin (an admin of the default tenant)
creates them; one made for a number of uses joins that many nodes, no more. A
node exchanges one for a credential and a certificate of its own when it starts;
``aether nodes revoke NODE`` ends that credential and bars the node from joining
again until ``aether nodes allow``.
"""

from __future__ import annotations

import argparse

from aether.cli.durations import duration_seconds
from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client

__all__ = ["run"]


def _seconds(flag: str, text: str) -> int:
    seconds = duration_seconds(text)
    if seconds is None:
        raise CliError(f"{flag} {text!r}: give a duration (30m, 12h, 90d)", kind="usage")
    return int(seconds)


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.command == "nodes-revoke":
            result = await client.revoke_node(args.node)
            emit(
                args,
                result,
                f"node {args.node} revoked: its credential no longer works and it may not "
                f"join again until `aether nodes allow {args.node}`",
            )
        elif args.command == "nodes-allow":
            result = await client.allow_node(args.node)
            emit(args, result, f"node {args.node} may join again (with a join token)")
        elif args.tokens_command == "create":
            if args.role is None and args.user is None:
                raise CliError("a token needs --role, or --user whose role it takes", kind="usage")
            expires = None if args.expires is None else _seconds("--expires", args.expires)
            token = await client.create_token(
                args.role, args.name, user=args.user, expires_in=expires, uses=args.uses
            )
            emit(args, token, str(token["token"]))
        elif args.tokens_command == "join":
            if args.uses < 1:
                raise CliError("--uses must be at least 1", kind="usage")
            token = await client.create_token(
                "join", args.name, expires_in=_seconds("--ttl", args.ttl), uses=args.uses
            )
            emit(args, token, str(token["token"]))
        elif args.tokens_command == "revoke":
            token = await client.revoke_token(args.id)
            emit(args, token, f"token {token['id']} ({token['role']}) revoked")
        else:
            tokens = await client.list_tokens()
            emit(
                args,
                {"tokens": tokens},
                table(
                    [
                        [
                            t["id"],
                            t["name"],
                            t["role"],
                            "revoked" if t["revoked_at"] else "",
                            "" if t.get("uses_left") is None else str(t["uses_left"]),
                        ]
                        for t in tokens
                    ],
                    ["id", "name", "role", "state", "uses left"],
                ),
            )
    return 0
