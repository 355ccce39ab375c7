"""Unversioned aliases: ``/api/agents…`` and ``/api/agent-catalog…`` are ``/api/v1/…``.

A plain ASGI middleware installed outermost, so the rewritten request goes through
everything else (auth, audit, rate limits, idempotency, input limits) exactly as the
versioned one does: the audit log and the logs show the ``/api/v1`` path.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ALIASED", "ApiAliases", "canonical_path"]

#: the resources that answer under ``/api/`` as under ``/api/v1/``
ALIASED = ("agents", "agent-catalog", "runs", "threads")


def canonical_path(path: str) -> str | None:
    """The ``/api/v1`` path of an unversioned alias, or None when ``path`` is not one."""
    for name in ALIASED:
        alias = f"/api/{name}"
        if path == alias or path.startswith(alias + "/"):
            return "/api/v1" + path.removeprefix("/api")
    return None


class ApiAliases:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = canonical_path(scope["path"])
            if path is not None:
                raw = scope.get("raw_path")
                scope = {**scope, "path": path}
                if raw is not None:
                    scope["raw_path"] = b"/api/v1" + raw.removeprefix(b"/api")
        await self.app(scope, receive, send)
