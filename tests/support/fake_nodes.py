"""Fake nodes over HTTP for API tests: each plays the node side with its own credential.

``FakeNodes`` registers nodes and reports their instances' states the way a real
node does, for tests that need the leader to act without real node processes;
``deployed`` gives an app with one ACTIVE instance on one of them.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from aether.client import ApiClient
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities
from tests.support.api import deploy, spec_for, unique, upload_random
from tests.support.server import RunningServer
from tests.support.waiting import eventually

__all__ = ["FakeNodes", "NodeSide", "deployed"]


class NodeSide:
    """The node calls of ``ApiClient``, each with the credential of the node it is about."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.clients: dict[str, ApiClient] = {}

    def client(self, node: str) -> ApiClient:
        if node not in self.clients:
            self.clients[node] = ApiClient(self.server.base_url, self.server.node_token(node))
        return self.clients[node]

    async def register(self, body: RegisterIn) -> Any:
        return await self.client(body.id).register(body)

    async def report(self, key: str, state: str, **extra: Any) -> Any:
        return await self.client(key.split("/")[1]).report(key, state, **extra)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


class FakeNodes:
    """Plays the node side over HTTP, each node with its own credential."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.api = NodeSide(server)
        self.admin = ApiClient(server.base_url, server.admin_token)

    async def register(self, name: str, **caps: Any) -> str:
        capabilities = NodeCapabilities(
            cpus=caps.pop("cpus", 4.0), memory_mb=4096, drivers=["process"], **caps
        )
        await self.api.register(
            RegisterIn(id=name, capabilities=capabilities, router_url="http://127.0.0.1:1")
        )
        return name

    async def instances(self, app: str) -> list[dict[str, Any]]:
        response = await self.admin.request("GET", "/api/v1/instances", params={"app": app})
        result: list[dict[str, Any]] = response.json()
        return result

    async def record(self, key: str) -> dict[str, Any]:
        kv = self.server.run(self.server.ctx.store.get(key))
        assert kv is not None, key
        value: dict[str, Any] = json.loads(kv.value)
        return value

    async def bring_up(self, key: str) -> None:
        """LOAD → LOADED, then (once the leader says ACTIVATE) → ACTIVE."""
        await self.api.report(key, "LOADING")
        await self.api.report(key, "LOADED")
        await eventually(lambda: self._command_is(key, "ACTIVATE"), f"the leader to ACTIVATE {key}")
        await self.api.report(key, "ACTIVATING")
        await self.api.report(key, "ACTIVE", url="http://127.0.0.1:9")

    async def _command_is(self, key: str, command: str) -> bool:
        return bool((await self.record(key))["command"] == command)

    async def close(self) -> None:
        await self.api.close()
        await self.admin.close()


async def deployed(
    http: httpx.AsyncClient, server: RunningServer, nodes: FakeNodes, **spec: Any
) -> tuple[str, dict[str, Any]]:
    """An app with one ACTIVE instance on one of the fake nodes."""
    app = unique("mig")
    digest = await upload_random(http, server.admin_token)
    response = await deploy(
        http, server.admin_token, app, digest, instances=1, spec=spec_for(app, **spec)
    )
    assert response.status_code == 201, response.text

    async def placed() -> list[dict[str, Any]]:
        return await nodes.instances(app)

    (inst,) = await eventually(placed, "a placement")
    await nodes.bring_up(inst["key"])
    return app, inst
