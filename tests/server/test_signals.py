"""The signal, market and risk routes: what they store, what they refuse, who may call them."""

from __future__ import annotations

import time

import httpx
import pytest

from aether.client import ApiClient
from aether.errors import BadRequestError, ForbiddenError, NotFoundError
from aether.model.risk import SignalIn
from tests.support.api import assert_envelope, bearer, unique
from tests.support.server import RunningServer


async def test_one_signal_or_a_batch_is_stored_and_listed_newest_first(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    operator = bearer(server.token("operator"))
    node = unique("sig-node")  # never registered: a node may be between leases
    one = await http.post(
        "/api/v1/signals",
        json={"node": node, "kind": "spot_price", "value": 0.31, "ts": time.time() - 5},
        headers=operator,
    )
    assert one.status_code == 201, one.text
    [first] = one.json()["ids"]
    batch = await http.post(
        "/api/v1/signals",
        json={
            "signals": [
                {"node": node, "kind": "spot_price", "value": 0.33},
                {"node": node, "kind": "capacity", "value": 0.4, "source": "aws-agent"},
            ]
        },
        headers=operator,
    )
    assert batch.status_code == 201, batch.text
    ids = batch.json()["ids"]
    assert len(ids) == 2 and first < ids[0] < ids[1]

    async with ApiClient(server.base_url, server.token("viewer")) as viewer:
        listed = await viewer.signals(node=node)
        assert [s.id for s in listed] == [ids[1], ids[0], first]
        assert [(s.kind, s.value, s.source) for s in listed] == [
            ("capacity", 0.4, "aws-agent"),
            ("spot_price", 0.33, "api"),
            ("spot_price", 0.31, "api"),
        ]
        assert abs(listed[1].ts - time.time()) < 60  # stamped by the server when absent
        prices = await viewer.signals(node=node, kind="spot_price", limit=1)
        assert [s.id for s in prices] == [ids[0]]
        assert [s.id for s in await viewer.signals(node=node, source="aws-agent")] == [ids[1]]


async def test_market_signals_are_stored_as_the_equivalent_signals(server: RunningServer) -> None:
    node = unique("market-node")
    async with ApiClient(server.base_url, server.token("operator")) as api:
        ids = await api.market_signal(node, price=0.42, rebalance=True, capacity_score=0.15)
        assert len(ids) == 3
        withdrawn = await api.market_signal(node, rebalance=False, ts=time.time())
        stored = {s.id: s for s in await api.signals(node=node)}
        assert [(stored[i].kind, stored[i].value) for i in ids] == [
            ("spot_price", 0.42),
            ("rebalance", 1.0),
            ("capacity", 0.15),
        ]
        assert (stored[withdrawn[0]].kind, stored[withdrawn[0]].value) == ("rebalance", 0.0)
        assert {s.source for s in stored.values()} == {"market"}
        with pytest.raises(BadRequestError, match="price, rebalance or capacity_score"):
            await api.market_signal(node)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"node": "n", "kind": "spot_price", "value": NaN}', "finite"),
        ('{"node": "n", "kind": "spot_price", "value": Infinity}', "finite"),
        ('{"node": "n", "kind": "spot_price", "value": -0.5}', "spot price must be positive"),
        ('{"node": "n", "kind": "spot_price", "value": 0}', "spot price must be positive"),
        ('{"node": "n", "kind": "weather", "value": 1}', "kind"),
        ('{"node": "n", "kind": "capacity", "value": 1.5}', "within 0..1"),
        ('{"node": "n", "kind": "rebalance", "value": -1}', "within 0..1"),
        ('{"node": "", "kind": "rebalance", "value": 1}', "node"),
        ('{"kind": "rebalance", "value": 1}', "node"),
        ('{"node": "n", "kind": "capacity", "value": 0.5, "ts": -1}', "ts"),
        ('{"node": "n", "kind": "capacity", "value": 0.5, "ts": 9e12}', "ahead of the server"),
        ('{"signals": []}', "signals"),
        ('{"signals": [{"node": "n", "kind": "spot_price", "value": -1}]}', "signals.0"),
        ("[1, 2]", "invalid signal"),
        ("not json", "invalid request"),
        ('{"node": "n", "price": -1}', None),  # to the market route, below
    ],
)
async def test_bad_signals_get_the_envelope_and_store_nothing(
    server: RunningServer, http: httpx.AsyncClient, body: str, fragment: str | None
) -> None:
    headers = {**bearer(server.token("operator")), "Content-Type": "application/json"}
    before = await http.get("/api/v1/signals", params={"limit": 1}, headers=headers)
    path = "/api/v1/signals" if fragment is not None else "/api/v1/market/signal"
    err = assert_envelope(await http.post(path, content=body, headers=headers), 400, "bad_request")
    assert fragment is None or fragment in err["message"], err
    after = await http.get("/api/v1/signals", params={"limit": 1}, headers=headers)
    assert after.json() == before.json()


