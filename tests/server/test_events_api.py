"""``GET /api/v1/events``: the cluster event stream against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.model.events import EVENT_TYPES
from tests.support.api import assert_envelope, bearer, deploy, unique, upload_random
from tests.support.fake_nodes import FakeNodes, deployed
from tests.support.server import RunningServer, running_server

Event = dict[str, Any]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of its own whose nodes keep their leases: the test's nodes do not heartbeat
    (a lease is ended on purpose where a test needs a node lost)."""
    with running_server(tmp_path_factory.mktemp("events"), lease_ttl=120.0) as running:
        yield running


class EventStream:
    """An open stream read in the background; ``first`` is its ``ready`` or ``gap`` event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.seen: list[Event] = []
        self.reader = asyncio.create_task(self._read())
        self.first: Event = {}

    async def _read(self) -> None:
        data: list[str] = []
        event_id = ""
        async for line in self.response.aiter_lines():
            if line == "":
                if data:
                    await self.queue.put(json.loads("\n".join(data)))
                elif event_id:
                    await self.queue.put({"type": "ping", "id": event_id})
                data, event_id = [], ""
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
            elif line.startswith("id:"):
                event_id = line.removeprefix("id:").strip()

    async def next(self, timeout: float = 15.0) -> Event:
        async with asyncio.timeout(timeout):
            event = await self.queue.get()
        self.seen.append(event)
        return event

    async def wait_for(
        self, what: str, match: Callable[[Event], bool], timeout: float = 15
    ) -> Event:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self.next(timeout)
                    if match(event):
                        return event
        except TimeoutError:
            raise AssertionError(f"no {what} in {self.seen}") from None

    async def quiet(self, seconds: float) -> list[Event]:
        """Every event that comes within ``seconds``."""
        got: list[Event] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    got.append(await self.next(seconds))
        return got


@contextlib.asynccontextmanager
async def stream(
    server: RunningServer,
    token: str,
    params: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[EventStream]:
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=httpx.Timeout(30.0)) as http,
        http.stream(
            "GET",
            "/api/v1/events",
            params=httpx.QueryParams([*(params or [])]),
            headers={**bearer(token), **(headers or {})},
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = EventStream(response)
        try:
            events.first = await events.next()
            yield events
        finally:
            events.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await events.reader


def of(kind: str, target: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == kind and e["target"] == target


# -- authorization and bad input ---------------------------------------------------------


async def test_no_token_is_401_and_a_node_or_join_token_403(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    assert_envelope(await http.get("/api/v1/events"), 401, "unauthorized")
    bad = await http.get("/api/v1/events", headers=bearer("not-a-token"))
    assert_envelope(bad, 401, "unauthorized")
    node = await http.get(
        "/api/v1/events", headers=bearer(server.node_token(unique("events-node")))
    )
    assert_envelope(node, 403, "forbidden")
    join = await http.get("/api/v1/events", headers=bearer(server.join_token))
    assert_envelope(join, 403, "forbidden")


async def test_bad_filters_and_ids_are_400(server: RunningServer, http: httpx.AsyncClient) -> None:
    headers = bearer(server.token("viewer"))
    unknown = await http.get("/api/v1/events", params={"type": "node_exploded"}, headers=headers)
    assert "node_exploded" in assert_envelope(unknown, 400, "bad_request")["message"]
    for bad_id in ("yesterday", "1-2-3", "-1-0-0-0"):
        by_header = await http.get("/api/v1/events", headers={**headers, "Last-Event-ID": bad_id})
        assert_envelope(by_header, 400, "bad_request")
        by_query = await http.get(
            "/api/v1/events", params={"last_event_id": bad_id}, headers=headers
        )
        assert_envelope(by_query, 400, "bad_request")
    long_target = await http.get("/api/v1/events", params={"target": "x" * 300}, headers=headers)
    assert_envelope(long_target, 400, "bad_request")


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
async def test_every_role_of_a_tenant_sees_node_events(
    server: RunningServer, nodes: FakeNodes, role: str
) -> None:
    token = server.mint(role, unique("tenant"))
    name = unique("node")
    async with stream(server, token, [("target", name)]) as events:
        assert events.first["type"] == "ready" and events.first["resumed"] is False
        await nodes.register(name)
        joined = await events.wait_for("node_joined", of("node_joined", name))
    assert joined["node"] == name and joined["drivers"] == ["process"]
    assert joined["id"].count("-") == 4


# -- what appears -----------------------------------------------------------------------


async def test_a_deploy_shows_its_blueprint_steps_and_instances(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("node"))
    async with stream(server, server.token("viewer")) as events:
        app, inst = await deployed(http, server, nodes)
        wanted: dict[str, Callable[[Event], bool]] = {
            "blueprint": of("blueprint_changed", app),
            "created": lambda e: of("deployment", app)(e) and e["step"] == "created",
            "active": lambda e: of("instance_state", app)(e) and e["state"] == "ACTIVE",
            "healthy": lambda e: of("deployment", app)(e) and e["step"] == "healthy",
        }
        # store changes and record rows come by two paths: in either order
        await events.wait_for(
            "all of them", lambda _: all(any(w(e) for e in events.seen) for w in wanted.values())
        )
    found = {name: next(e for e in events.seen if w(e)) for name, w in wanted.items()}
    blueprint, created, active = found["blueprint"], found["created"], found["active"]
    assert blueprint["version"] == 1 and blueprint["deleted"] is False
    assert created["version"] == 1 and "v1" in created["message"]
    assert active["instance"] == inst["key"] and active["node"] == inst["node"]
    ids = [e["id"] for e in events.seen]
    assert len(ids) == len(set(ids))  # every event has its own id
    typed = [e for e in events.seen if e["type"] in EVENT_TYPES]
    assert typed and all(e["schema"] == 1 for e in typed)  # each carries its schema version


async def test_a_node_whose_lease_ends_is_lost(server: RunningServer, nodes: FakeNodes) -> None:
    name = unique("node")
    async with stream(server, server.token("viewer"), [("target", name)]) as events:
        await nodes.register(name)
        await events.wait_for("node_joined", of("node_joined", name))
        kv = server.run(server.ctx.store.get(f"nodes/{name}"))
        assert kv is not None
        server.run(server.ctx.store.lease_revoke(kv.lease))  # as when it stops heartbeating
        lost = await events.wait_for("node_lost", of("node_lost", name))
    assert "lease" in lost["reason"]


async def test_a_drain_and_an_undrain(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    name = unique("node")
    await nodes.register(name)
    operator = bearer(server.token("operator"))
    async with stream(server, server.token("viewer"), [("target", name)]) as events:
        assert (await http.post(f"/api/v1/nodes/{name}/drain", headers=operator)).is_success
        drained = await events.wait_for("node_drained", of("node_drained", name))
        assert (await http.post(f"/api/v1/nodes/{name}/undrain", headers=operator)).is_success
        await events.wait_for("node_undrained", of("node_undrained", name))
    assert drained["reason"] == "drained by an operator" and drained["by"] == "operator"


async def test_filters_by_type_and_target(server: RunningServer, nodes: FakeNodes) -> None:
    first, second = unique("node"), unique("node")
    params = [("type", "node_joined"), ("target", first)]
    async with stream(server, server.token("viewer"), params) as events:
        await nodes.register(second)
        await nodes.register(first)
        joined = await events.wait_for("the first node", lambda e: True)
        later = await events.quiet(1.0)
    assert of("node_joined", first)(joined)
    assert later == []  # not the second node, and no other type about the first


# -- resuming -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_with_last_event_id_replays_what_was_missed(
    server: RunningServer, nodes: FakeNodes, how: str
) -> None:
    name = unique("node")
    viewer = server.token("viewer")
    async with stream(server, viewer, [("target", name)]) as events:
        position = events.first["id"]
    await nodes.register(name)  # while nobody listens
    if how == "header":
        resumed = stream(server, viewer, [("target", name)], {"Last-Event-ID": position})
    else:
        resumed = stream(server, viewer, [("target", name), ("last_event_id", position)])
    async with resumed as events:
        assert events.first == {"id": position, "type": "ready", "resumed": True}
        joined = await events.wait_for("the missed join", lambda e: True)
    assert of("node_joined", name)(joined)

    # resuming after that event gives the events after it, not it again
    async with stream(
        server, viewer, [("target", name)], {"Last-Event-ID": joined["id"]}
    ) as events:
        again = await events.quiet(1.0)
    assert not any(e["type"] == "node_joined" for e in again)


async def test_a_ping_carries_the_position_past_filtered_events(
    server: RunningServer, nodes: FakeNodes
) -> None:
    name = unique("node")
    viewer = server.token("viewer")
    async with stream(server, viewer, [("target", unique("nothing"))]) as events:
        await nodes.register(name)  # filtered out
        ping = await events.wait_for("a ping", lambda e: e["type"] == "ping", timeout=12)
    assert ping["id"] != events.first["id"]
    async with stream(server, viewer, [("target", name)], {"Last-Event-ID": ping["id"]}) as ev:
        assert not any(e["type"] == "node_joined" for e in await ev.quiet(1.0))


async def test_an_id_too_old_or_from_elsewhere_is_a_gap_first(tmp_path: Path) -> None:
    with running_server(tmp_path, events_resume_limit=3) as small:
        fake = FakeNodes(small)
        try:
            viewer = small.token("viewer")
            async with stream(small, viewer) as events:
                old = events.first["id"]
            for _ in range(5):
                await fake.register(unique("node"))  # each registration writes a revision
            async with stream(small, viewer, headers={"Last-Event-ID": old}) as events:
                gap = events.first
                name = unique("node")
                await fake.register(name)  # the stream goes on from now
                await events.wait_for("a new join", of("node_joined", name))
            assert gap["type"] == "gap"
            assert f"cannot resume from {old}" in gap["message"]
            assert "behind" in gap["message"] and "lost" in gap["message"]
            assert gap["id"] != old

            async with stream(small, viewer, headers={"Last-Event-ID": "999999999-0-0-0"}) as ev:
                assert ev.first["type"] == "gap" and "ahead" in ev.first["message"]
        finally:
            await fake.close()


async def test_history_the_store_compacted_is_a_gap(tmp_path: Path) -> None:
    with running_server(tmp_path) as small:
        fake = FakeNodes(small)
        try:
            viewer = small.token("viewer")
            async with stream(small, viewer) as events:
                old = events.first["id"]
            await fake.register(unique("node"))
            await fake.register(unique("node"))  # the history now reaches past the id
            store = small.ctx.store
            small.run(store.compact(small.run(store.revision())))
            async with stream(small, viewer, headers={"Last-Event-ID": old}) as events:
                gap = await events.wait_for("a gap", lambda e: e["type"] == "gap")
            assert "discarded its history" in gap["message"]
        finally:
            await fake.close()


# -- tenants ------------------------------------------------------------------------------


async def test_another_tenants_events_are_never_visible(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    other_viewer = server.mint("viewer", unique("tenant"))
    async with (
        stream(server, other_viewer) as theirs,
        stream(server, server.token("viewer")) as ours,
    ):
        node = await nodes.register(unique("node"))
        app, _ = await deployed(http, server, nodes)
        await ours.wait_for(
            "our ACTIVE", lambda e: of("instance_state", app)(e) and e["state"] == "ACTIVE"
        )
        # node-level events are everyone's: the other tenant sees the join
        await theirs.wait_for("the node's join", of("node_joined", node))
        await theirs.quiet(1.5)  # everything already sent to both has arrived
    assert any(of("blueprint_changed", app)(e) for e in ours.seen)
    leaked = [e for e in theirs.seen if app in json.dumps(e)]
    assert leaked == []

    # filtering on the other tenant's app shows nothing, and says nothing either
    async with stream(server, other_viewer, [("target", app)]) as filtered:
        assert filtered.first["type"] == "ready"
        scale = await http.post(
            f"/api/v1/apps/{app}/scale", json={"instances": 2}, headers=bearer(server.admin_token)
        )
        assert scale.is_success
        assert await filtered.quiet(1.5) == []


async def test_a_tenant_sees_its_own_apps_events(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    await nodes.register(unique("node"))
    tenant = unique("tenant")
    admin = server.mint("admin", tenant)
    viewer = server.mint("viewer", tenant)
    app = unique("own")
    async with stream(server, viewer, [("target", app)]) as events:
        digest = await upload_random(http, admin)
        response = await deploy(http, admin, app, digest, instances=1)
        assert response.status_code == 201, response.text
        await events.wait_for("its blueprint", of("blueprint_changed", app))
        await events.wait_for("its created step", of("deployment", app))


async def test_two_tenants_apps_of_one_name_each_stream_only_its_own(
    server: RunningServer, http: httpx.AsyncClient, nodes: FakeNodes
) -> None:
    """Tenants A and B both deploy APP: each stream shows its own APP, by that plain
    name, down to the deletion (a key deleted: its tenant found by cluster name)."""
    await nodes.register(unique("node"))
    names = {"a": unique("tenant"), "b": unique("tenant")}
    tokens = {t: server.mint("admin", name) for t, name in names.items()}
    app = unique("same")
    async with (
        stream(server, tokens["a"], [("target", app)]) as a_events,
        stream(server, tokens["b"], [("target", app)]) as b_events,
    ):
        deployments = {}
        for t, token in tokens.items():
            response = await deploy(http, token, app, await upload_random(http, token))
            assert response.status_code == 201, response.text
            deployments[t] = response.json()["id"]
        for t, events in (("a", a_events), ("b", b_events)):
            changed = await events.wait_for("its blueprint", of("blueprint_changed", app))
            assert changed["deployment_id"] == deployments[t]
            placed = await events.wait_for("its instance", of("instance_state", app))
            assert f"/{app}.{names[t]}@1/" in placed["instance"]
        deleted = await http.delete(f"/api/v1/apps/{app}", headers=bearer(tokens["a"]))
        assert deleted.status_code == 200, deleted.text
        await a_events.wait_for(
            "its blueprint deleted",
            lambda e: of("blueprint_changed", app)(e) and e["deleted"] is True,
        )
        await b_events.quiet(1.5)
    for t, events in (("a", a_events), ("b", b_events)):
        other = "b" if t == "a" else "a"
        text = json.dumps(events.seen)
        assert names[other] not in text and deployments[other] not in text, t
    assert not [e for e in b_events.seen if e.get("deleted") is True]


# -- tasks --------------------------------------------------------------------------------


async def _task(http: httpx.AsyncClient, token: str, queue: str) -> str:
    body = {"type": "vm:create", "payload": {"name": unique("box")}, "queue": queue}
    made = await http.post("/api/v1/tasks", json=body, headers=bearer(token))
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def _run(server: RunningServer, http: httpx.AsyncClient, node: str, queue: str) -> str:
    """Claim the next task of ``queue`` as ``node`` and complete it; its id."""
    token = bearer(server.node_token(node))
    body = {"node": node, "drivers": ["process"], "queues": [queue], "wait": 0}
    claimed = await http.post("/api/v1/tasks/claim", json=body, headers=token)
    assert claimed.status_code == 200, claimed.text
    task = claimed.json()
    result = {"vm_id": task["payload"]["vm_id"], "driver": "process", "isolated": False}
    done = await http.post(
        f"/api/v1/tasks/{task['id']}/complete",
        json={"node": node, "attempt": 1, "result": result},
        headers=token,
    )
    assert done.status_code == 200, done.text
    return str(task["id"])


def steps(events: list[Event], task: str) -> list[tuple[Any, ...]]:
    return [
        (e["previous"], e["state"], e.get("node"), e["attempt"])
        for e in events
        if e["type"] == "task_state" and e["target"] == task
    ]


async def test_task_changes_are_task_state_events_for_their_tenant(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    tenant = unique("tenant")
    admin = server.mint("admin", tenant)
    queue, node = unique("q"), unique("node")
    only_tasks = [("type", "task_state")]
    async with (
        stream(server, server.mint("viewer", tenant), only_tasks) as ours,
        stream(server, server.mint("viewer", unique("tenant")), only_tasks) as theirs,
        stream(server, server.token("viewer"), only_tasks) as default_viewer,
        stream(server, server.admin_token, only_tasks) as cluster_admin,
    ):
        ran = await _task(http, admin, queue)
        assert await _run(server, http, node, queue) == ran
        cancelled = await _task(http, admin, queue)
        response = await http.post(f"/api/v1/tasks/{cancelled}/cancel", headers=bearer(admin))
        assert response.json()["state"] == "cancelled"
        done = lambda e: of("task_state", cancelled)(e) and e["state"] == "cancelled"  # noqa: E731
        await ours.wait_for("the cancellation", done)
        await cluster_admin.wait_for("the cancellation", done)
        await theirs.quiet(1.5)  # everything already sent to all of them has arrived
        await default_viewer.quiet(0.1)

    assert steps(ours.seen, ran) == [
        (None, "pending", None, 0),
        ("pending", "active", node, 1),
        ("active", "succeeded", node, 1),
    ]
    assert steps(ours.seen, cancelled) == [
        (None, "pending", None, 0),
        ("pending", "cancelled", None, 0),
    ]
    claimed = next(e for e in ours.seen if of("task_state", ran)(e) and e["state"] == "active")
    assert (claimed["task_type"], claimed["queue"], claimed["priority"]) == ("vm:create", queue, 5)
    assert claimed["error"] is None and claimed["id"].count("-") == 4
    assert {e["type"] for e in ours.seen} - {"ping"} == {"ready", "task_state"}
    ids = [e["id"] for e in ours.seen]
    assert ids == sorted(ids, key=lambda i: [int(p) for p in i.split("-")])
    # the default tenant's admin sees every tenant's; nobody else sees them
    assert steps(cluster_admin.seen, ran) == steps(ours.seen, ran)
    for stranger in (theirs, default_viewer):
        assert not [e for e in stranger.seen if e.get("target") in (ran, cancelled)]

    # resuming after the claim through its five-part id replays what came after it only
    viewer = server.mint("viewer", tenant)
    async with stream(server, viewer, [("target", ran)], {"Last-Event-ID": claimed["id"]}) as ev:
        assert ev.first == {"id": claimed["id"], "type": "ready", "resumed": True}
        finished = await ev.wait_for("the completion", lambda e: True)
        assert (finished["state"], finished["node"]) == ("succeeded", node)
        assert await ev.quiet(1.0) == []
    # a four-part id (from before tasks were on the stream) resumes tasks from now
    four = claimed["id"].rsplit("-", 1)[0]
    async with stream(server, viewer, [("target", ran)], {"Last-Event-ID": four}) as ev:
        assert ev.first["type"] == "ready" and ev.first["resumed"] is True
        assert ev.first["id"].count("-") == 4
        assert await ev.quiet(1.0) == []
    # the node is a target too: its claims and what ended them
    async with stream(
        server, viewer, [("type", "task_state"), ("target", node)], {"Last-Event-ID": four}
    ) as ev:
        assert await ev.quiet(1.0) == []
        again = await _task(http, admin, queue)
        await _run(server, http, node, queue)
        seen = [await ev.next(), await ev.next()]
    assert steps(seen, again) == [("pending", "active", node, 1), ("active", "succeeded", node, 1)]
