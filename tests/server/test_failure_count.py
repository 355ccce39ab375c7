"""One failed instance is one failure, however often the leader rewrites its record."""

from __future__ import annotations

import asyncio
import os
import time

from aether.client import ApiClient
from aether.model.app import AppSpec
from tests.server.test_metrics import _register
from tests.support.api import DIGEST_HEADER, bearer, sha256_of, unique
from tests.support.server import RunningServer


async def test_a_failure_the_leader_unloads_counts_once(server: RunningServer) -> None:
    node_id = unique("count-node")
    async with (
        ApiClient(server.base_url, server.admin_token) as admin,
        ApiClient(server.base_url, server.node_token(node_id)) as node_api,
    ):
        node, lease = await _register(node_api, node_id)
        data = os.urandom(100)
        await admin.request(
            "POST",
            "/api/v1/artifacts",
            content=data,
            headers={**bearer(server.admin_token), DIGEST_HEADER: sha256_of(data)},
        )
        app = unique("flaky")
        dep = await admin.create_deployment(
            app, sha256_of(data), AppSpec(name=app, start="sleep 60"), instances=1
        )
        reported: set[str] = set()
        deadline = time.monotonic() + 20
        unloading: list[str] = []
        while time.monotonic() < deadline and not unloading:
            await node_api.heartbeat(node, lease)
            for inst in await admin.instances(app):
                if inst.command == "LOAD" and inst.state is None and not reported:
                    reported.add(inst.key)  # a failure that is not the app's start
                    await node_api.report(inst.key, "FAILED", message="load failed: timeout")
                elif inst.command == "UNLOAD" and inst.state == "FAILED":
                    unloading.append(inst.key)  # the leader rewrote it; the node is slow
            await asyncio.sleep(0.05)
        assert unloading, "the leader never unloaded the failed instance"
        for _ in range(20):  # let the leader see the rewritten record for a while
            await node_api.heartbeat(node, lease)
            await asyncio.sleep(0.1)
        events = (await admin.deployment(dep.id)).events or []
        failed = [e.message for e in events if e.type == "instance_failed"]
        assert failed == [f"instance 0 on {node} failed: load failed: timeout"]
