"""Issue 11, attack 2: tenant B's admin acts as a node, with real server and node processes.

B tries every step of the attack (mint a node token; claim A's task and complete it
with forged output; read A's artifact; dump node-1's assignments; publish its own
URL as an endpoint of A's instance; write into A's logs) and each is refused: A's
task completes with its real output and all of A's traffic goes to A.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.store.records import DEFAULT_TENANT, Records
from aether.store.records.db import open_records
from tests.support.cluster import Cluster
from tests.support.http import serving
from tests.support.waiting import wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"
SECRET = "s3cret-of-tenant-a"
FORGED = "FORGED-BY-TENANT-B"


class _Impostor(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"message": "served by tenant B"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def impostor() -> Iterator[str]:
    """Tenant B's own HTTP server, which B wants A's traffic to reach."""
    with serving(_Impostor) as url:
        yield url


def _tenants(cluster: Cluster) -> tuple[str, str]:
    """(A's tenant id, an admin token of a brand-new tenant B), through the records layer."""

    async def make() -> tuple[str, str]:
        engine, sessions = open_records(f"sqlite:///{cluster.server_dir / 'records.db'}")
        try:
            records = Records(sessions)
            a = await records.ensure_tenant(DEFAULT_TENANT)
            b = await records.ensure_tenant("tenant-b")
            return a.id, await records.create_token(b.id, "admin", "tenant B's admin")
        finally:
            await engine.dispose()

    return asyncio.run(make())


def test_a_tenant_admin_cannot_act_as_a_node(cluster: Cluster) -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is needed for job:run: apt-get install bubblewrap")
    cluster.start_server()
    a_tenant, b_token = _tenants(cluster)
    a = httpx.Client(
        base_url=f"{cluster.api}/api/v1",
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
        timeout=15,
    )
    b = httpx.Client(
        base_url=f"{cluster.api}/api/v1",
        headers={"Authorization": f"Bearer {b_token}"},
        timeout=15,
    )
    breaches: list[str] = []

    def refused(step: str, response: httpx.Response, *statuses: int) -> None:
        """The step must be refused with the error envelope (403 unless said otherwise)."""
        allowed = statuses or (403,)
        if response.status_code not in allowed:
            breaches.append(f"{step}: {response.status_code} {response.text[:300]}")
        elif set(response.json()) != {"code", "message", "trace_id"}:
            breaches.append(f"{step}: no error envelope: {response.text[:300]}")

    # A deploys (no node yet: pending) and queues a job that carries a secret
    cluster.cli_json("deploy", str(EXAMPLE), "--instances", "2", "--no-wait")
    submitted = a.post(
        "/tasks",
        json={
            "type": "job:run",
            "payload": {
                "app": "hello-python",
                "command": "python3",
                "args": ["-c", "import os; print('real output', len(os.environ['DB_PASSWORD']))"],
                "env": {"DB_PASSWORD": SECRET},
            },
        },
    )
    assert submitted.status_code == 201, submitted.text
    task_id = submitted.json()["id"]
    sandbox_id = submitted.json()["payload"]["sandbox_id"]  # what a claim would show B

    # 1. B mints node (and join) tokens
    for role in ("node", "join"):
        minted = b.post("/tokens", json={"role": role, "name": "i am a node"})
        refused(f"tenant B mints a {role} token", minted, 400, 403)

    # 2. B claims A's task as node-1 (before any real node could) and reads its secret
    claim = b.post(
        "/tasks/claim",
        json={"node": "node-1", "drivers": ["bwrap", "process"], "queues": ["default"], "wait": 0},
    )
    refused("tenant B claims A's task", claim)
    if claim.status_code == 200 and SECRET in claim.text:
        breaches.append("tenant B read A's DB_PASSWORD from the claim")

    # 3. B completes A's task with forged output
    forged = {
        "vm_id": sandbox_id,
        "sandbox_id": sandbox_id,
        "command": "python3",
        "exit_code": 0,
        "stdout": FORGED,
        "stderr": "",
        "started_at": 1.0,
        "finished_at": 2.0,
    }
    done = b.post(
        f"/tasks/{task_id}/complete", json={"node": "node-1", "attempt": 1, "result": forged}
    )
    refused("tenant B completes A's task", done)

    # A's node joins (its own credential) and runs A's instances and task
    cluster.start_node("node-1")
    wait_for(lambda: len(cluster.active("hello-python")) == 2, 60, "A's two instances ACTIVE")

    def finished() -> dict[str, Any] | None:
        task: dict[str, Any] = a.get(f"/tasks/{task_id}").json()
        return task if task["state"] in ("succeeded", "failed", "dead") else None

    try:
        task = wait_for(finished, 60, "A's task to finish")
    except AssertionError as exc:
        breaches.append(str(exc))
        task = a.get(f"/tasks/{task_id}").json()
    digest = a.get("/apps/hello-python/deployments").json()[0]["digest"]

    # 4. B reads A's artifact by digest
    refused("tenant B reads A's artifact", b.get(f"/artifacts/{digest}"), 403, 404)
    # 5. B dumps node-1's assignments (A's env included)
    with b.stream("GET", "/nodes/node-1/assignments") as stream:  # NDJSON: never ends
        if stream.status_code == 200:
            first = next(stream.iter_lines())
            breaches.append(f"tenant B reads node-1's assignments: {first[:300]}")
        else:
            stream.read()
            refused("tenant B reads node-1's assignments", stream)
    # 6. B registers as node-1, heartbeats and pushes its telemetry
    refused(
        "tenant B registers as node-1",
        b.post(
            "/nodes/register",
            json={
                "id": "node-1",
                "capabilities": {"cpus": 1, "memory_mb": 512, "drivers": ["process"]},
                "router_url": "http://127.0.0.1:1",
            },
        ),
    )
    refused("tenant B heartbeats node-1", b.post("/nodes/node-1/heartbeat", json={"lease_id": 1}))
    with impostor() as b_url:
        # 7. B publishes its own server as an ACTIVE endpoint of A's instance
        hijack = b.put(
            "/nodes/node-1/instances/hello-python@1/0", json={"state": "ACTIVE", "url": b_url}
        )
        refused("tenant B publishes an endpoint of A's app", hijack)
        # 8. B writes into A's logs
        line = {"tenant": a_tenant, "app": "hello-python", "label": "v1/0", "text": FORGED}
        refused(
            "tenant B writes into A's logs",
            b.post("/nodes/node-1/logs", json={"entries": [line]}),
        )

        # A's traffic all goes to A
        router = f"{cluster.router('node-1')}/apps/hello-python/"
        answers = {httpx.get(router, timeout=5).json()["message"] for _ in range(20)}
        if answers != {"Hello from Aether"}:
            breaches.append(f"A's traffic went elsewhere: {answers}")

    # A's task ran on A's node with its real output; A's records and logs are A's
    result = task.get("result") or {}
    if task["state"] != "succeeded" or not str(result.get("stdout")).startswith("real output"):
        breaches.append(f"A's task result is not its own: {task}")
    if FORGED in str(task):
        breaches.append("A's task carries the forged output")
    executions = a.get(f"/sandboxes/{sandbox_id}/executions")
    if FORGED in executions.text:
        breaches.append("A's execution record carries the forged output")
    if FORGED in a.get("/apps/hello-python/logs", params={"tail": 200}).text:
        breaches.append("A's logs carry B's lines")

    credential = cluster.root / "node-1" / "node.credential"
    if not credential.is_file() or credential.stat().st_mode & 0o777 != 0o600:
        breaches.append("node-1 holds no credential of its own (0600)")

    assert breaches == [], "\n".join(breaches)
