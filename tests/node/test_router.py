"""The node router against real upstream HTTP servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from aether.model.cluster import Endpoint
from aether.node.router import Router, split_target
from aether.ports import free_port


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("shop.localhost", "/cart?x=1", ("shop", "/cart?x=1")),
        ("shop.localhost:8080", "/", ("shop", "/")),
        ("127.0.0.1:8080", "/apps/shop/cart?x=1", ("shop", "/cart?x=1")),
        ("127.0.0.1:8080", "/apps/shop", ("shop", "/")),
        ("127.0.0.1:8080", "/apps/shop/", ("shop", "/")),
        ("127.0.0.1:8080", "/apps/", None),
        ("127.0.0.1:8080", "/other", None),
        ("a.b.localhost", "/", None),
    ],
)
def test_split_target(host: str, path: str, expected: tuple[str, str] | None) -> None:
    assert split_target(host, path) == expected


async def _upstream(name: str) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {"name": name, "path": request.path_qs, "body": body.decode(), "method": request.method}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    r = Router("127.0.0.1", 0)
    await r.start()
    yield r
    await r.stop()


def _ep(app: str, n: int, url: str) -> Endpoint:
    return Endpoint(app=app, node="n1", n=n, version=1, url=url)


async def test_round_robin_over_active_endpoints(router: Router) -> None:
    a, url_a = await _upstream("a")
    b, url_b = await _upstream("b")
    try:
        router.update([_ep("shop", 0, url_a), _ep("shop", 1, url_b)])
        names = []
        async with aiohttp.ClientSession() as http:
            for _ in range(6):
                async with http.get(f"http://127.0.0.1:{router.port}/apps/shop/x?q=1") as resp:
                    assert resp.status == 200
                    data = await resp.json()
                    assert data["path"] == "/x?q=1"
                    names.append(data["name"])
        assert names.count("a") == 3 and names.count("b") == 3
    finally:
        await a.cleanup()
        await b.cleanup()


async def test_refused_endpoint_is_retried_on_the_next(router: Router) -> None:
    live, url = await _upstream("live")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        router.update([_ep("shop", 0, dead), _ep("shop", 1, url)])
        async with aiohttp.ClientSession() as http:
            for _ in range(4):
                async with http.post(
                    f"http://127.0.0.1:{router.port}/apps/shop/order", data=b"payload"
                ) as resp:
                    assert resp.status == 200
                    data = await resp.json()
                    assert data == {
                        "name": "live",
                        "path": "/order",
                        "body": "payload",
                        "method": "POST",
                    }
    finally:
        await live.cleanup()


async def test_host_header_routing(router: Router) -> None:
    up, url = await _upstream("hosted")
    try:
        router.update([_ep("blog", 0, url)])
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{router.port}/post/1", headers={"Host": "blog.localhost"}
            ) as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["path"] == "/post/1"
    finally:
        await up.cleanup()


async def test_no_endpoint_is_503_with_envelope(router: Router) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{router.port}/apps/ghost/") as resp:
            assert resp.status == 503
            body = await resp.json()
            assert body["code"] == "service_unavailable"
            assert "ghost" in body["message"]
            assert body["trace_id"] == resp.headers["X-Trace-Id"]
        router.update([_ep("ghost", 0, f"http://127.0.0.1:{free_port()}")])
        async with http.get(f"http://127.0.0.1:{router.port}/apps/ghost/") as resp:
            assert resp.status == 503  # every endpoint refused
        async with http.get(f"http://127.0.0.1:{router.port}/nowhere") as resp:
            assert resp.status == 404
            assert (await resp.json())["code"] == "not_found"


async def test_an_app_the_cluster_does_not_have_is_404(router: Router) -> None:
    """With the apps that exist known, only those answer 503 when nothing serves them."""
    up, url = await _upstream("kept")
    try:
        router.update([_ep("kept", 0, url), _ep("deleted", 0, url)], apps=["kept", "idle"])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{router.port}/apps/kept/") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{router.port}/apps/idle/") as resp:
                assert resp.status == 503  # exists, scaled to 0 or starting
            for app in ("deleted", "never"):  # a leftover endpoint does not keep it alive
                async with http.get(f"http://127.0.0.1:{router.port}/apps/{app}/") as resp:
                    assert resp.status == 404
                    body = await resp.json()
                    assert body["code"] == "not_found" and app in body["message"]
    finally:
        await up.cleanup()
