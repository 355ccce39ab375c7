"""Telemetry lives on the leader: a follower forwards what only the leader can answer.

Only the elected leader aggregates telemetry (its hub holds the window), so
with several servers a node's metrics push, and a read of the live figures
(``/api/v1/metrics``, its history and its SSE stream), that reach a follower
are passed to the leader as they are — same method, path, query, headers and
body — and the leader's answer streams back. The leader is whoever holds the
``leader`` key; its value is the leader's API URL (``AETHER_PUBLIC_URL``).
Everything else a follower answers itself: the API reads the shared state
store and records.

A node's push arrives over the follower's node port (mutual TLS); the follower
passes it to the leader's node port with its own server certificate and names the
node its certificate verified in ``x-aether-forwarded-identity``, which the leader
believes from a server's certificate only (``http/auth.node_identity_error``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from aether.model.api import ServerOut
from aether.server.http.auth import FORWARDED_IDENTITY
from aether.server.http.idempotency import replay_body
from aether.server.http.mtls import CLIENT_CERT
from aether.server.services.presence import PREFIX as SERVERS
from aether.store.election import current_leader

__all__ = ["LeaderForward", "forwarded"]

log = logging.getLogger("aether.server")

_HOP_BY_HOP = {
    b"host",
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"content-length",
    FORWARDED_IDENTITY.encode(),  # only this server names who it verified
}
_LEADER_CACHE_SECONDS = 1.0


def forwarded(method: str, path: str) -> bool:
    """Whether a follower passes this request to the leader."""
    if path == "/api/v1/metrics" or path.startswith("/api/v1/metrics/"):
        return method in ("GET", "HEAD")
    return method == "POST" and path.startswith("/api/v1/nodes/") and path.endswith("/metrics")


class LeaderForward:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._client: httpx.AsyncClient | None = None
        self._leader: tuple[float, str | None] = (0.0, None)
        self._node_url: tuple[float, str, str | None] = (0.0, "", None)
        self._mtls: tuple[object, httpx.AsyncClient] | None = None

    async def _leader_node_url(self, ctx: Any, leader: str) -> str | None:
        """The leader's node port URL, from its presence."""
        at, of, url = self._node_url
        if of != leader or time.monotonic() - at > _LEADER_CACHE_SECONDS:
            try:
                kv = await ctx.store.get(SERVERS + quote(leader, safe=""))
                url = None if kv is None else ServerOut.model_validate_json(kv.value).node_url
            except Exception:
                url = None
            self._node_url = (time.monotonic(), leader, url)
        return url

    def _mtls_client(self, ctx: Any) -> httpx.AsyncClient:
        """A client presenting this server's certificate (a new one after a renewal)."""
        context = ctx.trust.client_context()
        if self._mtls is None or self._mtls[0] is not context:
            old = self._mtls
            client = httpx.AsyncClient(verify=context, timeout=httpx.Timeout(10.0, read=None))
            self._mtls = (context, client)
            if old is not None:
                asyncio.get_running_loop().call_later(
                    30, lambda: asyncio.ensure_future(old[1].aclose())
                )
        return self._mtls[1]

    async def _leader_url(self, state: Any) -> str | None:
        """The leader's URL when another server leads, else None (serve here)."""
        leader = getattr(state, "leader", None)
        ctx = getattr(state, "ctx", None)
        if ctx is None or leader is None or leader.leading:
            return None
        at, url = self._leader
        if time.monotonic() - at > _LEADER_CACHE_SECONDS:
            try:
                url = await current_leader(ctx.store)
            except Exception:
                url = None
            self._leader = (time.monotonic(), url)
        if url is None or url == ctx.server_id or not url.startswith(("http://", "https://")):
            return None
        return url

    async def _route(
        self, scope: Scope, leader: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[httpx.AsyncClient | None, str]:
        """The client and base URL to pass this request to the leader with: a node's push
        over the leader's node port with this server's certificate; the rest to its API."""
        if scope["method"] != "POST":
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
            return self._client, leader
        ctx = scope["app"].state.ctx
        cert = scope.get("state", {}).get(CLIENT_CERT)
        who = ctx.trust.identity(cert) if cert else None
        node_url = await self._leader_node_url(ctx, leader)
        if who is None or who.kind != "node" or node_url is None:
            return None, leader
        headers.append((FORWARDED_IDENTITY.encode(), f"node/{who.name}".encode()))
        return self._mtls_client(ctx), node_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not forwarded(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        leader = await self._leader_url(scope["app"].state)
        if leader is None:
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        client, base = await self._route(scope, leader, headers)
        if client is None:  # a node's push without a verified certificate: refused here
            await self.app(scope, replay_body(body, receive), send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        url = base.rstrip("/") + scope["path"] + (f"?{query}" if query else "")
        request = client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            log.info("the leader at %s is unreachable (%s); answering here", leader, exc)
            self._leader = (0.0, None)
            await self.app(scope, replay_body(body, receive), send)
            return
        try:
            out = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": out}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except (httpx.TransportError, OSError):
            pass  # either side went away mid-stream
        finally:
            await response.aclose()
