"""The node router serving deployed agents: ``/agents/{name}/...`` and
``/t/{tenant}/agents/{name}/...`` forwarded to the server's agents API as the caller,
through a real router in front of a real server (and, for streaming, a real upstream
that sends server-sent events one at a time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from aether.model.placements import AgentPlacement
from aether.node.router import Router, agent_target
from aether.ports import free_port
from tests.support.api import bearer, unique
from tests.support.fake_nodes import FakeNodes
from tests.support.server import RunningServer, running_server
from tests.support.waiting import eventually


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/agents/helper", ("default", "helper", "")),
        ("/agents/helper/", ("default", "helper", "")),  # the agent itself
        ("/agents/helper/runs?x=1", ("default", "helper", "/runs?x=1")),
        ("/agents/helper?x=1", ("default", "helper", "?x=1")),
        ("/t/acme/agents/helper/export", ("acme", "helper", "/export")),
        ("/agents/", None),
        ("/agents", None),
        ("/t//agents/helper", None),
        ("/t/acme/apps/helper", None),
        ("/apps/helper", None),
    ],
)
def test_agent_target(path: str, expected: tuple[str, str, str] | None) -> None:
    assert agent_target(path) == expected


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("router-agents"), lease_ttl=120.0) as s:
        yield s


async def _on_server(srv: RunningServer, coro: Any) -> Any:
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, srv.loop))


async def _new_agent(http: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, Any]:
    model = {"name": unique("m"), "base_url": "http://127.0.0.1:9/v1", "model_id": "m"}
    made = await http.post("/api/v1/models", json=model, headers=admin)
    assert made.status_code in (201, 409), made.text
    body = {"name": unique("agent"), "model": f"model://{model['name']}"}
    response = await http.post("/api/v1/agents", json=body, headers=admin)
    assert response.status_code == 201, response.text
    agent: dict[str, Any] = response.json()
    return agent


async def _deployed(
    srv: RunningServer, http: httpx.AsyncClient, admin: dict[str, str], agent_id: str
) -> AgentPlacement:
    """Deploy the agent and wait for the leader's placement (what a node's router gets)."""
    response = await http.post(f"/api/v1/agents/{agent_id}/deploy", headers=admin)
    assert response.status_code == 200, response.text

    async def placed() -> AgentPlacement | None:
        kv = await _on_server(srv, srv.ctx.store.get(f"agents/{agent_id}"))
        found = None if kv is None else AgentPlacement.model_validate_json(kv.value)
        return found if found is not None and found.nodes else None

    return await eventually(placed, "the agent placed")


@pytest.fixture
async def router(srv: RunningServer) -> AsyncIterator[Router]:
    r = Router("127.0.0.1", 0, api_url=srv.base_url)
    await r.start()
    yield r
    await r.stop()


async def test_the_router_serves_a_deployed_agent_and_404s_one_that_is_not(
    srv: RunningServer, router: Router
) -> None:
    nodes = FakeNodes(srv)
    await nodes.register(unique("n"))
    await nodes.close()
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10.0) as http:
        admin = bearer(srv.admin_token)
        deployed = await _new_agent(http, admin)
        idle = await _new_agent(http, admin)  # created, never deployed
        placement = await _deployed(srv, http, admin, deployed["id"])
        tenant = unique("acme")
        other_admin = bearer(srv.token("admin", tenant))
        theirs = await _new_agent(http, other_admin)
        their_placement = await _deployed(srv, http, other_admin, theirs["id"])
    router.update_agents([placement, their_placement])

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{router.port}", timeout=10.0
    ) as through:
        got = await through.get(f"/agents/{deployed['name']}", headers=admin)
        assert got.status_code == 200, got.text
        assert got.json()["id"] == deployed["id"] and got.json()["status"] == "deployed"
        # the rest of the path, the method and the body go through as the caller sent them
        patched = await through.patch(
            f"/t/{tenant}/agents/{theirs['name']}",
            json={"system_prompt": "hi"},
            headers=other_admin,
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["version"] == 2 and patched.json()["system_prompt"] == "hi"
        versions = await through.get(
            f"/t/{tenant}/agents/{theirs['name']}/versions", headers=other_admin
        )
        assert [v["version"] for v in versions.json()] == [2, 1]
        # as the caller: no token is the server's 401; another tenant's token its 404
        assert (await through.get(f"/agents/{deployed['name']}")).status_code == 401
        wrong = await through.get(f"/t/{tenant}/agents/{theirs['name']}", headers=admin)
        assert wrong.status_code == 404

        not_deployed = await through.get(f"/agents/{idle['name']}", headers=admin)
        unknown = await through.get("/agents/no-such-agent", headers=admin)
        assert not_deployed.status_code == unknown.status_code == 404
        assert not_deployed.json()["code"] == unknown.json()["code"] == "not_found"
        assert not_deployed.json()["message"] == f"no agent {idle['name']!r} in this cluster"
        assert unknown.json()["message"] == "no agent 'no-such-agent' in this cluster"
        # an agent of another tenant is not served under the default tenant's path
        assert (await through.get(f"/agents/{theirs['name']}", headers=admin)).status_code == 404

        router.update_agents([])  # undeployed: not served any more
        gone = await through.get(f"/agents/{deployed['name']}", headers=admin)
        assert gone.status_code == 404 and gone.json()["code"] == "not_found"


async def test_a_stream_passes_through_unbuffered() -> None:
    """Each event reaches the client before the upstream sends the next one."""
    read_first = asyncio.Event()
    seen: list[str] = []

    async def events(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"id: 1\ndata: first\n\n")
        await asyncio.wait_for(read_first.wait(), 10)  # buffered: the client never gets it
        await response.write(b"id: 2\ndata: second\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/agents/agt_stream/runs/r1/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    router = Router("127.0.0.1", 0, api_url=f"http://127.0.0.1:{port}")
    await router.start()
    placed = AgentPlacement(
        agent_id="agt_stream", tenant="default", name="streamer", version=1, replicas=1, nodes=["n"]
    )
    router.update_agents([placed])
    try:
        url = f"http://127.0.0.1:{router.port}/agents/streamer/runs/r1/events"
        async with httpx.AsyncClient(timeout=15.0) as client:
            headers = {"Authorization": "Bearer t0ken"}
            async with client.stream("GET", url, headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                chunks = response.aiter_text()
                first = await asyncio.wait_for(anext(chunks), 5)
                assert "data: first" in first and "second" not in first
                read_first.set()
                rest = "".join([c async for c in chunks])
                assert "data: second" in rest
        assert seen == ["Bearer t0ken"]
    finally:
        await router.stop()
        await runner.cleanup()
