"""What nodes call: join, register, heartbeat, the assignment stream, reports and logs;
and what the cluster does to nodes: its operators drain and undrain them, its admin
revokes and allows them.

Nodes talk only to servers, never to the state store or the database. A node
joins once with a join token and gets a credential of its own, bound to its id;
every other node route takes only that credential, and only for that node
(``own_node``): anything else is a 403 with an audit line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

import aether
from aether.artifacts import parse_digest
from aether.core.controller import DRAINED_BY_OPERATOR
from aether.core.features import node_config
from aether.core.lifecycle import Command, State, can_report
from aether.core.withdrawal import RouterState, waiting_for
from aether.errors import BadRequestError, ConflictError, NotFoundError, UnauthorizedError
from aether.model.api import (
    AssignmentLine,
    HeartbeatIn,
    HeartbeatOut,
    JoinIn,
    JoinOut,
    LogsIn,
    LogsOut,
    NodeOut,
    RegisterIn,
    RegisterOut,
    ReportIn,
    ReportOut,
    RoutesIn,
    RoutesOut,
    UnloadedOut,
    WithdrawalOut,
)
from aether.model.cluster import (
    Endpoint,
    InstanceRecord,
    NodeCapabilities,
    NodeRecord,
    endpoint_key,
    instance_endpoint_keys,
    instance_key,
    routes_key,
)
from aether.model.names import split_cluster_name
from aether.model.versioned import VERSION_FIELD
from aether.server.context import ServerContext, get_context
from aether.server.http.audit import refuse
from aether.server.http.auth import (
    Caller,
    ClusterAdmin,
    ClusterOperator,
    JoinCaller,
    NodeCaller,
    own_node,
)
from aether.server.services.cluster import dump, read_snapshot
from aether.server.services.drain import assigned, set_draining
from aether.server.services.migrations import drain_node
from aether.server.services.presence import node_urls
from aether.server.services.revocations import forget_tokens
from aether.store.base import CompactedError, Compare, Delete, LeaseNotFoundError, Op, Put
from aether.trust import ca

__all__ = ["router"]

router = APIRouter(tags=["nodes"])
Ctx = Annotated[ServerContext, Depends(get_context)]

HEARTBEATS_PER_TTL = 3
STREAM_PING_SECONDS = 5.0
WITHDRAWAL_POLL_SECONDS = 0.05  # how often a withdrawal wait reads the routers' states
# an instance's report message: its cause and the end of its output (core.failures)
MAX_REPORT_MESSAGE = 4096
# a slice's entry point: a Python identifier, part of its endpoint keys and router paths
_ENTRY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _node_key(node: str) -> str:
    return f"nodes/{node}"


async def _node_record(ctx: ServerContext, node: str) -> tuple[NodeRecord, int]:
    kv = await ctx.store.get(_node_key(node))
    if kv is None:
        raise NotFoundError(f"node {node!r} is not registered (its lease expired?); register again")
    return NodeRecord.model_validate_json(kv.value), kv.lease


@router.post("/nodes/join", status_code=201)
async def join(body: JoinIn, caller: JoinCaller, ctx: Ctx) -> JoinOut:
    """A join token's one call: a new credential and certificate for node ``id`` (its
    earlier credentials stop). A token made for a number of uses loses one; a used-up
    one is a 401 ``join_token_used``, so a replayed single-use token joins nothing."""
    try:  # a bad CSR is refused before the token loses a use
        issued = ctx.trust.issue_node(body.id, body.csr)
    except ca.CertificateError as exc:
        raise BadRequestError(f"csr: {exc}") from None
    await ctx.records.check_may_join(body.id)  # a revoked node, too
    if not await ctx.records.use_join_token(caller.token_id):
        raise UnauthorizedError(
            "this join token is used up or revoked; ask for a new one (`aether tokens join`)",
            code="join_token_used",
        )
    _, credential, replaced = await ctx.records.join_node(caller.tenant_id, body.id)
    await forget_tokens(ctx, replaced)
    return JoinOut(
        node_id=body.id,
        credential=credential,
        certificate=issued.certificate,
        authorities=issued.authorities,
        node_urls=await node_urls(ctx),
        not_after=issued.not_after,
        renew_at=issued.renew_at,
    )


@router.post("/nodes/register")
async def register(body: RegisterIn, request: Request, caller: NodeCaller, ctx: Ctx) -> RegisterOut:
    own_node(request, caller, body.id)
    row = await ctx.records.upsert_node(
        body.id, body.router_url, body.capabilities.model_dump(mode="json")
    )
    ttl = ctx.settings.lease_ttl
    old = await ctx.store.get(_node_key(body.id))
    if old is not None and old.lease:
        await ctx.store.lease_revoke(old.lease)  # the node restarted: its old endpoints are stale
    lease = await ctx.store.lease_grant(ttl)
    config = node_config(
        body.capabilities,
        ctx.settings.disabled_features,
        telemetry_interval=ctx.settings.telemetry_interval,
    )
    record = NodeRecord(
        id=body.id,
        capabilities=body.capabilities,
        router_url=body.router_url,
        draining=row.draining,
        drain_reason=row.drain_reason,
        drained_by=row.drained_by,
        registered_at=time.time(),
        config=config.features,
        version=body.version,
    )
    revision = await ctx.store.put(_node_key(body.id), dump(record), lease=lease)
    return RegisterOut(
        node_id=body.id,
        lease_id=lease,
        lease_ttl=ttl,
        heartbeat_interval=ttl / HEARTBEATS_PER_TTL,
        drain_grace=0.5,
        log_interval=0.5,
        revision=revision,
        config=config,
        server_version=aether.__version__,
    )


@router.post("/nodes/{node}/heartbeat")
async def heartbeat(
    node: str, body: HeartbeatIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> HeartbeatOut:
    own_node(request, caller, node)
    _, lease = await _node_record(ctx, node)
    if lease != body.lease_id:
        raise NotFoundError(
            "this lease is no longer the node's; register again", code="lease_not_found"
        )
    try:
        ttl = await ctx.store.lease_keepalive(body.lease_id)
    except LeaseNotFoundError:
        raise NotFoundError("lease expired; register again", code="lease_not_found") from None
    # the CAs trusted now: a node that sees a new one renews its certificate from it;
    # a diagnostics bundle asks for the node's part
    return HeartbeatOut(ttl=ttl, authorities=ctx.trust.fingerprints(), diag=ctx.diag.wanted(node))


# the stream's constant lines (``AssignmentLine``)
_PING = json.dumps({VERSION_FIELD: AssignmentLine.SCHEMA_VERSION, "type": "ping"}).encode() + b"\n"
_RESYNC = (
    json.dumps({VERSION_FIELD: AssignmentLine.SCHEMA_VERSION, "type": "resync"}).encode() + b"\n"
)


def _relevant(key: str, node: str) -> bool:
    return key.startswith((f"instances/{node}/", "endpoints/", "blueprints/", "agents/"))


def _event_value(key: str, value: bytes) -> Any:
    """A blueprint event says only that the app exists (its router answers 404 otherwise)."""
    if key.startswith("blueprints/") or not value:
        return None
    return json.loads(value)


@router.get("/nodes/{node}/assignments")
async def assignments(
    node: str,
    request: Request,
    caller: NodeCaller,
    ctx: Ctx,
    from_revision: Annotated[int, Query(ge=0)] = 0,
) -> StreamingResponse:
    """NDJSON: a snapshot line (when from_revision is 0 or compacted away), then events.

    Each event line carries its revision; a node resumes with ``from_revision``
    = last seen + 1 after a disconnect.
    """
    own_node(request, caller, node)

    async def stream() -> AsyncIterator[bytes]:
        start = from_revision
        if start == 0:
            # two reads, two revisions: the events resume after the first, so a write
            # between them is sent again rather than lost (replaying is harmless: each
            # event carries the whole value, and the last one wins)
            inst_kvs, revision = await ctx.store.range(f"instances/{node}/")
            ep_kvs, _ = await ctx.store.range("endpoints/")
            bp_kvs, _ = await ctx.store.range("blueprints/")
            agent_kvs, _ = await ctx.store.range("agents/")  # deployed agents' placements
            snapshot = {
                VERSION_FIELD: AssignmentLine.SCHEMA_VERSION,
                "type": "snapshot",
                "revision": revision,
                "instances": [json.loads(kv.value) for kv in inst_kvs],
                "endpoints": [json.loads(kv.value) for kv in ep_kvs],
                "apps": sorted(kv.key.removeprefix("blueprints/") for kv in bp_kvs),
                "agents": [json.loads(kv.value) for kv in agent_kvs],
            }
            yield json.dumps(snapshot).encode() + b"\n"
            start = revision + 1
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in ctx.store.watch("", start):
                    if not _relevant(event.kv.key, node):
                        continue
                    line = {
                        VERSION_FIELD: AssignmentLine.SCHEMA_VERSION,
                        "type": event.type.value,
                        "key": event.kv.key,
                        "revision": event.kv.mod_revision,
                        "value": _event_value(event.kv.key, event.kv.value),
                    }
                    await queue.put(json.dumps(line).encode() + b"\n")
            except CompactedError:
                await queue.put(_RESYNC)
            finally:
                await queue.put(None)

        task = asyncio.create_task(pump())
        try:
            while True:
                try:
                    async with asyncio.timeout(STREAM_PING_SECONDS):
                        item = await queue.get()
                except TimeoutError:
                    yield _PING
                    continue
                if item is None:
                    return
                yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return StreamingResponse(stream(), media_type="application/x-ndjson")


@router.put("/nodes/{node}/instances/{app_version}/{n}")
async def report(
    node: str,
    app_version: str,
    n: int,
    body: ReportIn,
    request: Request,
    caller: NodeCaller,
    ctx: Ctx,
) -> ReportOut:
    """The node reports an instance's state; ACTIVE publishes its endpoint on the node's lease
    (a slice instance's report names its entry points: one endpoint each), any other state
    withdraws every endpoint the instance has."""
    own_node(request, caller, node)
    try:
        state = State(body.state)
    except ValueError:
        raise BadRequestError(f"unknown state {body.state!r}") from None
    app, _, version = app_version.rpartition("@")
    key = instance_key(node, app, int(version) if version.isdigit() else -1, n)
    snapshot = parse_digest(body.snapshot) if body.snapshot else None  # after a checkpoint
    named = _entries(body)  # a slice's entry points (checked before anything is read)
    if snapshot is not None and not await ctx.registry.exists(snapshot):
        raise BadRequestError(f"snapshot {snapshot} is not stored: upload it first")
    for _ in range(10):
        kv = await ctx.store.get(key)
        if kv is None:
            raise NotFoundError(f"instance {key} does not exist (it was removed); stop it")
        record = InstanceRecord.model_validate_json(kv.value)
        if snapshot is not None and not await ctx.records.has_snapshot(record.tenant, snapshot):
            raise refuse(
                request, caller, key, f"snapshot {snapshot} is not one of this instance's tenant"
            )
        if not can_report(record.state, state, record.command):
            raise ConflictError(f"instance {key} cannot go from {record.state} to {state}")
        active_since = record.active_since if record.state is State.ACTIVE else None
        if state is State.ACTIVE and active_since is None:
            active_since = time.time()
        publish = state is State.ACTIVE and bool(body.url) and record.command is Command.ACTIVATE
        entries = named if publish else None
        updated = record.model_copy(
            update={
                "state": state,
                "message": body.message[:MAX_REPORT_MESSAGE],
                "url": body.url,
                "active_since": active_since if state is State.ACTIVE else None,
                **({"snapshot": snapshot} if snapshot is not None else {}),
                **({"entries": sorted(entries)} if entries is not None else {}),
            }
        )
        ops: list[Op] = [Put(key, dump(updated))]
        # every endpoint the instance had, whichever entries its reports named
        held = set(instance_endpoint_keys(record)) | set(instance_endpoint_keys(updated))
        withdrawn = False
        if publish:
            assert body.url is not None
            _, lease = await _node_record(ctx, node)
            points = entries if entries is not None else {"web": None}
            for entry, schema in points.items():
                endpoint = Endpoint(
                    app=app,
                    entry=entry,
                    node=node,
                    n=n,
                    version=record.version,
                    url=body.url,
                    schema=schema,
                )
                ops.append(Put(endpoint_key(app, entry, node, n), dump(endpoint), lease=lease))
            wanted = {endpoint_key(app, entry, node, n) for entry in points}
            ops.extend(Delete(stale) for stale in sorted(held - wanted))
        elif state is not State.ACTIVE:
            for ep_key in sorted(held):
                withdrawn = withdrawn or await ctx.store.get(ep_key) is not None
                ops.append(Delete(ep_key))
        result = await ctx.store.txn([Compare(key, "mod_revision", "==", kv.mod_revision)], ops)
        if result.succeeded:
            # withdrawn_revision: the revision routers must reach before the instance stops
            return ReportOut(
                key=key,
                state=state.value,
                revision=result.revision,
                withdrawn_revision=result.revision if withdrawn else None,
            )
    raise ConflictError(f"instance {key} kept changing; report again")


def _entries(body: ReportIn) -> dict[str, dict[str, Any]] | None:
    """A slice instance's entry points (None: an ordinary app, one ``web`` endpoint)."""
    if body.entries is None:
        return None
    if not body.entries:
        raise BadRequestError("a slice instance must have at least one entry point")
    for entry in body.entries:
        if not _ENTRY_RE.match(entry):
            raise BadRequestError(
                f"entry point {entry[:80]!r}: use a Python identifier (letters, digits, '_')"
            )
    return dict(body.entries)


@router.put("/nodes/{node}/routes")
async def put_routes(
    node: str, body: RoutesIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> RoutesOut:
    """The node's router applied the assignment stream up to ``revision`` (and has
    ``in_flight`` requests open to withdrawn endpoints); kept on the node's lease."""
    own_node(request, caller, node)
    _, lease = await _node_record(ctx, node)
    try:
        revision = await ctx.store.put(routes_key(node), dump(body), lease=lease)
    except LeaseNotFoundError:
        raise NotFoundError("lease expired; register again", code="lease_not_found") from None
    return RoutesOut(revision=revision)


async def _routers(ctx: ServerContext) -> tuple[set[str], dict[str, RouterState]]:
    """The nodes with a live lease, and what each one's router last said."""
    node_kvs, _ = await ctx.store.range("nodes/")
    route_kvs, _ = await ctx.store.range("routes/")
    states: dict[str, RouterState] = {}
    for kv in route_kvs:
        said = RoutesIn.model_validate_json(kv.value)
        states[kv.key.removeprefix("routes/")] = RouterState(said.revision, said.in_flight)
    return {kv.key.removeprefix("nodes/") for kv in node_kvs}, states


@router.get("/nodes/{node}/withdrawals")
async def withdrawal(
    node: str,
    request: Request,
    caller: NodeCaller,
    ctx: Ctx,
    revision: Annotated[int, Query(ge=0)],
    url: Annotated[str, Query(min_length=1, max_length=2048)],
    wait: Annotated[float, Query(ge=0, le=30)] = 0.0,
) -> WithdrawalOut:
    """Whether every live router is done with the endpoint ``url`` withdrawn at ``revision``
    (``core.withdrawal``); waits up to ``wait`` seconds for it."""
    own_node(request, caller, node)
    deadline = time.monotonic() + wait
    while True:
        live, states = await _routers(ctx)
        pending = waiting_for(live, states, revision, url)
        if not pending or time.monotonic() >= deadline:
            return WithdrawalOut(confirmed=not pending, revision=revision, waiting_for=pending)
        await asyncio.sleep(WITHDRAWAL_POLL_SECONDS)


@router.delete("/nodes/{node}/instances/{app_version}/{n}")
async def unloaded(
    node: str, app_version: str, n: int, request: Request, caller: NodeCaller, ctx: Ctx
) -> UnloadedOut:
    """The node finished UNLOAD: the instance is gone."""
    own_node(request, caller, node)
    app, _, version = app_version.rpartition("@")
    key = instance_key(node, app, int(version) if version.isdigit() else -1, n)
    kv = await ctx.store.get(key)
    if kv is None:
        return UnloadedOut(key=key, deleted=False)
    record = InstanceRecord.model_validate_json(kv.value)
    if record.command is not Command.UNLOAD:
        raise ConflictError(f"instance {key} was not told to UNLOAD (command {record.command})")
    result = await ctx.store.txn(
        [Compare(key, "mod_revision", "==", kv.mod_revision)],
        [Delete(key), *(Delete(ep_key) for ep_key in instance_endpoint_keys(record))],
    )
    return UnloadedOut(key=key, deleted=result.succeeded)


@router.post("/nodes/{node}/logs")
async def push_logs(
    node: str, body: LogsIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> LogsOut:
    """Lines of this node's instances; a line for an app it runs no instance of is refused."""
    own_node(request, caller, node)
    mine = {(record.tenant, record.app) for record in await assigned(ctx, node)}
    for entry in body.entries:
        if (entry.tenant, entry.app) not in mine:
            raise refuse(
                request,
                caller,
                f"logs/{entry.tenant}/{entry.app}",
                f"node {node!r} runs no instance of this app",
                message=f"node {node!r} runs no instance of app {entry.app!r}: its logs refused",
            )
    for entry in body.entries:  # kept per tenant under the app's plain name, as it reads them
        app = split_cluster_name(entry.app)[0]
        await ctx.logs.append(entry.tenant, app, f"{entry.label}@{node}", entry.text)
    return LogsOut(accepted=len(body.entries))


async def node_list(ctx: ServerContext) -> list[NodeOut]:
    snap = await read_snapshot(ctx.store)
    counts: dict[str, int] = {}
    for inst, _ in snap.instances.values():
        counts[inst.node] = counts.get(inst.node, 0) + 1
    out = []
    for row in await ctx.records.list_nodes():
        live = snap.nodes.get(row.id)
        state = "down" if live is None else ("draining" if row.draining else "ready")
        if row.revoked_at is not None:
            state = "revoked"
        caps = NodeCapabilities.model_validate(row.capabilities)
        out.append(
            NodeOut(
                id=row.id,
                state=state,  # type: ignore[arg-type]
                router_url=row.router_url,
                capabilities=caps,
                config=node_config(
                    caps,
                    ctx.settings.disabled_features,
                    telemetry_interval=ctx.settings.telemetry_interval,
                ),
                drain_reason=live[0].drain_reason if live is not None else "",
                instances=counts.get(row.id, 0),
                last_seen_at=row.last_seen_at,
                version=live[0].version if live is not None else None,
            )
        )
    return out


@router.get("/nodes")
async def list_nodes(caller: Caller, ctx: Ctx) -> list[NodeOut]:
    return await node_list(ctx)


@router.post("/nodes/{node}/drain")
async def drain(node: str, caller: ClusterOperator, ctx: Ctx) -> dict[str, Any]:
    # mark its instances first, so the moves the drain starts are tracked migrations
    moving = await drain_node(ctx, node, "its node was drained by an operator")
    await set_draining(ctx, node, True, reason="drained by an operator", by=DRAINED_BY_OPERATOR)
    return {"node": node, "draining": True, "migrations": [row.id for row in moving]}


@router.post("/nodes/{node}/undrain")
async def undrain(node: str, caller: ClusterOperator, ctx: Ctx) -> dict[str, Any]:
    await set_draining(ctx, node, False)
    return {"node": node, "draining": False}


@router.post("/nodes/{node}/revoke")
async def revoke(node: str, caller: ClusterAdmin, ctx: Ctx) -> dict[str, Any]:
    """Revoke the node's credential (its next call is 401) and end its lease, so its
    instances are placed elsewhere; it may not join again until allowed."""
    revoked = await ctx.records.revoke_node(node)
    await forget_tokens(ctx, revoked)
    kv = await ctx.store.get(_node_key(node))
    if kv is not None and kv.lease:
        await ctx.store.lease_revoke(kv.lease)  # its key and endpoints go with it
    return {"node": node, "revoked": True, "credentials": len(revoked)}


@router.post("/nodes/{node}/allow")
async def allow(node: str, caller: ClusterAdmin, ctx: Ctx) -> dict[str, Any]:
    """Let a revoked node join again (with a join token, which gives it a new credential)."""
    await ctx.records.allow_node(node)
    return {"node": node, "revoked": False}
