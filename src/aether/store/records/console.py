"""Console sessions: sign in with an API token, resolve the cookie, sign out."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete

from aether.store.records.base import Principal, RecordsBase, hash_token, now
from aether.store.records.schema import ApiToken, ConsoleSession
from aether.store.records.tenants import principal_of, principal_query

__all__ = ["ConsoleRecords"]


class ConsoleRecords(RecordsBase):
    async def open_session(self, token_id: str, ttl_seconds: float) -> tuple[str, str]:
        """A new session for the token: (the cookie's plain id, the session's CSRF token).

        Expired sessions are swept on the way (a sign-in is rare; the table stays small).
        """
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        at = now()
        async with self.sessions() as session:
            await session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= at))
            session.add(
                ConsoleSession(
                    id_hash=hash_token(session_id),
                    token_id=token_id,
                    csrf=csrf,
                    created_at=at,
                    expires_at=at + timedelta(seconds=ttl_seconds),
                )
            )
            await session.commit()
        return session_id, csrf

    async def resolve_session(self, session_id: str) -> tuple[Principal, str] | None:
        """The principal and CSRF token of a live session; None when it is unknown,
        expired, or its token was revoked."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    principal_query()
                    .add_columns(ConsoleSession.csrf)
                    .join(ConsoleSession, ConsoleSession.token_id == ApiToken.id)
                    .where(
                        ConsoleSession.id_hash == hash_token(session_id),
                        ConsoleSession.expires_at > now(),
                    )
                )
            ).first()
        if row is None:
            return None
        token, tenant, role, user, csrf = row
        principal = principal_of(token, tenant, role, user)
        return None if principal is None else (principal, csrf)

    async def close_session(self, session_id: str) -> None:
        async with self.sessions() as session:
            await session.execute(
                delete(ConsoleSession).where(ConsoleSession.id_hash == hash_token(session_id))
            )
            await session.commit()