@pytest.mark.parametrize(
    "body",
    [
        '{"node": "n", "price": NaN}',
        '{"node": "n", "capacity_score": 2}',
        '{"node": "n", "rebalance": "sometimes"}',
    ],
)
async def test_bad_market_signals_get_the_envelope(
    server: RunningServer, http: httpx.AsyncClient, body: str
) -> None:
    headers = {**bearer(server.token("operator")), "Content-Type": "application/json"}
    response = await http.post("/api/v1/market/signal", content=body, headers=headers)
    assert_envelope(response, 400, "bad_request")


async def test_bad_queries_get_the_envelope(server: RunningServer, http: httpx.AsyncClient) -> None:
    viewer = bearer(server.token("viewer"))
    for params in ({"kind": "weather"}, {"limit": 0}, {"limit": 5000}):
        response = await http.get("/api/v1/signals", params=params, headers=viewer)
        assert_envelope(response, 400, "bad_request")
    err = assert_envelope(
        await http.get(f"/api/v1/risk/{unique('nobody')}", headers=viewer), 404, "not_found"
    )
    assert "no risk assessment" in err["message"]


async def test_who_may_write_and_read(server: RunningServer, http: httpx.AsyncClient) -> None:
    node = unique("auth-node")
    signal = {"node": node, "kind": "rebalance", "value": 0}
    # operators, admins and nodes (a node-local agent) record signals
    for token in (server.token("operator"), server.admin_token, server.node_token(node)):
        response = await http.post("/api/v1/signals", json=signal, headers=bearer(token))
        assert response.status_code == 201, response.text
    viewer = bearer(server.token("viewer"))
    assert_envelope(
        await http.post("/api/v1/signals", json=signal, headers=viewer), 403, "forbidden"
    )
    assert_envelope(
        await http.post("/api/v1/market/signal", json={"node": node, "price": 1}, headers=viewer),
        403,
        "forbidden",
    )
    assert_envelope(await http.post("/api/v1/signals", json=signal), 401, "unauthorized")
    # viewers read; nodes do not
    for path in ("/api/v1/signals", "/api/v1/risk"):
        assert (await http.get(path, headers=viewer)).status_code == 200
        assert_envelope(
            await http.get(path, headers=bearer(server.node_token(node))), 403, "forbidden"
        )
    # the fire drill is an operator's
    async with ApiClient(server.base_url, server.token("viewer")) as api:
        with pytest.raises(ForbiddenError):
            await api.drill_start(node)
        with pytest.raises(ForbiddenError):
            await api.drill_stop(node)
    async with ApiClient(server.base_url, server.node_token(node)) as api:
        assert len(await api.post_signals([SignalIn(node=node, kind="capacity", value=0.5)])) == 1
        with pytest.raises(ForbiddenError):
            await api.drill_start(node)
        with pytest.raises(ForbiddenError):
            await api.risk()


async def test_a_drill_on_a_node_that_is_not_live_is_not_found(server: RunningServer) -> None:
    async with ApiClient(server.base_url, server.token("operator")) as api:
        with pytest.raises(NotFoundError, match="not live"):
            await api.drill_start(unique("ghost"))
