"""A span per API request, a child of the caller's ``traceparent`` (on only when
``aether.tracing`` is configured: ``AETHER_OTLP_ENDPOINT``)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aether import tracing

__all__ = ["TraceRequests"]


class TraceRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        parent = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = value.decode("latin-1")
        status = 0

        async def traced_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        method, path = scope["method"], scope["path"]
        with tracing.span(
            f"{method} {path}", parent=parent, kind="server", attributes={"http.method": method}
        ):
            await self.app(scope, receive, traced_send)
            route = _route(scope)
            tracing.annotate(
                {"http.status_code": status, "http.route": route or path},
                name=f"{method} {route}" if route else None,
            )


def _route(scope: Scope) -> str | None:
    route = scope.get("route")
    return getattr(route, "path", None)
