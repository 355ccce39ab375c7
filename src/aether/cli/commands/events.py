"""``aether events``: a deployment's timeline, or ``--follow`` the cluster event stream.

With ``--follow`` every event is one line (text) or one JSON object (``--format
json``) as it happens; a broken stream is resumed from the last event's id
(``Last-Event-ID``), so nothing is printed twice or skipped — unless the server
says the gap is too old, which is printed as a ``gap`` line. ``--limit N``
stops after N events (``ready`` and ``gap`` do not count).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime
from typing import Any

from aether.cli.output import CliError, emit
from aether.cli.session import api_client
from aether.client import ApiClient
from aether.errors import ServiceUnavailableError

__all__ = ["format_event", "run"]

RECONNECT_SECONDS = 1.0


def _task_summary(event: dict[str, Any]) -> str:
    """``pending -> active job:run attempt 1 on n1``, and a failure's error."""
    text = f"{event.get('previous') or '-'} -> {event.get('state')} {event.get('task_type')}"
    text += f" attempt {event.get('attempt')}"
    if event.get("node"):
        text += f" on {event['node']}"
    return f"{text}: {event['error']}" if event.get("error") else text


def _summary(event: dict[str, Any]) -> str:
    kind = event.get("type")
    if kind == "node_joined":
        return f"router {event.get('router_url', '')} drivers {','.join(event.get('drivers', []))}"
    if kind in ("node_lost", "node_drained"):
        return str(event.get("reason", ""))
    if kind == "leader_changed":
        return f"leader {event.get('leader') or '(none)'}"
    if kind == "instance_state":
        text = (
            f"{event.get('instance')} {event.get('state') or '-'} (command {event.get('command')})"
        )
        return f"{text} {event.get('message', '')}".rstrip()
    if kind == "instance_removed":
        return str(event.get("instance", ""))
    if kind == "blueprint_changed":
        if event.get("deleted"):
            return "deleted"
        return f"v{event.get('version')} instances {event.get('instances')}"
    if kind in ("deployment", "migration"):
        return f"v{event.get('version')} {event.get('step')}: {event.get('message', '')}"
    if kind == "decision":
        return f"{event.get('kind')} {event.get('outcome')}: {event.get('reason', '')}"
    if kind == "risk_changed":
        return (
            f"{event.get('previous') or '-'} -> {event.get('status')} ({event.get('root_cause')})"
        )
    if kind == "task_state":
        return _task_summary(event)
    if kind == "alert":
        labels = event.get("labels") or {}
        shown = " ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "cluster"
        return f"{event.get('previous') or '-'} -> {event.get('state')} {shown}"
    if kind == "gap":
        return str(event.get("message", ""))
    return ""


def format_event(event: dict[str, Any]) -> str:
    """One text line: time, type, target, what happened."""
    ts = event.get("ts")
    when = (
        datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]
        if isinstance(ts, int | float)
        else "--:--:--.---"
    )
    target = event.get("target", "") or "-"
    return f"{when}  {event.get('type', ''):<17} {target:<20} {_summary(event)}"


async def _timeline(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        target = args.deployment
        if "@" in target:
            app, _, version = target.partition("@")
            matches = [d for d in await client.deployments(app) if str(d.version) == version]
            if not matches:
                raise CliError(
                    f"app {app!r} has no version {version}", kind="not_found", code="not_found"
                )
            target = matches[0].id
        events = await client.events(target)
        emit(
            args,
            {"deployment_id": target, "events": events},
            "\n".join(f"{e['created_at']}  {e['type']:<16} {e['message']}" for e in events),
        )
    return 0


def _print(event: dict[str, Any], json_mode: bool) -> None:
    sys.stdout.write((json.dumps(event) if json_mode else format_event(event)) + "\n")
    sys.stdout.flush()


async def _follow(args: argparse.Namespace, client: ApiClient) -> int:
    """Print the stream until ``--limit`` events; reconnect after the last event's id."""
    json_mode = args.format == "json"
    last: str | None = args.since
    printed = 0
    while True:
        stream = client.cluster_events(types=args.type, targets=args.target, last_event_id=last)
        try:
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    last = event.get("id") or last
                    if event.get("type") in ("ready", "ping"):
                        continue
                    _print(event, json_mode)
                    if event.get("type") != "gap":
                        printed += 1
                    if args.limit and printed >= args.limit:
                        return 0
        except ServiceUnavailableError:
            pass  # broken or unreachable (the client moves on to the next server): resume
        await asyncio.sleep(RECONNECT_SECONDS)


async def run(args: argparse.Namespace) -> int:
    if args.follow:
        if args.deployment:
            raise CliError(
                "give either a deployment or --follow, not both", kind="usage", code="usage"
            )
        if args.limit < 0:
            raise CliError("--limit is a number of events, 0 or more", kind="usage", code="usage")
        async with api_client(args) as client:
            return await _follow(args, client)
    if not args.deployment:
        raise CliError(
            "name a deployment (its id or APP@VERSION), or --follow the cluster's events",
            kind="usage",
            code="usage",
        )
    return await _timeline(args)
