"""Bearer-token authentication and role checks, for every route but the probes."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from aether.errors import ForbiddenError, UnauthorizedError
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import refuse
from aether.server.http.mtls import CLIENT_CERT
from aether.server.http.ratelimit import limit_rate
from aether.server.http.sessions import CSRF_HEADER, SESSION_COOKIE, session_principal
from aether.store.records import Principal

__all__ = [
    "FORWARDED_IDENTITY",
    "Admin",
    "Caller",
    "ClusterAdmin",
    "ClusterOperator",
    "JoinCaller",
    "NodeCaller",
    "Operator",
    "SignalWriter",
    "authenticate",
    "cached_caller",
    "node_identity_error",
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
    # signals about a node: the cluster's operators (``_cluster_operator``), and nodes
    # (a watcher on the node reading cloud metadata)
    "signal": frozenset({"admin", "operator", "node"}),
}


#: set by a server that passes a node's call on to the leader (``http/forward.py``): the
#: identity of the client certificate it verified. Believed only from another server's
#: certificate; a server drops it from what it receives otherwise.
FORWARDED_IDENTITY = "x-aether-forwarded-identity"


def node_identity_error(
    ctx: ServerContext, node: str, client_cert: str | None, forwarded: str | None
) -> str | None:
    """Why a node credential for ``node`` may not be used on this connection, or None.

    A node's credential counts only together with its certificate: the call must come
    over the node port (mutual TLS) with a certificate that names the same node — or
    from another server, whose certificate names it a server, passing on such a call."""
    if client_cert is None:
        if ctx.settings.node_auth == "credential":
            return None  # AETHER_NODE_AUTH=credential: nodes from before certificates
        return (
            "nodes call the node port over mutual TLS (its URL is in GET /api/v1/cluster/trust); "
            "a node credential without its certificate is refused"
        )
    who = ctx.trust.identity(client_cert)
    if who is None:
        return "the client certificate is expired, from an untrusted CA, or names no identity"
    if who.kind == "server" and forwarded is not None:
        if forwarded == f"node/{node}":
            return None
        return f"the forwarded identity {forwarded!r} is not node {node!r}"
    if who.kind != "node" or who.name != node:
        return f"the client certificate names {who.kind} {who.name!r}, not node {node!r}"
    return None


def _client_cert(request: Request) -> str | None:
    cert: str | None = getattr(request.state, CLIENT_CERT, None)
    return cert


async def authenticate(
    request: Request, ctx: Annotated[ServerContext, Depends(get_context)]
) -> Principal:
    header = request.headers.get("authorization", "")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not header and cookie:  # the console: a session cookie (and CSRF for a change)
        session, csrf = await session_principal(
            cookie, request.method, request.headers.get(CSRF_HEADER), ctx.sessions, ctx.records
        )
        request.state.principal = session
        request.state.csrf = csrf
        return session
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
    if principal.role == "node" and principal.node is not None:
        error = node_identity_error(
            ctx, principal.node, _client_cert(request), request.headers.get(FORWARDED_IDENTITY)
        )
        if error is not None:
            raise UnauthorizedError(error, code="node_identity")
    request.state.principal = principal
    return principal


def cached_caller(
    ctx: ServerContext,
    authorization: str,
    namespace: str | None,
    level: str,
    client_cert: str | None = None,
    forwarded: str | None = None,
) -> Principal | None:
    """The caller, if its token is in the cache and passes every check of ``authenticate``
    and ``require(level)``; None otherwise (then take the full route, which says why).

    For fast paths that skip FastAPI's dependencies (node telemetry pushes).
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    principal = ctx.tokens.get(token.strip(), time.monotonic(), ctx.records)
    if principal is None or principal.role not in _ALLOWED[level]:
        return None
    if principal.role == "node" and (
        principal.node is None
        or node_identity_error(ctx, principal.node, client_cert, forwarded) is not None
    ):
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
        request: Request,
        principal: Annotated[Principal, Depends(authenticate)],
        ctx: Annotated[ServerContext, Depends(get_context)],
    ) -> Principal:
        await limit_rate(request, principal, ctx.limiter)  # per tenant, after auth
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
            "only a cluster admin (an admin of the default tenant) may do this; "
            "a tenant's admin manages its own tenant only",
        )
    return principal


_NOT_A_CLUSTER_OPERATOR = (
    "nodes are the cluster's: only an operator or admin of the default tenant may do "
    "this; a tenant's roles act on their own apps only"
)


async def _cluster_operator(
    request: Request, principal: Annotated[Principal, Depends(require("operator"))]
) -> Principal:
    if not principal.cluster_operator:
        raise refuse(request, principal, "nodes", _NOT_A_CLUSTER_OPERATOR)
    return principal


async def _signal_writer(
    request: Request, principal: Annotated[Principal, Depends(require("signal"))]
) -> Principal:
    """A node's own credential (the route checks it is about itself) or a cluster operator."""
    if principal.role != "node" and not principal.cluster_operator:
        raise refuse(request, principal, "nodes", _NOT_A_CLUSTER_OPERATOR)
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
ClusterOperator = Annotated[Principal, Depends(_cluster_operator)]
NodeCaller = Annotated[Principal, Depends(require("node"))]
JoinCaller = Annotated[Principal, Depends(require("join"))]
ArtifactReader = Annotated[Principal, Depends(require("artifact-read"))]
SignalWriter = Annotated[Principal, Depends(_signal_writer)]
