"""Read-only commands: ``status``, ``apps``, ``nodes``, ``deployments``."""

from __future__ import annotations

import argparse

from aether.cli.output import emit, table
from aether.cli.session import api_client
from aether.model.api import AppOut, NodeOut
from aether.model.cluster import NodeCapabilities

__all__ = ["run"]


def _isolation(caps: NodeCapabilities) -> str:
    if caps.isolation == "none":
        return "NONE (unsandboxed)"
    if caps.isolation == "unavailable":
        return "unavailable: " + caps.isolation_detail
    return caps.isolation


def _limits(caps: NodeCapabilities) -> str:
    """What the node enforces on each instance, shortest first."""
    if not caps.limits:
        return "-"
    return "; ".join(f"{k}: {v}" for k, v in sorted(caps.limits.items()))


def _isolation_warnings(nodes: list[NodeOut]) -> list[str]:
    """A line per live node that runs app instances unsandboxed, or cannot run them."""
    out = []
    for n in nodes:
        if n.state == "down":
            continue
        caps = n.capabilities
        if caps.isolation == "none":
            out.append(
                f"WARNING: node {n.id} runs app instances UNSANDBOXED (--isolation none): "
                "they can read the node's data and each other's files"
            )
        elif caps.isolation == "unavailable":
            out.append(
                f"WARNING: node {n.id} cannot sandbox app instances and runs none: "
                + caps.isolation_detail
            )
    return out


def _recovery_point(app: AppOut) -> list[str]:
    """The stateful app's RPO and the age of its newest checkpoint (``-``: stateless)."""
    if app.rpo_seconds is None:
        return ["-", "-"]
    rpo = f"{app.rpo_seconds:g}s" if app.rpo_seconds else "off"
    age = app.checkpoint_age_seconds
    return [rpo, "none" if age is None else f"{age:.1f}s ago"]


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.command == "status":
            status = await client.status()
            data = status.model_dump(mode="json")
            warnings = _isolation_warnings(status.nodes)
            data["warnings"] = warnings
            text = (
                f"api:    {status.api_url}\nleader: {status.leader or '(none)'}\n\n"
                + "".join(f"{w}\n" for w in warnings)
                + ("\n" if warnings else "")
                + table(
                    [[n.id, n.state, n.router_url, str(n.instances)] for n in status.nodes],
                    ["node", "state", "router", "instances"],
                )
                + "\n\n"
                + table(
                    [
                        [
                            a.name,
                            f"v{a.version}" if a.version else "-",
                            f"{a.instances_active}/{a.instances_desired}",
                            *_recovery_point(a),
                        ]
                        for a in status.apps
                    ],
                    ["app", "version", "active", "rpo", "last checkpoint"],
                )
            )
            emit(args, data, text)
        elif args.command in ("apps", "list"):
            apps = await client.apps()
            emit(
                args,
                {"apps": [a.model_dump(mode="json") for a in apps]},
                table(
                    [
                        [
                            a.name,
                            f"v{a.version}" if a.version else "-",
                            f"{a.instances_active}/{a.instances_desired}",
                        ]
                        for a in apps
                    ],
                    ["app", "version", "active"],
                ),
            )
        elif args.command == "nodes":
            nodes = await client.nodes()
            emit(
                args,
                {"nodes": [n.model_dump(mode="json") for n in nodes]},
                table(
                    [
                        [
                            n.id,
                            n.state,
                            n.router_url,
                            ",".join(n.capabilities.drivers),
                            _isolation(n.capabilities),
                            _limits(n.capabilities),
                            str(n.instances),
                        ]
                        for n in nodes
                    ],
                    ["node", "state", "router", "drivers", "isolation", "limits", "instances"],
                ),
            )
        else:
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
