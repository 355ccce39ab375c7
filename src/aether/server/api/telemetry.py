"""Telemetry: nodes push metrics; people read samples, history, roll-ups and a live stream.

``POST /nodes/{node}/metrics`` is the hot path (every node, every second): the
token check is served from the in-process cache (``server.http.token_cache.TokenCache``),
the body is validated straight from bytes, and ingest touches memory only --
never the state store or the database. :class:`TelemetryFastPath` answers the
ordinary push (a cached node token, a valid body, on the leader) before every
middleware and FastAPI's routing and dependencies (``server.asgi`` puts it
outermost), which otherwise cost many times the ingest itself; anything else
(an unknown token, a bad body, an Idempotency-Key, a follower) goes on through
the middleware to the route below with its body intact, so the answers are the
same either way. What the skipped middleware would do for the ordinary push is
nothing: a successful push is not audited, carries no console headers, is within
the input limits it checks itself, and needs no forwarding on the leader.

The answer to a push is ``204`` -- or, once the leader has aggregated slice
entry points of a tenant whose instances the node runs, ``200`` with those
tenants' cluster snapshots (``model.telemetry.PushAnswer``): how the leader
hands its snapshot to every node each second without a store write. A
follower forwards the push to the leader (``server.http.forward``), so the
snapshot in the answer is always the leader's latest.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from aether.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from aether.model.app import APP_NAME_RE
from aether.model.names import cluster_name, shown_name, split_cluster_name
from aether.model.telemetry import (
    AppPoint,
    ClusterSample,
    EntryPoint,
    NodeMetrics,
    NodePoint,
    PushAnswer,
    Rollup,
)
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import refuse
from aether.server.http.auth import (
    FORWARDED_IDENTITY,
    Caller,
    NodeCaller,
    cached_caller,
    own_node,
)
from aether.server.http.idempotency import replay_body
from aether.server.http.limits import MAX_PUSH_BYTES
from aether.server.http.mtls import CLIENT_CERT
from aether.server.http.request_id import request_id
from aether.store.records import Principal

__all__ = ["MAX_PUSH_BYTES", "TelemetryFastPath", "router"]

router = APIRouter(tags=["metrics"])
Ctx = Annotated[ServerContext, Depends(get_context)]

STREAM_PING_SECONDS = 5.0  # a comment line when no sample came for this long
TENANT_APPS_REFRESH = 10.0  # the stream re-reads which apps the caller owns this often
Seconds = Annotated[float, Query(gt=0, le=86400, description="how far back, in seconds")]


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its local ``$defs`` references replaced by the definitions."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inlined(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inlined(v, defs) for v in schema]
    return schema


_NODE_METRICS_SCHEMA = NodeMetrics.model_json_schema()
# the body is validated from bytes in the route (faster than FastAPI's body parsing),
# so the OpenAPI document learns its schema here
_PUSH_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _inlined(_NODE_METRICS_SCHEMA, _NODE_METRICS_SCHEMA.get("$defs", {}))
            }
        },
    }
}


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )


@router.post(
    "/nodes/{node}/metrics",
    status_code=204,
    response_class=Response,
    openapi_extra=_PUSH_SCHEMA,
    responses={
        200: {
            "description": "the cluster snapshots of the tenants whose instances the node runs",
            "model": PushAnswer,
        }
    },
    summary="Push one metrics update (nodes, every telemetry interval)",
)
async def push(node: str, request: Request, caller: NodeCaller, ctx: Ctx) -> Response:
    started = time.perf_counter()
    own_node(request, caller, node)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_PUSH_BYTES:
        raise PayloadTooLargeError(f"a metrics update may be at most {MAX_PUSH_BYTES} bytes")
    body = await request.body()
    if len(body) > MAX_PUSH_BYTES:
        raise PayloadTooLargeError(f"a metrics update may be at most {MAX_PUSH_BYTES} bytes")
    try:
        update = NodeMetrics.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequestError(f"invalid metrics update: {_problems(exc)}") from None
    if update.node != node:
        raise BadRequestError(
            f"the update is for node {update.node!r} but was pushed to node {node!r}"
        )
    foreign = _foreign_instance(update)
    if foreign is not None:
        raise refuse(request, caller, foreign, f"node {node!r} may report only its own instances")
    ctx.telemetry.ingest(update, received_at=time.time(), raw=body)
    ctx.metrics.telemetry_updates.inc()
    ctx.metrics.telemetry_ingest.observe(time.perf_counter() - started)
    answer = _snapshot_answer(ctx, update)
    if answer is None:
        return Response(status_code=204)
    return Response(answer, media_type="application/json")


def _node_tenants(update: NodeMetrics) -> set[str]:
    """The tenants whose instances (or slices' entry points) the node reported."""
    tenants = {split_cluster_name(i.app)[1] for i in update.instances}
    tenants.update(split_cluster_name(e.slice)[1] for e in update.entries)
    return tenants


def _snapshot_answer(ctx: ServerContext, update: NodeMetrics) -> bytes | None:
    """The push's answer body: the node's tenants' cluster snapshots, or None (``204``)."""
    if (not update.instances and not update.entries) or not ctx.telemetry.has_snapshots():
        return None
    return ctx.telemetry.snapshot_answer(_node_tenants(update))


def _foreign_instance(update: NodeMetrics) -> str | None:
    """The first instance key of the update that is not under the node's own prefix."""
    prefix = f"instances/{update.node}/"
    for instance in update.instances:
        if not instance.key.startswith(prefix):
            return instance.key
    return None


async def _owned_apps(ctx: ServerContext, caller: Principal) -> dict[str, str]:
    """The caller's apps: cluster name (telemetry's key) → the plain name it reads."""
    return {
        cluster_name(app.name, caller.tenant): app.name
        for app in await ctx.records.list_apps(caller.tenant_id)
    }


async def _check_app(ctx: ServerContext, caller: Principal, app: str) -> str:
    """The caller's app ``app`` by its cluster name; 404 if it has none of the name."""
    if not APP_NAME_RE.match(app) or await ctx.records.find_app(caller.tenant_id, app) is None:
        raise NotFoundError(f"app {app!r} not found")
    return cluster_name(app, caller.tenant)


@router.get("/metrics")
async def latest(caller: Caller, ctx: Ctx) -> ClusterSample | None:
    """The newest cluster sample (``null`` before the first): all nodes, the caller's apps."""
    sample = ctx.telemetry.latest()
    if sample is None:
        return None
    owned = await _owned_apps(ctx, caller)
    apps = {owned[name]: a for name, a in sample.apps.items() if name in owned}
    slices = {
        owned[name]: {e: s.model_copy(update={"slice": owned[name]}) for e, s in entries.items()}
        for name, entries in sample.slices.items()
        if name in owned
    }
    return sample.model_copy(update={"apps": apps, "slices": slices})


@router.get("/metrics/nodes/{node}")
async def node_history(
    node: str, caller: Caller, ctx: Ctx, seconds: Seconds = 300.0
) -> list[NodePoint]:
    """The node's samples of the last ``seconds`` from the in-memory window, oldest first."""
    if not ctx.telemetry.knows(node):
        raise NotFoundError(f"no telemetry from node {node!r} on this server")
    return ctx.telemetry.node_history(node, seconds)


@router.get("/metrics/apps/{app}")
async def app_history(
    app: str, caller: Caller, ctx: Ctx, seconds: Seconds = 300.0
) -> list[AppPoint]:
    """The app's samples of the last ``seconds`` from the in-memory window, oldest first."""
    return ctx.telemetry.app_history(await _check_app(ctx, caller, app), seconds)


@router.get("/metrics/slices/{app}")
async def slice_history(
    app: str, caller: Caller, ctx: Ctx, seconds: Seconds = 300.0
) -> list[EntryPoint]:
    """The slice's (a slice is an app: ``app`` is its name) entry points' samples of the
    last ``seconds`` from the in-memory window, oldest first (each second's entries in
    name order)."""
    points = ctx.telemetry.entry_history(await _check_app(ctx, caller, app), seconds)
    return [p.model_copy(update={"slice": app}) for p in points]


@router.get("/metrics/rollups")
async def rollups(
    caller: Caller,
    ctx: Ctx,
    node: str | None = None,
    app: str | None = None,
    since: Annotated[float | None, Query(ge=0, description="seconds since the epoch")] = None,
    until: Annotated[float | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=20_000)] = 1440,
) -> list[Rollup]:
    """Per-minute roll-ups of one node or one app from the records database, oldest first.

    ``since`` defaults to 24 hours ago.
    """
    if (node is None) == (app is None):
        raise BadRequestError("give exactly one of node=NODE or app=APP")
    if app is not None:
        app = await _check_app(ctx, caller, app)
    kind, name = ("node", node) if node is not None else ("app", app)
    assert name is not None
    start = since if since is not None else time.time() - 86400.0
    rows = await ctx.records.list_rollups(kind, name, start, until, limit)
    return [
        Rollup(
            kind=row.kind,  # type: ignore[arg-type]
            name=row.name if row.kind == "node" else shown_name(row.name, caller.tenant),
            minute=row.minute,
            samples=row.samples,
            avg=row.avg_values,
            max=row.max_values,
        )
        for row in rows
    ]


