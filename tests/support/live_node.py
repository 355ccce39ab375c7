"""A fake node that stays live for browser tests: it heartbeats, pushes telemetry and
plays its instances' lifecycle, from a thread, with its own credential over real HTTP.

``FakeNodes`` (async, one call at a time) suits API tests; a page watched in a
browser needs a node that keeps its lease, sends a telemetry update every
``interval`` and answers the leader's commands (LOAD → LOADED, ACTIVATE → ACTIVE,
UNLOAD → gone) by itself, as a real node does.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import httpx

from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities
from tests.support.api import bearer
from tests.support.server import RunningServer
from tests.support.telemetry import node_sample

__all__ = ["LiveNode", "deploy_app"]


class LiveNode:
    """``with LiveNode(server, "n1"):`` the node is registered and live until the block ends."""

    def __init__(self, server: RunningServer, name: str, *, interval: float = 0.5) -> None:
        self.server, self.name, self.interval = server, name, interval
        self.http = httpx.Client(
            base_url=server.base_url, headers=bearer(server.node_token(name)), timeout=10
        )
        self.admin = httpx.Client(
            base_url=server.base_url, headers=bearer(server.admin_token), timeout=10
        )
        self.lease = 0
        self.seq = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"live-node-{name}", daemon=True)

    def __enter__(self) -> LiveNode:
        self.register()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.http.close()
        self.admin.close()

    def register(self) -> None:
        caps = NodeCapabilities(
            cpus=4.0,
            memory_mb=8192,
            drivers=["process"],
            kernel="6.1.0",
            features=["telemetry", "request_ids", "cooperative_checkpoint"],
        )
        body = RegisterIn(id=self.name, capabilities=caps, router_url="http://127.0.0.1:1")
        answer = self.http.post("/api/v1/nodes/register", json=body.model_dump(mode="json"))
        answer.raise_for_status()
        self.lease = int(answer.json()["lease_id"])

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self._heartbeat()
                self._push()
                self._play()
            except httpx.HTTPError:
                continue  # the server is busy or stopping: try again next round

    def _heartbeat(self) -> None:
        path = f"/api/v1/nodes/{self.name}/heartbeat"
        if self.http.post(path, json={"lease_id": self.lease}).status_code == 404:
            self.register()

    def _push(self) -> None:
        self.seq += 1
        update = node_sample(
            self.name,
            self.seq,
            cpu=round(0.4 + 0.3 * math.sin(self.seq / 5), 3),
            memory_used_mb=3000 + 20 * (self.seq % 10),
            memory_total_mb=8192,
            disk_used_mb=40_000,
            disk_total_mb=100_000,
            net_rx_bytes=50_000 * self.seq,
            net_tx_bytes=20_000 * self.seq,
        )
        path = f"/api/v1/nodes/{self.name}/metrics"
        self.http.post(path, content=update.model_dump_json()).raise_for_status()

    def _play(self) -> None:
        """Carry out the leader's commands for this node's instances."""
        answer = self.admin.get("/api/v1/instances", params={"node": self.name})
        for inst in answer.json():
            self._step(inst)

    def _step(self, inst: dict[str, Any]) -> None:
        path = f"/api/v1/nodes/{self.name}/instances/{inst['app']}@{inst['version']}/{inst['n']}"
        command, state = inst["command"], inst["state"]
        if command == "UNLOAD":
            self.http.delete(path)
            return
        steps = _STEPS.get((command, state), ())
        for step in steps:
            url = "http://127.0.0.1:9" if step == "ACTIVE" else None
            self.http.put(path, json={"state": step, "message": "", "url": url})


# (command, state now) -> the reports that carry the command out
_STEPS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("LOAD", None): ("LOADING", "LOADED"),
    ("ACTIVATE", "LOADED"): ("ACTIVATING", "ACTIVE"),
    ("DEACTIVATE", "ACTIVE"): ("DEACTIVATING", "LOADED"),
}


def deploy_app(server: RunningServer, app: str, instances: int) -> None:
    """Deploy ``app`` (random bytes as its artifact) with the default tenant's admin token."""
    from tests.support.api import deploy, spec_for, upload_random

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            digest = await upload_random(http, server.admin_token)
            answer = await deploy(
                http, server.admin_token, app, digest, instances=instances, spec=spec_for(app)
            )
            assert answer.status_code == 201, answer.text

    server.run(run())
