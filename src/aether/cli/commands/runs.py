"""``aether run AGENT "input"`` and ``aether runs ls|get|cancel|approve``: agents' runs.

``aether run`` waits for the run and prints its answer; ``--follow`` prints each step
as it happens (the model's text as it streams). Exit codes: 0 completed, 1 failed,
cancelled or expired, 4 waiting for a person's approval (``aether runs approve``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aether.cli.output import emit, table
from aether.cli.session import api_client

__all__ = ["run"]

WAITING_FOR_APPROVAL = 4
_HEADERS = ["id", "agent", "thread", "status", "steps", "tokens", "cost", "created"]
_STEP_HEADERS = ["#", "kind", "status", "tool", "tokens", "ms", "detail"]


def _exit_code(status: str) -> int:
    if status == "completed":
        return 0
    return WAITING_FOR_APPROVAL if status == "requires_approval" else 1


def _row(r: dict[str, Any]) -> list[str]:
    return [
        r["id"],
        r["agent"],
        r["thread_id"],
        r["status"],
        str(r["step_count"]),
        str(r["tokens_in"] + r["tokens_out"]),
        f"{r['cost']:.4f}",
        r["created_at"][:19],
    ]


def _short(text: str | None, width: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _step_detail(s: dict[str, Any]) -> str:
    if s["kind"] == "model":
        calls = s.get("tool_calls") or []
        if calls:
            return "calls " + ", ".join(c["name"] for c in calls)
        return _short(s.get("content"))
    args = json.dumps(s.get("arguments") or {})
    detail = f"{s['decision']} {args}"
    if s.get("content"):
        detail += f" → {s['content']}"
    return _short(detail)


def _step_row(s: dict[str, Any]) -> list[str]:
    ms = s.get("duration_ms")
    return [
        str(s["seq"]),
        s["kind"],
        s["status"],
        s.get("tool_id") or "-",
        str(s["tokens_in"] + s["tokens_out"]),
        f"{ms:.0f}" if ms is not None else "-",
        _step_detail(s),
    ]


def _summary(r: dict[str, Any]) -> str:
    lines = [f"run {r['id']} of {r['agent']} (thread {r['thread_id']}): {r['status']}"]
    if r.get("output"):
        lines.append(r["output"])
    if r.get("error"):
        lines.append(f"stopped ({r.get('stop_reason')}): {r['error']}")
    pending = r.get("pending_approval")
    if pending:
        lines.append(
            f"waiting for approval: step {pending['seq']} calls {pending['tool_id']} with "
            f"{json.dumps(pending['arguments'])}; approve with `aether runs approve {r['id']}` "
            f"or reject with `aether runs approve {r['id']} --reject`"
        )
    lines.append(
        f"{r['step_count']} steps, {r['tokens_in']} + {r['tokens_out']} tokens, "
        f"cost {r['cost']:.4f}"
    )
    return "\n".join(lines)


def _print_event(event: dict[str, Any]) -> None:
    kind = event["type"]
    if kind == "delta":
        sys.stdout.write(event["text"])
    elif kind == "step.completed" and event.get("kind") == "tool":
        sys.stdout.write(
            f"\n[tool {event['tool_id']}: {event['status']}] {_short(event.get('content'))}\n"
        )
    elif kind == "step.started" and event.get("kind") == "tool":
        arguments = json.dumps(event.get("arguments") or {})
        sys.stdout.write(f"\n[tool {event['tool_id']} {arguments}: {event['decision']}]\n")
    elif kind == "step.completed" and event.get("tool_calls"):
        sys.stdout.write("\n")
    elif kind == "run.requires_approval":
        step = event["step"]
        sys.stdout.write(f"\n[waiting for approval of {step['tool_id']} (step {step['seq']})]\n")
    elif kind in ("run.started", "run.resumed"):
        sys.stdout.write(f"[{kind.split('.')[1]} on {event['node']}]\n")
    elif kind.startswith("run.") and kind != "run.queued":
        sys.stdout.write(f"\n[{event['status']}]\n")
    sys.stdout.flush()


async def _start(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"input": args.input, "concurrency": args.concurrency}
    if args.thread:
        body["thread_id"] = args.thread
    agent = quote(args.agent, safe="")
    async with api_client(args) as client:
        if args.follow:
            body["background"] = True
            made = await client.json("POST", f"/api/v1/agents/{agent}/runs", json=body)
            events = []
            async for event in client.run_events(made["id"]):
                events.append(event)
                if args.format != "json":
                    _print_event(event)
                if event["type"] == "run.requires_approval":
                    break
            final = await client.json("GET", f"/api/v1/runs/{made['id']}")
            if args.format == "json":
                emit(args, {**final, "events": events}, "")
            elif final["status"] == "requires_approval":
                sys.stdout.write(_summary(final) + "\n")
            return _exit_code(final["status"])
        body["wait"] = args.wait
        made = await client.json("POST", f"/api/v1/agents/{agent}/runs", json=body)
        under_way = made["status"] in ("queued", "running")
        hint = f"\nstill under way: `aether runs get {made['id']}`" if under_way else ""
        emit(args, made, _summary(made) + hint)
        return 0 if under_way else _exit_code(made["status"])


async def run(args: argparse.Namespace) -> int:
    if args.command == "run":
        return await _start(args)
    command = args.runs_command
    async with api_client(args) as client:
        if command == "ls":
            params: dict[str, Any] = {"limit": args.limit}
            for name in ("agent", "thread", "status"):
                if getattr(args, name):
                    params[name] = getattr(args, name)
            page = await client.json("GET", "/api/v1/runs", params=params)
            runs = page["runs"]
            emit(args, page, table([_row(r) for r in runs], _HEADERS) if runs else "no runs")
            return 0
        run_id = quote(args.id, safe="")
        if command == "get":
            got = await client.json("GET", f"/api/v1/runs/{run_id}")
            steps = table([_step_row(s) for s in got["steps"]], _STEP_HEADERS)
            emit(args, got, _summary(got) + ("\n\n" + steps if got["steps"] else ""))
            return 0
        if command == "files":
            files = await client.json("GET", f"/api/v1/runs/{run_id}/files")
            rows = [[str(f["step"]), f["name"], str(f["size"]), f["sha256"][:12]] for f in files]
            shown = table(rows, ["step", "name", "bytes", "sha256"]) if rows else "no files kept"
            emit(args, {"files": files}, shown)
            return 0
        if command == "file":
            path = f"/api/v1/runs/{run_id}/files/{args.step}/{quote(args.name)}"
            data = (await client.request("GET", path)).content
            if args.output == "-":
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            else:
                Path(args.output).write_bytes(data)
                sys.stderr.write(f"wrote {args.output} ({len(data)} bytes)\n")
            return 0
        if command == "cancel":
            got = await client.json("POST", f"/api/v1/runs/{run_id}/cancel")
            emit(args, got, f"run {got['id']}: {got['status']}")
            return 0
        body: dict[str, Any] = {"decision": "reject" if args.reject else "approve"}
        if args.step is not None:
            body["step"] = args.step
        if args.reason:
            body["reason"] = args.reason
        step = await client.json("POST", f"/api/v1/runs/{run_id}/approvals", json=body)
        emit(args, step, f"step {step['seq']} ({step['tool_id']}): {step['status']}")
        return 0
