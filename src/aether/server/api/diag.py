"""The diagnostics bundle: ``POST /api/v1/diag/bundle`` (the cluster admin) assembles
one tar.gz of what a bug report needs; nodes send their own part to
``POST /api/v1/nodes/{node}/diag/{id}`` on the server building the bundle when a
heartbeat answer (from any server: :mod:`aether.server.services.diag`) asks them.

Every file goes through :func:`aether.ops.redact.redact` (and the secret values this
server knows: its settings' secrets, its bootstrap tokens) before it is packed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from aether.errors import BadRequestError, NotFoundError
from aether.model.diag import NodePartIn
from aether.ops import diag_bundle, diag_log
from aether.server.api.artifacts import BINARY
from aether.server.api.audit import event_out
from aether.server.api.decisions import list_decisions
from aether.server.api.migrations import list_snapshots
from aether.server.api.nodes import node_list
from aether.server.api.prometheus import scrape_view
from aether.server.api.risk import Risk, latest_risk
from aether.server.config import effective_config
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import ClusterAdmin, NodeCaller, own_node
from aether.server.services import diag as diag_requests
from aether.server.services.migrations import migration_out
from aether.server.settings import ServerSettings
from aether.store.records.schema import MigrationRecord

__all__ = ["router"]

router = APIRouter(tags=["operations"])
Ctx = Annotated[ServerContext, Depends(get_context)]

MAX_ROWS = 1000  # events, decisions, migrations, snapshots
MAX_METRIC_LINES = 3000
MAX_SINCE = 7 * 24 * 3600.0
_SECRET_WORDS = ("password", "secret", "token", "api_key", "access_key")


def _known_secrets(settings: ServerSettings) -> list[str]:
    """The secret values this server holds: settings naming one, URL passwords, the
    bootstrap tokens in its data dir."""
    from urllib.parse import unquote, urlsplit

    known = []
    for key, value in settings.model_dump().items():
        if not isinstance(value, str) or not value:
            continue
        if any(w in key for w in _SECRET_WORDS) and not key.endswith("_file"):
            known.append(value)
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                continue
            if password:
                known += [password, unquote(password)]
    for name in ("admin.token", "join.token"):
        with contextlib.suppress(OSError):
            known.append((Path(settings.data_dir) / name).read_text().strip())
    return known


def _rows(items: list[Any]) -> bytes:
    return diag_bundle.as_json([i.model_dump(mode="json") for i in items])


async def _metrics(request: Request, ctx: ServerContext) -> bytes:
    view = await scrape_view(request, ctx)
    data = await ctx.metrics.render(
        view,
        registry=ctx.registry,
        latest=ctx.telemetry.latest(),
        entry_totals=ctx.telemetry.entry_totals(),
    )
    lines = data.decode().splitlines()
    if len(lines) > MAX_METRIC_LINES:
        lines = [*lines[:MAX_METRIC_LINES], f"# ... {len(lines) - MAX_METRIC_LINES} lines cut"]
    return ("\n".join(lines) + "\n").encode()


def _doctor(settings: ServerSettings) -> bytes:
    from aether.ops.doctor import DoctorOptions, render, run_checks

    # the server is running: its own ports being taken is expected, not a finding
    checks = run_checks(DoctorOptions(settings=settings, roles=("server",), skip=("port",)))
    return render(checks).encode()


async def _server_files(
    request: Request, caller: Any, ctx: ServerContext, risk: Any, since: float
) -> tuple[dict[str, bytes], dict[str, str]]:
    files: dict[str, bytes] = {}
    missing: dict[str, str] = {}
    start = time.time() - since
    files["server/log.txt"] = ("\n".join(diag_log.recent(since)) + "\n").encode()
    files["server/config.toml"] = effective_config(ctx.settings).encode()
    files["server/versions.json"] = diag_bundle.as_json(
        {**await asyncio.to_thread(diag_bundle.versions), "server_id": ctx.server_id}
    )
    nodes = await node_list(ctx)
    files["cluster/nodes.json"] = _rows(nodes)
    files["cluster/capabilities.json"] = diag_bundle.as_json(
        {n.id: n.capabilities.model_dump(mode="json") for n in nodes}
    )
    events = await ctx.records.list_audit(None, since=start, limit=MAX_ROWS)
    files["cluster/events.json"] = _rows([event_out(e) for e in events])
    files["cluster/decisions.json"] = _rows(
        await list_decisions(caller, ctx, None, None, None, None, MAX_ROWS)
    )
    files["cluster/risk.json"] = _rows(await latest_risk(caller, ctx, risk))
    migrations: list[MigrationRecord] = []
    for tenant in await ctx.records.list_tenants():
        migrations += await ctx.records.list_migrations(tenant.id, None, MAX_ROWS)
    files["cluster/migrations.json"] = _rows([migration_out(m) for m in migrations])
    files["cluster/snapshots.json"] = _rows(await list_snapshots(caller, ctx, None, MAX_ROWS))
    files["server/metrics.txt"] = await _metrics(request, ctx)
    try:
        files["server/doctor.txt"] = await asyncio.to_thread(_doctor, ctx.settings)
    except Exception as exc:  # a bundle without the doctor's output is still worth having
        missing["server/doctor.txt"] = f"the checks failed: {exc!r}"
    return files, missing


def _chosen(spec: str, live: list[str]) -> set[str]:
    if spec == "none":
        return set()
    if spec == "all":
        return set(live)
    wanted = {n.strip() for n in spec.split(",") if n.strip()}
    unknown = wanted - set(live)
    if unknown:
        raise BadRequestError(f"no live node named {', '.join(sorted(unknown))}")
    return wanted


@router.post(
    "/diag/bundle",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {"schema": BINARY}}}},
)
async def bundle(
    request: Request,
    caller: ClusterAdmin,
    ctx: Ctx,
    risk: Risk,
    since: Annotated[float, Query(gt=0, le=MAX_SINCE)] = 3600.0,
    nodes: Annotated[str, Query(max_length=4096)] = "all",
    wait: Annotated[float | None, Query(gt=0, le=120)] = None,
) -> Response:
    """A tar.gz: the server's log, configuration (secrets redacted), versions, doctor
    output and a metrics excerpt; the cluster's nodes and capabilities, events,
    decisions, risk assessments, migrations and snapshots; and each chosen live node's
    own part (``nodes``: ``all``, ``none`` or names), asked for in its heartbeat and
    waited for at most ``wait`` seconds (default: three heartbeat periods and 15 s)."""
    live = [n.id for n in await node_list(ctx) if n.state in ("ready", "draining")]
    chosen = _chosen(nodes, live)
    timeout = wait if wait is not None else ctx.settings.lease_ttl + 15
    # the nodes send their parts to this server's node port, whichever server they call
    to = ctx.trust.node_urls[0] if ctx.trust.node_urls else None
    ask = ctx.diag.ask(chosen, since, to)
    try:
        if chosen:  # every server asks the nodes heartbeating it
            await diag_requests.publish(ctx.store, ask, timeout + 30)
        files, missing = await _server_files(request, caller, ctx, risk, since)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ask.done.wait(), timeout)
    finally:
        ctx.diag.close(ask)
        await diag_requests.withdraw(ctx.store, ask)
    for node in sorted(chosen):
        part = ask.parts.get(node)
        if part is None:
            reason = f"the node did not send its part within {timeout:g} s"
            if ask.unshared:
                reason += f"; {ask.unshared}, only nodes calling this server were asked"
            missing[f"nodes/{node}/"] = reason
            continue
        for name, text in part.items():
            files[f"nodes/{node}/{Path(name).name}"] = text.encode()
    data = diag_bundle.pack(files, _known_secrets(ctx.settings), missing, since)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Response(
        data,
        media_type="application/gzip",
        headers={"content-disposition": f'attachment; filename="aether-diag-{stamp}.tar.gz"'},
    )


@router.post("/nodes/{node}/diag/{request_id}", status_code=204)
async def node_part(
    node: str, request_id: str, body: NodePartIn, request: Request, caller: NodeCaller, ctx: Ctx
) -> Response:
    """A node's own part of a bundle it was asked for (its heartbeat answer's ``diag``)."""
    own_node(request, caller, node)
    total = sum(len(v) for v in body.files.values())
    if total > diag_bundle.MAX_NODE_PART:
        raise BadRequestError(f"a node's part is at most {diag_bundle.MAX_NODE_PART} bytes")
    if not ctx.diag.answer(request_id, node, body.files):
        raise NotFoundError("no diagnostics bundle on this server is waiting for this node's part")
    ask = ctx.diag.open.get(request_id)
    if ask is not None:  # the other servers stop asking the node
        await diag_requests.published_without(ctx.store, ask, node)
    return Response(status_code=204)
