"""The audit trail of the API: refusals, and one event per audited request.

``refuse`` builds the 403 of a caller acting beyond its rights, logs it to the
``aether.audit`` logger (``refused: {json}``: who, what, which object, why, the
trace id; never a secret, tokens by id) and leaves the reason on the request for
the event. ``AuditMiddleware`` appends an event to the records' audit chain for:

- every mutating call (``POST``/``PUT``/``PATCH``/``DELETE``) under ``/api/v1/``,
  except the nodes' hot paths in ``UNAUDITED`` (telemetry, heartbeats, route
  syncs, log shipping, an empty task claim, the blob question);
- every request under ``/api/v1/`` answered ``401`` (failed authentication) or
  ``403`` (a refusal), whatever its method.

An event's action is ``METHOD /route`` unless the route named it with
``name_event`` (``agent.deploy``, ``agent.undeploy``).

A ``429 rate_limited`` is not an event of its own (a flood would write a flood of
chained rows): it counts in ``rate_limited_requests_total{tenant}``, and the first
refusal of a tenant in ``AUDIT_WINDOW`` seconds (per server) writes one event,
action ``rate_limited``, outcome ``refused``, target ``tenants/{tenant}``.

It writes the event when the answer starts, before it is sent: fail closed. If
a mutating call's event cannot be written the caller gets ``503
service_unavailable`` instead of the answer (and the event goes to the
``aether.audit`` log), so no change is acknowledged without its audit event.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aether.errors import ForbiddenError
from aether.server.http.errors import trace_id_of
from aether.server.http.ratelimit import AUDIT_WINDOW
from aether.store.records import Principal
from aether.store.records.audit import AuditEntry

__all__ = [
    "UNAUDITED",
    "AuditMiddleware",
    "actor_of",
    "audit_refusal",
    "audit_request",
    "name_event",
    "outcome_of",
    "refuse",
]

log = logging.getLogger("aether.audit")

PREFIX = "/api/v1"
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Node calls made every second or so, not audited unless refused (401/403):
#: (method, route, only for this status or any): an empty task claim is a 204.
UNAUDITED: tuple[tuple[str, str, int | None], ...] = (
    ("POST", "/nodes/{node}/metrics", None),
    ("POST", "/nodes/{node}/heartbeat", None),
    ("PUT", "/nodes/{node}/routes", None),
    ("POST", "/nodes/{node}/logs", None),
    ("POST", "/tasks/{task_id}/heartbeat", None),
    # the node driving an agent run: each tool decision is audited as its own event
    ("POST", "/agent-runtime/runs/{run_id}/next", None),
    ("POST", "/agent-runtime/runs/{run_id}/steps/{seq}/result", None),
    ("POST", "/tasks/claim", 204),
    # a node's claims and reports: each change it makes is a row of the task event log,
    # written in the change's transaction; a report it refuses is audited on its own
    ("POST", "/tasks/exchange", None),
    ("POST", "/blobs/missing", None),
)
# matched on the raw path: the telemetry fast path answers before any routing
_UNAUDITED = tuple(
    (method, re.compile(PREFIX + re.sub(r"\{[^}]+\}", "[^/]+", route)), only)
    for method, route, only in UNAUDITED
)
_DETAIL = "audit_detail"
_ACTION = "audit_action"
_TOO_MANY = 429


def name_event(request: Request, action: str, detail: str = "") -> None:
    """Record this request's event as ``action`` (e.g. ``agent.deploy``) instead of
    ``METHOD /route``, with ``detail``."""
    setattr(request.state, _ACTION, action)
    if detail:
        setattr(request.state, _DETAIL, detail)


def refuse(
    request: Request, caller: Principal, target: str, reason: str, *, message: str | None = None
) -> ForbiddenError:
    """Log the refusal of ``caller`` on ``target`` and return the 403 to raise.

    ``message`` is what the caller reads (default: ``reason``); say no more in it
    than the caller may know.
    """
    fields = {
        "token_id": caller.token_id,
        "role": caller.role,
        "tenant": caller.tenant,
        "node": caller.node,
        "method": request.method,
        "path": request.url.path,
        "target": target,
        "reason": reason,
        "trace_id": trace_id_of(request),
    }
    log.warning("refused: %s", json.dumps(fields, sort_keys=True), extra={"audit": fields})
    setattr(request.state, _DETAIL, f"{target}: {reason}")
    return ForbiddenError(message or reason)


def outcome_of(status: int) -> str:
    """``ok`` (< 400), ``refused`` (401, 403) or ``failed``."""
    if status < 400:
        return "ok"
    return "refused" if status in (401, 403) else "failed"


def actor_of(principal: Principal | None) -> tuple[str, str]:
    """``(actor_kind, actor)``: a node by its id, an account by its name, a bare token by
    its id, else anonymous."""
    if principal is None:
        return "anonymous", ""
    if principal.role == "node" and principal.node:
        return "node", principal.node
    if principal.user:
        return "user", principal.user
    return "token", principal.token_id


def _route(scope: Scope) -> str:
    """The route's template (``/apps/{app}/scale``); the raw path if none matches."""
    route = scope.get("route")
    if route is None:  # answered before routing (InputLimits' 401, 413)
        for candidate in scope["app"].router.routes:
            if candidate.matches(scope)[0] is Match.FULL:
                route = candidate
                break
    path = getattr(route, "path", None)
    template = path if isinstance(path, str) else scope["path"]
    return template.removeprefix(PREFIX)


