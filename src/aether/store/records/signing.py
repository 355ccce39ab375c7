"""Signing: public keys, app settings, artifact signatures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from aether.errors import ConflictError, NotFoundError
from aether.store.records.base import (
    RecordsBase,
    new_id,
    now,
)
from aether.store.records.schema import (
    App,
    Artifact,
    PublicKey,
)

__all__ = ["SigningRecords"]


class SigningRecords(RecordsBase):
    # (issue 3, part 3; the checks themselves live in aether.server.services.signatures)

    async def find_app(self, tenant_id: str, name: str) -> App | None:
        async with self.sessions() as session:
            return await session.scalar(
                select(App).where(App.tenant_id == tenant_id, App.name == name)
            )

    async def update_app_settings(self, tenant_id: str, app: App, values: dict[str, Any]) -> App:
        """Set ``require_signature``, ``require_provenance`` and/or ``retain_deployments``;
        the updated row."""
        allowed = {"require_signature", "require_provenance", "retain_deployments"}
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

    async def list_tenant_public_keys(self, tenant_id: str) -> Sequence[PublicKey]:
        """Every key registered for any app of the tenant (what ``artifacts verify`` trusts)."""
        async with self.sessions() as session:
            return (
                await session.scalars(
                    select(PublicKey)
                    .where(PublicKey.tenant_id == tenant_id)
                    .order_by(PublicKey.created_at, PublicKey.id)
                )
            ).all()

    async def set_artifact_provenance(
        self, tenant_id: str, digest: str, envelope: dict[str, Any], signed_by: str | None
    ) -> None:
        """Store a provenance envelope on the tenant's artifact row; the same rule as
        ``set_artifact_signature``: an unverified one never replaces a verified one."""
        condition = [Artifact.tenant_id == tenant_id, Artifact.digest == digest]
        if signed_by is None:
            condition.append(Artifact.provenance_by.is_(None))
        async with self.sessions() as session:
            await session.execute(
                update(Artifact)
                .where(*condition)
                .values(provenance=envelope, provenance_by=signed_by)
            )
            await session.commit()
