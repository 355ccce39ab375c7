"""``POST /api/v1/rebalance`` and the leader's rebalance step, against a real in-process
server whose nodes are played over the node API (as in ``test_migrations_api``).

Each test's nodes carry a label of their own and its app is constrained to it,
so the nodes of other tests (the server is shared) are not eligible for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.client import ApiClient
from aether.server.leader.rebalance import Rebalancer
from aether.store.election import Leadership
from tests.support.api import assert_envelope, bearer, deploy, spec_for, unique, upload_random
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually

COOPERATIVE = ["cooperative_checkpoint"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Its own server, the automatic step off (the tests drive it); long leases: the
    test's nodes do not heartbeat."""
    with running_server(
        tmp_path_factory.mktemp("rebalance"), lease_ttl=120.0, rebalance_interval=0.0
    ) as running:
        yield running


async def crowded(
    http: httpx.AsyncClient,
    server: RunningServer,
    nodes: FakeNodes,
    *,
    instances: int = 4,
    token: str | None = None,
    features: list[str] | None = None,
    **spec: Any,
) -> tuple[str, str, str]:
    """An app with all its ACTIVE instances on one node, then a second (empty) node:
    (app, the crowded node, the empty node)."""
    pool = unique("pool")
    caps = {"labels": {"pool": pool}, "features": features or []}
    first = await nodes.register(unique("n"), **caps)
    app = unique("rb")
    token = token or server.admin_token
    digest = await upload_random(http, token)
    body = spec_for(app, constraints={"pool": pool}, **spec)
    response = await deploy(http, token, app, digest, instances=instances, spec=body)
    assert response.status_code == 201, response.text

    async def placed() -> list[dict[str, Any]] | None:
        found = await nodes.instances(app)
        return found if len(found) == instances else None

    for inst in await eventually(placed, "every placement"):
        await nodes.bring_up(inst["key"])
    second = await nodes.register(unique("n"), **caps)
    return app, first, second


