"""Read-only commands: ``status``, ``apps``, ``nodes``, ``deployments``."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from typing import Any

from aether.cli.output import emit, table
from aether.cli.reads import get_json
from aether.cli.session import api_client, load_session

__all__ = ["run"]

#: The commands that print one GET's answer, and its path.
_READS = {
    "status": "/api/v1/status",
    "apps": "/api/v1/apps",
    "list": "/api/v1/apps",
    "nodes": "/api/v1/nodes",
}

# Each printer works on the answer's JSON (as ``--format json`` prints it), whichever
# path fetched it: the quick read path (``aether.cli.reads``) or the typed client.


def _isolation(caps: dict[str, Any]) -> str:
    if caps["isolation"] == "none":
        return "NONE (unsandboxed)"
    if caps["isolation"] == "unavailable":
        return "unavailable: " + str(caps["isolation_detail"])
    return str(caps["isolation"])


def _limits(caps: dict[str, Any]) -> str:
    """What the node enforces on each instance, shortest first."""
    if not caps["limits"]:
        return "-"
    return "; ".join(f"{k}: {v}" for k, v in sorted(caps["limits"].items()))


def _isolation_warnings(nodes: list[dict[str, Any]]) -> list[str]:
    """A line per live node that runs app instances unsandboxed, or cannot run them."""
    out = []
    for n in nodes:
        if n["state"] == "down":
            continue
        caps = n["capabilities"]
        if caps["isolation"] == "none":
            out.append(
                f"WARNING: node {n['id']} runs app instances UNSANDBOXED (--isolation none): "
                "they can read the node's data and each other's files"
            )
        elif caps["isolation"] == "unavailable":
            out.append(
                f"WARNING: node {n['id']} cannot sandbox app instances and runs none: "
                + str(caps["isolation_detail"])
            )
    return out


def _recovery_point(app: dict[str, Any]) -> list[str]:
    """The stateful app's RPO and the age of its newest checkpoint (``-``: stateless)."""
    if app["rpo_seconds"] is None:
        return ["-", "-"]
    rpo = f"{app['rpo_seconds']:g}s" if app["rpo_seconds"] else "off"
    age = app["checkpoint_age_seconds"]
    return [rpo, "none" if age is None else f"{age:.1f}s ago"]


def _version(app: dict[str, Any]) -> str:
    return f"v{app['version']}" if app["version"] else "-"


def _active(app: dict[str, Any]) -> str:
    return f"{app['instances_active']}/{app['instances_desired']}"


def _status(args: argparse.Namespace, data: dict[str, Any]) -> None:
    warnings = _isolation_warnings(data["nodes"])
    data["warnings"] = warnings
    text = (
        f"api:    {data['api_url']}\nleader: {data['leader'] or '(none)'}\n\n"
        + "".join(f"{w}\n" for w in warnings)
        + ("\n" if warnings else "")
        + table(
            [[n["id"], n["state"], n["router_url"], str(n["instances"])] for n in data["nodes"]],
            ["node", "state", "router", "instances"],
        )
        + "\n\n"
        + table(
            [[a["name"], _version(a), _active(a), *_recovery_point(a)] for a in data["apps"]],
            ["app", "version", "active", "rpo", "last checkpoint"],
        )
        + "".join(f"\n{a['name']}: {a['failure']}" for a in data["apps"] if a.get("failure"))
    )
    emit(args, data, text)


def _apps(args: argparse.Namespace, apps: list[dict[str, Any]]) -> None:
    emit(
        args,
        {"apps": apps},
        table([[a["name"], _version(a), _active(a)] for a in apps], ["app", "version", "active"]),
    )


def _nodes(args: argparse.Namespace, nodes: list[dict[str, Any]]) -> None:
    emit(
        args,
        {"nodes": nodes},
        table(
            [
                [
                    n["id"],
                    n["state"],
                    n["router_url"],
                    ",".join(n["capabilities"]["drivers"]),
                    _isolation(n["capabilities"]),
                    _limits(n["capabilities"]),
                    str(n["instances"]),
                ]
                for n in nodes
            ],
            ["node", "state", "router", "drivers", "isolation", "limits", "instances"],
        ),
    )


def run(args: argparse.Namespace) -> int | Coroutine[Any, Any, int]:
    if args.command not in _READS:
        return _deployments(args)
    session = load_session(getattr(args, "server", None), getattr(args, "token", None))
    data = get_json(session, _READS[args.command])
    if args.command == "status":
        _status(args, data)
    elif args.command == "nodes":
        _nodes(args, data)
    else:
        _apps(args, data)
    return 0


async def _deployments(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        deployments = await client.deployments(args.app)
        emit(
            args,
            {"deployments": [d.model_dump(mode="json") for d in deployments]},
            table(
                [
                    [
                        f"v{d.version}",
                        d.status,
                        d.digest[:19],
                        str(d.instances),
                        f"v{d.rollback_of}" if d.rollback_of else "",
                        d.created_at.isoformat(),
                    ]
                    for d in deployments
                ],
                ["version", "status", "digest", "instances", "rollback of", "created"],
            ),
        )
    return 0
