"""``aether artifacts verify|provenance DIGEST``: what the server holds, checked.

``verify`` asks the server to recompute the stored archive's digest and check its
signature, its provenance statement and its SBOM against the keys registered for
the tenant's apps; it prints one line per check and exits 43 (``tampered``) when
any fails.
"""

from __future__ import annotations

import argparse
import json

from aether.artifacts import parse_digest
from aether.cli.output import EXIT, CliError, emit
from aether.cli.session import api_client
from aether.errors import BadRequestError

__all__ = ["run"]


def _digest(value: str) -> str:
    try:
        return parse_digest(value)
    except BadRequestError as exc:
        raise CliError(exc.message, kind="usage", code=exc.code) from None


async def run(args: argparse.Namespace) -> int:
    digest = _digest(args.digest)
    async with api_client(args) as client:
        if args.artifacts_command == "provenance":
            found = await client.artifact_provenance(digest)
            emit(args, found, json.dumps(found["statement"], indent=2))
            return EXIT["ok"]
        verdict = await client.verify_artifact(digest)
    lines = [
        f"{'ok  ' if check['ok'] else 'FAIL'} {check['name']:<10} {check['detail']}"
        for check in verdict["checks"]
    ]
    summary = "verified" if verdict["ok"] else "NOT verified"
    emit(args, verdict, "\n".join([*lines, f"{verdict['digest']}: {summary}"]))
    return EXIT["ok"] if verdict["ok"] else EXIT["tampered"]
