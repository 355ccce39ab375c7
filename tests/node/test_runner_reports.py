"""A report the server never received: a step's opening move is undone, a result is kept;
one whose answer this node cannot read (a newer server's) is logged, and the node goes on."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from aether.client import ApiClient
from aether.core.lifecycle import Command, NodeStep, State, node_step
from aether.errors import AetherError
from aether.model.app import AppSpec
from aether.model.cluster import InstanceRecord
from aether.node.drivers.process import ProcessDriver
from aether.node.runner import InstanceRunner, RunnerConfig
from aether.ports import free_port


def _runner(tmp_path: Path, client: ApiClient) -> InstanceRunner:
    record = InstanceRecord(
        app="web",
        version=1,
        n=0,
        node="n1",
        tenant="t",
        deployment_id="d",
        digest="sha256:" + "0" * 64,
        spec=AppSpec(name="web", start="python3 app.py"),
        command=Command.ACTIVATE,
        request_id="r1",
    )
    return InstanceRunner(
        record, client, ProcessDriver(), RunnerConfig(tmp_path, "127.0.0.1"), lambda: None
    )


async def test_unsent_opening_report_undoes_the_move_so_the_step_runs_again(
    tmp_path: Path,
) -> None:
    async with ApiClient(f"http://127.0.0.1:{free_port()}", "token") as away:
        runner = _runner(tmp_path, away)
        runner.local = State.LOADED
        with pytest.raises(AetherError):
            await runner._report(State.ACTIVATING)
        # still LOADED: the node starts the process again on its next pass
        assert runner.local is State.LOADED
        assert node_step(Command.ACTIVATE, runner.local) is NodeStep.ACTIVATE


async def test_unsent_result_keeps_the_state_it_reached(tmp_path: Path) -> None:
    async with ApiClient(f"http://127.0.0.1:{free_port()}", "token") as away:
        runner = _runner(tmp_path, away)
        runner.local = State.ACTIVATING
        with pytest.raises(AetherError):
            await runner._report(State.ACTIVE)
        assert runner.local is State.ACTIVE  # the process runs; the report is sent again later


@asynccontextmanager
async def _newer_server() -> AsyncIterator[str]:
    """A real HTTP server that takes every report and answers as a newer version would."""
    answer = json.dumps({"schema": 2, "key": "k", "state": "LOADED", "revision": 5}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(answer), answer)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_report_answer_from_a_newer_server_is_logged_and_the_runner_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _newer_server() as url, ApiClient(url, "token") as newer:
        runner = _runner(tmp_path, newer)
        runner.local = State.LOADING
        with caplog.at_level(logging.ERROR):
            assert await runner._report(State.LOADED) is None  # taken: no exception
        assert runner.local is State.LOADED and not runner.fenced
        assert "report_reply schema 2 is newer than this version's 1" in caplog.text
