"""Bearer-token authentication and role checks, for every route but the probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from aether.errors import ForbiddenError, UnauthorizedError
from aether.server.audit import refuse
from aether.server.context import ServerContext, get_context
from aether.store.records import Principal, Records

__all__ = [
    "Admin",
    "Caller",
    "ClusterAdmin",
    "JoinCaller",
    "NodeCaller",
    "Operator",
    "SignalWriter",
    "TokenCache",
    "authenticate",
    "cached_caller",
    "own_node",
    "require",
]

# Which roles may do what. Nodes are not tenants: ``node`` is a node's own credential
# (bound to its id), the only role node routes accept; ``join`` is a join token, which
# may only be exchanged for a node credential (``POST /nodes/join``).
_ALLOWED: dict[str, frozenset[str]] = {
    "viewer": frozenset({"admin", "operator", "viewer"}),
    "operator": frozenset({"admin", "operator"}),
    "admin": frozenset({"admin"}),
    "node": frozenset({"node"}),
    "join": frozenset({"join"}),
    # tenants read their own artifacts; a node only what is assigned to it (the route checks)
    "artifact-read": frozenset({"admin", "operator", "viewer", "node"}),
    # signals about a node: operators, and nodes (a node-local agent watching cloud metadata)
    "signal": frozenset({"admin", "operator", "node"}),
}


TOKEN_CACHE_SECONDS = 10.0
TOKEN_CACHE_SIZE = 10_000


class TokenCache:
    """Recently verified tokens, so a hot route (node telemetry) skips the database.

    An entry lives ``TOKEN_CACHE_SECONDS``; revoking or rotating a token
    through this server forgets it at once (``forget``). Another server keeps
    honouring a revoked token until its own entry expires (at most that long).
    Only successes are cached: a wrong token always asks the database. Calls
    that miss at the same moment share one lookup (thousands of nodes pushing
    every second would otherwise all ask the database when an entry expires).
    """

    def __init__(self, ttl: float = TOKEN_CACHE_SECONDS, size: int = TOKEN_CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        self._generation = 0  # bumped by forget: a lookup begun before must not refill
        self.lookups = 0  # database lookups made (for tests and curiosity)

    def get(self, token: str, now: float) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[1] <= now:
            self._entries.pop(token, None)
            return None
        return entry[0]

    def put(self, token: str, principal: Principal, now: float) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()  # crude, but bounded; the next calls refill it
        self._entries[token] = (principal, now + self.ttl)

    def forget(self, token_id: str) -> None:
        """Drop every entry of this token (call it when the token is revoked)."""
        self._generation += 1
        for token, (principal, _) in list(self._entries.items()):
            if principal.token_id == token_id:
                del self._entries[token]

    async def resolve(self, token: str, records: Records) -> Principal | None:
        """The token's principal: from the cache, or one shared database lookup."""
        now = time.monotonic()
        principal = self.get(token, now)
        if principal is not None:
            return principal
        pending = self._lookups.get(token)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._lookups[token] = future
        generation = self._generation
        try:
            self.lookups += 1
            principal = await records.authenticate(token)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            self._lookups.pop(token, None)
        if principal is not None and generation == self._generation:
            self.put(token, principal, time.monotonic())
        future.set_result(principal)
        return principal


async def authenticate(
    request: Request, ctx: Annotated[ServerContext, Depends(get_context)]
) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError(
            "missing bearer token: send 'Authorization: Bearer TOKEN' (see `aether login`)"
        )
    principal = await ctx.tokens.resolve(token.strip(), ctx.records)
    if principal is None:
        raise UnauthorizedError("invalid or revoked token; log in again with a valid token")
    namespace = request.headers.get("x-aether-namespace")
    if namespace and namespace != principal.tenant:
        raise ForbiddenError(
            f"this token belongs to namespace {principal.tenant!r}, not {namespace!r}; "
            "check AETHER_DEFAULT_NAMESPACE or default_namespace in the config file"
        )
    request.state.principal = principal
    return principal


def cached_caller(
    ctx: ServerContext, authorization: str, namespace: str | None, level: str
) -> Principal | None:
    """The caller, if its token is in the cache and passes every check of ``authenticate``
    and ``require(level)``; None otherwise (then take the full route, which says why).

    For fast paths that skip FastAPI's dependencies (node telemetry pushes).
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    principal = ctx.tokens.get(token.strip(), time.monotonic())
    if principal is None or principal.role not in _ALLOWED[level]:
        return None
    if principal.role == "node" and principal.node is None:
        return None
    if namespace and namespace != principal.tenant:
        return None
    return principal


def _needs(allowed: frozenset[str]) -> str:
    if allowed == {"node"}:
        return "only a node's own credential may call node routes (nodes get one at join)"
    if allowed == {"join"}:
        return "only a join token may join a node (`aether tokens create --role join`)"
    return f"it needs one of: {', '.join(sorted(allowed))}"


def require(level: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    allowed = _ALLOWED[level]

    async def check(
        request: Request, principal: Annotated[Principal, Depends(authenticate)]
    ) -> Principal:
        if principal.role not in allowed or (principal.role == "node" and principal.node is None):
            raise refuse(
                request,
                principal,
                level,
                f"role {principal.role!r} may not do this; {_needs(allowed)}",
            )
        return principal

    return check


async def _cluster_admin(
    request: Request, principal: Annotated[Principal, Depends(require("admin"))]
) -> Principal:
    if not principal.cluster_admin:
        raise refuse(
            request,
            principal,
            "cluster",
            "only a cluster admin (an admin of the default tenant) may do this",
        )
    return principal


def own_node(request: Request, caller: Principal, node: str) -> None:
    """Refuse a node credential acting as another node (403 and an audit line)."""
    if caller.node != node:
        raise refuse(
            request,
            caller,
            f"nodes/{node}",
            f"this credential is node {caller.node!r}'s; it may not act as node {node!r}",
        )


Caller = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
ClusterAdmin = Annotated[Principal, Depends(_cluster_admin)]
NodeCaller = Annotated[Principal, Depends(require("node"))]
JoinCaller = Annotated[Principal, Depends(require("join"))]
ArtifactReader = Annotated[Principal, Depends(require("artifact-read"))]
SignalWriter = Annotated[Principal, Depends(require("signal"))]
