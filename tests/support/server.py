"""A real Aether server (uvicorn + create_asgi) in a background thread.

No mocks: requests go over TCP to the real app, which owns real SQLite state and
records files under a temporary data directory. Tests keep apart by using unique
app names and, where tenancy matters, fresh tenants minted through the running
app's own ``Records`` (on the server's event loop, which owns the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from aether.ports import free_port
from aether.server.asgi import create_asgi
from aether.server.context import ServerContext
from aether.server.leader.controller import Controller
from aether.server.leader.reconcile import LeaderLoop
from aether.server.leader.risk import RiskEngine
from aether.server.settings import ServerSettings
from aether.store.records import DEFAULT_TENANT
from tests.support.api import join_node, unique

__all__ = ["RunningServer", "running_server"]

T = TypeVar("T")


@dataclass
class RunningServer:
    base_url: str
    data_dir: Path
    admin_token: str
    join_token: str
    app: FastAPI
    loop: asyncio.AbstractEventLoop
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    _nodes: dict[str, str] = field(default_factory=dict)

    @property
    def ctx(self) -> ServerContext:
        ctx: ServerContext = self.app.state.ctx
        return ctx

    @property
    def controller(self) -> Controller | None:
        controller: Controller | None = self.app.state.controller
        return controller

    @property
    def risk(self) -> RiskEngine:
        risk: RiskEngine = self.app.state.risk
        return risk

    @property
    def leader_loops(self) -> list[LeaderLoop]:
        loops: list[LeaderLoop] = self.app.state.leader.loops
        return loops

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the server's own event loop (its DB engine lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def mint(self, role: str, tenant: str = DEFAULT_TENANT) -> str:
        """A new token of ``role`` in ``tenant`` (created if needed)."""

        async def create() -> str:
            row = await self.ctx.records.ensure_tenant(tenant)
            return await self.ctx.records.create_token(row.id, role, f"test {role}")

        return self.run(create())

    def token(self, role: str, tenant: str = DEFAULT_TENANT) -> str:
        """Like ``mint`` but cached per (role, tenant)."""
        key = (role, tenant)
        if key not in self._tokens:
            self._tokens[key] = self.mint(role, tenant)
        return self._tokens[key]

    def node_token(self, node: str) -> str:
        """Node ``node``'s own credential, got as a node gets it: the join exchange
        (cached per node id: joining again would revoke the earlier one)."""
        if node not in self._nodes:
            self._nodes[node] = join_node(self.base_url, self.join_token, node)
        return self._nodes[node]

    def new_tenant(self) -> str:
        """An admin token of a brand-new tenant."""
        return self.mint("admin", unique("tenant"))


def _wait_ready(base_url: str, thread: threading.Thread, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the server thread died during start-up")
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=1.0)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"server at {base_url} not ready after {timeout}s (last: {last})")


@contextlib.contextmanager
def running_server(
    data_dir: Path, *, port: int | None = None, **settings: Any
) -> Iterator[RunningServer]:
    """A real server on ``port`` (default: a free one) over ``data_dir``, stopped on exit
    (``settings`` override). Its egress guard allows loopback (``egress_allow``
    127.0.0.0/8), where the tests' model and tool servers listen; pass
    ``egress_allow=""`` for a server with the default guard."""
    port = port or free_port()
    settings.setdefault("egress_allow", "127.0.0.0/8")
    # the API tests play nodes with their credentials over plain HTTP; the node port's
    # mutual TLS has its own tests (tests/server/test_node_mtls.py) and every real
    # `aether node` in the e2e tests uses it
    settings.setdefault("node_auth", "credential")
    app = create_asgi(ServerSettings(data_dir=data_dir, port=port, **settings))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,  # as `aether server`: open streams do not hold it up
    )
    uv = uvicorn.Server(config)
    loop_box: list[asyncio.AbstractEventLoop] = []
    failure: list[BaseException] = []

    async def serve() -> None:
        loop_box.append(asyncio.get_running_loop())
        await uv.serve()

    def target() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # surfaced at teardown
            failure.append(exc)

    thread = threading.Thread(target=target, name="aether-test-server", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, thread)
        yield RunningServer(
            base_url=base_url,
            data_dir=data_dir,
            admin_token=(data_dir / "admin.token").read_text().strip(),
            join_token=(data_dir / "join.token").read_text().strip(),
            app=app,
            loop=loop_box[0],
        )
    finally:
        uv.should_exit = True
        thread.join(timeout=15)
    assert not thread.is_alive(), "the server thread did not stop"
    assert not failure, f"the server thread failed: {failure!r}"
