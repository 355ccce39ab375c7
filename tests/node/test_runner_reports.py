"""A report the server never received: a step's opening move is undone, a result is kept."""

from __future__ import annotations

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
