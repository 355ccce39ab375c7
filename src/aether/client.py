"""The one typed HTTP client for the Aether API, used by the CLI, nodes and tests.

Errors come back as the same exception tree the server raised
(``aether.errors``); a server that cannot be reached raises ``NetworkError``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from aether.errors import AetherError, ServiceUnavailableError, error_for
from aether.model.api import (
    AppOut,
    DeploymentOut,
    InstanceOut,
    NodeOut,
    RegisterIn,
    RegisterOut,
    StatusOut,
)
from aether.model.app import AppSpec
from aether.model.keys import AppSettingsOut, PublicKeyOut
from aether.model.tasks import ExecutionOut, SandboxOut, TaskOut

__all__ = ["ApiClient", "NetworkError"]


class NetworkError(ServiceUnavailableError):
    code = "unreachable"


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "internal", f"HTTP {response.status_code}: {response.text[:200]}"
    raise error_for(response.status_code, code, message)


def _signature_headers(signature: str | None, app: str | None) -> dict[str, str]:
    headers = {}
    if signature is not None:
        headers["X-Aether-Signature"] = signature
    if app is not None:
        headers["X-Aether-App"] = app
    return headers


class ApiClient:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        namespace: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if namespace:
            headers["X-Aether-Namespace"] = namespace
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise NetworkError(f"cannot reach the Aether server at {self.base_url}: {exc}") from exc
        _raise_for(response)
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self.request(method, path, **kwargs)).json()

    # -- probes and status --------------------------------------------------

    async def healthz(self) -> bool:
        try:
            await self.request("GET", "/healthz")
        except AetherError:
            return False
        return True

    async def status(self) -> StatusOut:
        return StatusOut.model_validate(await self.json("GET", "/api/v1/status"))

    async def nodes(self) -> list[NodeOut]:
        return [NodeOut.model_validate(n) for n in await self.json("GET", "/api/v1/nodes")]

    async def instances(self, app: str | None = None) -> list[InstanceOut]:
        params = {"app": app} if app else {}
        data = await self.json("GET", "/api/v1/instances", params=params)
        return [InstanceOut.model_validate(i) for i in data]

    async def endpoints(self, app: str | None = None) -> list[dict[str, Any]]:
        params = {"app": app} if app else {}
        result: list[dict[str, Any]] = await self.json("GET", "/api/v1/endpoints", params=params)
        return result

    # -- artifacts ----------------------------------------------------------

    async def has_artifact(self, digest: str) -> bool:
        try:
            await self.request("HEAD", f"/api/v1/artifacts/{digest}")
        except AetherError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def upload_artifact(
        self,
        path: Path,
        digest: str,
        *,
        progress: Callable[[int], None] | None = None,
        chunk_size: int = 1 << 20,
        signature: str | None = None,
        app: str | None = None,
    ) -> dict[str, Any]:
        """Stream the archive; the answer is ``{digest, size_bytes, duplicate, verified}``.

        ``signature`` (base64 Ed25519 over ``digest``) is checked against the public
        keys registered for ``app``.
        """

        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as fh:
                while chunk := fh.read(chunk_size):
                    if progress:
                        progress(len(chunk))
                    yield chunk

        result: dict[str, Any] = await self.json(
            "POST",
            "/api/v1/artifacts",
            content=body(),
            headers={
                "X-Aether-Artifact-Digest": digest,
                "Content-Type": "application/gzip",
                "Content-Length": str(path.stat().st_size),
                **_signature_headers(signature, app),
            },
        )
        return result

    # -- signing ------------------------------------------------------------

    async def sign_artifact(self, digest: str, signature: str, app: str) -> dict[str, Any]:
        """Attach a signature to an artifact the server already has (upload skipped)."""
        result: dict[str, Any] = await self.json(
            "PUT",
            f"/api/v1/artifacts/{digest}/signature",
            headers=_signature_headers(signature, app),
        )
        return result

    async def register_public_key(
        self, app: str, public_key: str, *, name: str | None = None
    ) -> PublicKeyOut:
        data = await self.json(
            "POST", f"/api/v1/apps/{app}/public-keys", json={"public_key": public_key, "name": name}
        )
        return PublicKeyOut.model_validate(data)

    async def list_public_keys(self, app: str) -> list[PublicKeyOut]:
        data = await self.json("GET", f"/api/v1/apps/{app}/public-keys")
        return [PublicKeyOut.model_validate(k) for k in data]

    async def delete_public_key(self, app: str, key_id: str) -> None:
        await self.request("DELETE", f"/api/v1/apps/{app}/public-keys/{key_id}")

    async def app_settings(
        self,
        app: str,
        *,
        require_signature: bool | None = None,
        retain_deployments: int | None = None,
    ) -> AppSettingsOut:
        """Change the settings given (none given: read them)."""
        body: dict[str, Any] = {}
        if require_signature is not None:
            body["require_signature"] = require_signature
        if retain_deployments is not None:
            body["retain_deployments"] = retain_deployments
        if body:
            data = await self.json("PUT", f"/api/v1/apps/{app}/settings", json=body)
        else:
            data = await self.json("GET", f"/api/v1/apps/{app}/settings")
        return AppSettingsOut.model_validate(data)

    async def download_artifact(self, digest: str, dest: Path) -> None:
        try:
            async with self._http.stream("GET", f"/api/v1/artifacts/{digest}") as response:
                if not response.is_success:
                    await response.aread()
                    _raise_for(response)
                with dest.open("wb") as fh:
                    async for chunk in response.aiter_bytes(1 << 20):
                        fh.write(chunk)
        except httpx.TransportError as exc:
            raise NetworkError(f"artifact download from {self.base_url} failed: {exc}") from exc

    # -- apps and deployments -----------------------------------------------

    async def create_deployment(
        self,
        app: str,
        digest: str,
        spec: AppSpec,
        *,
        instances: int | None = None,
        idempotency_key: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> DeploymentOut:
        """``extra`` may carry the artifact's ``sbom`` and ``manifest`` to record."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"digest": digest, "spec": spec.model_dump(mode="json"), "instances": instances}
        body.update(extra or {})
        data = await self.json(
            "POST", f"/api/v1/apps/{app}/deployments", json=body, headers=headers
        )
        return DeploymentOut.model_validate(data)

    async def deployment(self, deployment_id: str) -> DeploymentOut:
        return DeploymentOut.model_validate(
            await self.json("GET", f"/api/v1/deployments/{deployment_id}")
        )

    async def deployments(self, app: str) -> list[DeploymentOut]:
        data = await self.json("GET", f"/api/v1/apps/{app}/deployments")
        return [DeploymentOut.model_validate(d) for d in data]

    async def apps(self) -> list[AppOut]:
        return [AppOut.model_validate(a) for a in await self.json("GET", "/api/v1/apps")]

    async def scale(self, app: str, instances: int) -> AppOut:
        data = await self.json("POST", f"/api/v1/apps/{app}/scale", json={"instances": instances})
        return AppOut.model_validate(data)

    async def rollback(
        self, app: str, version: int | None = None, *, idempotency_key: str | None = None
    ) -> DeploymentOut:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = await self.json(
            "POST", f"/api/v1/apps/{app}/rollback", json={"version": version}, headers=headers
        )
        return DeploymentOut.model_validate(data)

    async def logs(self, app: str, *, tail: int = 200, follow: bool = False) -> AsyncIterator[str]:
        params = {"tail": tail, "follow": "true" if follow else "false"}
        timeout = httpx.Timeout(None, connect=5.0) if follow else httpx.USE_CLIENT_DEFAULT
        try:
            async with self._http.stream(
                "GET", f"/api/v1/apps/{app}/logs", params=params, timeout=timeout
            ) as response:
                if not response.is_success:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    yield line
        except httpx.TransportError as exc:
            raise NetworkError(f"log stream from {self.base_url} failed: {exc}") from exc

    # -- node side ----------------------------------------------------------

    async def register(self, body: RegisterIn) -> RegisterOut:
        data = await self.json("POST", "/api/v1/nodes/register", json=body.model_dump(mode="json"))
        return RegisterOut.model_validate(data)

    async def heartbeat(self, node: str, lease_id: int) -> None:
        await self.request("POST", f"/api/v1/nodes/{node}/heartbeat", json={"lease_id": lease_id})

    async def assignments(self, node: str, from_revision: int) -> AsyncIterator[dict[str, Any]]:
        """The node's assignment stream, one decoded line at a time."""
        try:
            async with self._http.stream(
                "GET",
                f"/api/v1/nodes/{node}/assignments",
                params={"from_revision": from_revision},
                timeout=httpx.Timeout(15.0, connect=5.0),  # pings arrive every 5 s
            ) as response:
                if not response.is_success:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise NetworkError(f"assignment stream from {self.base_url} broke: {exc}") from exc

    async def report(
        self, key: str, state: str, *, message: str = "", url: str | None = None
    ) -> None:
        node, app_version, n = key.split("/")[1:4]
        await self.request(
            "PUT",
            f"/api/v1/nodes/{node}/instances/{app_version}/{n}",
            json={"state": state, "message": message, "url": url},
        )

    async def unloaded(self, key: str) -> None:
        node, app_version, n = key.split("/")[1:4]
        await self.request("DELETE", f"/api/v1/nodes/{node}/instances/{app_version}/{n}")

    async def push_logs(self, node: str, entries: list[dict[str, str]]) -> None:
        await self.request("POST", f"/api/v1/nodes/{node}/logs", json={"entries": entries})

    async def promote(self, app: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("POST", f"/api/v1/apps/{app}/promote")
        return result

    async def events(self, deployment_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.json(
            "GET", f"/api/v1/deployments/{deployment_id}/events"
        )
        return result

    async def rotate_token(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("POST", "/api/v1/tokens/rotate")
        return result

    # -- tasks and sandboxes --------------------------------------------------

    async def submit_task(
        self, body: dict[str, Any], *, idempotency_key: str | None = None
    ) -> TaskOut:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = await self.json("POST", "/api/v1/tasks", json=body, headers=headers)
        return TaskOut.model_validate(data)

    async def task(self, task_id: str) -> TaskOut:
        return TaskOut.model_validate(await self.json("GET", f"/api/v1/tasks/{task_id}"))

    async def tasks(self, **filters: Any) -> list[TaskOut]:
        params = {k: v for k, v in filters.items() if v is not None}
        data = await self.json("GET", "/api/v1/tasks", params=params)
        return [TaskOut.model_validate(t) for t in data]

    async def cancel_task(self, task_id: str) -> TaskOut:
        return TaskOut.model_validate(await self.json("POST", f"/api/v1/tasks/{task_id}/cancel"))

    async def sandboxes(self, *, include_deleted: bool = False) -> list[SandboxOut]:
        params = {"include_deleted": "true" if include_deleted else "false"}
        data = await self.json("GET", "/api/v1/sandboxes", params=params)
        return [SandboxOut.model_validate(s) for s in data]

    async def sandbox(self, sandbox_id: str) -> SandboxOut:
        return SandboxOut.model_validate(await self.json("GET", f"/api/v1/sandboxes/{sandbox_id}"))

    async def executions(self, sandbox_id: str) -> list[ExecutionOut]:
        data = await self.json("GET", f"/api/v1/sandboxes/{sandbox_id}/executions")
        return [ExecutionOut.model_validate(e) for e in data]

    async def claim_task(
        self, node: str, drivers: list[str], queues: list[str], wait: float
    ) -> TaskOut | None:
        response = await self.request(
            "POST",
            "/api/v1/tasks/claim",
            json={"node": node, "drivers": drivers, "queues": queues, "wait": wait},
            timeout=wait + 10,
        )
        return TaskOut.model_validate(response.json()) if response.status_code == 200 else None

    async def task_heartbeat(self, task_id: str, node: str) -> bool:
        data = await self.json("POST", f"/api/v1/tasks/{task_id}/heartbeat", json={"node": node})
        return bool(data["ok"])

    async def complete_task(self, task_id: str, node: str, result: dict[str, Any]) -> TaskOut:
        data = await self.json(
            "POST", f"/api/v1/tasks/{task_id}/complete", json={"node": node, "result": result}
        )
        return TaskOut.model_validate(data)

    async def fail_task(self, task_id: str, node: str, error: str, *, retryable: bool) -> TaskOut:
        data = await self.json(
            "POST",
            f"/api/v1/tasks/{task_id}/fail",
            json={"node": node, "error": error, "retryable": retryable},
        )
        return TaskOut.model_validate(data)
