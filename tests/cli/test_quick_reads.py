"""The CLI's quick read path (``aether.cli.reads``: a socket, no httpx, no pydantic)
answers and fails exactly as the typed ``ApiClient`` does, against a real server and
against stand-ins that answer what a server rarely does (429s, answers without an
envelope)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest

from aether.cli.reads import get_json, quick
from aether.cli.session import Session
from aether.client import ApiClient
from aether.client_rules import RATE_RETRIES
from aether.errors import AetherError
from aether.ports import free_port
from tests.support.cli import cli_env
from tests.support.http import serving
from tests.support.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("aether-quick-reads")) as running:
        yield running


@pytest.fixture(scope="module")
def task_id(srv: RunningServer) -> str:
    """A task that stays scheduled (due in a day), so ``task get`` has one to show."""

    async def submit() -> str:
        async with ApiClient(srv.base_url, srv.admin_token) as client:
            body = {"type": "vm:create", "payload": {"name": "later"}, "delay": 86400}
            return (await client.submit_task(body)).id

    return srv.run(submit())


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def session(server: str, token: str | None, namespace: str | None = None) -> Session:
    return Session(server=server, token=token, namespace=namespace)


def quick_error(server: str, token: str | None, path: str, **kw: Any) -> AetherError:
    with pytest.raises(AetherError) as caught:
        get_json(session(server, token, **kw), path)
    return caught.value


async def typed_error(server: str, token: str | None, path: str, **kw: Any) -> AetherError:
    async with ApiClient(server, token, **kw) as client:
        with pytest.raises(AetherError) as caught:
            await client.json("GET", path)
    return caught.value


def same_error(quick_one: AetherError, typed_one: AetherError) -> None:
    """Same class, code, status and message (a 429's clock time aside)."""
    at = re.compile(r", at \d\d:\d\d:\d\d")
    assert type(quick_one) is type(typed_one)
    assert (quick_one.code, quick_one.status) == (typed_one.code, typed_one.status)
    assert at.sub("", quick_one.message) == at.sub("", typed_one.message)


def aether(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aether", *args],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_each_read_is_the_typed_clients_answer(srv: RunningServer, task_id: str) -> None:
    """The JSON the quick path prints is what the models validate and dump."""
    s = session(srv.base_url, srv.admin_token)
    async with ApiClient(srv.base_url, srv.admin_token) as client:
        assert get_json(s, "/api/v1/status") == (await client.status()).model_dump(mode="json")
        assert get_json(s, "/api/v1/apps") == [
            a.model_dump(mode="json") for a in await client.apps()
        ]
        nodes = [n.model_dump(mode="json") for n in await client.nodes()]
        assert get_json(s, "/api/v1/nodes") == nodes
        typed_task = (await client.task(task_id)).model_dump(mode="json")
        assert get_json(s, f"/api/v1/tasks/{task_id}") == typed_task


async def test_the_commands_print_the_typed_clients_answer(
    srv: RunningServer, task_id: str, tmp_path: Path
) -> None:
    server = ("--server", srv.base_url, "--token", srv.admin_token)
    async with ApiClient(srv.base_url, srv.admin_token) as client:
        status = (await client.status()).model_dump(mode="json")
        expected = {
            ("status",): {**status, "warnings": []},
            ("list",): {"apps": [a.model_dump(mode="json") for a in await client.apps()]},
            ("nodes",): {"nodes": [n.model_dump(mode="json") for n in await client.nodes()]},
            ("task", "get", task_id): (await client.task(task_id)).model_dump(mode="json"),
        }
    for args, want in expected.items():
        result = aether(*args, *server, "--format", "json", home=tmp_path)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert json.loads(result.stdout) == want, args
    text = aether("task", "get", task_id, *server, home=tmp_path)
    assert text.returncode == 0, text.stderr
    line = f"task {task_id}  vm:create  scheduled  (attempts 0, priority"
    assert text.stdout.startswith(line), text.stdout
    status_text = aether("status", *server, home=tmp_path)
    assert status_text.stdout.startswith(f"api:    {status['api_url']}\nleader: ")


async def test_refusals_are_the_typed_clients_errors(srv: RunningServer) -> None:
    cases: list[tuple[str | None, str, dict[str, Any]]] = [
        ("wrong-token", "/api/v1/status", {}),  # 401 unauthorized
        (None, "/api/v1/apps", {}),  # no token at all
        (srv.admin_token, "/api/v1/tasks/no-such-task", {}),  # 404 not_found
        (srv.admin_token, "/api/v1/apps", {"namespace": "other"}),  # 403 forbidden
    ]
    for token, path, kw in cases:
        same_error(
            quick_error(srv.base_url, token, path, **kw),
            await typed_error(srv.base_url, token, path, **kw),
        )


async def test_unreachable_servers_are_the_typed_clients_network_error() -> None:
    servers = f"{dead_url()},{dead_url()}"
    quick_one = quick_error(servers, "t", "/api/v1/status")
    same_error(quick_one, await typed_error(servers, "t", "/api/v1/status"))
    assert quick_one.code == "unreachable"
    assert all(url in quick_one.message for url in servers.split(","))


def test_a_dead_server_fails_over_to_the_next(srv: RunningServer) -> None:
    s = session(f"{dead_url()}, {srv.base_url}/", srv.admin_token)
    assert "leader" in get_json(s, "/api/v1/status")


class _Limited(BaseHTTPRequestHandler):
    """Answers 429 with ``retry_after`` to the first ``refusals`` GETs, then ``[]``."""

    retry_after: ClassVar[str] = "0"
    refusals: ClassVar[int] = 0
    seen: ClassVar[int] = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            type(self).seen += 1
            refuse = type(self).seen <= self.refusals
        body = b'{"code": "rate_limited", "message": "over its rate limit"}' if refuse else b"[]"
        self.send_response(429 if refuse else 200)
        if refuse:
            self.send_header("Retry-After", self.retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def limited() -> Iterator[type[_Limited]]:
    handler = type("Limited", (_Limited,), {"seen": 0, "refusals": 0, "retry_after": "0"})
    yield handler


async def test_a_short_retry_after_is_waited_out_as_the_typed_client_does(
    limited: type[_Limited],
) -> None:
    limited.refusals = RATE_RETRIES  # the last retry is answered
    with serving(limited) as url:
        assert get_json(session(url, "t"), "/api/v1/apps") == []
        assert limited.seen == RATE_RETRIES + 1
        limited.seen = 0
        async with ApiClient(url, "t") as client:
            assert await client.json("GET", "/api/v1/apps") == []
        assert limited.seen == RATE_RETRIES + 1


@pytest.mark.parametrize(("retry_after", "refusals"), [("0", 99), ("11", 1), ("soon", 1)])
async def test_a_429_not_waited_out_is_the_typed_clients_error(
    limited: type[_Limited], retry_after: str, refusals: int
) -> None:
    """Still limited after the retries, a Retry-After over 10 s, or none in seconds."""
    limited.retry_after, limited.refusals = retry_after, refusals
    with serving(limited) as url:
        quick_one = quick_error(url, "t", "/api/v1/apps")
        limited.seen = 0
        same_error(quick_one, await typed_error(url, "t", "/api/v1/apps"))
    assert quick_one.code == "rate_limited"


class _Bare(BaseHTTPRequestHandler):
    """A proxy in front of the API: a 401 without the envelope, a 502 with text."""

    def do_GET(self) -> None:
        status, body = (401, b"") if "status" in self.path else (502, b"bad gateway")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


async def test_an_answer_without_an_envelope_is_the_typed_clients_error() -> None:
    with serving(_Bare) as url:
        for path in ("/api/v1/status", "/api/v1/nodes?x=1"):
            quick_one = quick_error(url, "t", path)
            same_error(quick_one, await typed_error(url, "t", path))
    assert quick_one.message.startswith("HTTP 502 Bad Gateway for GET /api/v1/nodes: bad gateway")


def test_https_servers_and_proxies_go_through_the_typed_client() -> None:
    assert quick("http://a:7070, http://b:7070", {})
    assert not quick("http://a:7070,https://b:7443", {})
    assert not quick("HTTPS://a:7443", {})
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        assert not quick("http://a:7070", {name: "http://proxy:3128"})
    assert quick("http://a:7070", {"HTTPS_PROXY": "http://proxy:3128", "http_proxy": ""})


async def test_a_name_that_does_not_resolve_is_the_typed_clients_error() -> None:
    url = "http://no-such-host.invalid:7070"
    same_error(
        quick_error(url, "t", "/api/v1/status"), await typed_error(url, "t", "/api/v1/status")
    )


class _Framed(BaseHTTPRequestHandler):
    """HTTP/1.1 answers framed as a server may frame them: chunked (``/chunked``), or
    cut short of their Content-Length (``/cut``: the connection closes mid-body)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'[{"name": "shop", "version": 3}]'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.endswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (body[:7], body[7:]):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:10])
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_chunked_answer_is_read_whole() -> None:
    with serving(_Framed) as url:
        answer = get_json(session(url, "t"), "/api/v1/chunked")
        async with ApiClient(url, "t") as client:
            assert answer == await client.json("GET", "/api/v1/chunked")
    assert answer == [{"name": "shop", "version": 3}]


async def test_an_answer_cut_short_is_a_transport_failure_and_fails_over(
    srv: RunningServer,
) -> None:
    with serving(_Framed) as url:
        quick_one = quick_error(url, "t", "/api/v1/cut")
        typed_one = await typed_error(url, "t", "/api/v1/cut")
        assert (type(quick_one), quick_one.code) == (type(typed_one), typed_one.code)
        assert quick_one.code == "unreachable"
        # a transport failure: the next server is asked
        both = session(f"{url},{srv.base_url}", srv.admin_token)
        assert "leader" in get_json(both, "/api/v1/status")
