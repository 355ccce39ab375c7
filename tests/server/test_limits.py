"""Bounded input: body limits, the token before the body, request ids, short quotes, ranges."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from aether.server.http.errors import QUOTE_LIMIT
from aether.server.http.limits import DEFAULT_MAX_REQUEST_BYTES
from tests.support.api import (
    DIGEST_HEADER,
    MAX_ARTIFACT_BYTES,
    assert_envelope,
    bearer,
    deploy,
    sha256_of,
    spec_for,
    unique,
    upload_random,
)
from tests.support.server import RunningServer


def raw_request(base_url: str, head: list[str], body: bytes = b"") -> tuple[int, bytes, float]:
    """Send a request head (and ``body``) over a raw socket without sending the rest of a
    declared body; the answer's status, its bytes and the seconds it took."""
    url = urlsplit(base_url)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(("\r\n".join([*head, f"Host: {url.netloc}"]) + "\r\n\r\n").encode() + body)
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            raw += data
    return int(raw.split(b" ", 2)[1]), raw, time.monotonic() - started


# -- body limits --------------------------------------------------------------------------


def test_a_json_body_declared_too_large_is_413_before_it_is_sent(server: RunningServer) -> None:
    status, raw, seconds = raw_request(
        server.base_url,
        [
            "POST /api/v1/tasks HTTP/1.1",
            f"Authorization: Bearer {server.admin_token}",
            "Content-Type: application/json",
            f"Content-Length: {10 * DEFAULT_MAX_REQUEST_BYTES}",
        ],
    )
    assert status == 413, raw
    assert b'"payload_too_large"' in raw
    assert seconds < 5


def test_an_upload_declared_too_large_is_413_before_it_is_sent(server: RunningServer) -> None:
    digest = sha256_of(b"never sent")
    for head in (
        ["POST /api/v1/artifacts HTTP/1.1", f"{DIGEST_HEADER}: {digest}"],
        [f"PUT /api/v1/blobs/{digest} HTTP/1.1"],
    ):
        status, raw, seconds = raw_request(
            server.base_url,
            [
                *head,
                f"Authorization: Bearer {server.admin_token}",
                f"Content-Length: {MAX_ARTIFACT_BYTES + 1}",
            ],
        )
        assert status == 413, raw
        assert b'"payload_too_large"' in raw
        assert seconds < 5


async def test_a_chunked_json_body_is_cut_at_the_limit(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"type": "job:run", "payload": {"x": "'
        for _ in range(64):  # 4 MiB, never all read
            sent += 1
            yield b"a" * (64 << 10)
        yield b'"}}'

    response = await http.post(
        "/api/v1/tasks",
        content=chunks(),
        headers={**bearer(server.admin_token), "Content-Type": "application/json"},
    )
    assert_envelope(response, 413, "payload_too_large")


async def test_a_json_body_under_the_limit_still_works(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        "/api/v1/tasks",
        json={"type": "job:run", "payload": {"pad": "a" * (DEFAULT_MAX_REQUEST_BYTES // 2)}},
        headers=bearer(server.admin_token),
    )
    assert response.status_code != 413, response.text


# -- the token before the body ------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer ae_a_not-a-real-token"}, {"Authorization": "Basic eDp5"}],
    ids=["none", "bad-token", "basic"],
)
async def test_malformed_json_without_a_valid_token_is_401(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for path in ("/api/v1/tasks", f"/api/v1/apps/{unique('anon')}/deployments"):
        response = await http.post(
            path, content=b"{not json", headers={**headers, "Content-Type": "application/json"}
        )
        assert_envelope(response, 401, "unauthorized")


async def test_malformed_json_with_a_valid_token_is_400(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        "/api/v1/tasks",
        content=b"{not json",
        headers={**bearer(server.admin_token), "Content-Type": "application/json"},
    )
    assert_envelope(response, 400, "bad_request")


async def test_the_early_401_says_what_the_routes_say(http: httpx.AsyncClient) -> None:
    early = await http.post("/api/v1/tasks", content=b"{}")  # a body: refused at the edge
    late = await http.get("/api/v1/tasks")  # no body: refused by the route
    assert (
        assert_envelope(early, 401, "unauthorized")["message"]
        == assert_envelope(late, 401, "unauthorized")["message"]
    )


# -- request ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["x" * 129, "has space", "ünïcode", "<script>", "a/b", "semi;colon"],
)
async def test_a_malformed_request_id_is_replaced(http: httpx.AsyncClient, bad: str) -> None:
    response = await http.get("/api/v1/apps", headers={b"X-Request-Id": bad.encode()})
    trace = assert_envelope(response, 401, "unauthorized")["trace_id"]
    assert trace != bad
    assert len(trace) == 32 and all(c in "0123456789abcdef" for c in trace)


async def test_a_well_formed_request_id_is_kept(http: httpx.AsyncClient) -> None:
    good = f"req-{uuid.uuid4().hex}:1.2_x" + "y" * 80
    good = good[:128]
    response = await http.get("/api/v1/apps", headers={"X-Request-Id": good})
    assert assert_envelope(response, 401, "unauthorized")["trace_id"] == good
    assert response.headers["x-trace-id"] == good


# -- error messages quote a short prefix ------------------------------------------------


async def test_error_messages_quote_only_a_short_prefix(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    auth = bearer(server.admin_token)
    long = "z" * 20_000
    answers = [
        await http.get(f"/api/v1/apps/{long}", headers=auth),
        await http.get(f"/api/v1/blueprints/{long}", headers=auth),
        await http.get(f"/api/v1/artifacts/sha256:{long}", headers=auth),
        await http.post(f"/api/v1/apps/{unique('q')}/scale", json={long: 1}, headers=auth),
        await http.post("/api/v1/tasks", json={"type": "job:run", long: 1}, headers=auth),
        await http.post("/api/v1/tasks", json={"type": long}, headers=auth),
    ]
    for response in answers:
        assert 400 <= response.status_code < 500, response.text[:300]
        message = response.json()["message"]
        assert len(message) <= 1100, (len(message), message[:200])
        assert "z" * (QUOTE_LIMIT + 1) not in message, message[:300]


# -- integer ranges ------------------------------------------------------------------------


async def test_out_of_range_integers_are_400_not_500(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("range")
    digest = await upload_random(http, server.admin_token)
    assert (await deploy(http, server.admin_token, app, digest, instances=0)).status_code == 201
    auth = bearer(server.admin_token)
    for value in (2**63, 2**64, -(2**63) - 1, 10**30):
        response = await http.put(
            f"/api/v1/apps/{app}/settings", json={"retain_deployments": value}, headers=auth
        )
        err = assert_envelope(response, 400, "bad_request")
        assert "retain_deployments" in err["message"]
        response = await http.post(
            "/api/v1/tasks", json={"type": "job:run", "priority": value}, headers=auth
        )
        assert_envelope(response, 400, "bad_request")
    for rollout in ({"max_parallel": 2**63}, {"canary": 2**63}):
        spec = spec_for(app, rollout=rollout)
        response = await deploy(http, server.admin_token, app, digest, instances=0, spec=spec)
        assert_envelope(response, 400, "bad_request")
    settings = await http.get(f"/api/v1/apps/{app}/settings", headers=auth)
    assert settings.json()["retain_deployments"] is None
