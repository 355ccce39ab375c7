"""Queries on the records database. Every tenant-owned query takes the tenant."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aether.errors import ConflictError, ForbiddenError, NotFoundError
from aether.store.records.schema import (
    ApiToken,
    App,
    Artifact,
    DecisionRow,
    Deployment,
    DeploymentEvent,
    Execution,
    IdempotencyKey,
    MetricRollup,
    MigrationRecord,
    Node,
    PublicKey,
    RiskAssessmentRow,
    Sandbox,
    SignalRow,
    SnapshotRecord,
    Tenant,
)

__all__ = ["DEFAULT_TENANT", "Principal", "Records", "hash_token", "now"]

DEFAULT_TENANT = "default"
#: ``join``: a join token (the cluster admin's), exchanged for a node credential (``node``,
#: bound to one node id) by ``POST /api/v1/nodes/join``; neither is a tenant's role
ROLES = ("admin", "operator", "viewer", "join", "node")


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def utc(ts: float) -> datetime:
    """A naive UTC datetime for an epoch timestamp (how the records database stores time)."""
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def epoch(dt: datetime) -> float:
    """The epoch timestamp of a datetime; a naive one is taken as UTC."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant every query is scoped by, and the role.

    ``node`` is the node id a node credential is bound to (role ``node``), else None.
    """

    tenant_id: str
    tenant: str
    role: str
    token_id: str
    node: str | None = None

    @property
    def cluster_admin(self) -> bool:
        """An admin of the default tenant: may add and revoke nodes."""
        return self.role == "admin" and self.tenant == DEFAULT_TENANT


class Records:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    # -- tenants and tokens -------------------------------------------------

    async def ensure_tenant(self, name: str = DEFAULT_TENANT) -> Tenant:
        async with self.sessions() as session:
            tenant = await session.scalar(select(Tenant).where(Tenant.name == name))
            if tenant is not None:
                return tenant
            tenant = Tenant(id=new_id(), name=name, created_at=now())
            session.add(tenant)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                found = await session.scalar(select(Tenant).where(Tenant.name == name))
                assert found is not None
                return found
            return tenant

    async def has_token(self, role: str) -> bool:
        async with self.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(ApiToken)
                .where(ApiToken.role == role, ApiToken.revoked_at.is_(None))
            )
            return bool(count)

    async def create_token(self, tenant_id: str, role: str, name: str) -> str:
        """A new token; only its hash is stored, the plain text is returned once."""
        return (await self.issue_token(tenant_id, role, name))[1]

    async def issue_token(
        self, tenant_id: str, role: str, name: str, *, node_id: str | None = None
    ) -> tuple[str, str]:
        """(id, plain text) of a new token; a node credential names its node."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if (role == "node") != (node_id is not None):
            raise ValueError("a node credential, and only one, is bound to a node id")
        token = f"ae_{role[:1]}_{secrets.token_urlsafe(32)}"
        token_id = new_id()
        async with self.sessions() as session:
            session.add(
                ApiToken(
                    id=token_id,
                    tenant_id=tenant_id,
                    name=name,
                    role=role,
                    token_hash=hash_token(token),
                    created_at=now(),
                    revoked_at=None,
                    node_id=node_id,
                )
            )
            await session.commit()
        return token_id, token

    async def list_tokens(self, tenant_id: str) -> Sequence[ApiToken]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(ApiToken)
                    .where(ApiToken.tenant_id == tenant_id)
                    .order_by(ApiToken.created_at)
                )
            ).all()

    async def get_token(self, tenant_id: str, token_id: str) -> ApiToken:
        async with self.sessions() as session:
            token = await session.scalar(
                select(ApiToken).where(ApiToken.tenant_id == tenant_id, ApiToken.id == token_id)
            )
        if token is None:
            raise NotFoundError(f"token {token_id!r} not found")
        return token

    async def revoke_token(self, token_id: str) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=now())
            )
            await session.commit()

    async def authenticate(self, token: str) -> Principal | None:
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(ApiToken, Tenant)
                    .join(Tenant, Tenant.id == ApiToken.tenant_id)
                    .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
                )
            ).first()
            if row is None:
                return None
            tok, tenant = row
            return Principal(tenant.id, tenant.name, tok.role, tok.id, tok.node_id)

    # -- node credentials -----------------------------------------------------

    async def join_node(self, tenant_id: str, node_id: str) -> tuple[str, str, list[str]]:
        """A new credential for ``node_id``: (id, plain text, ids of the ones it replaced).

        ForbiddenError when an admin revoked the node and has not allowed it again.
        """
        async with self.sessions() as session:
            node = await session.get(Node, node_id)
            if node is not None and node.revoked_at is not None:
                raise ForbiddenError(
                    f"node {node_id!r} was revoked; a cluster admin must allow it to join "
                    f"again first (`aether nodes allow {node_id}`)",
                    code="node_revoked",
                )
        replaced = await self._revoke_credentials(node_id)
        token_id, token = await self.issue_token(
            tenant_id, "node", f"node {node_id}", node_id=node_id
        )
        return token_id, token, replaced

    async def _revoke_credentials(self, node_id: str) -> list[str]:
        async with self.sessions() as session:
            ids = list(
                (
                    await session.scalars(
                        select(ApiToken.id).where(
                            ApiToken.node_id == node_id, ApiToken.revoked_at.is_(None)
                        )
                    )
                ).all()
            )
            if ids:
                await session.execute(
                    update(ApiToken).where(ApiToken.id.in_(ids)).values(revoked_at=now())
                )
                await session.commit()
            return ids

    async def revoke_node(self, node_id: str) -> list[str]:
        """Revoke the node's credentials and bar it from joining again; the revoked ids.

        NotFoundError for a node that never joined nor registered.
        """
        async with self.sessions() as session:
            node = await session.get(Node, node_id)
            known = node is not None or bool(
                await session.scalar(
                    select(func.count()).select_from(ApiToken).where(ApiToken.node_id == node_id)
                )
            )
            if not known:
                raise NotFoundError(f"node {node_id!r} not found")
            if node is None:  # joined, never registered: remember the revocation all the same
                node = Node(
                    id=node_id,
                    router_url="",
                    capabilities={"cpus": 0, "memory_mb": 0, "drivers": []},
                    draining=False,
                    registered_at=now(),
                    last_seen_at=now(),
                )
                session.add(node)
            node.revoked_at = now()
            await session.commit()
        return await self._revoke_credentials(node_id)

    async def allow_node(self, node_id: str) -> None:
        """Let a revoked node join again (with a join token)."""
        async with self.sessions() as session:
            result = await session.execute(
                update(Node).where(Node.id == node_id).values(revoked_at=None)
            )
            await session.commit()
        if not getattr(result, "rowcount", 0):
            raise NotFoundError(f"node {node_id!r} not found")

    # -- apps -----------------------------------------------------------------

    async def get_app(self, tenant_id: str, name: str) -> App:
        async with self.sessions() as session:
            app = await session.scalar(
                select(App).where(App.tenant_id == tenant_id, App.name == name)
            )
        if app is None:
            raise NotFoundError(f"app {name!r} not found; deploy it first with `aether deploy`")
        return app

    async def get_or_create_app(self, tenant_id: str, name: str) -> App:
        try:
            return await self.get_app(tenant_id, name)
        except NotFoundError:
            pass
        async with self.sessions() as session:
            app = App(id=new_id(), tenant_id=tenant_id, name=name, created_at=now())
            session.add(app)
            try:
                await session.commit()
                return app
            except IntegrityError:
                await session.rollback()
        return await self.get_app(tenant_id, name)

    async def list_apps(self, tenant_id: str) -> Sequence[App]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(App).where(App.tenant_id == tenant_id).order_by(App.name)
                )
            ).all()

    # -- artifacts ----------------------------------------------------------

    async def has_artifact(self, tenant_id: str, digest: str) -> bool:
        async with self.sessions() as session:
            found = await session.scalar(
                select(Artifact.id).where(
                    Artifact.tenant_id == tenant_id, Artifact.digest == digest
                )
            )
            return found is not None

    async def add_artifact(self, tenant_id: str, digest: str, size_bytes: int) -> None:
        if await self.has_artifact(tenant_id, digest):
            return
        async with self.sessions() as session:
            session.add(
                Artifact(
                    id=new_id(),
                    tenant_id=tenant_id,
                    digest=digest,
                    size_bytes=size_bytes,
                    created_at=now(),
                )
            )
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()

    async def set_artifact_metadata(
        self,
        tenant_id: str,
        digest: str,
        *,
        sbom: dict[str, Any] | None,
        manifest: list[dict[str, Any]] | None,
    ) -> None:
        """Record the artifact's SBOM and manifest the first time they are sent."""
        async with self.sessions() as session:
            row = await session.scalar(
                select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.digest == digest)
            )
            if row is None:
                return
            if sbom is not None and row.sbom is None:
                row.sbom = sbom
            if manifest is not None and row.manifest is None:
                row.manifest = {"files": manifest}
            await session.commit()

    async def artifact_row(self, tenant_id: str, digest: str) -> Artifact:
        """The tenant's artifact, or NotFoundError."""
        row = await self.get_artifact(tenant_id, digest)
        if row is None:
            raise NotFoundError(f"artifact {digest} not found")
        return row

    # -- deployments --------------------------------------------------------

    async def create_deployment(
        self,
        tenant_id: str,
        app: App,
        *,
        digest: str,
        spec: dict[str, Any],
        instances: int,
        rollback_of: int | None = None,
        request_key: str | None = None,
    ) -> tuple[Deployment, bool]:
        """Version N+1 of ``app`` and True; retried if two deploys race for the same number.

        With a ``request_key`` (the request's Idempotency-Key) a deployment already
        created by that request is returned with False instead: the request ran
        before and its answer was lost.
        """
        for _ in range(5):
            if request_key is not None:
                found = await self.deployment_by_request(tenant_id, request_key)
                if found is not None:
                    return found, False
            async with self.sessions() as session:
                latest = await session.scalar(
                    select(func.max(Deployment.version)).where(Deployment.app_id == app.id)
                )
                deployment = Deployment(
                    id=new_id(),
                    tenant_id=tenant_id,
                    app_id=app.id,
                    version=(latest or 0) + 1,
                    digest=digest,
                    spec=spec,
                    instances=instances,
                    status="pending",
                    rollback_of=rollback_of,
                    created_at=now(),
                    request_key=request_key,
                )
                session.add(deployment)
                try:
                    await session.commit()
                    return deployment, True
                except IntegrityError:
                    await session.rollback()
        raise ConflictError(f"too many concurrent deployments of {app.name}; try again")

    async def deployment_by_request(self, tenant_id: str, request_key: str) -> Deployment | None:
        """The deployment the request with this Idempotency-Key created, if any."""
        async with self.sessions() as session:
            found: Deployment | None = await session.scalar(
                select(Deployment).where(
                    Deployment.tenant_id == tenant_id, Deployment.request_key == request_key
                )
            )
            return found

    async def list_deployments(self, tenant_id: str, app: App) -> Sequence[Deployment]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(Deployment)
                    .where(Deployment.tenant_id == tenant_id, Deployment.app_id == app.id)
                    .order_by(Deployment.version.desc())
                )
            ).all()

    async def get_deployment(self, tenant_id: str, deployment_id: str) -> Deployment:
        async with self.sessions() as session:
            deployment = await session.scalar(
                select(Deployment).where(
                    Deployment.tenant_id == tenant_id, Deployment.id == deployment_id
                )
            )
        if deployment is None:
            raise NotFoundError(f"deployment {deployment_id!r} not found")
        return deployment

    async def get_deployment_by_version(self, tenant_id: str, app: App, version: int) -> Deployment:
        async with self.sessions() as session:
            deployment = await session.scalar(
                select(Deployment).where(
                    Deployment.tenant_id == tenant_id,
                    Deployment.app_id == app.id,
                    Deployment.version == version,
                )
            )
        if deployment is None:
            raise NotFoundError(f"app {app.name!r} has no version {version}")
        return deployment

    async def set_deployment_status(self, deployment_id: str, status: str) -> bool:
        """Set the status; True if it changed (so events are written once)."""
        async with self.sessions() as session:
            result = await session.execute(
                update(Deployment)
                .where(Deployment.id == deployment_id, Deployment.status != status)
                .values(status=status)
            )
            await session.commit()
            return bool(getattr(result, "rowcount", 0))

    async def add_event(self, deployment_id: str, type_: str, message: str) -> None:
        async with self.sessions() as session:
            session.add(
                DeploymentEvent(
                    deployment_id=deployment_id, type=type_, message=message, created_at=now()
                )
            )
            await session.commit()

    async def list_events(self, deployment_id: str) -> Sequence[DeploymentEvent]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(DeploymentEvent)
                    .where(DeploymentEvent.deployment_id == deployment_id)
                    .order_by(DeploymentEvent.id)
                )
            ).all()

    # -- idempotency --------------------------------------------------------

    async def get_idempotent(self, tenant_id: str, key: str) -> IdempotencyKey | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(IdempotencyKey).where(
                    IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
                )
            )

    async def save_idempotent(
        self,
        tenant_id: str,
        key: str,
        request_hash: str,
        status_code: int,
        response: dict[str, Any],
    ) -> None:
        async with self.sessions() as session:
            session.add(
                IdempotencyKey(
                    tenant_id=tenant_id,
                    key=key,
                    request_hash=request_hash,
                    status_code=status_code,
                    response=response,
                    created_at=now(),
                )
            )
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()

    # -- nodes --------------------------------------------------------------

    async def upsert_node(
        self, node_id: str, router_url: str, capabilities: dict[str, Any]
    ) -> Node:
        async with self.sessions() as session:
            node = await session.get(Node, node_id)
            if node is None:
                node = Node(
                    id=node_id,
                    router_url=router_url,
                    capabilities=capabilities,
                    draining=False,
                    registered_at=now(),
                    last_seen_at=now(),
                )
                session.add(node)
            else:
                node.router_url = router_url
                node.capabilities = capabilities
                node.last_seen_at = now()
            await session.commit()
            return node

    async def touch_node(self, node_id: str) -> None:
        async with self.sessions() as session:
            await session.execute(update(Node).where(Node.id == node_id).values(last_seen_at=now()))
            await session.commit()

    async def list_nodes(self) -> Sequence[Node]:
        async with self.sessions() as session:
            return (await session.scalars(select(Node).order_by(Node.id))).all()

    async def set_node_draining(
        self, node_id: str, draining: bool, *, reason: str = "", by: str = ""
    ) -> None:
        """Set the drain flag with why and by whom (cleared when undrained)."""
        values = {
            "draining": draining,
            "drain_reason": reason if draining else "",
            "drained_by": by if draining else "",
        }
        async with self.sessions() as session:
            result = await session.execute(update(Node).where(Node.id == node_id).values(**values))
            await session.commit()
        if not getattr(result, "rowcount", 0):
            raise NotFoundError(f"node {node_id!r} not found")

    # -- controller decisions (aether.server.leader.controller) -----------------------

    async def add_decision(
        self,
        *,
        ts: float,
        layer: int,
        kind: str,
        target: str,
        action: dict[str, Any],
        inputs: dict[str, Any],
        reason: str,
        outcome: str,
        detail: str = "",
        tenant_id: str | None = None,
    ) -> DecisionRow:
        row = DecisionRow(
            ts=ts,
            layer=layer,
            kind=kind,
            target=target[:128],
            tenant_id=tenant_id,
            action=action,
            inputs=inputs,
            reason=reason,
            outcome=outcome,
            detail=detail,
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
            return row

    async def list_decisions(
        self,
        tenant_id: str | None,
        *,
        layer: int | None = None,
        kind: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> Sequence[DecisionRow]:
        """Newest first. A tenant sees its apps' decisions and the cluster's drains and
        undrains; ``tenant_id`` None sees every decision (adviser failures included)."""
        query = select(DecisionRow).order_by(DecisionRow.id.desc()).limit(limit)
        if tenant_id is not None:
            query = query.where(
                or_(
                    DecisionRow.tenant_id == tenant_id,
                    DecisionRow.tenant_id.is_(None) & DecisionRow.kind.in_(("drain", "undrain")),
                )
            )
        if layer is not None:
            query = query.where(DecisionRow.layer == layer)
        if kind is not None:
            query = query.where(DecisionRow.kind == kind)
        if target is not None:
            query = query.where(DecisionRow.target == target)
        if outcome is not None:
            query = query.where(DecisionRow.outcome == outcome)
        if since is not None:
            query = query.where(DecisionRow.ts >= since)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def delete_decisions_before(self, ts: float) -> int:
        async with self.sessions() as session:
            result = await session.execute(delete(DecisionRow).where(DecisionRow.ts < ts))
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    # -- signing: public keys, app settings, artifact signatures ---------------
    # (issue 3, part 3; the checks themselves live in aether.server.services.signatures)

    async def find_app(self, tenant_id: str, name: str) -> App | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(App).where(App.tenant_id == tenant_id, App.name == name)
            )

    async def app_name_owned_elsewhere(self, tenant_id: str, name: str) -> bool:
        """True if another tenant has an app row called ``name``."""
        async with self.sessions() as session:
            found = await session.scalar(
                select(App.id).where(App.name == name, App.tenant_id != tenant_id).limit(1)
            )
            return found is not None

    async def update_app_settings(self, tenant_id: str, app: App, values: dict[str, Any]) -> App:
        """Set ``require_signature`` and/or ``retain_deployments``; the updated row."""
        allowed = {"require_signature", "retain_deployments"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"not app settings: {sorted(unknown)}")
        async with self.sessions() as session:
            if values:
                await session.execute(
                    update(App).where(App.tenant_id == tenant_id, App.id == app.id).values(**values)
                )
                await session.commit()
            row = await session.scalar(
                select(App).where(App.tenant_id == tenant_id, App.id == app.id)
            )
        if row is None:
            raise NotFoundError(f"app {app.name!r} not found")
        return row

    async def add_public_key(
        self, tenant_id: str, app: App, *, name: str, public_key: str, fingerprint: str
    ) -> PublicKey:
        async with self.sessions() as session:
            row = PublicKey(
                id=new_id(),
                tenant_id=tenant_id,
                app_id=app.id,
                name=name,
                public_key=public_key,
                fingerprint=fingerprint,
                created_at=now(),
            )
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise ConflictError(
                    f"key {fingerprint} is already registered for app {app.name!r}"
                ) from None
            return row

    async def list_public_keys(self, tenant_id: str, app: App) -> Sequence[PublicKey]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(PublicKey)
                    .where(PublicKey.tenant_id == tenant_id, PublicKey.app_id == app.id)
                    .order_by(PublicKey.created_at, PublicKey.id)
                )
            ).all()

    async def delete_public_key(self, tenant_id: str, app: App, key_id: str) -> None:
        async with self.sessions() as session:
            row = await session.scalar(
                select(PublicKey).where(
                    PublicKey.tenant_id == tenant_id,
                    PublicKey.app_id == app.id,
                    PublicKey.id == key_id,
                )
            )
            if row is None:
                raise NotFoundError(f"app {app.name!r} has no public key {key_id!r}")
            await session.delete(row)
            await session.commit()

    async def get_artifact(self, tenant_id: str, digest: str) -> Artifact | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.digest == digest)
            )

    async def set_artifact_signature(
        self, tenant_id: str, digest: str, signature: str, signed_by: str | None
    ) -> None:
        """Store a signature on the tenant's artifact row.

        A verified signature (``signed_by`` set) always replaces the stored one; an
        unverified one only replaces another unverified one (or none), so a later
        unverifiable upload never downgrades an artifact that was verified.
        """
        condition = [Artifact.tenant_id == tenant_id, Artifact.digest == digest]
        if signed_by is None:
            condition.append(Artifact.signed_by.is_(None))
        async with self.sessions() as session:
            await session.execute(
                update(Artifact).where(*condition).values(signature=signature, signed_by=signed_by)
            )
            await session.commit()

    # -- retention ------------------------------------------------------------

    async def retention_inputs(
        self,
    ) -> tuple[Sequence[Artifact], Sequence[tuple[str, str, int, str]], dict[tuple[str, str], int]]:
        """Every artifact claim, every (tenant, app, version, digest), per-app retention."""
        async with self.sessions() as session:
            artifacts = (await session.scalars(select(Artifact))).all()
            rows = (
                await session.execute(
                    select(
                        Deployment.tenant_id, App.name, Deployment.version, Deployment.digest
                    ).join(App, App.id == Deployment.app_id)
                )
            ).all()
            retain = {
                (a.tenant_id, a.name): a.retain_deployments
                for a in (await session.scalars(select(App))).all()
                if a.retain_deployments
            }
        deployments = [(t, name, int(v), d) for t, name, v, d in rows]
        return artifacts, deployments, retain

    async def delete_artifact_claim(self, tenant_id: str, digest: str) -> None:
        async with self.sessions() as session:
            await session.execute(
                delete(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.digest == digest)
            )
            await session.commit()

    # -- sandboxes and executions ------------------------------------------------

    async def create_sandbox(
        self,
        tenant_id: str,
        sandbox_id: str,
        *,
        name: str,
        driver: str | None,
        vcpus: int,
        memory_mb: int,
        network: bool,
    ) -> Sandbox:
        async with self.sessions() as session:
            existing = await session.get(Sandbox, sandbox_id)
            if existing is not None:
                return existing
            sandbox = Sandbox(
                id=sandbox_id,
                tenant_id=tenant_id,
                name=name,
                node=None,
                driver=driver or "",
                vcpus=vcpus,
                memory_mb=memory_mb,
                network=network,
                isolated=True,
                status="creating",
                created_at=now(),
                updated_at=now(),
            )
            session.add(sandbox)
            await session.commit()
            return sandbox

    async def get_sandbox(self, sandbox_id: str, tenant_id: str | None = None) -> Sandbox:
        async with self.sessions() as session:
            sandbox = await session.get(Sandbox, sandbox_id)
        if sandbox is None or (tenant_id is not None and sandbox.tenant_id != tenant_id):
            raise NotFoundError(f"sandbox {sandbox_id!r} not found")
        return sandbox

    async def update_sandbox(self, sandbox_id: str, **values: Any) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(Sandbox).where(Sandbox.id == sandbox_id).values(updated_at=now(), **values)
            )
            await session.commit()

    async def list_sandboxes(
        self, tenant_id: str | None, *, include_deleted: bool = False, node: str | None = None
    ) -> Sequence[Sandbox]:
        query = select(Sandbox).order_by(Sandbox.created_at.desc())
        if tenant_id is not None:
            query = query.where(Sandbox.tenant_id == tenant_id)
        if not include_deleted:
            query = query.where(Sandbox.status != "deleted")
        if node is not None:
            query = query.where(Sandbox.node == node)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def add_execution(self, execution: Execution) -> None:
        async with self.sessions() as session:
            if await session.get(Execution, execution.id) is None:
                session.add(execution)
                await session.commit()

    async def list_executions(
        self, tenant_id: str, sandbox_id: str, limit: int = 100
    ) -> Sequence[Execution]:
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(Execution)
                    .where(Execution.tenant_id == tenant_id, Execution.sandbox_id == sandbox_id)
                    .order_by(Execution.started_at.desc())
                    .limit(limit)
                )
            ).all()

    async def get_execution(self, tenant_id: str, execution_id: str) -> Execution:
        async with self.sessions() as session:
            execution = await session.get(Execution, execution_id)
        if execution is None or execution.tenant_id != tenant_id:
            raise NotFoundError(f"execution {execution_id!r} not found")
        return execution

    # -- signals and risk assessments (cluster-level, not tenant-owned) ---------

    async def add_signals(self, signals: Sequence[dict[str, Any]]) -> list[int]:
        """Store signals (node, kind, value, source, ts); their ids, in order."""
        rows = [SignalRow(created_at=now(), **signal) for signal in signals]
        async with self.sessions() as session:
            session.add_all(rows)
            await session.commit()
        return [row.id for row in rows]

    async def list_signals(
        self,
        *,
        node: str | None = None,
        kind: str | None = None,
        source: str | None = None,
        limit: int = 100,
    ) -> Sequence[SignalRow]:
        """Newest first."""
        query = select(SignalRow).order_by(SignalRow.id.desc()).limit(limit)
        if node is not None:
            query = query.where(SignalRow.node == node)
        if kind is not None:
            query = query.where(SignalRow.kind == kind)
        if source is not None:
            query = query.where(SignalRow.source == source)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def read_signals(
        self,
        after_id: int,
        *,
        created_since: datetime | None = None,
        observed_since: float | None = None,
    ) -> Sequence[SignalRow]:
        """Signals with an id above ``after_id`` -- or created since ``created_since``,
        to catch rows that committed after a higher id was read -- observed since
        ``observed_since``; in id order."""
        newer = SignalRow.id > after_id
        query = select(SignalRow).order_by(SignalRow.id)
        if created_since is not None:
            query = query.where(or_(newer, SignalRow.created_at >= created_since))
        else:
            query = query.where(newer)
        if observed_since is not None:
            query = query.where(SignalRow.ts >= observed_since)
        async with self.sessions() as session:
            return (await session.scalars(query)).all()

    async def latest_signals_by_node(self, source: str) -> dict[str, SignalRow]:
        """Each node's newest signal from ``source``."""
        newest = (
            select(func.max(SignalRow.id))
            .where(SignalRow.source == source)
            .group_by(SignalRow.node)
        )
        async with self.sessions() as session:
            rows = (await session.scalars(select(SignalRow).where(SignalRow.id.in_(newest)))).all()
        return {row.node: row for row in rows}

    async def add_risk_assessments(self, assessments: Sequence[dict[str, Any]]) -> None:
        """Store verdicts (node, status, confidence, root_cause, rule, inputs, ts)."""
        if not assessments:
            return
        async with self.sessions() as session:
            session.add_all(RiskAssessmentRow(**a) for a in assessments)
            await session.commit()

    async def latest_risk_assessments(self) -> Sequence[RiskAssessmentRow]:
        """Each node's newest stored verdict, by node."""
        newest = select(func.max(RiskAssessmentRow.id)).group_by(RiskAssessmentRow.node)
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(RiskAssessmentRow)
                    .where(RiskAssessmentRow.id.in_(newest))
                    .order_by(RiskAssessmentRow.node)
                )
            ).all()

    async def risk_history(self, node: str, limit: int = 50) -> Sequence[RiskAssessmentRow]:
        """A node's stored verdicts, newest first."""
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(RiskAssessmentRow)
                    .where(RiskAssessmentRow.node == node)
                    .order_by(RiskAssessmentRow.id.desc())
                    .limit(limit)
                )
            ).all()

    async def prune_risk_history(self, signals_before: datetime, assessments_before: float) -> int:
        """Retention: delete signals created and verdicts made before the cut-offs."""
        async with self.sessions() as session:
            a = await session.execute(
                delete(SignalRow).where(SignalRow.created_at < signals_before)
            )
            b = await session.execute(
                delete(RiskAssessmentRow).where(RiskAssessmentRow.ts < assessments_before)
            )
            await session.commit()
        return int(getattr(a, "rowcount", 0) or 0) + int(getattr(b, "rowcount", 0) or 0)

    # -- telemetry roll-ups ---------------------------------------------------------

    async def write_rollups(
        self, minute: float, rows: Sequence[dict[str, Any]], *, replace: bool = True
    ) -> None:
        """Store roll-ups of one minute; ``replace``: first delete any of that minute.

        Each row has ``kind``, ``name``, ``samples``, ``avg`` and ``max`` (a new
        leader may write a minute its predecessor wrote too: the newest wins).
        """
        async with self.sessions() as session:
            if replace:
                await session.execute(delete(MetricRollup).where(MetricRollup.minute == minute))
            if rows:  # one bulk INSERT (thousands of nodes: no ORM unit of work)
                await session.execute(
                    insert(MetricRollup),
                    [
                        {
                            "kind": row["kind"],
                            "name": row["name"],
                            "minute": minute,
                            "samples": row["samples"],
                            "avg_values": row["avg"],
                            "max_values": row["max"],
                        }
                        for row in rows
                    ],
                )
            await session.commit()

    async def list_rollups(
        self, kind: str, name: str, since: float, until: float | None = None, limit: int = 1440
    ) -> Sequence[MetricRollup]:
        """One node's or app's roll-ups from ``since`` (minute start), oldest first."""
        query = select(MetricRollup).where(
            MetricRollup.kind == kind, MetricRollup.name == name, MetricRollup.minute >= since
        )
        if until is not None:
            query = query.where(MetricRollup.minute < until)
        async with self.sessions() as session:
            return (await session.scalars(query.order_by(MetricRollup.minute).limit(limit))).all()

    async def delete_rollups_before(self, minute: float) -> int:
        """Retention: delete the roll-ups of minutes that started before ``minute``."""
        async with self.sessions() as session:
            result = await session.execute(delete(MetricRollup).where(MetricRollup.minute < minute))
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    # -- snapshots and migrations (aether.server.services.migrations) ------------------

    async def add_snapshot(
        self,
        *,
        tenant_id: str,
        app: str,
        instance: str,
        node: str,
        digest: str,
        size_bytes: int,
        kind: str,
    ) -> SnapshotRecord:
        row = SnapshotRecord(
            id=new_id(),
            tenant_id=tenant_id,
            app=app,
            instance=instance[:255],
            node=node[:128],
            digest=digest,
            size_bytes=size_bytes,
            kind=kind,
            tier="hot",
            created_at=now(),
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return row

    async def list_snapshots(
        self, tenant_id: str | None, app: str | None = None, limit: int = 100
    ) -> Sequence[SnapshotRecord]:
        """Newest first; ``tenant_id`` None: every tenant's (retention)."""
        query = select(SnapshotRecord)
        if tenant_id is not None:
            query = query.where(SnapshotRecord.tenant_id == tenant_id)
        if app is not None:
            query = query.where(SnapshotRecord.app == app)
        query = query.order_by(SnapshotRecord.created_at.desc(), SnapshotRecord.id.desc())
        async with self.sessions() as session:
            return (await session.scalars(query.limit(limit))).all()

    async def has_snapshot(self, tenant_id: str | None, digest: str) -> bool:
        query = select(SnapshotRecord.id).where(SnapshotRecord.digest == digest)
        if tenant_id is not None:
            query = query.where(SnapshotRecord.tenant_id == tenant_id)
        async with self.sessions() as session:
            return await session.scalar(query.limit(1)) is not None

    async def snapshot_taken_on(self, node: str, digest: str) -> bool:
        """Whether a snapshot with this digest was stored from an instance on ``node``."""
        query = select(SnapshotRecord.id).where(
            SnapshotRecord.digest == digest, SnapshotRecord.node == node
        )
        async with self.sessions() as session:
            return await session.scalar(query.limit(1)) is not None

    async def latest_snapshots(self, apps: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The digest of the newest snapshot of each (tenant id, app) that has one."""
        out: dict[tuple[str, str], str] = {}
        async with self.sessions() as session:
            for tenant_id, app in apps:
                digest = await session.scalar(
                    select(SnapshotRecord.digest)
                    .where(SnapshotRecord.tenant_id == tenant_id, SnapshotRecord.app == app)
                    .order_by(SnapshotRecord.created_at.desc(), SnapshotRecord.id.desc())
                    .limit(1)
                )
                if digest is not None:
                    out[(tenant_id, app)] = digest
        return out

    async def artifact_claimed(self, digest: str) -> bool:
        """Whether any tenant holds an artifact with this digest."""
        async with self.sessions() as session:
            found = await session.scalar(
                select(Artifact.id).where(Artifact.digest == digest).limit(1)
            )
            return found is not None

    async def delete_snapshots(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        async with self.sessions() as session:
            await session.execute(delete(SnapshotRecord).where(SnapshotRecord.id.in_(ids)))
            await session.commit()

    async def set_snapshot_tiers(self, tiers: dict[str, str]) -> None:
        """Record each snapshot's tier (row id → tier) where it changed."""
        async with self.sessions() as session:
            for tier in sorted(set(tiers.values())):
                ids = [i for i, t in tiers.items() if t == tier]
                await session.execute(
                    update(SnapshotRecord)
                    .where(SnapshotRecord.id.in_(ids), SnapshotRecord.tier != tier)
                    .values(tier=tier)
                )
            await session.commit()

    async def create_migration(
        self,
        *,
        tenant_id: str,
        app: str,
        instance: str,
        from_node: str,
        to_node: str | None,
        kind: str,
        reason: str,
        migration_id: str | None = None,
    ) -> MigrationRecord:
        row = MigrationRecord(
            id=migration_id or new_id(),
            tenant_id=tenant_id,
            app=app,
            instance=instance[:255],
            from_node=from_node,
            to_node=to_node,
            kind=kind,
            status="requested",
            snapshot=None,
            replacement=None,
            reason=reason,
            started_at=now(),
            finished_at=None,
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return row

    async def get_migration(self, tenant_id: str | None, migration_id: str) -> MigrationRecord:
        async with self.sessions() as session:
            row = await session.get(MigrationRecord, migration_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            raise NotFoundError(f"migration {migration_id!r} not found")
        return row

    async def list_migrations(
        self, tenant_id: str, app: str | None = None, limit: int = 100
    ) -> Sequence[MigrationRecord]:
        """Newest first."""
        query = select(MigrationRecord).where(MigrationRecord.tenant_id == tenant_id)
        if app is not None:
            query = query.where(MigrationRecord.app == app)
        query = query.order_by(MigrationRecord.started_at.desc(), MigrationRecord.id.desc())
        async with self.sessions() as session:
            return (await session.scalars(query.limit(limit))).all()

    async def open_migrations(self) -> Sequence[MigrationRecord]:
        """Every migration that has not finished, oldest first."""
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(MigrationRecord)
                    .where(MigrationRecord.status.not_in(("done", "failed")))
                    .order_by(MigrationRecord.started_at, MigrationRecord.id)
                )
            ).all()

    async def update_migration(self, migration_id: str, **values: Any) -> None:
        """Change a migration's fields; ``finished_at`` is set when it reaches done or failed."""
        if values.get("status") in ("done", "failed"):
            values.setdefault("finished_at", now())
        async with self.sessions() as session:
            await session.execute(
                update(MigrationRecord).where(MigrationRecord.id == migration_id).values(**values)
            )
            await session.commit()
