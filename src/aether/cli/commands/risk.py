"""Risk commands: ``risk [NODE]``, ``drill start|stop``, ``signal NODE``."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client
from aether.client import ApiClient
from aether.model.risk import RiskAssessment, SignalIn, SignalKind

__all__ = ["key_inputs", "run"]

# rule figures that say how a rule is set up, not what it saw
_SETUP = {"status", "root_cause", "confidence", "threshold", "high", "critical"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def key_inputs(assessment: RiskAssessment) -> str:
    """The deciding rule's figures (the price window's when all is stable), as k=v."""
    rule = assessment.rule if assessment.rule in assessment.inputs else "market.price_trend"
    figures = assessment.inputs.get(rule, {})
    return " ".join(
        f"{k}={_fmt(v)}" for k, v in figures.items() if k not in _SETUP and v is not None
    )


def _row(a: RiskAssessment, *, first: str) -> list[str]:
    return [first, a.status.value, f"{a.confidence:.2f}", a.root_cause, a.rule, key_inputs(a)]


async def _risk(client: ApiClient, args: argparse.Namespace) -> None:
    headers = ["status", "confidence", "root cause", "rule", "key inputs"]
    if args.node is None:
        assessments = await client.risk()
        emit(
            args,
            {"assessments": [a.model_dump(mode="json") for a in assessments]},
            table([_row(a, first=a.node) for a in assessments], ["node", *headers])
            if assessments
            else "no node has been assessed yet",
        )
        return
    if args.limit < 1:
        raise CliError("--limit must be at least 1", kind="usage")
    history = await client.risk_history(args.node, limit=args.limit)
    rows = [
        _row(a, first=datetime.fromtimestamp(a.ts).isoformat(timespec="seconds")) for a in history
    ]
    emit(
        args,
        {"node": args.node, "assessments": [a.model_dump(mode="json") for a in history]},
        f"node {args.node} (newest first)\n\n" + table(rows, ["time", *headers]),
    )


async def _drill(client: ApiClient, args: argparse.Namespace) -> None:
    if args.drill_command == "start":
        result = await client.drill_start(args.node)
        emit(
            args,
            result,
            f"drill started on {result['node']}: {result['signals']} signals "
            f"(spot price {_fmt(result['base_price'])} -> {_fmt(result['spike_price'])}, "
            f"rebalance notice); `aether risk` shows the node CRITICAL",
        )
        return
    result = await client.drill_stop(args.node)
    nodes = result["nodes"]
    emit(
        args,
        result,
        f"drill stopped on {', '.join(nodes)}" if nodes else "no drill is running",
    )


async def _signal(client: ApiClient, args: argparse.Namespace) -> None:
    wanted: list[tuple[SignalKind, float]] = []
    if args.price is not None:
        wanted.append(("spot_price", args.price))
    if args.rebalance is not None:
        wanted.append(("rebalance", 1.0 if args.rebalance else 0.0))
    if args.capacity is not None:
        wanted.append(("capacity", args.capacity))
    if not wanted:
        raise CliError(
            "signal needs --price, --rebalance (or --no-rebalance) or --capacity", kind="usage"
        )
    try:
        signals = [
            SignalIn(node=args.node, kind=kind, value=value, source=args.source)
            for kind, value in wanted
        ]
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        raise CliError(f"invalid signal: {problems}", kind="usage") from None
    ids = await client.post_signals(signals)
    emit(
        args,
        {"node": args.node, "ids": ids, "signals": [s.model_dump(mode="json") for s in signals]},
        f"recorded {len(ids)} signal(s) for {args.node}: "
        + ", ".join(f"{s.kind}={_fmt(s.value)}" for s in signals),
    )


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.command == "risk":
            await _risk(client, args)
        elif args.command == "drill":
            await _drill(client, args)
        else:
            await _signal(client, args)
    return 0
