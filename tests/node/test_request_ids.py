"""Request ids: a node carries out each command once (the rule in ``aether.node.runner``).

``RequestLog`` is tested on its own (bounded, persisted, torn lines, results);
then a real node daemon runs in this event loop against a real server (its own
data directory) and the real ``process`` driver, and stale or repeated
deliveries are fed to it the way a resumed assignment stream would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from aether.artifacts import pack
from aether.client import ApiClient
from aether.core.lifecycle import Command, State
from aether.model.app import AppSpec
from aether.model.cluster import InstanceRecord
from aether.node.daemon import NodeDaemon, NodeOptions
from aether.node.drivers.base import Handle, LaunchSpec
from aether.node.drivers.process import ProcessDriver
from aether.node.runner import RequestLog
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually

T = TypeVar("T")

APP = """
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


# -- the log ---------------------------------------------------------------------------


def test_the_log_remembers_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    log = RequestLog(path)
    log.remember("a")
    log.remember("b", snapshot="sha256:1")
    log.remember("b")  # again, without a result: the result stays
    again = RequestLog(path)
    assert "a" in again and "b" in again and "c" not in again
    assert again.result("b") == {"snapshot": "sha256:1"}
    assert again.result("a") == {}


def test_the_log_is_bounded_and_compacts_its_file(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    log = RequestLog(path, limit=10)
    for i in range(45):
        log.remember(f"r{i}")
    assert len(log) == 10
    assert "r34" not in log and "r35" in log and "r44" in log
    assert len(path.read_text().splitlines()) <= 20  # compacted at twice the limit
    again = RequestLog(path, limit=10)
    assert [f"r{i}" in again for i in (34, 35, 44)] == [False, True, True]
    assert path.stat().st_mode & 0o777 == 0o600  # results may name snapshots: the node's alone


def test_the_log_is_the_nodes_alone(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    RequestLog(path).remember("a", snapshot="sha256:1")
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_torn_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    path.write_text(json.dumps({"id": "a", "result": {}}) + '\n{"id": "b", "res')
    log = RequestLog(path)
    assert "a" in log and "b" not in log
    log.remember("c")
    assert "c" in RequestLog(path)


def test_dropped_ids_live_in_memory_only(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    log = RequestLog(path)
    log.remember("a")
    log.drop(["a", ""])
    assert log.dropped("a") and not log.dropped("") and not log.dropped("b")
    assert not RequestLog(path).dropped("a")  # a restarted node rebuilds


# -- a real node ------------------------------------------------------------------------


class CountingDriver(ProcessDriver):
    """The real process driver, counting the processes it starts."""

    def __init__(self) -> None:
        self.starts = 0

    async def start(self, spec: LaunchSpec) -> Handle:
        self.starts += 1
        return await super().start(spec)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of its own: a live node would otherwise take other tests' instances."""
    with running_server(tmp_path_factory.mktemp("rid-server")) as running:
        yield running


@contextlib.asynccontextmanager
async def node(server: RunningServer, data_dir: Path, node_id: str) -> AsyncIterator[NodeDaemon]:
    daemon = NodeDaemon(
        NodeOptions(
            server=server.base_url,
            join_token=server.join_token,
            data_dir=data_dir,
            router_port=0,
            node_id=node_id,
        )
    )
    daemon.drivers["process"] = CountingDriver()
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def starts(daemon: NodeDaemon) -> int:
    driver = daemon.drivers["process"]
    assert isinstance(driver, CountingDriver)
    return driver.starts


def replay(daemon: NodeDaemon, record: InstanceRecord) -> None:
    """Deliver ``record`` as a stream event again (the revision the node resumes from stays)."""
    daemon._apply(
        {
            "type": "PUT",
            "key": record.key,
            "revision": daemon.revision - 1,
            "value": record.model_dump(mode="json"),
        }
    )


async def test_replayed_commands_run_once_and_a_restart_still_rebuilds(
    server: RunningServer, tmp_path: Path
) -> None:
    app = f"rid-{uuid.uuid4().hex[:8]}"
    source = tmp_path / "src"
    source.mkdir()
    (source / "app.py").write_text(APP)
    packed = pack(source, tmp_path / "app.tar.gz")
    node_id = f"rid-node-{uuid.uuid4().hex[:6]}"
    async with ApiClient(server.base_url, server.admin_token) as api:
        await api.upload_artifact(tmp_path / "app.tar.gz", packed.digest)

        async with node(server, tmp_path / "node", node_id) as daemon:
            await eventually(lambda: daemon.registration, "registration")
            spec = AppSpec(name=app, start="python3 app.py", health="/")
            await api.create_deployment(app, packed.digest, spec, instances=1)
            await eventually(lambda: _active(api, app), "the instance to become ACTIVE")
            key = next(k for k in daemon.assigned if f"/{app}@" in k)
            runner = daemon.runners[key]
            activate = await eventually(
                lambda: (
                    daemon.assigned[key]
                    if daemon.assigned[key].command is Command.ACTIVATE
                    else None
                ),
                "the ACTIVATE record",
            )
            # the node acts on a record after it arrives: wait for it to have run it
            await eventually(
                lambda: activate.request_id in runner.executed, "the ACTIVATE to be executed"
            )
            assert activate.request_id in daemon.config.requests  # persisted
            assert starts(daemon) == 1

            # the same assignment delivered twice more: nothing runs again
            replay(daemon, activate)
            replay(daemon, activate)
            await daemon.reconcile()
            assert not runner.busy and starts(daemon) == 1

            # the node stops it for a DEACTIVATE; the store still says ACTIVATE (its
            # own reports echo that record back): a late ACTIVATE must not restart it.
            # First let the stream catch up, so no event already on its way overwrites
            # the command injected here before the node acts on it.
            current = (await api.status()).revision
            await eventually(lambda: daemon.revision > current, "the node's stream to catch up")
            daemon.assigned[key] = activate.model_copy(
                update={"command": Command.DEACTIVATE, "request_id": "deactivate-1"}
            )
            daemon.changed.set()
            await eventually(lambda: runner.local is State.LOADED and not runner.busy, "LOADED")
            echoed = await eventually(
                lambda: (
                    daemon.assigned[key]
                    if daemon.assigned[key].command is Command.ACTIVATE
                    and daemon.assigned[key].state is State.LOADED
                    else None
                ),
                "the store's ACTIVATE record echoed back",
            )
            assert echoed.request_id == activate.request_id
            replay(daemon, activate)
            await daemon.reconcile()
            if runner.task is not None:
                await runner.task
            assert runner.local is State.LOADED and runner.handle is None
            assert starts(daemon) == 1  # without request ids: 2

        # a restarted node remembers the id, and still rebuilds what it is told to run
        async with node(server, tmp_path / "node", node_id) as daemon:
            assert activate.request_id in daemon.config.requests
            await eventually(lambda: _active(api, app), "ACTIVE again after the restart")
            assert starts(daemon) == 1
            runner = daemon.runners[key]
            await eventually(
                lambda: activate.request_id in runner.executed, "the ACTIVATE rebuilt, not rerun"
            )

            # scaled away: once unloaded, a stale delivery brings nothing back
            await api.scale(app, 0)
            await eventually(lambda: key not in daemon.runners, "the instance to be unloaded")
            await eventually(lambda: _gone(api, app), "the key to be deleted")
            replay(daemon, activate)
            await daemon.reconcile()
            ghost = daemon.runners[key]
            assert not ghost.busy and ghost.local is None
            assert starts(daemon) == 1
            assert await _gone(api, app)


async def _active(api: ApiClient, app: str) -> bool:
    return any(i.state == "ACTIVE" for i in await api.instances(app))


async def _gone(api: ApiClient, app: str) -> bool:
    return not await api.instances(app)
