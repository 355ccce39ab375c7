"""``aether tools …`` and ``aether policies …``: agents' tools and the policies that
decide their calls.

``tools ls|get ID|search QUERY|add FILE|rm ID|sync FILE`` and ``policies ls|get
ID|create FILE|set ID FILE|rm ID|evaluate ID --tool T --args JSON|simulate ID --file
FILE``. A FILE is YAML
(or JSON, which is YAML too); ``-`` reads standard input.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client
from aether.client import ApiClient

__all__ = ["run"]


def _text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", kind="io") from None


def _document(path: str) -> dict[str, Any]:
    """The one object of a YAML or JSON file."""
    try:
        document = yaml.safe_load(_text(path))
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not YAML or JSON: {str(exc)[:300]}", kind="usage") from None
    if not isinstance(document, dict):
        raise CliError(f"{path} must hold one object (a mapping)", kind="usage")
    return document


def _arguments(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise CliError(f"--args is not JSON: {exc}", kind="usage") from None
    if not isinstance(value, dict):
        raise CliError('--args is a JSON object, e.g. \'{"query": "logs"}\'', kind="usage")
    return value


def _one(name: str) -> str:
    return quote(name, safe="")


def _tools_table(tools: list[dict[str, Any]]) -> str:
    rows = [
        [
            t["id"],
            t["kind"],
            "built-in" if t["builtin"] else "own",
            "yes" if t["read_only"] else "no",
            t["description"],
        ]
        for t in tools
    ]
    return table(rows, ["id", "kind", "origin", "read-only", "description"])


def _tool_text(tool: dict[str, Any]) -> str:
    lines = [
        f"tool {tool['id']} ({tool['kind']}, {'built-in' if tool['builtin'] else 'own'})",
        tool["description"],
        f"config: {json.dumps(tool['config'])}",
        f"parameters: {json.dumps(tool['parameters'])}",
    ]
    return "\n".join(lines)


async def _tools(client: ApiClient, args: argparse.Namespace) -> tuple[Any, str]:
    command = args.tools_command
    if command == "ls":
        tools = await client.json("GET", "/api/v1/tools")
        return tools, _tools_table(tools)
    if command == "search":
        tools = await client.json("GET", "/api/v1/tools/search", params={"q": args.query})
        return tools, _tools_table(tools) if tools else f"no tool matches {args.query!r}"
    if command == "get":
        tool = await client.json("GET", f"/api/v1/tools/{_one(args.id)}")
        return tool, _tool_text(tool)
    if command == "add":
        tool = await client.json("POST", "/api/v1/tools", json=_document(args.file))
        return tool, f"tool {tool['id']} added"
    if command == "rm":
        await client.request("DELETE", f"/api/v1/tools/{_one(args.id)}")
        return {"id": args.id, "deleted": True}, f"tool {args.id} deleted"
    if command == "discover":
        body: dict[str, Any] = {"register": args.add}
        if args.url:
            body["url"] = args.url
        else:
            body["command"] = shlex.split(args.mcp_command)
        found = await client.json("POST", "/api/v1/tools/mcp/discover", json=body, timeout=90)
        text = _tools_table(found["tools"]) if found["tools"] else "the server offers no tool"
        if args.add:
            text += f"\nadded: {', '.join(found['registered']) or 'none'}"
            if found["existing"]:
                text += f"; already yours (left as they are): {', '.join(found['existing'])}"
        return found, text
    synced = await client.json(
        "POST",
        "/api/v1/tools/sync",
        content=_text(args.file).encode(),
        headers={"content-type": "application/yaml"},
    )
    added, updated = synced["added"], synced["updated"]
    return synced, f"{len(added)} added, {len(updated)} updated: {', '.join(added + updated)}"


def _policies_table(policies: list[dict[str, Any]]) -> str:
    rows = [
        [
            p["id"],
            str(p["version"]),
            "built-in" if p["builtin"] else "own",
            ",".join(p["tools"]) or "-",
            ",".join(p["approval_required"]) or "-",
            p["description"],
        ]
        for p in policies
    ]
    return table(rows, ["id", "version", "origin", "tools", "approval", "description"])


def _policy_text(policy: dict[str, Any]) -> str:
    shown = {k: v for k, v in policy.items() if k != "cedar"}
    return f"{yaml.safe_dump(shown, sort_keys=False)}\n# as Cedar:\n{policy['cedar']}"


def _patch(policy_id: str, document: dict[str, Any]) -> dict[str, Any]:
    given = document.pop("id", policy_id)
    if given != policy_id:
        raise CliError(f"the file is policy {given!r}, not {policy_id!r}", kind="usage")
    for generated in ("version", "builtin", "created_at", "updated_at", "cedar"):
        document.pop(generated, None)
    return document


def _decision_text(answer: dict[str, Any]) -> str:
    head = {"allow": "allowed", "deny": "denied", "approval": "allowed after approval"}
    reasons = "\n".join(f"  - {r}" for r in answer["reasons"])
    return (
        f"{head[answer['decision']]} (policy version {answer['policy_version']}, "
        f"enforcement {answer['enforcement_id']})\n{reasons}"
    )


def _simulation_text(answer: dict[str, Any]) -> str:
    counts = (
        f"policy {answer['policy_id']}: {answer['replayed']} calls replayed, "
        f"{answer['changed']} changed; would allow {answer['would_allow']}, "
        f"deny {answer['would_deny']}, need approval {answer['would_need_approval']}"
    )
    changed = [c for c in answer["calls"] if c["old"] != c["new"]]
    if not changed:
        return f"{counts}\nno decision would change"
    rows = [
        [
            str(c["enforcement_id"]),
            c["at"],
            c["principal"],
            c["tool_id"],
            f"{c['old']} -> {c['new']}",
            "; ".join(c["reasons"]),
        ]
        for c in changed
    ]
    return f"{counts}\n{table(rows, ['enforcement', 'at', 'principal', 'tool', 'decision', 'why'])}"


async def _simulate(client: ApiClient, args: argparse.Namespace) -> tuple[Any, str]:
    policy = _patch(args.id, _document(args.file))
    body: dict[str, Any] = {"policy": {**policy, "id": args.id}}
    if args.limit is not None:
        body["limit"] = args.limit
    if args.since is not None:
        body["since"] = args.since
    answer = await client.json("POST", f"/api/v1/policies/{_one(args.id)}/simulate", json=body)
    return answer, _simulation_text(answer)


async def _policies(client: ApiClient, args: argparse.Namespace) -> tuple[Any, str]:
    command = args.policies_command
    if command == "ls":
        policies = await client.json("GET", "/api/v1/policies")
        return policies, _policies_table(policies)
    if command == "get":
        policy = await client.json("GET", f"/api/v1/policies/{_one(args.id)}")
        return policy, _policy_text(policy)
    if command == "create":
        policy = await client.json("POST", "/api/v1/policies", json=_document(args.file))
        return policy, f"policy {policy['id']} created (version {policy['version']})"
    if command == "set":
        patch = _patch(args.id, _document(args.file))
        policy = await client.json("PATCH", f"/api/v1/policies/{_one(args.id)}", json=patch)
        return policy, f"policy {policy['id']} is now version {policy['version']}"
    if command == "rm":
        await client.request("DELETE", f"/api/v1/policies/{_one(args.id)}")
        return {"id": args.id, "deleted": True}, f"policy {args.id} deleted"
    if command == "simulate":
        return await _simulate(client, args)
    body: dict[str, Any] = {"tool_id": args.tool, "arguments": _arguments(args.args)}
    if args.agent:
        body.update(principal=args.agent, principal_kind="agent")
    answer = await client.json("POST", f"/api/v1/policies/{_one(args.id)}/evaluate", json=body)
    return answer, _decision_text(answer)


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.command == "tools":
            data, text = await _tools(client, args)
        else:
            data, text = await _policies(client, args)
    emit(args, data, text)
    return 0
