"""``aether login``: check a token against a server and keep it."""

from __future__ import annotations

import argparse
import os
import sys

from aether.cli.output import CliError, emit
from aether.cli.session import save_config, save_session

__all__ = ["run"]


async def run(args: argparse.Namespace) -> int:
    from aether.client import ApiClient

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
