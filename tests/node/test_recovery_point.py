"""Periodic checkpoints and orphaned state, node side, against a real server and app.

A real in-process server (its leader places the instance on a node played over
HTTP) and the real ``examples/counter`` process: the node's periodic checkpoint
stores changed state and sends no bytes for unchanged state; a stale instance
directory found at start-up is stored as an ``orphaned`` snapshot, then removed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.client import ApiClient
from aether.model.cluster import InstanceRecord
from aether.node.cleanup import write_instance_file
from aether.node.orphans import store_stale_orphan
from aether.node.periodic import PeriodicCheckpoints, PeriodicTarget
from aether.ports import free_port
from tests.support.api import unique
from tests.support.fake_nodes import FakeNodes, deployed
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually

COUNTER = Path(__file__).resolve().parents[2] / "examples" / "counter" / "app.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("recovery"), lease_ttl=120.0) as running:
        yield running


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture
async def nodes(server: RunningServer) -> AsyncIterator[FakeNodes]:
    fake = FakeNodes(server)
    try:
        yield fake
    finally:
        await fake.close()


class Process:
    """A ``subprocess.Popen`` as a driver ``Handle``."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    async def wait(self) -> int:
        return self.proc.wait()


async def snapshots(http: httpx.AsyncClient, token: str, app: str) -> list[dict[str, Any]]:
    listed = await http.get(
        "/api/v1/snapshots", params={"app": app}, headers={"Authorization": f"Bearer {token}"}
    )
    result: list[dict[str, Any]] = listed.json()
    return result


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``examples/counter`` with its state and acknowledgement in ``tmp_path/instance``."""
    root = tmp_path / "instance"
    state, ack = root / "app" / "data", root / "run" / "checkpoint.ack"
    state.mkdir(parents=True)
    ack.parent.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "AETHER_STATE_DIR": str(state),
        "AETHER_CHECKPOINT_ACK": str(ack),
        "PORT": str(port),
    }
    proc = subprocess.Popen([sys.executable, str(COUNTER)], env=env)
    try:
        yield proc, port
    finally:
        proc.kill()
        proc.wait()


async def test_a_periodic_checkpoint_stores_changed_state_and_sends_unchanged_state_once(
    server: RunningServer,
    http: httpx.AsyncClient,
    nodes: FakeNodes,
    tmp_path: Path,
    counter: tuple[subprocess.Popen[bytes], int],
) -> None:
    await nodes.register(unique("n"))
    app, inst = await deployed(http, server, nodes, stateful=True, state_dir="data")
    proc, port = counter
    root = tmp_path / "instance"
    state, ack = root / "app" / "data", root / "run" / "checkpoint.ack"
    stored: list[str] = []
    target = PeriodicTarget(
        key=inst["key"],
        interval=5,
        timeout=5,
        state_dir=state,
        app_dir=root / "app",
        ack=ack,
        root=root,
        handle=lambda: Process(proc),
        stored=stored.append,
    )
    async with (
        ApiClient(server.base_url, server.node_token(inst["node"])) as node,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as app_http,
    ):

        async def up() -> bool:
            try:
                return (await app_http.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(up, "the counter up")
        await app_http.post("/inc")
        periodic = PeriodicCheckpoints(node, target)
        first = await periodic.take(target)
        (row,) = await snapshots(http, server.admin_token, app)
        assert (row["digest"], row["kind"], row["status"]) == (first, "periodic", "stored")

        # unchanged: no bytes, no new row; the snapshot's taken_at moves on
        assert await periodic.take(target) == first
        (again,) = await snapshots(http, server.admin_token, app)
        assert again["id"] == row["id"] and again["taken_at"] > row["taken_at"]

        await app_http.post("/inc")
        changed = await periodic.take(target)
        assert changed != first
        rows = await snapshots(http, server.admin_token, app)
        assert [r["digest"] for r in rows] == [changed, first]
        assert stored == [first, first, changed]
        assert not (root / "periodic.tar.gz").exists()


async def test_a_stale_stateful_directory_is_stored_as_an_orphan_before_it_goes(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes, tmp_path: Path
) -> None:
    await nodes.register(unique("n"))
    app, inst = await deployed(http, server, nodes, stateful=True, state_dir="data")
    record = InstanceRecord.model_validate(await nodes.record(inst["key"]))
    async with ApiClient(server.base_url, server.node_token(record.node)) as node:
        # a checkpoint of it from this node (what makes the orphan its own), then stale
        earlier = tmp_path / "earlier.tar.gz"
        earlier.write_bytes(b"not the state any more")
        digest = "sha256:" + hashlib.sha256(earlier.read_bytes()).hexdigest()
        await node.upload_snapshot(earlier, digest, instance=record.key, kind="periodic")
    root = tmp_path / "instances" / "stale"
    (root / "app" / "data").mkdir(parents=True)
    write_instance_file(root, record)
    (root / "app" / "data" / "count").write_text("42\n")
    async with ApiClient(server.base_url, server.node_token(record.node)) as node:
        assert await store_stale_orphan(node, root, set())
    assert not root.exists()
    orphan, _ = await snapshots(http, server.admin_token, app)
    assert (orphan["status"], orphan["kind"], orphan["node"]) == (
        "orphaned",
        "orphaned",
        record.node,
    )

    # state the server has already (a checkpoint this node stored) is not sent again
    (root / "app" / "data").mkdir(parents=True)
    write_instance_file(root, record)
    (root / "app" / "data" / "count").write_text("42\n")
    async with ApiClient(server.base_url, server.node_token(record.node)) as node:
        assert await store_stale_orphan(node, root, {orphan["digest"]})
    assert not root.exists() and len(await snapshots(http, server.admin_token, app)) == 2

    # the server refuses state of an instance that never checkpointed from this node:
    # the directory is kept on disk, never deleted silently
    never = record.model_copy(update={"n": 7})
    (root / "app" / "data").mkdir(parents=True)
    write_instance_file(root, never)
    (root / "app" / "data" / "count").write_text("7\n")
    async with ApiClient(server.base_url, server.node_token(record.node)) as node:
        assert not await store_stale_orphan(node, root, set())
    assert (root / "app" / "data" / "count").read_text() == "7\n"
