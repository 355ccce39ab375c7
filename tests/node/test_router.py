"""The node router against real upstream HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from aether.model.cluster import Endpoint
from aether.model.names import route_target
from aether.node.router import Router
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
        ("127.0.0.1:8080", "/apps/shop?x=1", ("shop", "/?x=1")),
        ("shop.acme.localhost", "/cart", ("shop.acme", "/cart")),
        ("SHOP.Acme.localhost:8080", "/", ("shop.acme", "/")),
        ("shop.default.localhost", "/", ("shop", "/")),
        ("127.0.0.1:8080", "/t/acme/apps/shop/cart?x=1", ("shop.acme", "/cart?x=1")),
        ("127.0.0.1:8080", "/t/acme/apps/shop", ("shop.acme", "/")),
        ("127.0.0.1:8080", "/t/default/apps/shop/", ("shop", "/")),
        ("a.b.c.localhost", "/", None),
        ("a..localhost", "/", None),
        ("-a.localhost", "/", None),
        ("shop.example.com", "/", None),
        ("127.0.0.1:8080", "/t//apps/x", None),
        ("127.0.0.1:8080", "/t/acme/apps/", None),
        ("127.0.0.1:8080", "/t/acme/x", None),
        ("127.0.0.1:8080", "/t/acme", None),
        ("127.0.0.1:8080", "/t/a.b/apps/x", None),
        ("127.0.0.1:8080", "/apps/a.b/", None),
        ("127.0.0.1:8080", "/apps/Shop/", None),
    ],
)
def test_route_target(host: str, path: str, expected: tuple[str, str] | None) -> None:
    assert route_target(host, path) == expected


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


async def test_each_tenant_s_app_of_one_name_is_reached_only_by_its_own_forms(
    router: Router,
) -> None:
    """``web`` of the default tenant and ``web`` of tenant acme (cluster name
    ``web.acme``): each form reaches its own; an app a tenant lacks is the same 404
    whatever another tenant has."""
    default, url_default = await _upstream("default")
    acme, url_acme = await _upstream("acme")
    base = f"http://127.0.0.1:{router.port}"
    try:
        router.update(
            [_ep("web", 0, url_default), _ep("web.acme", 0, url_acme)], apps=["web", "web.acme"]
        )
        forms = [
            ("/apps/web/x?q=1", None, "default"),
            ("/x?q=1", "web.localhost", "default"),
            ("/t/acme/apps/web/x?q=1", None, "acme"),
            ("/x?q=1", "web.acme.localhost:8080", "acme"),
        ]
        async with aiohttp.ClientSession() as http:
            for path, host, owner in forms:
                headers = {"Host": host} if host else {}
                async with http.get(base + path, headers=headers) as resp:
                    assert resp.status == 200, (path, host)
                    assert await resp.json() == {
                        "name": owner,
                        "path": "/x?q=1",
                        "body": "",
                        "method": "GET",
                    }
            missing = []
            for path, host in [
                ("/t/globex/apps/web/", None),  # globex has no web; acme and default do
                ("/t/globex/apps/nothing/", None),
                ("/", "web.globex.localhost"),
                ("/", "nothing.globex.localhost"),
            ]:
                async with http.get(base + path, headers={"Host": host} if host else {}) as resp:
                    assert resp.status == 404
                    body = await resp.json()
                    missing.append((body["code"], body["message"].replace("nothing", "web")))
            assert missing[0] == missing[1] == missing[2] == missing[3]
            async with http.get(f"{base}/t//apps/web/") as resp:
                assert resp.status == 404
                assert "no app in this request" in (await resp.json())["message"]
    finally:
        await default.cleanup()
        await acme.cleanup()


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
            assert resp.status == 502  # every endpoint refused: it has one, it did not answer
            body = await resp.json()
            assert body["code"] == "upstream_failed"
            assert body["message"] == "app 'ghost' did not answer: connection refused"
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


class _RawUpstream:
    """A loopback HTTP/1.1 server that misbehaves on purpose, in the test's own loop.

    ``mode``: ``answer`` (200 with the request's method), ``reset`` (reads the whole
    request, then resets the connection), ``hang`` (reads it and never answers),
    ``garbage`` (answers something that is not HTTP), ``break`` (answers headers
    and part of a chunked body, then resets).
    ``seen`` lists the methods of the requests it read in full.
    """

    def __init__(self, mode: str = "answer") -> None:
        self.mode = mode
        self.seen: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> _RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # with a zero linger: an RST, not a FIN

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ", 1)[0]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.seen.append(method)
                if self.mode == "reset":
                    self._reset(writer)
                    return
                if self.mode == "hang":
                    await asyncio.Event().wait()
                if self.mode == "garbage":
                    writer.write(b"this is not HTTP\r\n\r\n")
                    await writer.drain()
                    writer.close()
                    return
                if self.mode == "break":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                    )
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    self._reset(writer)
                    return
                text = method.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(text)}\r\n\r\n".encode()
                    + text
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or r.exc_text]
    assert tracebacks == []
    warned = [r.getMessage() for r in caplog.records if r.name == "aether.node.router"]
    assert warned and all(
        r.levelno == logging.WARNING for r in caplog.records if r.name == "aether.node.router"
    )


async def _upstream_failed(resp: aiohttp.ClientResponse, status: int, code: str) -> str:
    assert resp.status == status
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"code", "message", "trace_id"}
    assert body["code"] == code
    assert body["trace_id"] == resp.headers["X-Trace-Id"]
    return str(body["message"])


async def test_a_reset_mid_request_is_502_upstream_failed(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    up = await _RawUpstream("reset").start()
    try:
        router.update([_ep("shop", 0, up.url)])
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{router.port}/apps/shop/cart") as resp,
        ):
            message = await _upstream_failed(resp, 502, "upstream_failed")
        assert "shop" in message and "reset" in message
        assert "127.0.0.1" not in message  # the instance's address stays inside
        assert up.seen and set(up.seen) == {"GET"}
        taken, _ = router.take_counters()
        assert taken["shop"].calls == 1 and taken["shop"].errors == 1
    finally:
        await up.close()
    _no_tracebacks(caplog)


async def test_a_malformed_answer_is_502_upstream_failed(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    up = await _RawUpstream("garbage").start()
    try:
        router.update([_ep("shop", 0, up.url)])
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{router.port}/apps/shop/") as resp,
        ):
            message = await _upstream_failed(resp, 502, "upstream_failed")
        assert message == "app 'shop' did not answer: malformed response"
    finally:
        await up.close()
    _no_tracebacks(caplog)


async def test_an_instance_that_never_answers_is_504_upstream_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router("127.0.0.1", 0, upstream_timeout=0.3)
    await router.start()
    up = await _RawUpstream("hang").start()
    try:
        router.update([_ep("shop", 0, up.url)])
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{router.port}/apps/shop/slow") as resp,
        ):
            message = await _upstream_failed(resp, 504, "upstream_timeout")
        assert time.monotonic() - started < 5
        assert "0.3 s" in message
        assert up.seen == ["GET"]  # a timeout is not retried
    finally:
        await up.close()
        await router.stop()
    _no_tracebacks(caplog)


async def test_a_get_is_served_by_the_second_when_the_first_refuses(router: Router) -> None:
    ports = sorted(f"http://127.0.0.1:{free_port()}" for _ in range(2))
    live = await _RawUpstream().start(int(ports[1].rsplit(":", 1)[1]))
    try:
        router.update([_ep("shop", 0, ports[0]), _ep("shop", 1, live.url)])
        assert router.endpoints("shop")[0] == ports[0]  # nothing listens on the first
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{router.port}/apps/shop/") as resp,
        ):
            assert resp.status == 200
            assert await resp.text() == "GET"
        assert live.seen == ["GET"]
    finally:
        await live.close()


async def _pair(first_mode: str) -> tuple[_RawUpstream, _RawUpstream]:
    """Two upstreams; the one the router tries first (lowest URL) in ``first_mode``."""
    a, b = await _RawUpstream().start(), await _RawUpstream().start()
    first, second = sorted((a, b), key=lambda u: u.url)
    first.mode = first_mode
    return first, second


async def test_a_get_reset_before_any_answer_is_retried_on_another_instance(
    router: Router,
) -> None:
    first, second = await _pair("reset")
    try:
        router.update([_ep("shop", 0, first.url), _ep("shop", 1, second.url)])
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{router.port}/apps/shop/") as resp,
        ):
            assert resp.status == 200
            assert await resp.text() == "GET"
        assert first.seen and second.seen == ["GET"]
    finally:
        await first.close()
        await second.close()


async def test_a_post_reset_after_its_body_was_read_is_not_retried(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = await _pair("reset")
    try:
        router.update([_ep("shop", 0, first.url), _ep("shop", 1, second.url)])
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{router.port}/apps/shop/order", data=b"pay") as resp,
        ):
            await _upstream_failed(resp, 502, "upstream_failed")
        assert first.seen == ["POST"]  # it read the order, then went away
        assert second.seen == []  # so the order is not placed twice
    finally:
        await first.close()
        await second.close()
    _no_tracebacks(caplog)


async def test_a_body_broken_after_the_answer_started_is_cut_off(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    up = await _RawUpstream("break").start()
    try:
        router.update([_ep("shop", 0, up.url)])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{router.port}/apps/shop/feed") as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()  # truncated, never a complete-looking body
            taken, _ = router.take_counters()
            assert taken["shop"].errors == 1
            async with http.get(f"http://127.0.0.1:{router.port}/_aether/health") as resp:
                assert resp.status == 200  # the router itself is fine
    finally:
        await up.close()
    _no_tracebacks(caplog)


async def test_a_withdrawn_endpoint_keeps_its_open_requests_counted(router: Router) -> None:
    """The drain's confirmation: the router says when it dropped an endpoint, how many
    requests it still has open to it, and when the last one finished."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    changes: list[dict[str, int]] = []
    router.on_change = lambda: changes.append(router.withdrawn_in_flight())
    try:
        router.update([_ep("shop", 0, url)])
        assert changes == []  # an endpoint added is nothing to confirm
        async with aiohttp.ClientSession() as http:
            calls = [
                asyncio.create_task(http.post(f"http://127.0.0.1:{router.port}/apps/shop/"))
                for _ in range(2)
            ]
            for _ in range(100):
                if router._open.get(url) == 2:
                    break
                await asyncio.sleep(0.02)
            assert router.withdrawn_in_flight() == {}  # still in the table: not withdrawn
            router.update([])  # the endpoint is withdrawn
            assert changes == [{url: 2}]
            release.set()
            answers = await asyncio.gather(*calls)
            assert [a.status for a in answers] == [200, 200]
        assert changes[-1] == {}  # the last open request ended: said at once
        assert router.withdrawn_in_flight() == {}
    finally:
        await runner.cleanup()


async def test_a_withheld_endpoint_gets_no_request(router: Router) -> None:
    """The node withholds its own stateful instances while its lease may have expired."""
    hits: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        router.update([_ep("a", 0, url)])
        withheld = {url}
        router.withhold = lambda u: u in withheld
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{router.port}/apps/a/x") as response:
                assert response.status == 503
                assert (await response.json())["code"] == "service_unavailable"
            assert hits == []
            withheld.clear()  # the server accepted a report of it again
            async with http.get(f"http://127.0.0.1:{router.port}/apps/a/x") as response:
                assert response.status == 200
            assert hits == ["/x"]
    finally:
        await runner.cleanup()
