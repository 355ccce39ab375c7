"""Several server URLs: the client, the CLI and the node skip a dead server and go on.

One real in-process server behind a dead URL (a free port nobody listens on):
requests, streams, `aether --server dead,live` and a node started with the dead URL
first all reach the live server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from aether.cli.main import main
from aether.client import ApiClient, NetworkError, split_urls
from aether.errors import NotFoundError
from aether.model.telemetry import ClusterSample
from aether.node.daemon import NodeDaemon, NodeOptions
from aether.ports import free_port
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("failover-server")) as running:
        yield running


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_split_urls() -> None:
    assert split_urls("http://a:1/, http://b:2") == ["http://a:1", "http://b:2"]
    assert split_urls(["http://a/"]) == ["http://a"]
    with pytest.raises(ValueError):
        split_urls(" , ")


async def test_requests_go_to_the_next_server_and_it_is_remembered(live: RunningServer) -> None:
    dead = dead_url()
    async with ApiClient(f"{dead},{live.base_url}", live.admin_token) as client:
        assert client.base_url == dead
        status = await client.status()
        assert status.leader is not None
        assert client.base_url == live.base_url  # remembered: the dead one is not tried first
        assert (await client.apps()) == (await client.apps())
        # an HTTP error answer is an answer: not retried elsewhere, the server stays
        with pytest.raises(NotFoundError):
            await client.deployment("no-such-deployment")
        assert client.base_url == live.base_url
    async with ApiClient([dead_url(), live.base_url], live.admin_token) as client:
        assert await client.healthz()


async def test_all_servers_dead_is_a_network_error_naming_them() -> None:
    a, b = dead_url(), dead_url()
    async with ApiClient(f"{a},{b}", "token", timeout=2) as client:
        with pytest.raises(NetworkError) as caught:
            await client.status()
    assert caught.value.code == "unreachable"
    assert a in caught.value.message and b in caught.value.message


async def test_a_stream_opens_on_the_next_server(live: RunningServer) -> None:
    async with ApiClient(f"{dead_url()},{live.base_url}", live.admin_token) as client:
        stream = cast(AsyncGenerator[ClusterSample, None], client.metrics_stream())
        try:
            async with asyncio.timeout(30):
                sample = await anext(stream)
        finally:
            await stream.aclose()
        assert sample is not None
        assert client.base_url == live.base_url


def test_the_cli_takes_several_servers(
    live: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("AETHER_SERVER", raising=False)
    servers = f"{dead_url()},{live.base_url}"
    code = main(["status", "--server", servers, "--token", live.admin_token, "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "leader" in json.loads(out)

    monkeypatch.setenv("AETHER_SERVER", servers)
    monkeypatch.setenv("AETHER_TOKEN", live.admin_token)
    assert main(["nodes", "--format", "json"]) == 0
    json.loads(capsys.readouterr().out)

    monkeypatch.setenv("AETHER_SERVER", f"{dead_url()},{dead_url()}")
    assert main(["status", "--format", "json"]) == 40
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "unreachable"

    # config.toml may list them: server = ["http://a:7070", "http://b:7070"]
    monkeypatch.delenv("AETHER_SERVER")
    config = tmp_path / "config" / "aether" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'server = ["{dead_url()}", "{live.base_url}"]\n')
    assert main(["apps", "--format", "json"]) == 0
    json.loads(capsys.readouterr().out)


async def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_node_with_a_dead_server_first_registers_and_follows(
    live: RunningServer, tmp_path: Path
) -> None:
    node_id = "failover-node"
    daemon = NodeDaemon(
        NodeOptions(
            server=f"{dead_url()},{live.base_url}",
            join_token=live.join_token,
            data_dir=tmp_path / "node",
            router_port=0,
            node_id=node_id,
        )
    )
    task = asyncio.create_task(daemon.run())
    try:
        await _until(lambda: daemon.registration, "the node to register")
        await _until(lambda: daemon.revision > 0, "the assignment stream's snapshot")
        # joined through the API URLs (the dead one first), then calls the live server's
        # node port (mutual TLS), the one URL the join answered with
        assert daemon.client.base_url == live.ctx.trust.node_urls[0]
        async with ApiClient(live.base_url, live.admin_token) as api:
            assert node_id in {n.id for n in await api.nodes()}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_stream_that_breaks_moves_on_to_the_next_server(live: RunningServer) -> None:
    """A server that dies mid-stream (here: a socket that sends headers, then closes)."""

    async def half_a_response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n9\r\n: ping\n\n\r\n"
        )
        await writer.drain()
        writer.close()  # no final chunk: the stream breaks

    broken = await asyncio.start_server(half_a_response, "127.0.0.1", 0)
    port = broken.sockets[0].getsockname()[1]
    try:
        async with ApiClient(
            f"http://127.0.0.1:{port},{live.base_url}", live.admin_token
        ) as client:
            with pytest.raises(NetworkError, match="broke"):
                async for _ in client.metrics_stream():
                    pass
            assert client.base_url == live.base_url  # the reconnect goes to the next server
            stream = cast(AsyncGenerator[ClusterSample, None], client.metrics_stream())
            try:
                async with asyncio.timeout(30):
                    assert await anext(stream) is not None
            finally:
                await stream.aclose()
    finally:
        broken.close()
        await broken.wait_closed()
