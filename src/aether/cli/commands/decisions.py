"""``aether decisions``: what the controller decided, when, at which layer and why."""

from __future__ import annotations

import argparse
from datetime import datetime

from aether.cli.output import emit
from aether.cli.session import api_client
from aether.model.decisions import DecisionOut

__all__ = ["format_decisions", "run"]


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def format_decisions(decisions: list[DecisionOut]) -> str:
    """One line each: time, layer, kind, target, outcome, reason (and why not, if refused)."""
    if not decisions:
        return "no decisions yet"
    headers = ["time", "layer", "kind", "target", "outcome", "reason"]
    rows = []
    for d in decisions:
        reason = d.reason if not d.detail else f"{d.reason} [{d.detail}]"
        rows.append([_when(d.ts), str(d.layer), d.kind, d.target, d.outcome, reason])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for row in [[h.upper() for h in headers], *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    target = args.app or args.node
    async with api_client(args) as client:
        decisions = await client.decisions(
            layer=args.layer, kind=args.kind, target=target, limit=args.limit
        )
    emit(
        args,
        {"decisions": [d.model_dump(mode="json") for d in decisions]},
        format_decisions(decisions),
    )
    return 0
