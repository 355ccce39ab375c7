"""Console sessions on the API: the ``aether_session`` cookie as a second way in.

The console (``/ui``) signs in with an API token and keeps an HttpOnly,
SameSite=Strict cookie holding a random session id (its hash is in the records).
The API accepts that cookie where no ``Authorization`` header is sent, so the
browser can read the event stream and the telemetry it draws; a request that
changes something must also carry the session's CSRF token in ``X-CSRF-Token``
(a form sends it as the ``csrf`` field, which the console checks itself).
"""

from __future__ import annotations

import hmac
import time

from aether.errors import ForbiddenError, UnauthorizedError
from aether.store.records import Principal, Records

__all__ = [
    "CSRF_HEADER",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "SessionCache",
    "check_csrf",
]

SESSION_COOKIE = "aether_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_CACHE_SECONDS = 2.0
SESSION_CACHE_SIZE = 10_000


class SessionCache:
    """Recently resolved sessions, so a page's few API calls share one database read.

    Signing out through this server forgets the session at once; another server
    honours it until its own entry expires (``SESSION_CACHE_SECONDS``), as with
    tokens. Failures are never cached.
    """

    def __init__(self, ttl: float = SESSION_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[Principal, str, float]] = {}

    async def resolve(self, session_id: str, records: Records) -> tuple[Principal, str] | None:
        now = time.monotonic()
        entry = self._entries.get(session_id)
        if entry is not None and entry[2] > now:
            return entry[0], entry[1]
        found = await records.resolve_session(session_id)
        if found is None:
            self._entries.pop(session_id, None)
            return None
        if len(self._entries) >= SESSION_CACHE_SIZE:
            self._entries.clear()
        self._entries[session_id] = (found[0], found[1], now + self.ttl)
        return found

    def forget(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    def forget_user(self, user_id: str) -> None:
        """Drop every session of the account (its role or membership changed)."""
        for key, (principal, _, _) in list(self._entries.items()):
            if principal.user_id == user_id:
                del self._entries[key]

    def forget_token(self, token_id: str) -> None:
        """Drop every session opened with this token (it was revoked)."""
        for key, (principal, _, _) in list(self._entries.items()):
            if principal.token_id == token_id:
                del self._entries[key]


def check_csrf(sent: str | None, expected: str) -> None:
    """Refuse a change whose CSRF token is missing or wrong (403 ``csrf_failed``)."""
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ForbiddenError(
            "missing or wrong CSRF token: reload the console page and try again",
            code="csrf_failed",
        )


async def session_principal(
    cookie: str, method: str, csrf_sent: str | None, cache: SessionCache, records: Records
) -> tuple[Principal, str]:
    """The principal behind a session cookie, or 401; a change also needs the CSRF token."""
    found = await cache.resolve(cookie, records)
    if found is None:
        raise UnauthorizedError(
            "your console session has expired or was signed out; sign in again at /ui/login",
            code="session_expired",
        )
    principal, csrf = found
    if method not in SAFE_METHODS:
        check_csrf(csrf_sent, csrf)
    return principal, csrf
