"""Diagnostics requests to nodes: which node is asked for its part, and what it sent.

A bundle request names nodes; each is asked in its next heartbeat's answer
(``{"diag": {"id": ..., "since": ...}}``) and sends its part to
``POST /api/v1/nodes/{node}/diag/{id}``. The requests live in the memory of the server
that took the bundle request: a node heartbeating another server (HA) is not asked and
is listed as missing in the bundle's manifest.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DiagRequest", "DiagRequests"]


@dataclass
class DiagRequest:
    id: str
    since: float
    nodes: set[str]
    parts: dict[str, dict[str, str]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class DiagRequests:
    def __init__(self) -> None:
        self.open: dict[str, DiagRequest] = {}

    def ask(self, nodes: set[str], since: float) -> DiagRequest:
        request = DiagRequest(secrets.token_hex(8), since, set(nodes))
        if not nodes:
            request.done.set()
        self.open[request.id] = request
        return request

    def close(self, request: DiagRequest) -> None:
        self.open.pop(request.id, None)

    def wanted(self, node: str) -> dict[str, Any] | None:
        """What to add to ``node``'s heartbeat answer: the oldest open request it owes."""
        for request in self.open.values():
            if node in request.nodes and node not in request.parts:
                return {"id": request.id, "since": request.since}
        return None

    def answer(self, request_id: str, node: str, files: dict[str, str]) -> bool:
        """Keep ``node``'s part; False if no open request asked it for one."""
        request = self.open.get(request_id)
        if request is None or node not in request.nodes:
            return False
        request.parts[node] = files
        if set(request.parts) >= request.nodes:
            request.done.set()
        return True
