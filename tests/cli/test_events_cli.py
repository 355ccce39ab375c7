"""``aether events --follow``: the cluster event stream printed by the CLI (a real server)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aether.client import ApiClient
from tests.cli.test_risk_cli import aether
from tests.support.api import bearer, unique
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-events-cli")) as running:
        yield running


async def position(srv: RunningServer) -> str:
    """Where the stream stands now: the id of its ``ready`` event (through the client)."""
    async with (
        ApiClient(srv.base_url, srv.token("viewer")) as client,
        contextlib.aclosing(client.cluster_events()) as events,
    ):
        async for event in events:
            assert event["type"] == "ready"
            return str(event["id"])
    raise AssertionError("the stream ended before its ready event")


async def test_follow_prints_events_then_stops_at_the_limit(
    srv: RunningServer, tmp_path: Path
) -> None:
    since = await position(srv)
    node = unique("node")
    fake = FakeNodes(srv)
    try:
        await fake.register(node)
        async with httpx.AsyncClient(base_url=srv.base_url) as http:
            drained = await http.post(
                f"/api/v1/nodes/{node}/drain", headers=bearer(srv.admin_token)
            )
            assert drained.is_success, drained.text
    finally:
        await fake.close()

    follow = ["events", "--follow", "--since", since, "--target", node]
    result = aether(
        srv,
        tmp_path,
        *follow,
        "--type",
        "node_joined,node_drained",
        "--limit",
        "2",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["type"], e["target"]) for e in events] == [
        ("node_joined", node),
        ("node_drained", node),
    ]
    assert events[0]["id"] != events[1]["id"]

    text = aether(srv, tmp_path, *follow, "--type", "node_drained", "--limit", "1")
    assert text.returncode == 0, text.stderr
    (line,) = text.stdout.splitlines()
    assert "node_drained" in line and node in line and "drained by an operator" in line


def test_events_needs_a_deployment_or_follow(srv: RunningServer, tmp_path: Path) -> None:
    assert aether(srv, tmp_path, "events").returncode == 2
    assert aether(srv, tmp_path, "events", "shop@1", "--follow").returncode == 2
    bad = aether(srv, tmp_path, "events", "--follow", "--type", "nonsense", "--limit", "1")
    assert bad.returncode != 0 and "nonsense" in bad.stderr


async def test_follow_shows_a_task_s_state_changes(srv: RunningServer, tmp_path: Path) -> None:
    since = await position(srv)
    async with httpx.AsyncClient(base_url=srv.base_url) as http:
        body = {"type": "vm:create", "payload": {"name": unique("box")}, "queue": unique("q")}
        made = await http.post("/api/v1/tasks", json=body, headers=bearer(srv.admin_token))
        assert made.status_code == 201, made.text
        task = made.json()["id"]
        cancel = f"/api/v1/tasks/{task}/cancel"
        assert (await http.post(cancel, headers=bearer(srv.admin_token))).is_success

    follow = ["events", "--follow", "--since", since, "--type", "task_state", "--target", task]
    result = aether(srv, tmp_path, *follow, "--limit", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("task_state" in line and task in line for line in lines)
    assert "- -> pending vm:create" in lines[0] and "pending -> cancelled" in lines[1]


def test_an_alert_event_reads_as_its_change_and_labels() -> None:
    from aether.cli.commands.events import format_event

    line = format_event(
        {
            "type": "alert",
            "target": "DiskFree",
            "ts": 0.0,
            "state": "firing",
            "previous": "pending",
            "labels": {"node": "n1"},
        }
    )
    assert line.endswith("alert             DiskFree             pending -> firing node=n1")
