"""``aether alerts ls|silence|silences|unsilence``: alerts and their silences."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from aether.cli.durations import duration_seconds
from aether.cli.output import CliError, emit
from aether.cli.session import api_client
from aether.model.alerts import AlertOut, SilenceOut

__all__ = ["format_alerts", "format_silences", "run"]


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for row in [[h.upper() for h in headers], *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def _delivery(alert: AlertOut) -> str:
    """The notifiers' last word on the alert's current notification (webhook, email)."""
    kind = "resolved" if alert.state == "resolved" else "firing"
    words = []
    for channel, key in (("webhook", kind), ("email", f"email_{kind}")):
        info = alert.notify.get(key)
        if not info:
            continue
        if info.get("delivered_at"):
            words.append(f"{channel} sent ({info['attempts']} attempt(s))")
            continue
        state = "FAILED" if info.get("failed") else "retrying"
        words.append(f"{channel} {state} after {info['attempts']}: {info.get('error', '')}")
    return "; ".join(words) or "-"


def format_alerts(alerts: list[AlertOut]) -> str:
    if not alerts:
        return "no alerts"
    rows = []
    for a in alerts:
        labels = ",".join(f"{k}={v}" for k, v in sorted(a.labels.items())) or "-"
        state = a.state + (" (silenced)" if a.silenced else "")
        runbook = "-"
        if a.runbook_task:
            runbook = (a.runbook_output or "running").splitlines()[0]
        rows.append([a.rule, labels, state, a.severity, _when(a.started_at), _delivery(a), runbook])
    headers = ["rule", "labels", "state", "severity", "since", "notified", "runbook"]
    return _table(headers, rows)


def format_silences(silences: list[SilenceOut]) -> str:
    if not silences:
        return "no silences"
    rows = [
        [
            s.id,
            ",".join(f"{k}={v}" for k, v in sorted(s.matchers.items())),
            "active" if s.active else "ended",
            _when(s.ends_at),
            s.comment,
        ]
        for s in silences
    ]
    return _table(["id", "matchers", "state", "ends", "comment"], rows)


def _matchers(args: argparse.Namespace) -> dict[str, str]:
    matchers: dict[str, str] = {}
    if args.rule:
        matchers["alertname"] = args.rule
    for item in args.match or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--match {item!r}: expected KEY=VALUE", kind="usage")
        matchers[key] = value
    if not matchers:
        raise CliError("alerts silence needs a RULE or --match KEY=VALUE", kind="usage")
    return matchers


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.action == "ls":
            params = {"state": args.state} if args.state else {}
            got = await client.request("GET", "/api/v1/alerts", params=params)
            alerts = [AlertOut.model_validate(a) for a in got.json()]
            emit(
                args, {"alerts": [a.model_dump(mode="json") for a in alerts]}, format_alerts(alerts)
            )
        elif args.action == "silence":
            seconds = duration_seconds(args.duration)
            if seconds is None:
                raise CliError(f"--for {args.duration!r}: e.g. 30m, 1h, 2d", kind="usage")
            body: dict[str, Any] = {
                "matchers": _matchers(args),
                "duration": seconds,
                "comment": args.comment,
            }
            got = await client.request("POST", "/api/v1/alerts/silences", json=body)
            silence = SilenceOut.model_validate(got.json())
            emit(
                args,
                silence.model_dump(mode="json"),
                f"silence {silence.id} until {_when(silence.ends_at)}",
            )
        elif args.action == "silences":
            got = await client.request("GET", "/api/v1/alerts/silences")
            silences = [SilenceOut.model_validate(s) for s in got.json()]
            emit(
                args,
                {"silences": [s.model_dump(mode="json") for s in silences]},
                format_silences(silences),
            )
        else:  # unsilence
            await client.request("DELETE", f"/api/v1/alerts/silences/{args.rule}")
            emit(args, {"deleted": args.rule}, f"silence {args.rule} deleted")
    return 0
