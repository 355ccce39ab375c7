"""``aether metrics``: the cluster's live telemetry, as the leader aggregates it.

Without flags: the newest one-second sample (nodes, apps). ``--watch`` follows
the Server-Sent Events stream and prints every sample (one JSON object per
line with ``--format json``) until interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from aether.cli.output import emit, table
from aether.cli.session import api_client
from aether.model.telemetry import ClusterSample

__all__ = ["format_sample", "run"]


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def format_sample(sample: ClusterSample | None) -> str:
    if sample is None:
        return "no telemetry yet: nodes push every second once they are registered"
    nodes = [
        [
            n.node,
            _pct(n.cpu),
            _pct(n.memory_fraction),
            _pct(n.disk_fraction),
            str(n.instances),
            str(n.restarts),
            f"{n.age:.1f}s" + (" (stale)" if n.stale else ""),
        ]
        for n in sorted(sample.nodes.values(), key=lambda n: n.node)
    ]
    apps = [
        [
            a.app,
            str(a.instances),
            f"{a.cpu_per_instance:.2f}",
            f"{a.rss_mb_per_instance:.0f}",
            f"{a.calls_per_s:.1f}",
            f"{a.latency_ms:.1f}",
            f"{a.in_flight_per_instance:.2f}",
            f"{a.errors_per_s:.1f}",
        ]
        for a in sorted(sample.apps.values(), key=lambda a: a.app)
    ]
    parts = [
        table(nodes, ["node", "cpu", "memory", "disk", "instances", "restarts", "last push"])
        if nodes
        else "no nodes reporting"
    ]
    if apps:
        headers = ["app", "instances", "cpu/inst", "rss MB", "calls/s", "latency ms"]
        parts.append(table(apps, [*headers, "in flight/inst", "errors/s"]))
    return "\n\n".join(parts)


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if not args.watch:
            sample = await client.metrics_latest()
            emit(
                args,
                {"sample": sample.model_dump(mode="json") if sample else None},
                format_sample(sample),
            )
            return 0
        json_mode = args.format == "json"
        async for sample in client.metrics_stream():
            if json_mode:
                sys.stdout.write(json.dumps({"sample": sample.model_dump(mode="json")}) + "\n")
            else:
                clear = "\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n"
                sys.stdout.write(clear + format_sample(sample) + "\n")
            sys.stdout.flush()
    return 0
