"""A node's part of a diagnostics bundle: its recent log, configuration (secrets
redacted), capabilities, versions and doctor output for this host, asked for in a
heartbeat answer (``{"diag": {"id": ..., "since": ..., "to": ...}}``) and sent to ``to``,
the node port of the server building the bundle, over the node's own mutual-TLS client
(:mod:`aether.server.services.diag`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

from aether.client import ApiClient
from aether.errors import AetherError
from aether.ops import diag_bundle, diag_log
from aether.ops.redact import redact

__all__ = ["node_config", "send_part"]

log = logging.getLogger("aether.node")


def node_config(options: Any, secrets: list[str]) -> str:
    """The node's options, one ``key = value`` line each, secrets redacted."""
    lines = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.name == "join_token" and value:
            value = "<redacted>"
        lines.append(f"{f.name} = {value!r}")
    return redact("\n".join(lines) + "\n", secrets)


def _doctor(data_dir: Path, router_host: str, router_port: int) -> str:
    from aether.ops.doctor import DoctorOptions, render, run_checks
    from aether.server.settings import ServerSettings

    options = DoctorOptions(
        settings=ServerSettings(data_dir=data_dir),
        roles=("node",),
        router_host=router_host,
        router_port=router_port,
        skip=("port",),  # the router listens: its port being taken is expected
    )
    return render(run_checks(options))


async def send_part(
    client: ApiClient,
    node: str,
    request: dict[str, Any],
    options: Any,
    capabilities: Any,
    secrets: list[str],
) -> None:
    """Build the part and send it; a failure is logged, never raised (the bundle lists
    the node as missing)."""
    try:
        since = float(request.get("since") or 3600)
        try:
            doctor = await asyncio.to_thread(
                _doctor, options.data_dir, options.router_host, options.router_port
            )
        except Exception as exc:  # the rest of the part is still worth sending
            doctor = f"the checks failed: {exc!r}\n"
        caps = capabilities.model_dump(mode="json") if capabilities is not None else None
        files = diag_bundle.host_part(
            log_lines=diag_log.recent(since),
            config=node_config(options, secrets),
            capabilities=caps,
            doctor=doctor,
        )
        files = {name: redact(text, secrets) for name, text in files.items()}
        to = request.get("to")  # the server building the bundle (any server may ask)
        await client.send_diag_part(node, str(request["id"]), files, str(to) if to else None)
    except (AetherError, ValueError, KeyError, OSError) as exc:
        log.warning("could not send this node's diagnostics part (%s)", exc)
