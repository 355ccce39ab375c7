"""The request rate per tenant: a moving window over the ``limits`` library's storage.

A tenant may send ``burst`` requests at once and ``rate_per_minute`` over any
minute: two moving windows, ``burst`` requests per ``burst * 60 / rate`` seconds
(the steady rate, after a burst) and ``rate`` per minute. Counters live in Redis
when ``AETHER_RATE_LIMIT_URL`` (or a Redis ``AETHER_QUEUE_URL``) is set, so several
servers count together; else in this server's memory.

The check runs after authentication (the role dependencies of ``http/auth.py``),
once per request; node credentials (``node``, ``join``) are exempt, and so is
everything that does not authenticate (probes, ``/metrics``, static files) and
the node telemetry fast path. Every answer to a limited caller carries the IETF
draft's ``RateLimit-Limit``/``-Remaining``/``-Reset`` headers
(:class:`RateLimitHeaders`); a refusal is 429 ``rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aether.errors import RateLimitedError
from aether.server.settings import ServerSettings
from aether.store.records import Principal, Records

__all__ = [
    "AUDIT_WINDOW",
    "EXEMPT_ROLES",
    "RATE_STATE_KEY",
    "RateLimitHeaders",
    "RateLimiter",
    "Verdict",
    "limit_rate",
]

log = logging.getLogger("aether.server")

#: Roles never limited: a node's own credential and a join token (node routes).
EXEMPT_ROLES = frozenset({"node", "join"})
#: Seconds a tenant's own limits are cached before the records are read again.
LIMITS_TTL = 5.0
#: A tenant's refusals write at most one audit event per this many seconds (per server).
AUDIT_WINDOW = 60.0
_STATE_KEY = "rate_limit"
RATE_STATE_KEY = _STATE_KEY  # where a request's verdict is kept (its scope's state)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int  # the binding window's size (requests)
    remaining: int
    reset: int  # seconds until a request of that window is freed
    policy: str = ""  # the tenant's limits, in words (for a refusal's message)

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset)
        return headers


def windows(rate_per_minute: int, burst: int) -> tuple[RateLimitItem, RateLimitItem]:
    """(the burst window, the minute window) of a rate and a burst."""
    seconds = max(1, math.ceil(burst * 60 / rate_per_minute))
    return RateLimitItemPerSecond(burst, seconds), RateLimitItemPerMinute(rate_per_minute)


def open_storage(settings: ServerSettings) -> Storage:
    """Redis for counters shared by several servers, else this server's memory."""
    url = settings.rate_limit_url
    if url is None and settings.queue_url and settings.queue_url.startswith("redis"):
        url = settings.queue_url
    if url:
        return RedisStorage(f"async+{url}", implementation="redispy", key_prefix="aether-rate")
    return MemoryStorage()


class RateLimiter:
    def __init__(self, settings: ServerSettings, records: Records, storage: Storage) -> None:
        self.settings = settings
        self.records = records
        self.storage = storage
        self.strategy = MovingWindowRateLimiter(storage)
        self._limits: dict[str, tuple[float, tuple[int, int]]] = {}
        self._audited: dict[str, float] = {}  # tenant → when its refusals may be audited again

    def forget(self, tenant_id: str) -> None:
        """Read the tenant's limits again on its next request (they were changed)."""
        self._limits.pop(tenant_id, None)

    def audit_due(self, tenant: str) -> bool:
        """Whether a refusal of ``tenant`` should write its audit event: the first one
        in ``AUDIT_WINDOW`` seconds does (and starts the window), the rest are counted."""
        now = time.monotonic()
        if self._audited.get(tenant, 0.0) > now:
            return False
        if len(self._audited) > 10_000:  # bounded: drop the windows that are over
            self._audited = {t: until for t, until in self._audited.items() if until > now}
        self._audited[tenant] = now + AUDIT_WINDOW
        return True

    async def limits_of(self, tenant_id: str) -> tuple[int, int]:
        """(rate per minute, burst) of the tenant: its own, else the cluster's."""
        cached = self._limits.get(tenant_id)
        clock = time.monotonic()
        if cached is not None and cached[0] > clock:
            return cached[1]
        own = await self.records.tenant_limits(tenant_id)
        rate = int(own["rate_per_minute"] or self.settings.rate_limit_per_minute)
        burst = int(own["burst"] or min(self.settings.rate_limit_burst, rate))
        self._limits[tenant_id] = (clock + LIMITS_TTL, (rate, min(burst, rate)))
        return rate, min(burst, rate)

    async def hit(self, tenant_id: str, tenant: str) -> Verdict:
        """Count one request of the tenant; the verdict and what is left.

        The counters are keyed by the tenant's name, which every server of a cluster
        (and a restored backup) gives the same tenant."""
        rate, burst = await self.limits_of(tenant_id)
        items = windows(rate, burst)
        refused: RateLimitItem | None = None
        for item in items:
            if not await self.strategy.hit(item, tenant):
                refused = item
                break
        policy = f"{rate} requests per minute, burst {burst}"
        now = time.time()
        stats = [(item, await self.strategy.get_window_stats(item, tenant)) for item in items]
        if refused is not None:
            reset = next(s.reset_time for i, s in stats if i is refused)
            return Verdict(False, refused.amount, 0, max(1, math.ceil(reset - now)), policy)
        item, binding = min(stats, key=lambda pair: pair[1].remaining)
        reset = max(0, math.ceil(binding.reset_time - now))
        return Verdict(True, item.amount, max(0, binding.remaining), reset, policy)


async def limit_rate(request: Request, principal: Principal, limiter: RateLimiter) -> None:
    """Count the request against its tenant's rate; 429 ``rate_limited`` when over."""
    if principal.role in EXEMPT_ROLES or _STATE_KEY in request.scope.get("state", {}):
        return
    try:
        verdict = await limiter.hit(principal.tenant_id, principal.tenant)
    except Exception as exc:  # the counters' store is down: serve rather than refuse all
        log.warning("rate limit not checked (counters unavailable): %s", exc)
        return
    request.scope.setdefault("state", {})[_STATE_KEY] = verdict
    if not verdict.allowed:
        raise RateLimitedError(
            f"tenant {principal.tenant!r} is over its rate limit ({verdict.policy}); "
            f"retry after {verdict.reset} s"
        )


class RateLimitHeaders:
    """Adds the ``RateLimit-*`` headers (and ``Retry-After`` on a refusal) of the
    request's verdict to its answer, whatever the route answers with."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                verdict: Any = scope.get("state", {}).get(_STATE_KEY)
                if isinstance(verdict, Verdict):
                    headers = MutableHeaders(scope=message)
                    for name, value in verdict.headers().items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