def _audited(scope: Scope, status: int) -> bool:
    if status in (401, 403):
        return True
    if scope["method"] not in _MUTATING:
        return False
    for method, pattern, only in _UNAUDITED:
        if scope["method"] == method and pattern.fullmatch(scope["path"]):
            return only is not None and only != status
    return True


def entry_for(scope: Scope, status: int) -> AuditEntry:
    state: dict[str, Any] = scope.get("state", {})
    principal = state.get("principal")
    principal = principal if isinstance(principal, Principal) else None
    kind, actor = actor_of(principal)
    client = scope.get("client")
    detail = state.get(_DETAIL) or ("authentication failed" if status == 401 else "")
    return AuditEntry(
        ts=time.time(),
        actor_kind=kind,
        actor=actor,
        role=principal.role if principal else None,
        tenant_id=principal.tenant_id if principal else None,
        tenant=principal.tenant if principal else None,
        action=state.get(_ACTION) or f"{scope['method']} {_route(scope)}",
        target=scope["path"].removeprefix(PREFIX).strip("/"),
        outcome=outcome_of(status),
        status=status,
        source=client[0] if client else None,
        trace_id=state.get("trace_id"),
        detail=str(detail),
    )


def _rate_limited(scope: Scope) -> AuditEntry | None:
    """Count a 429 of the caller's tenant; its event if it is the first in the window."""
    ctx = getattr(scope["app"].state, "ctx", None)
    principal = scope.get("state", {}).get("principal")
    if ctx is None or not isinstance(principal, Principal):
        return None
    ctx.metrics.rate_limited.labels(principal.tenant).inc()
    if not ctx.limiter.audit_due(principal.tenant):
        return None
    entry = entry_for(scope, _TOO_MANY)
    return replace(
        entry,
        action="rate_limited",
        target=f"tenants/{principal.tenant}",
        outcome="refused",
        detail=(
            f"{entry.action}: over the tenant's rate limit; its further refusals for "
            f"{AUDIT_WINDOW:.0f} s are counted in rate_limited_requests_total, not audited"
        ),
    )


def _event(scope: Scope, status: int) -> AuditEntry | None:
    """The event to write for an answer of ``status``, if any."""
    if status == _TOO_MANY:
        return _rate_limited(scope)
    return entry_for(scope, status) if _audited(scope, status) else None


async def write_event(scope: Scope, entry: AuditEntry) -> bool:
    """Append ``entry``; False (and the event in the log) when it could not be written."""
    ctx = getattr(scope["app"].state, "ctx", None)
    try:
        if ctx is None:
            raise RuntimeError("the server is not started")
        await ctx.records.append_audit(entry)
    except Exception as exc:
        log.error(
            "audit event not written (%s): %s",
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            json.dumps(asdict(entry), sort_keys=True),
        )
        return False
    return True


async def audit_refusal(request: Request, target: str) -> None:
    """The event of a refusal that did not make the request's answer a 403 (one item of
    a batch the rest of which went through): its reason is the last ``refuse`` one."""
    entry = replace(entry_for(request.scope, 403), target=target)
    await write_event(request.scope, entry)


class AuditMiddleware:
    """An event per audited request, written before its answer is sent (fail closed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        started = dropped = False

        async def audited_send(message: Message) -> None:
            nonlocal started, dropped
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                entry = _event(scope, status)
                if entry is not None:
                    written = await write_event(scope, entry)
                    # a refusal changed nothing: its answer need not wait for its event
                    if not written and scope["method"] in _MUTATING and status != _TOO_MANY:
                        dropped = True
                        await _unavailable(scope, receive, send)
                        return
            if not dropped:
                await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if not started and scope["method"] in _MUTATING:
                await write_event(scope, entry_for(scope, 500))
            raise


async def _unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    trace = str(scope.get("state", {}).get("trace_id", ""))
    response = JSONResponse(
        {
            "code": "service_unavailable",
            "message": (
                "the audit log could not be written, so this answer is withheld; "
                "the change may have been made: check before retrying"
            ),
            "trace_id": trace,
        },
        status_code=503,
        headers={"X-Trace-Id": trace},
    )
    await response(scope, receive, send)


async def audit_request(
    request: Request,
    principal: Principal | None,
    action: str,
    target: str,
    status: int,
    detail: str = "",
) -> bool:
    """Append the event of something done outside the API (the console's sign-in and
    sign-out) on behalf of ``request``; False when it could not be written."""
    kind, actor = actor_of(principal)
    client = request.client
    entry = AuditEntry(
        ts=time.time(),
        actor_kind=kind,
        actor=actor,
        role=principal.role if principal else None,
        tenant_id=principal.tenant_id if principal else None,
        tenant=principal.tenant if principal else None,
        action=action,
        target=target,
        outcome=outcome_of(status),
        status=status,
        source=client.host if client else None,
        trace_id=trace_id_of(request),
        detail=detail,
    )
    return await write_event(request.scope, entry)
