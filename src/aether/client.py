"""The one typed HTTP client for the Aether API, used by the CLI, nodes and tests.

Errors come back as the same exception tree the server raised
(``aether.errors``); a server that cannot be reached raises ``NetworkError``.

Several servers: ``base_url`` may be ``"http://a,http://b"`` or a list. A request
that cannot reach one server (connection refused or timed out: nothing was sent)
is sent to the next, and the one that answered is used first from then on; reads
(GET, HEAD) are also retried after a broken connection. HTTP error answers are
never retried, but one: a ``429 rate_limited`` whose ``Retry-After`` is at most
``MAX_RETRY_AFTER`` seconds is sent again after that wait (up to ``RATE_RETRIES``
times) when repeating it is safe: an idempotent method, or a request carrying an
``Idempotency-Key``. Otherwise the error says when to retry. A stream
(assignments, logs, metrics) that breaks moves the client to the next server, so
the caller's reconnect goes there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from aether import tracing
from aether.client_rules import (
    MAX_RETRY_AFTER,
    RATE_RETRIES,
    REPLAYABLE,
    NetworkError,
    answer_error,
    may_repeat,
    rate_limited,
    retry_after,
    split_urls,
    why_not_retried,
)
from aether.errors import AetherError, RateLimitedError
from aether.model.api import (
    AppDeletedOut,
    AppOut,
    DeploymentOut,
    HeartbeatIn,
    HeartbeatOut,
    InstanceOut,
    InstanceSecretsOut,
    JoinIn,
    JoinOut,
    LogsIn,
    NodeOut,
    RegisterIn,
    RegisterOut,
    ReportIn,
    ReportOut,
    RoutesIn,
    StatusOut,
    WithdrawalOut,
)
from aether.model.app import AppSpec
from aether.model.audit import AuditPage, AuditVerdict
from aether.model.decisions import DecisionOut
from aether.model.diag import NodePartIn
from aether.model.keys import AppSettingsOut, PublicKeyOut
from aether.model.migrations import MigrationOut, SnapshotOut
from aether.model.rebalance import RebalanceOut
from aether.model.risk import RiskAssessment, SignalIn, SignalOut
from aether.model.tasks import (
    ClaimIn,
    ExchangeIn,
    ExchangeOut,
    ExecutionOut,
    SandboxOut,
    TaskHeartbeatOut,
    TaskHolderIn,
    TaskOut,
)
from aether.model.telemetry import (
    AppPoint,
    ClusterSample,
    NodeMetrics,
    NodePoint,
    PushAnswer,
    Rollup,
)
from aether.model.trust import CaOut, CertificateIn, CertificateOut, ClusterTrustOut
from aether.model.versioned import VERSION_FIELD

__all__ = ["MAX_RETRY_AFTER", "RATE_RETRIES", "ApiClient", "NetworkError", "split_urls"]

T = TypeVar("T")

# nothing reached the server: safe to send anywhere else, whatever the method
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_REPLAYABLE = REPLAYABLE
_FINAL_RUN_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled", "run.expired"})


def _raise_for(response: httpx.Response) -> None:
    """Raise the envelope's error; an answer without one gets its status's code."""
    if response.is_success:
        return
    request = response.request
    raise answer_error(
        response.status_code,
        response.reason_phrase,
        request.method,
        request.url.path,
        response.content,
    )


def _retry_after(response: httpx.Response) -> float | None:
    """A 429's ``Retry-After`` in seconds (see ``client_rules.retry_after``)."""
    return retry_after(response.status_code, response.headers.get("retry-after"))


def _replayable_body(kwargs: dict[str, Any]) -> bool:
    """Whether the request's body can be sent again (a stream cannot)."""
    content = kwargs.get("content")
    return content is None or isinstance(content, bytes | str)


def _may_repeat(method: str, kwargs: dict[str, Any]) -> bool:
    return may_repeat(method, kwargs.get("headers") or {}, _replayable_body(kwargs))


def _why_not_retried(method: str, kwargs: dict[str, Any], wait: float | None) -> str:
    return why_not_retried(method, kwargs.get("headers") or {}, _replayable_body(kwargs), wait)


def _rate_limited(response: httpx.Response, why: str) -> RateLimitedError:
    """The 429's error, its message saying when to try again."""
    request = response.request
    return rate_limited(
        response.reason_phrase,
        request.method,
        request.url.path,
        response.content,
        _retry_after(response),
        why,
    )


def _signature_headers(signature: str | None, app: str | None) -> dict[str, str]:
    headers = {}
    if signature is not None:
        headers["X-Aether-Signature"] = signature
    if app is not None:
        headers["X-Aether-App"] = app
    return headers


