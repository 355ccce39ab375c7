"""``aether agents …``: the tenant's AI agents and the agent catalog.

``agents ls|get ID|create NAME|deploy ID [--replicas N] [--version V]|undeploy ID|
disable ID|enable ID|versions ID|export ID -o FILE|import FILE|catalog [ID]`` (an
agent's ID is its id, ``agt_…``, or its name). ``create NAME --recipe R`` asks only
for what the recipe leaves open; else ``--model model://NAME`` and ``--tool``, ``--policy``,
``--system-prompt``, ``--config JSON``. An agent file is JSON without secrets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client
from aether.client import ApiClient

__all__ = ["run"]

_HEADERS = ["id", "name", "status", "version", "model", "tools", "policies", "replicas"]


def _one(value: str) -> str:
    return quote(value, safe="")


def _row(a: dict[str, Any]) -> list[str]:
    return [
        a["id"],
        a["name"],
        a["status"],
        str(a["version"]),
        a["model"],
        ",".join(a["tool_ids"]) or "-",
        ",".join(a["policy_ids"]) or "-",
        _replicas(a.get("deployment")),
    ]


def _replicas(deployment: dict[str, Any] | None) -> str:
    """``placed/wanted`` of a deployed agent; ``-`` when it is not deployed."""
    if deployment is None:
        return "-"
    return f"{len(deployment['nodes'])}/{deployment['replicas']}"


def _deployment_text(a: dict[str, Any]) -> str:
    d = a.get("deployment")
    if d is None:
        return f"agent {a['name']} ({a['id']}) is {a['status']}: not deployed"
    nodes = ", ".join(d["nodes"]) or "none yet"
    return (
        f"agent {a['name']} ({a['id']}) deployed: version {d['version']}, "
        f"{d['replicas']} replica(s), {d['status']} (nodes: {nodes})"
    )


def _config(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise CliError(f"--config is not JSON: {exc}", kind="usage") from None
    if not isinstance(value, dict):
        raise CliError("--config is a JSON object, e.g. '{\"max_tokens\": 1024}'", kind="usage")
    return value


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    """The body of ``POST /agents``: only what was given (a recipe fills the rest)."""
    body: dict[str, Any] = {"name": args.name}
    given = {
        "recipe": args.recipe,
        "model": args.model,
        "tool_ids": args.tool,
        "policy_ids": args.policy,
        "system_prompt": args.system_prompt,
        "config": _config(args.config),
    }
    body.update({k: v for k, v in given.items() if v is not None})
    return body


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", kind="io") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not an agent file (JSON): {exc}", kind="usage") from None
    if not isinstance(document, dict):
        raise CliError(f"{path} must hold one JSON object", kind="usage")
    return document


def _write_file(path: str, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}", kind="io") from None


def _agent_text(a: dict[str, Any]) -> str:
    return "\n".join(
        [
            table([_row(a)], _HEADERS),
            f"system prompt: {a['system_prompt'] or '-'}",
            f"config: {json.dumps(a['config'])}",
            _deployment_text(a),
        ]
    )


def _catalog_text(recipes: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["id"],
            "built-in" if r["builtin"] else "own",
            ",".join(r["tool_ids"]) or "-",
            ",".join(r["open"]) or "-",
            r["description"],
        ]
        for r in recipes
    ]
    return table(rows, ["id", "origin", "tools", "open", "description"])


async def _catalog(client: ApiClient, args: argparse.Namespace) -> None:
    if args.id is None:
        recipes = await client.json("GET", "/api/v1/agent-catalog")
        emit(args, {"recipes": recipes}, _catalog_text(recipes))
        return
    recipe = await client.json("GET", f"/api/v1/agent-catalog/{_one(args.id)}")
    emit(args, recipe, f"{_catalog_text([recipe])}\nsystem prompt: {recipe['system_prompt']}")


async def _export(client: ApiClient, args: argparse.Namespace) -> None:
    document = await client.json("GET", f"/api/v1/agents/{_one(args.id)}/export")
    _write_file(args.output, document)
    if args.output != "-":
        emit(args, {"file": args.output, **document}, f"agent {args.id} written to {args.output}")


async def _status(client: ApiClient, args: argparse.Namespace, action: str) -> None:
    agent = await client.json("POST", f"/api/v1/agents/{_one(args.id)}/{action}")
    emit(args, agent, f"agent {agent['name']} ({agent['id']}) is {agent['status']}")


def _deploy_body(args: argparse.Namespace) -> dict[str, Any]:
    """The body of ``POST /agents/{id}/deploy``: only what was given."""
    if args.replicas is not None and not 1 <= args.replicas <= 64:
        raise CliError(f"--replicas is 1 to 64, not {args.replicas}", kind="usage")
    if args.version is not None and args.version < 1:
        raise CliError(f"--version is 1 or more, not {args.version}", kind="usage")
    given = (("replicas", args.replicas), ("version", args.version))
    return {k: v for k, v in given if v is not None}


async def _deploy(client: ApiClient, args: argparse.Namespace, body: dict[str, Any]) -> None:
    agent = await client.json("POST", f"/api/v1/agents/{_one(args.id)}/deploy", json=body)
    emit(args, agent, _deployment_text(agent))


async def _undeploy(client: ApiClient, args: argparse.Namespace) -> None:
    agent = await client.json("DELETE", f"/api/v1/agents/{_one(args.id)}/deploy")
    emit(args, agent, _deployment_text(agent))


async def run(args: argparse.Namespace) -> int:
    command = args.agents_command
    body = _create_body(args) if command == "create" else None  # usage errors first
    deploy = _deploy_body(args) if command == "deploy" else {}
    document = _read_file(args.file) if command == "import" else None
    async with api_client(args) as client:
        if command == "ls":
            params = {k: v for k, v in (("status", args.status),) if v is not None}
            listed = await client.json("GET", "/api/v1/agents", params=params)
            emit(args, listed, table([_row(a) for a in listed["agents"]], _HEADERS))
        elif command == "get":
            agent = await client.json("GET", f"/api/v1/agents/{_one(args.id)}")
            emit(args, agent, _agent_text(agent))
        elif command == "create":
            made = await client.json("POST", "/api/v1/agents", json=body)
            emit(args, made, f"agent {made['name']} created: {made['id']} (version 1)")
        elif command == "import":
            made = await client.json("POST", "/api/v1/agents/import", json=document)
            emit(args, made, f"agent {made['name']} imported: {made['id']}")
        elif command == "versions":
            versions = await client.json("GET", f"/api/v1/agents/{_one(args.id)}/versions")
            rows = [
                [str(v["version"]), v["model"], ",".join(v["tool_ids"]) or "-", v["created_by"]]
                for v in versions
            ]
            emit(args, {"versions": versions}, table(rows, ["version", "model", "tools", "by"]))
        elif command == "export":
            await _export(client, args)
        elif command == "catalog":
            await _catalog(client, args)
        elif command == "deploy":
            await _deploy(client, args, deploy)
        elif command == "undeploy":
            await _undeploy(client, args)
        else:
            await _status(client, args, command)
    return 0
