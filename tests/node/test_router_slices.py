"""The router's slice calls (``POST /slices/{slice}/{entry}``) against stand-in hosts
that speak ``aether.slices.wire`` on real sockets (``tests.support.slice_host``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from aether.model.cluster import Endpoint
from aether.node.router import Router, slice_target
from aether.ports import free_port
from tests.support.slice_host import ENTRIES, SliceHost


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    r = Router("127.0.0.1", 0, upstream_timeout=10.0)
    r.node = "n1"
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def hosts() -> AsyncIterator[list[SliceHost]]:
    started: list[SliceHost] = []
    yield started
    for host in started:
        await host.kill()


async def _host(hosts: list[SliceHost], name: str) -> SliceHost:
    host = await SliceHost(name).start()
    hosts.append(host)
    return host


def _eps(app: str, url: str, node: str = "n1", n: int = 0) -> list[Endpoint]:
    return [
        Endpoint(app=app, entry=entry, node=node, n=n, version=1, url=url, schema=schema)
        for entry, schema in ENTRIES.items()
    ]


async def _call(
    router: Router,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with http.post(
            f"http://127.0.0.1:{router.port}{path}", data=data, headers=headers
        ) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/slices/catalog/price", ("default", "catalog", "price")),
        ("/slices/catalog/price?x=1", ("default", "catalog", "price")),
        ("/t/acme/slices/catalog/price", ("acme", "catalog", "price")),
        ("/slices/catalog", None),
        ("/slices/catalog/price/more", None),
        ("/slices/Catalog/price", None),
        ("/slices/catalog/1price", None),
        ("/t/a.b/slices/catalog/price", None),
        ("/apps/catalog/price", None),
    ],
)
def test_slice_target(path: str, expected: tuple[str, str, str] | None) -> None:
    assert slice_target(path) == expected


async def test_a_call_answers_its_result_and_args_go_as_kwargs_or_positional(
    router: Router, hosts: list[SliceHost]
) -> None:
    host = await _host(hosts, "a")
    router.update(_eps("catalog", host.url), apps=["catalog"])
    assert await _call(router, "/slices/catalog/price", {"sku": "tea"}) == (200, 3)
    assert await _call(router, "/slices/catalog/price", ["green"]) == (200, 5)
    assert await _call(router, "/slices/catalog/whoami") == (200, "a")
    counters, _ = router.take_entry_counters()
    assert counters[("catalog", "price")].calls == 2
    assert counters[("catalog", "whoami")].calls == 1
    assert counters[("catalog", "price")].errors == 0
    assert router.take_entry_counters() == ({}, {})  # reset by the take
    # another tenant's slice of the same name is its own
    other = await _host(hosts, "acme's")
    router.update(
        [*_eps("catalog", host.url), *_eps("catalog.acme", other.url)],
        apps=["catalog", "catalog.acme"],
    )
    assert await _call(router, "/t/acme/slices/catalog/whoami") == (200, "acme's")
    assert await _call(router, "/slices/catalog/whoami") == (200, "a")


async def test_errors_are_the_envelope(router: Router, hosts: list[SliceHost]) -> None:
    host = await _host(hosts, "a")
    router.update(_eps("catalog", host.url), apps=["catalog", "web", "empty"])
    status, body = await _call(router, "/slices/catalog/price", {"sku": 7})
    assert status == 400 and body["code"] == "bad_request"
    assert body["details"] == [
        {"loc": ["sku"], "msg": "Input should be a valid string", "type": "string_type"}
    ]
    assert body["trace_id"]
    for bad in (b"{not json", b'"a string"', b"42"):
        status, body = await _call(router, "/slices/catalog/price", raw=bad)
        assert (status, body["code"]) == (400, "bad_request")
    status, body = await _call(router, "/slices/catalog/nope", {})
    assert (status, body["code"]) == (404, "not_found")  # no such entry point
    status, body = await _call(router, "/slices/missing/price", {})
    assert (status, body["code"]) == (404, "not_found")  # no such slice in the cluster
    router.update(
        [*_eps("catalog", host.url), Endpoint(app="web", node="n1", n=0, version=1, url=host.url)],
        apps=["catalog", "web", "empty"],
    )
    status, body = await _call(router, "/slices/web/price", {})
    assert (status, body["code"]) == (404, "not_found")  # an app, not a slice
    status, body = await _call(router, "/slices/empty/price", {})
    assert (status, body["code"]) == (503, "no_endpoint")  # deployed, nothing ACTIVE
    status, body = await _call(router, "/slices/catalog/boom", {})
    assert (status, body["code"]) == (500, "internal")
    assert "boom" in body["message"]
    status, body = await _call(
        router, "/slices/catalog/slow", {"seconds": 5}, headers={"X-Aether-Deadline-Ms": "200"}
    )
    assert (status, body["code"]) == (504, "deadline_exceeded")
    status, body = await _call(
        router, "/slices/catalog/slow", {"seconds": 0}, headers={"X-Aether-Deadline-Ms": "soon"}
    )
    assert (status, body["code"]) == (400, "bad_request")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{router.port}/slices/catalog/price") as resp,
    ):
        assert resp.status == 405
    counters, _ = router.take_entry_counters()
    assert counters[("catalog", "boom")].errors == 1
    assert counters[("catalog", "slow")].errors == 1  # the 504
    assert counters[("catalog", "price")].errors == 0  # 4xx are the caller's


async def test_local_instances_first_then_round_robin(
    router: Router, hosts: list[SliceHost]
) -> None:
    here = await _host(hosts, "here")
    there = [await _host(hosts, f"there{i}") for i in range(2)]
    router.update(
        [
            *_eps("catalog", there[0].url, node="n2", n=0),
            *_eps("catalog", here.url, node="n1", n=1),
            *_eps("catalog", there[1].url, node="n3", n=2),
        ]
    )
    answers = [(await _call(router, "/slices/catalog/whoami"))[1] for _ in range(4)]
    assert answers == ["here"] * 4
    await here.kill()  # lost: the others take the calls, round robin
    answers = [(await _call(router, "/slices/catalog/whoami"))[1] for _ in range(4)]
    assert sorted(answers) == ["there0", "there0", "there1", "there1"]


async def test_an_idempotent_call_fails_over_when_its_instance_is_killed(
    router: Router, hosts: list[SliceHost]
) -> None:
    first, second = await _host(hosts, "first"), await _host(hosts, "second")
    router.update([*_eps("catalog", first.url, n=0), *_eps("catalog", second.url, n=1)])
    # both connections pooled and used
    assert {(await _call(router, "/slices/catalog/whoami"))[1] for _ in range(4)} == {
        "first",
        "second",
    }
    await first.kill()
    for _ in range(4):  # whichever it tries first, the answer comes from the live one
        assert await _call(router, "/slices/catalog/whoami") == (200, "second")
        assert await _call(router, "/slices/catalog/price", {"sku": "ab"}) == (200, 2)


async def test_a_call_lost_in_flight_is_retried_only_when_idempotent(
    router: Router, hosts: list[SliceHost]
) -> None:
    first, second = await _host(hosts, "first"), await _host(hosts, "second")
    # only "first" at first, so the call goes there; "second" appears while it runs
    router.update(_eps("catalog", first.url))

    async def kill_while_sent() -> None:
        while "slow" not in first.calls:
            await asyncio.sleep(0.01)
        router.update([*_eps("catalog", first.url), *_eps("catalog", second.url, n=1)])
        await first.kill()

    killer = asyncio.create_task(kill_while_sent())
    status, body = await _call(router, "/slices/catalog/slow", {"seconds": 5})
    await killer
    assert (status, body["code"]) == (502, "upstream_failed")  # it may have run: not again
    assert second.calls == []


async def test_a_draining_instance_s_unavailable_answer_goes_to_the_next(
    router: Router, hosts: list[SliceHost]
) -> None:
    first, second = await _host(hosts, "first"), await _host(hosts, "second")
    first.draining = True
    router.update([*_eps("catalog", first.url, n=0), *_eps("catalog", second.url, n=1)])
    for _ in range(3):  # not idempotent, but never run where it was refused
        assert await _call(router, "/slices/catalog/charge", {"amount": 5}) == (200, 5)
    assert first.calls == [] and second.calls == ["charge"] * 3


async def test_nothing_reachable_is_502(router: Router) -> None:
    router.update(_eps("catalog", f"http://127.0.0.1:{free_port()}"))
    status, body = await _call(router, "/slices/catalog/whoami")
    assert (status, body["code"]) == (502, "upstream_failed")


async def test_a_withdrawn_instance_keeps_its_open_calls_counted(
    router: Router, hosts: list[SliceHost]
) -> None:
    host = await _host(hosts, "a")
    router.update(_eps("catalog", host.url))
    call = asyncio.create_task(_call(router, "/slices/catalog/slow", {"seconds": 0.5}))
    while "slow" not in host.calls:
        await asyncio.sleep(0.01)
    router.update([])
    assert router.withdrawn_in_flight() == {host.url: 1}
    assert await call == (200, 0.5)  # drained, not cut off
    assert router.withdrawn_in_flight() == {}
