"""The server API tests' fixtures: one real server for the session (``tests.support.server``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.api import MAX_ARTIFACT_BYTES
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("aether-server")
    with running_server(data_dir, max_artifact_bytes=MAX_ARTIFACT_BYTES) as running:
        yield running


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client on the server, without credentials (each request sends its own)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture
async def nodes(server: RunningServer) -> AsyncIterator[FakeNodes]:
    """Fake nodes on the server (for a test module with its own ``server``: they take
    instances the leader places)."""
    fake = FakeNodes(server)
    try:
        yield fake
    finally:
        await fake.close()
