"""Telemetry lives on the leader: a follower forwards what only the leader can answer.

Only the elected leader aggregates telemetry (its hub holds the window), so
with several servers a node's metrics push, and a read of the live figures
(``/api/v1/metrics``, its history and its SSE stream), that reach a follower
are passed to the leader as they are — same method, path, query, headers and
body — and the leader's answer streams back. The leader is whoever holds the
``leader`` key; its value is the leader's API URL (``AETHER_PUBLIC_URL``).
Everything else a follower answers itself: the API reads the shared state
store and records.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from aether.server.http.idempotency import replay_body
from aether.store.election import current_leader

__all__ = ["LeaderForward", "forwarded"]

log = logging.getLogger("aether.server")

_HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}
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
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        query = scope.get("query_string", b"").decode("latin-1")
        url = leader.rstrip("/") + scope["path"] + (f"?{query}" if query else "")
        request = self._client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
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
