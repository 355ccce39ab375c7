"""``aether audit``: who did what, newest first (``--follow`` for new events, ``--format
jsonl`` to export); ``aether audit verify``: walk the hash chain (exit 43 when broken)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from typing import Any

from aether.cli.durations import duration_seconds
from aether.cli.output import EXIT, CliError, emit
from aether.cli.session import api_client
from aether.model.audit import AuditEventOut

__all__ = ["format_event", "parse_since", "run"]

FOLLOW_SECONDS = 1.0


def parse_since(value: str, now: float | None = None) -> float:
    """``30m``, ``2h``, ``7d`` ago; an ISO time; or epoch seconds."""
    now = time.time() if now is None else now
    seconds = duration_seconds(value)
    if seconds is not None:
        return now - seconds
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise CliError(
            f"--since {value!r}: give a duration (30m, 2h, 7d), an ISO time or epoch seconds",
            kind="usage",
            code="usage",
        ) from None


def format_event(e: AuditEventOut) -> str:
    when = datetime.fromtimestamp(e.ts).strftime("%Y-%m-%d %H:%M:%S")
    who = f"{e.actor_kind}:{e.actor}" if e.actor else e.actor_kind
    status = f" {e.status}" if e.status is not None else ""
    line = f"{e.id:>7}  {when}  {e.outcome + status:<12} {who:<40} {e.action}  {e.target}"
    return f"{line}  [{e.detail}]" if e.detail else line


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "actor": args.actor,
        "action": args.action,
        "target": args.target,
        "outcome": args.outcome,
        "since": parse_since(args.since) if args.since else None,
    }


def _write(event: AuditEventOut, fmt: str) -> None:
    sys.stdout.write((event.model_dump_json() if fmt != "text" else format_event(event)) + "\n")
    sys.stdout.flush()


async def _verify(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        verdict = await client.audit_verify()
    if verdict.ok:
        text = (
            f"audit chain intact: {verdict.checked} event(s), "
            f"rows {verdict.anchor_id + 1}..{verdict.head_id}"
        )
    else:
        text = f"audit chain BROKEN at row {verdict.first_bad}: {verdict.reason}"
    emit(args, verdict.model_dump(mode="json"), text)
    return EXIT["ok"] if verdict.ok else EXIT["tampered"]


async def _follow(args: argparse.Namespace, filters: dict[str, Any]) -> int:
    async with api_client(args) as client:
        page = await client.audit(**filters, limit=args.limit)
        for event in reversed(page.events):
            _write(event, args.format)
        last = page.events[0].id if page.events else 0
        while True:
            await asyncio.sleep(FOLLOW_SECONDS)
            newer = await client.audit(**filters, after=last, limit=1000)
            for event in newer.events:
                _write(event, args.format)
                last = event.id


async def run(args: argparse.Namespace) -> int:
    if args.check == "verify":
        return await _verify(args)
    filters = _filters(args)
    if args.follow:
        return await _follow(args, filters)
    async with api_client(args) as client:
        if args.format == "jsonl":
            async for line in client.audit_export(**filters):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            return 0
        page = await client.audit(**filters, limit=args.limit)
    text = "\n".join(format_event(e) for e in page.events) or "no audit events"
    data = {"events": [json.loads(e.model_dump_json()) for e in page.events], "cursor": page.cursor}
    emit(args, data, text)
    return 0
