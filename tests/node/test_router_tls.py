"""The router's HTTPS: certificates per host name from files, over real TLS sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509

from aether.model.cluster import Endpoint
from aether.node.router import Router, plain_http_note
from aether.node.router_tls import CertificateStore, TlsOptions, pairs_in, pick
from aether.ports import free_port
from tests.support.certs import TestCA
from tests.support.waiting import eventually

# -- the pure parts ----------------------------------------------------------------


def test_pairs_need_both_files() -> None:
    names = ["shop.localhost.crt", "shop.localhost.key", "blog.localhost.crt", "ca.pem"]
    names += ["default.crt", "default.key", "Old.Example.crt", "Old.Example.key"]
    assert pairs_in(names) == {"shop.localhost", "default", "old.example"}


@pytest.mark.parametrize(
    ("server_name", "names", "chosen"),
    [
        ("shop.localhost", {"shop.localhost", "default"}, "shop.localhost"),
        ("SHOP.localhost.", {"shop.localhost"}, "shop.localhost"),
        ("blog.localhost", {"shop.localhost", "default"}, "default"),
        ("blog.localhost", {"shop.localhost"}, None),
        (None, {"shop.localhost", "default"}, "default"),
        (None, {"shop.localhost"}, None),
        ("a.example.com", {"*.example.com"}, "*.example.com"),
        ("a.b.example.com", {"*.example.com"}, None),
        ("default", {"default"}, "default"),
    ],
)
def test_pick(server_name: str | None, names: set[str], chosen: str | None) -> None:
    assert pick(server_name, dict.fromkeys(names)) == chosen


def test_the_start_notes() -> None:
    assert "plain HTTP on loopback (demo)" in plain_http_note("127.0.0.1", 8080, None)
    assert "plain HTTP on loopback (demo)" in plain_http_note("::1", 8080, None)
    exposed = plain_http_note("0.0.0.0", 8080, None)
    assert exposed.startswith(
        "router: serving plain HTTP on 0.0.0.0:8080: traffic is not encrypted"
    )
    assert "--tls-dir" in exposed
    tls = TlsOptions(Path("/x"), 8443)
    assert "next to HTTPS on 10.0.0.5:8443" in plain_http_note("10.0.0.5", 8080, tls)
    public = TlsOptions(Path("/x"), 8443, host="0.0.0.0")
    assert plain_http_note("127.0.0.1", 8080, public) == (
        "router: plain HTTP on loopback 127.0.0.1:8080 (this machine only), HTTPS on 0.0.0.0:8443"
    )


async def test_the_refusal_is_logged_once_per_name_per_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aether.node.router")
    now = [1000.0]
    store = CertificateStore(tmp_path, clock=lambda: now[0])
    store.reload()

    async def close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0, ssl=store.server_context)
    port = server.sockets[0].getsockname()[1]

    def refused() -> list[str]:
        return [r.getMessage() for r in caplog.records if "handshake refused" in r.getMessage()]

    try:
        context = ssl.create_default_context()
        for name, later in (("a.localhost", 0), ("a.localhost", 59), ("b.localhost", 0)):
            now[0] += later
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await Client.open(port, name, context)
        assert len(refused()) == 2  # a once, b once
        now[0] += 61
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await Client.open(port, "a.localhost", context)
        assert len(refused()) == 3
    finally:
        server.close()
        await server.wait_closed()


# -- real sockets -------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One HTTP/1.1 keep-alive connection (TLS when ``tls`` is given)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(
        cls, port: int, server_name: str | None = None, tls: ssl.SSLContext | None = None
    ) -> Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname=server_name if tls else None
        )
        return cls(reader, writer)

    @property
    def serial(self) -> int:
        ssl_object = self.writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return int(x509.load_der_x509_certificate(der).serial_number)

    async def get(self, host: str, path: str = "/") -> Answer:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(status, headers, body)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def _upstream(name: str) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "proto": request.headers.get("X-Forwarded-Proto")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Setup:
    router: Router
    ca: TestCA
    certs: Path
    serials: dict[str, int]

    @property
    def port(self) -> int:
        assert self.router.https_port is not None
        return self.router.https_port

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca.ca_path)


async def _setup(tmp_path: Path, *, redirect: bool = False) -> AsyncIterator[Setup]:
    ca = TestCA(tmp_path / "ca")
    certs = tmp_path / "tls"
    serials = {host: ca.issue(certs, host, host) for host in ("shop.localhost", "blog.localhost")}
    upstreams = [await _upstream("shop"), await _upstream("blog")]
    router = Router(
        "127.0.0.1",
        0,
        tls=TlsOptions(certs, 0, redirect=redirect, reload_seconds=0.05),
    )
    await router.start()
    router.update(
        [
            Endpoint(app="shop", node="n1", n=1, version=1, url=upstreams[0][1]),
            Endpoint(app="blog", node="n1", n=1, version=1, url=upstreams[1][1]),
        ]
    )
    try:
        yield Setup(router, ca, certs, serials)
    finally:
        await router.stop()
        for runner, _ in upstreams:
            await runner.cleanup()


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[Setup]:
    async for setup in _setup(tmp_path):
        yield setup


@pytest.fixture
async def tls_redirect(tmp_path: Path) -> AsyncIterator[Setup]:
    async for setup in _setup(tmp_path, redirect=True):
        yield setup


async def test_each_host_gets_its_certificate_and_its_app(tls: Setup) -> None:
    for host, app in (("shop.localhost", "shop"), ("blog.localhost", "blog")):
        client = await Client.open(tls.port, host, tls.client_context())  # verifies the name
        try:
            assert client.serial == tls.serials[host]
            answer = await client.get(host)
            assert answer.status == 200
            assert answer.json() == {"name": app, "proto": "https"}
        finally:
            await client.close()


async def test_a_host_without_a_certificate_fails_the_handshake_and_is_logged_once(
    tls: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aether.node.router")
    for _ in range(2):
        # the unrecognized_name alert; the client may see the reset of the close first
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await Client.open(tls.port, "other.localhost", tls.client_context())
    lines = [r.getMessage() for r in caplog.records if "handshake refused" in r.getMessage()]
    assert len(lines) == 1
    assert "'other.localhost'" in lines[0] and "no other.localhost.crt/.key" in lines[0]
    # a client that sends no server name: refused as well (no default certificate)
    context = tls.client_context()
    context.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await Client.open(tls.port, None, context)
    assert any("sent no server name" in r.getMessage() for r in caplog.records)


async def test_the_default_certificate_serves_other_names(tls: Setup) -> None:
    serial = tls.ca.issue(tls.certs, "default", "fallback.localhost")
    tls.router.reload_certificates()
    context = tls.client_context()
    context.check_hostname = False  # the default is not for this name: the chain still checks
    client = await Client.open(tls.port, "shop-two.localhost", context)
    try:
        assert client.serial == serial
        assert (await client.get("shop.localhost")).json()["name"] == "shop"
    finally:
        await client.close()


async def test_a_wildcard_pair_serves_the_names_one_label_below(tls: Setup) -> None:
    serial = tls.ca.issue(tls.certs, "*.wild.localhost", "*.wild.localhost")
    tls.router.reload_certificates()
    client = await Client.open(tls.port, "a.wild.localhost", tls.client_context())
    try:
        assert client.serial == serial
    finally:
        await client.close()
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await Client.open(tls.port, "a.b.wild.localhost", tls.client_context())


async def test_a_renewed_certificate_is_served_and_open_connections_keep_working(
    tls: Setup,
) -> None:
    host = "shop.localhost"
    kept = await Client.open(tls.port, host, tls.client_context())
    try:
        assert (await kept.get(host)).status == 200
        old = tls.serials[host]
        new = tls.ca.issue(tls.certs, host, host)  # replaced in place; picked up by polling

        async def served() -> bool:
            probe = await Client.open(tls.port, host, tls.client_context())
            try:
                return probe.serial == new
            finally:
                await probe.close()

        await eventually(served, "the renewed certificate served", timeout=10)
        # the connection made before the renewal: same certificate, still answering
        assert kept.serial == old
        for _ in range(3):
            answer = await kept.get(host)
            assert answer.status == 200 and answer.json()["name"] == "shop"
    finally:
        await kept.close()


async def test_a_pair_that_does_not_load_keeps_the_previous_certificate(
    tls: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    host = "blog.localhost"
    (tls.certs / f"{host}.key").write_text("not a key\n")
    tls.router.reload_certificates()
    assert any("cannot load blog.localhost.crt" in r.getMessage() for r in caplog.records)
    client = await Client.open(tls.port, host, tls.client_context())
    try:
        assert client.serial == tls.serials[host]
    finally:
        await client.close()
    # removed: no longer served
    (tls.certs / f"{host}.crt").unlink()
    tls.router.reload_certificates()
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await Client.open(tls.port, host, tls.client_context())


async def test_plain_http_stays_and_redirects_only_when_asked(
    tls: Setup, tls_redirect: Setup
) -> None:
    plain = await Client.open(tls.router.port)
    try:
        answer = await plain.get("shop.localhost")
        assert answer.status == 200 and answer.json() == {"name": "shop", "proto": "http"}
    finally:
        await plain.close()
    plain = await Client.open(tls_redirect.router.port)
    try:
        answer = await plain.get("shop.localhost:80", "/cart?x=1")
        assert answer.status == 308
        assert answer.headers["location"] == (
            f"https://shop.localhost:{tls_redirect.port}/cart?x=1"
        )
        # a host without a certificate of its own, and the health check: plain HTTP
        answer = await plain.get(f"127.0.0.1:{tls_redirect.router.port}", "/apps/blog/")
        assert answer.status == 200 and answer.json()["name"] == "blog"
        assert (await plain.get("shop.localhost", "/_aether/health")).status == 200
    finally:
        await plain.close()