@router.get(
    "/metrics/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(caller: Caller, ctx: Ctx) -> StreamingResponse:
    """Server-Sent Events: ``event: sample`` with the cluster sample each second, and
    ``event: agents`` with the caller's agents' figures of that second on this server
    (runs/s, steps/s, step latency, tokens/s, cost/s) when any ran a step.

    A comment line (``: ping``) goes out when no sample came for 5 s (e.g. on a
    server that is not the leader). The stream ends when the client goes away.
    """
    hub = ctx.telemetry

    async def events() -> AsyncIterator[bytes]:
        hub.streams += 1
        try:
            owned = await _owned_apps(ctx, caller)
            refreshed = time.monotonic()
            yield b"retry: 1000\n: aether telemetry\n\n"
            current = hub.latest_json(owned)
            if current is not None:
                yield b"event: sample\ndata: " + current + b"\n\n"
            while True:
                sample = await hub.next_sample(STREAM_PING_SECONDS)
                if sample is None:
                    yield b": ping\n\n"
                    continue
                if time.monotonic() - refreshed > TENANT_APPS_REFRESH:
                    owned = await _owned_apps(ctx, caller)
                    refreshed = time.monotonic()
                data = hub.latest_json(owned)
                if data is not None:
                    yield b"event: sample\ndata: " + data + b"\n\n"
                agents = ctx.metrics.agents
                figures = {
                    name: agents.recent(caller.tenant, name, 1.0)
                    for name in agents.agents_of(caller.tenant)
                }
                if figures:  # the tenant's agents that ran steps on this server this second
                    yield b"event: agents\ndata: " + json.dumps(figures).encode() + b"\n\n"
        finally:
            hub.streams -= 1

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# -- the fast path -----------------------------------------------------------------------

FORWARDED_HEADER = FORWARDED_IDENTITY.encode()
_PREFIX = "/api/v1/nodes/"
_SUFFIX = "/metrics"


def is_push(scope: Scope) -> bool:
    """Whether the request is a node's telemetry push."""
    path: str = scope.get("path", "")
    return scope.get("method") == "POST" and path.startswith(_PREFIX) and path.endswith(_SUFFIX)


class TelemetryFastPath:
    """ASGI middleware: the success path of ``POST /api/v1/nodes/{node}/metrics``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_push(scope):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        app = scope.get("app")
        state = getattr(app, "state", None)
        leader = getattr(state, "leader", None)
        if leader is not None and not leader.leading:  # a follower: LeaderForward's
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        node = path[len(_PREFIX) : -len(_SUFFIX)]
        authorization = namespace = forwarded = trace = None
        length = 0
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                length = int(value) if value.isdigit() else MAX_PUSH_BYTES + 1
            elif name == b"x-aether-namespace":
                namespace = value.decode("latin-1")
            elif name == FORWARDED_HEADER:
                forwarded = value.decode("latin-1")
            elif name == b"x-request-id":
                trace = value
            elif name == b"idempotency-key":
                authorization = None  # the idempotency middleware's business: full route
        ctx: ServerContext | None = getattr(state, "ctx", None)
        caller = (
            None
            if ctx is None or authorization is None
            else cached_caller(
                ctx,
                authorization,
                namespace,
                "node",
                client_cert=scope.get("state", {}).get(CLIENT_CERT),
                forwarded=forwarded,
            )
        )
        if (
            ctx is None
            or caller is None
            or caller.node != node  # another node's path: the route refuses it
            or not node
            or "/" in node
            or length > MAX_PUSH_BYTES
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the node went away: nobody to answer
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > MAX_PUSH_BYTES or not more:
                break
        if more:  # too large: the route refuses it in the envelope
            await self.app(scope, replay_body(b"".join(chunks), receive, more=True), send)
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            update = NodeMetrics.model_validate_json(body)
        except ValidationError:
            update = None
        if (
            update is None or update.node != node or _foreign_instance(update) is not None
        ):  # the route explains what is wrong
            await self.app(scope, replay_body(body, receive), send)
            return
        ctx.telemetry.ingest(update, received_at=time.time(), raw=body)
        ctx.telemetry.fast_pushes += 1
        trace_id = request_id(trace).encode()
        answer = _snapshot_answer(ctx, update)
        headers = [(b"x-trace-id", trace_id)]
        if answer is not None:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
            ]
        await send(
            {
                "type": "http.response.start",
                "status": 204 if answer is None else 200,
                "headers": headers,
            }
        )
        await send({"type": "http.response.body", "body": answer or b""})
        ctx.metrics.telemetry_updates.inc()
        ctx.metrics.telemetry_ingest.observe(time.perf_counter() - started)
