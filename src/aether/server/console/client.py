"""The console reads and acts through the same HTTP API the CLI uses, in process.

Every page asks the server's own ASGI app (``httpx.ASGITransport``: no socket,
no second process) with the visitor's session cookie and CSRF token, so the API
alone decides what a role may see and do, scopes everything by tenant, answers
another tenant's objects with 404, and (on a follower) forwards to the leader
what only the leader knows, exactly as for the CLI.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from aether.server.http.sessions import CSRF_HEADER, SESSION_COOKIE

__all__ = ["ApiError", "ConsoleApi"]


class ApiError(Exception):
    """An answer of the API that is not a success: its status and error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _client(app: FastAPI) -> httpx.AsyncClient:
    client: httpx.AsyncClient | None = getattr(app.state, "console_client", None)
    if client is None:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://console.internal",
            timeout=httpx.Timeout(30.0),
        )
        app.state.console_client = client
    return client


class ConsoleApi:
    """The API as one signed-in visitor: ``await api.get("/api/v1/apps")``."""

    def __init__(self, app: FastAPI, session_id: str, csrf: str) -> None:
        self._client = _client(app)
        self._headers = {"cookie": f"{SESSION_COOKIE}={session_id}", CSRF_HEADER: csrf}

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | list[tuple[str, Any]] | None = None,
        json: Any = None,
    ) -> Any:
        """The decoded JSON answer (None for an empty body); ApiError for 4xx/5xx."""
        response = await self._client.request(
            method, path, params=params, json=json, headers=self._headers
        )
        if response.status_code >= 400:
            code, message = "error", response.text[:500]
            try:
                body = response.json()
                code, message = str(body.get("code", code)), str(body.get("message", message))
            except ValueError:
                pass
            raise ApiError(response.status_code, code, message)
        if not response.content:
            return None
        return response.json()

    async def text(self, path: str, **params: Any) -> str:
        """A plain-text answer (an app's logs) as it is; ApiError for 4xx/5xx."""
        clean = {k: v for k, v in params.items() if v is not None and v != ""}
        response = await self._client.get(path, params=clean, headers=self._headers)
        if response.status_code >= 400:
            body = response.json() if response.content else {}
            raise ApiError(
                response.status_code, str(body.get("code", "error")), str(body.get("message", ""))
            )
        return response.text

    async def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None and v != ""}
        return await self.request("GET", path, params=clean)

    async def post(self, path: str, json: Any = None, **params: Any) -> Any:
        return await self.request("POST", path, json=json, params=params or None)

    async def put(self, path: str, json: Any = None) -> Any:
        return await self.request("PUT", path, json=json)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)
