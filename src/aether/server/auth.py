"""Bearer-token authentication and role checks, for every route but the probes."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from aether.errors import ForbiddenError, UnauthorizedError
from aether.server.context import ServerContext, get_context
from aether.store.records import Principal

__all__ = ["Admin", "Caller", "NodeCaller", "Operator", "authenticate", "require"]

# Which roles may do what. ``node`` is the join token's role: node routes only.
_ALLOWED: dict[str, frozenset[str]] = {
    "viewer": frozenset({"admin", "operator", "viewer"}),
    "operator": frozenset({"admin", "operator"}),
    "admin": frozenset({"admin"}),
    "node": frozenset({"admin", "node"}),
    "artifact-read": frozenset({"admin", "operator", "viewer", "node"}),
}


async def authenticate(
    request: Request, ctx: Annotated[ServerContext, Depends(get_context)]
) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError(
            "missing bearer token: send 'Authorization: Bearer TOKEN' (see `aether login`)"
        )
    principal = await ctx.records.authenticate(token.strip())
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


def require(level: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    allowed = _ALLOWED[level]

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.role not in allowed:
            raise ForbiddenError(
                f"role {principal.role!r} may not do this; "
                f"it needs one of: {', '.join(sorted(allowed))}"
            )
        return principal

    return check


Caller = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
NodeCaller = Annotated[Principal, Depends(require("node"))]
ArtifactReader = Annotated[Principal, Depends(require("artifact-read"))]
