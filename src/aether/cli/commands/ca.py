"""``aether ca show|rotate``: the cluster CA (cluster admins).

A rotation makes a new CA that issues node certificates at once; the old one stays
trusted for ``--overlap`` (nodes renew from the new one as soon as their next
heartbeat tells them) and then retires, when the servers take certificates from the
new one too.
"""

from __future__ import annotations

import argparse
import time

from aether.cli.durations import duration_seconds
from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client
from aether.model.trust import CaOut

__all__ = ["run"]


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _show(out: CaOut) -> str:
    rows = [
        [
            a.fingerprint[:23] + "…",
            ("issues nodes" if a.issuing else "")
            + (", " if a.issuing and a.serving else "")
            + ("signs servers" if a.serving else ""),
            _when(a.not_after),
            _when(a.retire_at),
        ]
        for a in out.authorities
    ]
    head = f"cluster {out.cluster}: {len(out.authorities)} CA(s) trusted\n"
    return head + table(rows, ["fingerprint", "role", "expires", "retires"])


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.ca_command == "rotate":
            overlap = duration_seconds(args.overlap)
            if overlap is None:
                raise CliError(
                    f"--overlap {args.overlap!r}: give a duration (30m, 12h)", kind="usage"
                )
            out = await client.rotate_ca(overlap)
        else:
            out = await client.ca()
        emit(args, out.model_dump(mode="json"), _show(out))
    return 0
