"""``aether login``: check a token against a server and keep it."""

from __future__ import annotations

import argparse
import os
import sys

from aether.cli.output import CliError, emit
from aether.cli.session import load_session, save_config, save_session

__all__ = ["run"]


async def run(args: argparse.Namespace) -> int:
    from aether.client import ApiClient

    if args.rotate:
        return await _rotate(args)
    if not args.server:
        raise CliError("login needs --server URL", kind="usage")
    token = args.token or os.environ.get("AETHER_TOKEN")
    if token == "-":
        token = sys.stdin.readline().strip()
    if not token:
        raise CliError(
            "a token is needed: --token TOKEN, --token - (stdin) or AETHER_TOKEN", kind="usage"
        )
    async with ApiClient(args.server, token) as client:
        status = await client.status()  # proves the token works before it is saved
    path = save_session(args.server, token)
    save_config({"server": args.server})
    emit(
        args,
        {"server": args.server, "session": str(path), "leader": status.leader},
        f"logged in to {args.server} (session saved in {path})",
    )
    return 0


async def _rotate(args: argparse.Namespace) -> int:
    """Swap the session's token for a new one; the old one stops working at once."""
    from aether.client import ApiClient

    session = load_session(args.server, args.token)
    async with ApiClient(session.server, session.token) as client:
        issued = await client.rotate_token()
    path = save_session(session.server, issued["token"])
    emit(
        args,
        {"server": session.server, "session": str(path), "token_id": issued["id"]},
        f"rotated the token for {session.server}; the old one is revoked (session: {path})",
    )
    return 0