async def ask(
    http: httpx.AsyncClient, token: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await http.post("/api/v1/rebalance", json=body, headers=bearer(token))


async def finish(nodes: FakeNodes, server: RunningServer, app: str, migration: str) -> None:
    """Bring the move's replacement up and wait until the migration is done."""

    async def replacement() -> dict[str, Any] | None:
        for inst in await nodes.instances(app):
            record = await nodes.record(inst["key"])
            if record["migration_id"] == migration and record["migrate_to"] is None:
                return inst
        return None

    new = await eventually(replacement, "the replacement")
    await nodes.bring_up(new["key"])
    async with ApiClient(server.base_url, server.admin_token) as api:

        async def done() -> bool:
            return (await api.migration(migration)).status == "done"

        await eventually(done, "the move to finish")


async def test_rebalance_plans_and_moves_one_instance_at_a_time(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    app, crowded_node, empty = await crowded(http, server, nodes)
    operator = server.token("operator")

    response = await ask(http, operator, {"app": app})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert [(m["from_node"], m["to_node"]) for m in answer["planned"]] == [
        (crowded_node, empty)
    ] * 2
    assert answer["planned"][0]["per_node"] == {crowded_node: 4, empty: 0}
    started = answer["started"]
    assert started["from_node"] == crowded_node and started["to_node"] == empty
    assert started["kind"] == "stateless" and started["reason"].startswith("rebalance: spread 4")
    record = await nodes.record(started["instance"])
    assert record["migrate_to"] == empty and record["migration_id"] == started["id"]

    # one at a time: nothing else starts while that move is in flight
    busy = await ask(http, operator, {"app": app})
    assert busy.status_code == 200
    assert busy.json()["started"] is None and "in flight" in busy.json()["reason"]
    (waiting,) = busy.json()["refusals"]  # the moving copy and, once placed, its replacement
    assert waiting["kind"] == "waiting" and "moving" in waiting["reason"]

    # recorded as a controller decision, with its figures
    async with ApiClient(server.base_url, server.admin_token) as api:
        (decision,) = [d for d in await api.decisions(kind="rebalance") if d.target == app]
    assert decision.outcome == "applied" and decision.layer == 1
    assert decision.action == {
        "instance": started["instance"],
        "from": crowded_node,
        "to": empty,
        "migration": started["id"],
    }
    assert decision.inputs["per_node"] == {crowded_node: 4, empty: 0}
    assert decision.inputs["requested_by"] == "operator"

    await finish(nodes, server, app, started["id"])
    second = await ask(http, operator, {"app": app})
    assert second.status_code == 202, second.text
    assert second.json()["planned"][0]["per_node"] == {crowded_node: 3, empty: 1}
    await finish(nodes, server, app, second.json()["started"]["id"])

    settled = await ask(http, operator, {"app": app})
    assert settled.status_code == 200
    body = settled.json()
    assert body["planned"] == [] and body["started"] is None
    assert body["reason"].startswith("nothing to move")
    counts = ", ".join(f"{node} 2" for node in sorted([crowded_node, empty]))
    assert body["refusals"] == [
        {"app": app, "kind": "balanced", "reason": f"spread 0 (per node: {counts})"}
    ]


async def test_rebalance_roles_and_tenants(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    app, _, _ = await crowded(http, server, nodes, instances=2)
    assert_envelope(await ask(http, server.token("viewer"), {"app": app}), 403, "forbidden")
    assert_envelope(await ask(http, server.node_token(unique("n")), {"app": app}), 403, "forbidden")
    assert (await http.post("/api/v1/rebalance", json={"app": app})).status_code == 401
    # another tenant's app does not exist for the caller, whatever its role
    other = server.new_tenant()
    missing = assert_envelope(await ask(http, other, {"app": app}), 404, "not_found")
    assert app in missing["message"]
    theirs = await ask(http, other)  # every app of theirs: none of ours is seen or moved
    assert theirs.status_code == 200 and theirs.json()["planned"] == []
    assert all(r["app"] != app for r in theirs.json()["refusals"])
    # an app that does not exist, bad input
    assert_envelope(await ask(http, server.admin_token, {"app": "nope-x"}), 404, "not_found")
    assert_envelope(await ask(http, server.admin_token, {"application": app}), 400, "bad_request")
    # operator and admin of the app's tenant may (2 instances on one node: spread 2)
    first = await ask(http, server.token("operator"), {"app": app})
    assert first.status_code == 202, first.text
    again = await ask(http, server.admin_token, {"app": app})
    assert again.status_code == 200 and "in flight" in again.json()["reason"]
    await finish(nodes, server, app, first.json()["started"]["id"])


async def test_a_stateful_app_that_cannot_be_checkpointed_is_not_moved(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    app, _, _ = await crowded(http, server, nodes, instances=2, stateful=True, state_dir="data")
    response = await ask(http, server.admin_token, {"app": app})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["planned"] == [] and body["started"] is None
    (refusal,) = body["refusals"]
    assert refusal["kind"] == "blocked"
    assert (
        "cannot checkpoint" in refusal["reason"] and "cooperative_checkpoint" in refusal["reason"]
    )


async def test_a_stateful_app_moves_by_checkpoint_where_it_can(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    app, crowded_node, _ = await crowded(
        http, server, nodes, instances=2, features=COOPERATIVE, stateful=True, state_dir="data"
    )
    response = await ask(http, server.admin_token, {"app": app})
    assert response.status_code == 202, response.text
    started = response.json()["started"]
    assert started["kind"] == "stateful" and started["from_node"] == crowded_node

    async def checkpoint_asked() -> bool:
        record = await nodes.record(started["instance"])
        return bool(record["command"] == "DEACTIVATE" and record["checkpoint"])

    await eventually(checkpoint_asked, "DEACTIVATE with checkpoint")


def leadership_of(server: RunningServer) -> Leadership:
    term = server.app.state.leader.election.leadership
    assert term is not None, "the test server is not leading"
    return term  # type: ignore[no-any-return]


@pytest.fixture
def alone(tmp_path: Path) -> Iterator[RunningServer]:
    """A server of its own: no other test's migration is in flight on it."""
    with running_server(tmp_path, lease_ttl=120.0, rebalance_interval=0.0) as running:
        yield running


async def test_the_automatic_step_is_rate_limited_and_records_its_decisions(
    alone: RunningServer,
) -> None:
    server = alone
    http = httpx.AsyncClient(base_url=server.base_url, timeout=10.0)
    nodes = FakeNodes(server)
    try:
        await _automatic_step(server, http, nodes)
    finally:
        await nodes.close()
        await http.aclose()


async def _automatic_step(server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes) -> None:
    app, crowded_node, empty = await crowded(http, server, nodes)
    blocked, _, _ = await crowded(http, server, nodes, instances=2, stateful=True, state_dir="d")
    step = Rebalancer(server.ctx, interval=30.0)
    lead = leadership_of(server)

    said = server.run(step.step(lead, now=1000.0))
    assert said.startswith("spread 4")
    assert step.last_started == 1000.0
    # the rate limit: no second move within the interval, whatever the cluster says
    assert server.run(step.step(lead, now=1010.0)).startswith("rate limited")
    # after it, still none while the first move is in flight
    assert "in flight" in server.run(step.step(lead, now=1031.0))
    assert step.last_started == 1000.0

    async with ApiClient(server.base_url, server.admin_token) as api:
        mine = [d for d in await api.decisions(kind="rebalance") if d.target in (app, blocked)]
    by_outcome = {d.outcome: d for d in mine}
    assert set(by_outcome) == {"applied", "refused"}, mine
    applied, refused = by_outcome["applied"], by_outcome["refused"]
    assert applied.target == app and applied.inputs["requested_by"] == "automatic"
    assert (applied.action["from"], applied.action["to"]) == (crowded_node, empty)
    # the stateful app that cannot be checkpointed: refused, with the reason, once
    assert refused.target == blocked and "cannot checkpoint" in refused.detail
    assert len([d for d in mine if d.outcome == "refused"]) == 1
    await finish(nodes, server, app, applied.action["migration"])