def _plain_http_transport() -> httpx.AsyncHTTPTransport:
    """The transport for servers that are all plain http: the default one, but with a
    TLS context that loads no CA bundle (loading it is most of building a client).

    Every request goes to ``base_url + path``, so this transport never speaks TLS; if
    it ever did, a context with no trust anchors and hostname checks on fails closed.
    A proxy from the environment keeps its own transport, verified as usual.
    """
    return httpx.AsyncHTTPTransport(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


async def _carry_trace(request: httpx.Request) -> None:
    tracing.inject(request.headers)


class ApiClient:
    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        namespace: str | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.base_urls = split_urls(base_url)
        self._active = 0  # the server that answered last
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if namespace:
            headers["X-Aether-Namespace"] = namespace
        if (
            transport is None
            and verify is None
            and all(u.lower().startswith("http://") for u in self.base_urls)
        ):
            transport = _plain_http_transport()
        self._timeout = httpx.Timeout(timeout, connect=5.0)
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=self._timeout,
            transport=transport,
            verify=verify if verify is not None else True,
            # each request carries the span it is made in (when tracing is on)
            event_hooks={"request": [_carry_trace]} if tracing.enabled() else None,
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    @property
    def base_url(self) -> str:
        """The server requests go to first (the last one that answered)."""
        return self.base_urls[self._active]

    def _fail_over(self) -> None:
        """The current server broke a stream: start with the next one from now on."""
        self._active = (self._active + 1) % len(self.base_urls)

    async def _each_server(
        self, send: Callable[[str], Awaitable[T]], *, replayable: bool, what: str
    ) -> T:
        """``send(base_url)`` on the current server, then the next ones while unreachable."""
        count = len(self.base_urls)
        for attempt in range(count):
            index = (self._active + attempt) % count
            try:
                result = await send(self.base_urls[index])
            except httpx.TransportError as exc:
                last = attempt == count - 1
                if last or not (replayable or isinstance(exc, _NOT_SENT)):
                    if not isinstance(exc, _NOT_SENT):
                        self._active = (index + 1) % count
                    servers = ", ".join(self.base_urls)
                    raise NetworkError(f"{what} at {servers}: {exc}") from exc
                continue
            self._active = index
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(RATE_RETRIES + 1):
            response = await self._each_server(
                lambda url: self._http.request(method, url + path, **kwargs),
                replayable=method.upper() in _REPLAYABLE,
                what="cannot reach the Aether server",
            )
            wait = _retry_after(response)
            if response.status_code != 429:
                break
            retry = wait is not None and wait <= MAX_RETRY_AFTER and _may_repeat(method, kwargs)
            if wait is None or not retry or attempt == RATE_RETRIES:
                raise _rate_limited(response, _why_not_retried(method, kwargs, wait))
            await asyncio.sleep(wait)
        if method.upper() == "HEAD" and not response.is_success and response.status_code != 404:
            # a 404 says all a HEAD asks (``has_artifact``: absent), without a second request
            await self._raise_head_error(path, response, kwargs)
        _raise_for(response)
        return response

    async def _raise_head_error(
        self, path: str, response: httpx.Response, kwargs: dict[str, Any]
    ) -> None:
        """A HEAD's error answer has no body: raise the envelope a GET of ``path`` gets.

        Its body is read only if it is an error; if the GET cannot reach a server or
        succeeds after all, the HEAD's status speaks (``_raise_for``).
        """
        same = {k: v for k, v in kwargs.items() if k in ("headers", "params")}
        try:
            answer = await self._open_stream("GET", path, **same)
        except NetworkError:
            return
        await answer.aclose()

    async def _open_stream(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A streamed response from the first reachable server (close it with ``aclose``)."""

        async def send(url: str) -> httpx.Response:
            request = self._http.build_request(method, url + path, **kwargs)
            return await self._http.send(request, stream=True)

        response = await self._each_server(
            send, replayable=True, what="cannot reach the Aether server"
        )
        if not response.is_success:
            try:
                await response.aread()
            finally:
                await response.aclose()
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

    async def decisions(
        self,
        *,
        layer: int | None = None,
        kind: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        limit: int = 50,
    ) -> list[DecisionOut]:
        """The controller's decisions, newest first."""
        params: dict[str, Any] = {"limit": limit}
        filters = {"layer": layer, "kind": kind, "target": target, "outcome": outcome}
        params.update({k: v for k, v in filters.items() if v is not None})
        data = await self.json("GET", "/api/v1/decisions", params=params)
        return [DecisionOut.model_validate(d) for d in data]

    async def audit(self, **params: Any) -> AuditPage:
        """A page of audit events (``GET /api/v1/audit``; filters and cursors as params)."""
        query = {k: v for k, v in params.items() if v is not None}
        return AuditPage.model_validate(await self.json("GET", "/api/v1/audit", params=query))

    async def audit_export(self, **params: Any) -> AsyncIterator[str]:
        """Every matching audit event as a JSON line, oldest first."""
        query = {**{k: v for k, v in params.items() if v is not None}, "format": "jsonl"}
        response = await self._open_stream("GET", "/api/v1/audit", params=query)
        try:
            async for line in response.aiter_lines():
                if line:
                    yield line
        finally:
            await response.aclose()

    async def audit_verify(self) -> AuditVerdict:
        return AuditVerdict.model_validate(await self.json("GET", "/api/v1/audit/verify"))

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

    async def put_provenance(
        self, digest: str, envelope: dict[str, Any], app: str
    ) -> dict[str, Any]:
        """Attach the build's signed provenance (a DSSE envelope) to a stored artifact."""
        result: dict[str, Any] = await self.json(
            "PUT",
            f"/api/v1/artifacts/{digest}/provenance",
            json=envelope,
            headers={"X-Aether-App": app},
        )
        return result

    async def artifact_provenance(self, digest: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("GET", f"/api/v1/artifacts/{digest}/provenance")
        return result

    async def verify_artifact(self, digest: str) -> dict[str, Any]:
        """The server's checks of a stored artifact: digest, signature, provenance, SBOM."""
        result: dict[str, Any] = await self.json("GET", f"/api/v1/artifacts/{digest}/verification")
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
        require_provenance: bool | None = None,
        retain_deployments: int | None = None,
    ) -> AppSettingsOut:
        """Change the settings given (none given: read them)."""
        body: dict[str, Any] = {}
        if require_signature is not None:
            body["require_signature"] = require_signature
        if require_provenance is not None:
            body["require_provenance"] = require_provenance
        if retain_deployments is not None:
            body["retain_deployments"] = retain_deployments
        if body:
            data = await self.json("PUT", f"/api/v1/apps/{app}/settings", json=body)
        else:
            data = await self.json("GET", f"/api/v1/apps/{app}/settings")
        return AppSettingsOut.model_validate(data)

    async def _download(
        self, path: str, dest: Path, what: str, headers: dict[str, str] | None = None
    ) -> None:
        """Stream ``GET path`` into ``dest``; a broken transfer moves to the next server."""
        response = await self._open_stream("GET", path, headers=headers)
        try:
            with dest.open("wb") as fh:
                async for chunk in response.aiter_bytes(1 << 20):
                    fh.write(chunk)
        except httpx.TransportError as exc:
            self._fail_over()
            raise NetworkError(f"{what} from {self.base_url} failed: {exc}") from exc
        finally:
            await response.aclose()

    async def download_artifact(self, digest: str, dest: Path, *, task: str | None = None) -> None:
        """``task``: a node downloading for a task it holds (a job) names the task."""
        headers = {"X-Aether-Task": task} if task else None
        await self._download(f"/api/v1/artifacts/{digest}", dest, "artifact download", headers)

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

    async def delete_app(self, app: str, *, force: bool = False) -> AppDeletedOut:
        params = {"force": "true"} if force else {}
        data = await self.json("DELETE", f"/api/v1/apps/{app}", params=params)
        return AppDeletedOut.model_validate(data)

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
        response = await self._open_stream(
            "GET", f"/api/v1/apps/{app}/logs", params=params, timeout=timeout
        )
        try:
            async for line in response.aiter_lines():
                yield line
        except httpx.TransportError as exc:
            self._fail_over()
            raise NetworkError(f"log stream from {self.base_url} failed: {exc}") from exc
        finally:
            await response.aclose()

    # -- node side ----------------------------------------------------------

    async def join(self, node: str, csr: str) -> JoinOut:
        """With a join token: a credential and a certificate of this node's own (use them
        for everything else)."""
        return JoinOut.model_validate(
            await self.json(
                "POST", "/api/v1/nodes/join", json=JoinIn(id=node, csr=csr).model_dump(mode="json")
            )
        )

    async def renew_certificate(self, node: str, csr: str) -> CertificateOut:
        body = CertificateIn(csr=csr).model_dump(mode="json")
        data = await self.json("POST", f"/api/v1/nodes/{node}/certificate", json=body)
        return CertificateOut.model_validate(data)

    async def cluster_trust(self) -> ClusterTrustOut:
        return ClusterTrustOut.model_validate(await self.json("GET", "/api/v1/cluster/trust"))

    async def ca(self) -> CaOut:
        return CaOut.model_validate(await self.json("GET", "/api/v1/ca"))

    async def rotate_ca(self, overlap_seconds: float) -> CaOut:
        data = await self.json(
            "POST", "/api/v1/ca/rotate", json={"overlap_seconds": overlap_seconds}
        )
        return CaOut.model_validate(data)

    async def revoke_node(self, node: str) -> dict[str, Any]:
        """Cluster admin: the node's credential stops working; it may not join again."""
        result: dict[str, Any] = await self.json("POST", f"/api/v1/nodes/{node}/revoke")
        return result

    async def allow_node(self, node: str) -> dict[str, Any]:
        """Cluster admin: let a revoked node join again."""
        result: dict[str, Any] = await self.json("POST", f"/api/v1/nodes/{node}/allow")
        return result

    async def create_token(
        self,
        role: str | None,
        name: str,
        *,
        user: str | None = None,
        expires_in: int | None = None,
        uses: int | None = None,
    ) -> dict[str, Any]:
        """A new token (admin; role ``join`` only for a cluster admin); shown once. A
        token of ``user`` (a member) has its role; ``expires_in`` seconds, or never; a
        join token for ``uses`` joins, or any number."""
        body: dict[str, Any] = {"name": name}
        for key, value in (
            ("role", role),
            ("user", user),
            ("expires_in", expires_in),
            ("uses", uses),
        ):
            if value is not None:
                body[key] = value
        result: dict[str, Any] = await self.json("POST", "/api/v1/tokens", json=body)
        return result

    # -- accounts and signing in ---------------------------------------------------------

    async def auth_providers(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("GET", "/api/v1/auth/providers")
        return result

    async def login(
        self, user: str, password: str, *, tenant: str | None = None, totp: str | None = None
    ) -> dict[str, Any]:
        """Sign in with a password (and a TOTP code): a token of the account, shown once."""
        body: dict[str, Any] = {"user": user, "password": password}
        if tenant:
            body["tenant"] = tenant
        if totp:
            body["totp"] = totp
        result: dict[str, Any] = await self.json("POST", "/api/v1/auth/login", json=body)
        return result

    async def oidc_exchange(self, code: str, verifier: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json(
            "POST", "/api/v1/auth/oidc/exchange", json={"code": code, "verifier": verifier}
        )
        return result

    async def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("GET", "/api/v1/whoami")
        return result

    async def users(self, method: str, path: str = "", body: Any = None) -> Any:
        """``/api/v1/users{path}`` (the tenant's members)."""
        kwargs = {} if body is None else {"json": body}
        response = await self.request(method, f"/api/v1/users{path}", **kwargs)
        return response.json() if response.content else None

    async def list_tokens(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.json("GET", "/api/v1/tokens")
        return result

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("DELETE", f"/api/v1/tokens/{token_id}")
        return result

    async def create_tenant(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new tenant (cluster admin); its first admin token, when asked for, shown once."""
        result: dict[str, Any] = await self.json("POST", "/api/v1/tenants", json=body)
        return result

    async def list_tenants(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.json("GET", "/api/v1/tenants")
        return result

    async def get_tenant(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("GET", f"/api/v1/tenants/{name}")
        return result

    async def delete_tenant(self, name: str, *, force: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = await self.json(
            "DELETE",
            f"/api/v1/tenants/{name}",
            params={"force": "true"} if force else None,
        )
        return result

    async def models(self, method: str, path: str = "", body: Any = None) -> Any:
        """``/api/v1/models{path}`` (the tenant's model endpoints, ``model://NAME``)."""
        kwargs = {} if body is None else {"json": body}
        response = await self.request(method, f"/api/v1/models{path}", **kwargs)
        return response.json()

    async def secrets(self, method: str, path: str = "", body: Any = None) -> Any:
        """``/api/v1/secrets{path}`` (the tenant's named secrets; values go in only)."""
        kwargs = {} if body is None else {"json": body}
        response = await self.request(method, f"/api/v1/secrets{path}", **kwargs)
        return response.json()

    async def list_slices(self) -> list[dict[str, Any]]:
        """The tenant's slices: names, entry points, ACTIVE instances."""
        result: list[dict[str, Any]] = await self.json("GET", "/api/v1/slices")
        return result

    async def get_slice(self, name: str) -> dict[str, Any]:
        """One slice: its entry points with their schemas, and its ACTIVE instances."""
        result: dict[str, Any] = await self.json("GET", f"/api/v1/slices/{quote(name, safe='')}")
        return result

    async def call_slice(
        self,
        name: str,
        entry: str,
        *,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``name.entry(*args, **kwargs)`` on one ACTIVE instance (through the server);
        the entry point's result."""
        body: dict[str, Any] = {}
        if args is not None:
            body["args"] = args
        if kwargs is not None:
            body["kwargs"] = kwargs
        if timeout is not None:
            body["timeout"] = timeout
        wait = (timeout if timeout is not None else 30.0) + 10  # the server answers first
        response = await self.request(
            "POST",
            f"/api/v1/slices/{quote(name, safe='')}/{quote(entry, safe='')}:call",
            json=body,
            timeout=httpx.Timeout(wait, connect=5.0),
        )
        return response.json().get("result")

    async def apply_blueprint(self, name: str, text: str, kind: str) -> dict[str, Any]:
        """Apply a blueprint file's ``text`` (``kind``: toml, yaml or json) as ``name``."""
        result: dict[str, Any] = await self.json(
            "PUT",
            f"/api/v1/blueprint-files/{quote(name, safe='')}",
            content=text.encode(),
            headers={"content-type": f"application/{kind}"},
        )
        return result

    async def list_blueprints(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.json("GET", "/api/v1/blueprint-files")
        return result

    async def get_blueprint(self, name: str) -> dict[str, Any]:
        path = f"/api/v1/blueprint-files/{quote(name, safe='')}"
        result: dict[str, Any] = await self.json("GET", path)
        return result

    async def remove_blueprint(self, name: str, *, scale_to_zero: bool = False) -> dict[str, Any]:
        """Forget a blueprint file (and, with ``scale_to_zero``, scale its apps to 0)."""
        result: dict[str, Any] = await self.json(
            "DELETE",
            f"/api/v1/blueprint-files/{quote(name, safe='')}",
            params={"scale_to_zero": "true"} if scale_to_zero else None,
        )
        return result

    def use_token(self, token: str) -> None:
        """Send ``token`` from now on (a node, once it has its own credential)."""
        self._http.headers["Authorization"] = f"Bearer {token}"

    def use_identity(self, base_urls: Sequence[str], verify: ssl.SSLContext) -> None:
        """Call ``base_urls`` over (mutual) TLS with ``verify`` from now on: a node once it
        has its certificate, and again after each renewal. Requests already on their
        way finish on the connections they have; those close a minute later."""
        old = self._http
        self._http = httpx.AsyncClient(headers=old.headers, timeout=self._timeout, verify=verify)
        self.base_urls = list(base_urls)
        self._active = 0
        with contextlib.suppress(RuntimeError):  # no loop running: nothing to close later
            loop = asyncio.get_running_loop()
            loop.call_later(60, lambda: loop.create_task(old.aclose()))

    async def register(self, body: RegisterIn) -> RegisterOut:
        data = await self.json("POST", "/api/v1/nodes/register", json=body.model_dump(mode="json"))
        return RegisterOut.model_validate(data)

    async def heartbeat(self, node: str, lease_id: int) -> HeartbeatOut:
        """The lease renewed: its ttl, and the fingerprints of the CAs trusted now."""
        data = await self.json(
            "POST",
            f"/api/v1/nodes/{node}/heartbeat",
            json=HeartbeatIn(lease_id=lease_id).model_dump(mode="json"),
        )
        return HeartbeatOut.model_validate(data)

    async def assignments(self, node: str, from_revision: int) -> AsyncIterator[dict[str, Any]]:
        """The node's assignment stream, one decoded line at a time."""
        response = await self._open_stream(
            "GET",
            f"/api/v1/nodes/{node}/assignments",
            params={"from_revision": from_revision},
            timeout=httpx.Timeout(15.0, connect=5.0),  # pings arrive every 5 s
        )
        try:
            async for line in response.aiter_lines():
                if line:
                    yield json.loads(line)
        except httpx.TransportError as exc:
            broken = self.base_url
            self._fail_over()  # the caller's reconnect goes to the next server
            raise NetworkError(f"assignment stream from {broken} broke: {exc}") from exc
        finally:
            await response.aclose()

    async def report(
        self,
        key: str,
        state: str,
        *,
        message: str = "",
        url: str | None = None,
        request_id: str = "",
        snapshot: str | None = None,
        entries: dict[str, dict[str, Any]] | None = None,
    ) -> ReportOut:
        """The server's answer: ``withdrawn_revision`` when the report withdrew an endpoint.

        ``entries``: with ACTIVE from a slice instance, its entry points (one endpoint each).
        """
        node, app_version, n = key.split("/")[1:4]
        optional: dict[str, Any] = {"request_id": request_id} if request_id else {}
        if snapshot is not None:
            optional["snapshot"] = snapshot
        if entries is not None:
            optional["entries"] = entries
        report = ReportIn(state=state, message=message, url=url, **optional)
        body = report.model_dump(mode="json", exclude_unset=True)
        answer = await self.request(
            "PUT", f"/api/v1/nodes/{node}/instances/{app_version}/{n}", json=body
        )
        return ReportOut.model_validate(answer.json())

    async def put_routes(self, node: str, revision: int, in_flight: dict[str, int]) -> None:
        """What this node's router applied (``RoutesIn``)."""
        body = RoutesIn(revision=revision, in_flight=in_flight).model_dump(mode="json")
        await self.request("PUT", f"/api/v1/nodes/{node}/routes", json=body)

    async def withdrawal(self, node: str, revision: int, url: str, wait: float) -> WithdrawalOut:
        """Whether every live router is done with ``url`` (waits up to ``wait`` s)."""
        answer = await self.request(
            "GET",
            f"/api/v1/nodes/{node}/withdrawals",
            params={"revision": revision, "url": url, "wait": wait},
            timeout=wait + 10,
        )
        return WithdrawalOut.model_validate(answer.json())

    async def unloaded(self, key: str) -> None:
        node, app_version, n = key.split("/")[1:4]
        await self.request("DELETE", f"/api/v1/nodes/{node}/instances/{app_version}/{n}")

    async def instance_secrets(self, key: str) -> dict[str, dict[str, str]]:
        """The secret values instance ``key`` (placed on this node) references:
        ``{"env": {VAR: value}, "files": {path: content}}``. Never log the answer."""
        node, app_version, n = key.split("/")[1:4]
        answer = await self.request(
            "GET", f"/api/v1/nodes/{node}/instances/{app_version}/{n}/secrets"
        )
        body = InstanceSecretsOut.model_validate(answer.json())  # a newer one is refused
        return {"env": body.env, "files": body.files}

    async def push_logs(self, node: str, entries: list[dict[str, str]]) -> None:
        body = {VERSION_FIELD: LogsIn.SCHEMA_VERSION, "entries": entries}  # as LogsIn writes it
        await self.request("POST", f"/api/v1/nodes/{node}/logs", json=body)

    # -- telemetry ------------------------------------------------------------------------

    async def push_metrics(
        self, update: NodeMetrics, *, timeout: float | None = None
    ) -> PushAnswer | None:
        """A node's metrics push (``timeout``: seconds for this request, else the default);
        the leader's cluster snapshots when it answered with them (else None)."""
        response = await self.request(
            "POST",
            f"/api/v1/nodes/{update.node}/metrics",
            content=update.model_dump_json(),
            headers={"Content-Type": "application/json"},
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        if response.status_code != 200 or not response.content:
            return None
        try:
            return PushAnswer.model_validate_json(response.content)
        except ValueError:  # an answer this node does not understand: no snapshot
            return None

    async def metrics_latest(self) -> ClusterSample | None:
        """The newest cluster sample, or None before the leader aggregated one."""
        data = await self.json("GET", "/api/v1/metrics")
        return None if data is None else ClusterSample.model_validate(data)

    async def metrics_node(self, node: str, seconds: float = 300.0) -> list[NodePoint]:
        data = await self.json("GET", f"/api/v1/metrics/nodes/{node}", params={"seconds": seconds})
        return [NodePoint.model_validate(p) for p in data]

    async def metrics_app(self, app: str, seconds: float = 300.0) -> list[AppPoint]:
        data = await self.json("GET", f"/api/v1/metrics/apps/{app}", params={"seconds": seconds})
        return [AppPoint.model_validate(p) for p in data]

    async def metrics_rollups(
        self,
        *,
        node: str | None = None,
        app: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1440,
    ) -> list[Rollup]:
        """Per-minute roll-ups of one node or one app, oldest first."""
        params = {"node": node, "app": app, "since": since, "until": until, "limit": limit}
        data = await self.json(
            "GET",
            "/api/v1/metrics/rollups",
            params={k: v for k, v in params.items() if v is not None},
        )
        return [Rollup.model_validate(r) for r in data]

    async def metrics_stream(self) -> AsyncIterator[ClusterSample]:
        """The live Server-Sent Events stream: one cluster sample a second, until closed."""
        response = await self._open_stream(
            "GET",
            "/api/v1/metrics/stream",
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(30.0, connect=5.0),  # a ping comes every 5 s at least
        )
        try:
            event = "message"
            data: list[str] = []
            async for line in response.aiter_lines():
                if line == "":
                    if event == "sample" and data:
                        yield ClusterSample.model_validate_json("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[len("event:") :].strip()
                elif line.startswith("data:"):
                    data.append(line[len("data:") :].lstrip(" "))
        except httpx.TransportError as exc:
            broken = self.base_url
            self._fail_over()
            raise NetworkError(f"metrics stream from {broken} broke: {exc}") from exc
        finally:
            await response.aclose()

    async def promote(self, app: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("POST", f"/api/v1/apps/{app}/promote")
        return result

    async def events(self, deployment_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.json(
            "GET", f"/api/v1/deployments/{deployment_id}/events"
        )
        return result

    async def cluster_events(
        self,
        *,
        types: Sequence[str] = (),
        targets: Sequence[str] = (),
        last_event_id: str | None = None,
    ) -> AsyncGenerator[dict[str, Any]]:
        """The cluster event stream (``GET /api/v1/events``): each event's data, with its
        ``type`` and ``id`` (``ready`` or ``gap`` first; ``ping``: only the position moved),
        until the stream breaks (``NetworkError``; reconnect with the last ``id``) or the
        caller stops."""
        params: list[tuple[str, str]] = [("type", t) for t in types]
        params += [("target", t) for t in targets]
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        response = await self._open_stream(
            "GET",
            "/api/v1/events",
            params=params,
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=5.0),  # a ping comes every 5 s at least
        )
        try:
            data: list[str] = []
            event_id = ""
            async for line in response.aiter_lines():
                if line == "":
                    if data:
                        yield json.loads("\n".join(data))
                    elif event_id:  # a ping with the stream's position
                        yield {"type": "ping", "id": event_id}
                    data, event_id = [], ""
                elif line.startswith("data:"):
                    data.append(line[len("data:") :].lstrip(" "))
                elif line.startswith("id:"):
                    event_id = line[len("id:") :].strip()
        except httpx.TransportError as exc:
            broken = self.base_url
            self._fail_over()
            raise NetworkError(f"event stream from {broken} broke: {exc}") from exc
        finally:
            await response.aclose()

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

    async def submit_tasks(
        self, bodies: Sequence[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> list[TaskOut]:
        """Submit up to 1,000 tasks in one transaction (all or none), answers in order."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = await self.json(
            "POST", "/api/v1/tasks:batch", json={"tasks": list(bodies)}, headers=headers
        )
        return [TaskOut.model_validate(t) for t in data["tasks"]]

    async def task(self, task_id: str, *, wait: float = 0.0) -> TaskOut:
        """The task; with ``wait``, as soon as it is final, or after ``wait`` seconds
        (a long poll: ``GET /tasks/{id}?wait=``, at most 60)."""
        if not wait:
            return TaskOut.model_validate(await self.json("GET", f"/api/v1/tasks/{task_id}"))
        data = await self.json(
            "GET",
            f"/api/v1/tasks/{task_id}",
            params={"wait": f"{wait:g}"},
            timeout=httpx.Timeout(wait + 10, connect=5.0),
        )
        return TaskOut.model_validate(data)

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
            json={
                VERSION_FIELD: ClaimIn.SCHEMA_VERSION,  # as ClaimIn writes it
                "node": node,
                "drivers": drivers,
                "queues": queues,
                "wait": wait,
            },
            timeout=wait + 10,
        )
        return TaskOut.model_validate(response.json()) if response.status_code == 200 else None

    async def exchange_tasks(
        self,
        node: str,
        drivers: list[str],
        queues: list[str],
        *,
        reports: list[dict[str, Any]],
        want: int,
        wait: float,
    ) -> tuple[list[dict[str, Any]], list[TaskOut]]:
        """Hand in finished attempts and claim up to ``want`` tasks in one request:
        (one answer per report, the tasks claimed)."""
        data = await self.json(
            "POST",
            "/api/v1/tasks/exchange",
            json={
                VERSION_FIELD: ExchangeIn.SCHEMA_VERSION,  # as ExchangeIn writes it
                "node": node,
                "drivers": drivers,
                "queues": queues,
                "reports": reports,
                "want": want,
                "wait": wait,
            },
            timeout=wait + 10,
        )
        answer = ExchangeOut.model_validate(data)  # a newer version is refused here
        return list(data["reports"]), answer.tasks

    async def task_heartbeat(self, task_id: str, node: str, *, attempt: int) -> bool:
        """``attempt``: the claim's ``attempts`` (a later claim of the task is another lease)."""
        data = await self.json(
            "POST",
            f"/api/v1/tasks/{task_id}/heartbeat",
            json=TaskHolderIn(node=node, attempt=attempt).model_dump(mode="json"),
        )
        return TaskHeartbeatOut.model_validate(data).ok  # a newer version is refused here

    # -- signals, risk and the fire drill ----------------------------------------------

    # -- agent runs --

    async def run_events(self, run_id: str, *, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The run's events after ``after`` until its final one; a broken stream is
        opened again after the last event seen (``Last-Event-ID``), so none is lost."""
        seen = after
        for attempt in range(20):
            headers = {"Last-Event-ID": str(seen)} if seen else {}
            response = await self._open_stream(
                "GET", f"/api/v1/runs/{run_id}/events", headers=headers
            )
            try:
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event: dict[str, Any] = json.loads(line[6:])
                    seen = int(event.get("seq", seen))
                    yield event
                    if event.get("type") in _FINAL_RUN_EVENTS:
                        return
                return  # the server ended the stream: the run is over
            except httpx.TransportError:
                self._fail_over()
                await asyncio.sleep(min(0.2 * 2**attempt, 5))
            finally:
                await response.aclose()
        raise NetworkError(f"the event stream of run {run_id} kept breaking")

    # -- agent runs: the node driving one --

    async def run_next(self, run_id: str, *, node: str, task_id: str) -> dict[str, Any]:
        """What to do next for the run (``aether.model.runs.NextOut`` as a dict)."""
        data: dict[str, Any] = await self.json(
            "POST",
            f"/api/v1/agent-runtime/runs/{run_id}/next",
            json={"node": node, "task_id": task_id},
            timeout=120.0,
        )
        return data

    async def run_tool_result(
        self, run_id: str, step: int, *, node: str, ok: bool, output: str, error: str | None
    ) -> None:
        await self.request(
            "POST",
            f"/api/v1/agent-runtime/runs/{run_id}/steps/{step}/result",
            json={"node": node, "ok": ok, "output": output, "error": error},
        )

    async def post_signals(self, signals: list[SignalIn]) -> list[int]:
        """Record signals about nodes; their ids."""
        body = {"signals": [s.model_dump(mode="json", exclude_none=True) for s in signals]}
        data = await self.json("POST", "/api/v1/signals", json=body)
        return [int(i) for i in data["ids"]]

    async def market_signal(
        self,
        node: str,
        *,
        price: float | None = None,
        rebalance: bool | None = None,
        capacity_score: float | None = None,
        ts: float | None = None,
    ) -> list[int]:
        """The compat shape of ``post_signals``."""
        values = {"price": price, "rebalance": rebalance, "capacity_score": capacity_score}
        body = {"node": node, "ts": ts, **values}
        data = await self.json(
            "POST", "/api/v1/market/signal", json={k: v for k, v in body.items() if v is not None}
        )
        return [int(i) for i in data["ids"]]

    async def signals(
        self,
        *,
        node: str | None = None,
        kind: str | None = None,
        source: str | None = None,
        limit: int = 100,
    ) -> list[SignalOut]:
        params = {"node": node, "kind": kind, "source": source, "limit": limit}
        data = await self.json(
            "GET", "/api/v1/signals", params={k: v for k, v in params.items() if v is not None}
        )
        return [SignalOut.model_validate(s) for s in data]

    async def risk(self) -> list[RiskAssessment]:
        """The latest risk assessment of each node."""
        return [RiskAssessment.model_validate(a) for a in await self.json("GET", "/api/v1/risk")]

    async def risk_history(self, node: str, limit: int = 50) -> list[RiskAssessment]:
        """A node's recorded assessments, newest first."""
        data = await self.json("GET", f"/api/v1/risk/{node}", params={"limit": limit})
        return [RiskAssessment.model_validate(a) for a in data]

    async def drill_start(self, node: str | None = None) -> dict[str, Any]:
        body = {"node": node} if node else {}
        result: dict[str, Any] = await self.json("POST", "/api/v1/drill/start", json=body)
        return result

    async def drill_stop(self, node: str | None = None) -> dict[str, Any]:
        body = {"node": node} if node else {}
        result: dict[str, Any] = await self.json("POST", "/api/v1/drill/stop", json=body)
        return result

    # -- migrations and snapshots ---------------------------------------------------------

    async def migrate(self, instance: str, to: str | None = None) -> MigrationOut:
        """Ask to move ``instance`` (its key or APP/N) to node ``to`` (None: anywhere else)."""
        data = await self.json(
            "POST", "/api/v1/instances/migrate", json={"instance": instance, "to": to}
        )
        return MigrationOut.model_validate(data)

    async def migration(self, migration_id: str) -> MigrationOut:
        return MigrationOut.model_validate(
            await self.json("GET", f"/api/v1/migrations/{migration_id}")
        )

    async def migrations(self, app: str | None = None, limit: int = 100) -> list[MigrationOut]:
        params: dict[str, Any] = {"limit": limit}
        if app:
            params["app"] = app
        data = await self.json("GET", "/api/v1/migrations", params=params)
        return [MigrationOut.model_validate(m) for m in data]

    async def drain(self, node: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("POST", f"/api/v1/nodes/{node}/drain")
        return result

    async def undrain(self, node: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("POST", f"/api/v1/nodes/{node}/undrain")
        return result

    async def rebalance(self, app: str | None = None) -> RebalanceOut:
        """Plan the moves that spread ``app``'s instances (None: every app) and start one."""
        data = await self.json("POST", "/api/v1/rebalance", json={"app": app})
        return RebalanceOut.model_validate(data)

    async def snapshots(self, app: str | None = None, limit: int = 100) -> list[SnapshotOut]:
        params: dict[str, Any] = {"limit": limit}
        if app:
            params["app"] = app
        data = await self.json("GET", "/api/v1/snapshots", params=params)
        return [SnapshotOut.model_validate(s) for s in data]

    async def upload_snapshot(
        self, path: Path, digest: str, *, instance: str, kind: str, taken_at: float | None = None
    ) -> SnapshotOut:
        """Store a checkpoint of ``instance`` (a node does this); the server verifies the digest.

        ``taken_at`` (an ``orphaned`` one): when the instance last could take writes.
        """

        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk

        data = await self.json(
            "POST",
            "/api/v1/snapshots",
            content=body(),
            headers={
                "X-Aether-Artifact-Digest": digest,
                "X-Aether-Instance": instance,
                "X-Aether-Snapshot-Kind": kind,
                "Content-Type": "application/gzip",
                "Content-Length": str(path.stat().st_size),
                **({"X-Aether-Taken-At": f"{taken_at:.3f}"} if taken_at is not None else {}),
            },
        )
        return SnapshotOut.model_validate(data)

    async def confirm_snapshot(self, digest: str, *, instance: str) -> SnapshotOut:
        """A periodic checkpoint found ``instance``'s state still ``digest`` (no bytes sent)."""
        data = await self.json(
            "POST",
            "/api/v1/snapshots",
            headers={
                "X-Aether-Artifact-Digest": digest,
                "X-Aether-Instance": instance,
                "X-Aether-Snapshot-Kind": "periodic",
                "X-Aether-Snapshot-Unchanged": "1",
            },
        )
        return SnapshotOut.model_validate(data)

    async def restore_snapshot(self, app: str, digest: str, n: int | None = None) -> MigrationOut:
        """Replace ``app``'s instance (``n``, or its first) by one restored from ``digest``."""
        data = await self.json(
            "POST", f"/api/v1/apps/{app}/snapshots/{digest}/restore", json={"n": n}
        )
        return MigrationOut.model_validate(data)

    async def download_snapshot(self, digest: str, dest: Path) -> None:
        await self._download(f"/api/v1/snapshots/{digest}", dest, "snapshot download")

    # -- operations ---------------------------------------------------------

    async def backup_state(self, dest: Path) -> None:
        """A consistent copy of the server's embedded (SQLite) state store, written to ``dest``."""
        await self._download("/api/v1/admin/backup/state", dest, "state copy")

    async def diag_bundle(self, since: float, nodes: str, wait: float | None = None) -> bytes:
        """The diagnostics bundle (tar.gz bytes): the server's and ``nodes``' parts."""
        params: dict[str, Any] = {"since": since, "nodes": nodes}
        if wait is not None:
            params["wait"] = wait
        response = await self.request(
            "POST", "/api/v1/diag/bundle", params=params, timeout=(wait or 60) + 120
        )
        return response.content

    async def send_diag_part(
        self, node: str, request_id: str, files: dict[str, str], to: str | None = None
    ) -> None:
        """A node's part of a diagnostics bundle its heartbeat answer asked for: to ``to``
        (the node port of the server building the bundle, https only: its certificate is
        checked before the credential is sent), else to the servers this client calls."""
        path = f"/api/v1/nodes/{node}/diag/{request_id}"
        body = NodePartIn(files=files).model_dump(mode="json")
        if to is None:
            await self.request("POST", path, json=body)
            return
        if not to.lower().startswith("https://"):
            raise ValueError(f"a diagnostics part goes over TLS only, not to {to}")
        try:
            response = await self._http.post(to.rstrip("/") + path, json=body)
        except httpx.TransportError as exc:
            raise NetworkError(
                f"cannot reach the server building the bundle at {to}: {exc}"
            ) from exc
        _raise_for(response)
