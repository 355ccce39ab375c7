"""``GET /metrics``: the server's Prometheus series, scoped to the scraper.

Without a token (like the probes) only cluster-level figures: no series labelled
with a node or an app, so an anonymous scraper learns no names. A valid token
(any role) adds its tenant's app and slice series, and the node series for the default
tenant (which runs the cluster); a wrong token is a 401. The series themselves
are listed in :mod:`aether.server.http.prometheus`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from aether.errors import UnauthorizedError
from aether.model.names import cluster_name
from aether.server.context import ServerContext
from aether.server.http.prometheus import ServerMetrics, Visible
from aether.store.records import DEFAULT_TENANT

__all__ = ["install_metrics", "scrape_view"]


async def scrape_view(request: Request, ctx: ServerContext | None) -> Visible:
    """What this scrape may see: nothing labelled without a token, its tenant's with one."""
    header = request.headers.get("authorization")
    if ctx is None or header is None:
        return Visible()
    scheme, _, token = header.partition(" ")
    principal = None
    if scheme.lower() == "bearer" and token.strip():
        principal = await ctx.tokens.resolve(token.strip(), ctx.records)
    if principal is None:
        raise UnauthorizedError(
            "invalid or revoked token; scrape /metrics with a valid token, or with none "
            "for the cluster-level figures only"
        )
    apps = frozenset(  # the series' ``app`` label is the cluster name
        cluster_name(app.name, principal.tenant)
        for app in await ctx.records.list_apps(principal.tenant_id)
    )
    return Visible(nodes=principal.tenant == DEFAULT_TENANT, apps=apps, tenant=principal.tenant)


def install_metrics(app: FastAPI, metrics: ServerMetrics) -> None:
    """``GET /metrics``: Prometheus text format; cluster-level figures without a token."""
    app.state.metrics = metrics

    @app.get(
        "/metrics",
        tags=["probes"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def prometheus_metrics(request: Request) -> Response:
        ctx: ServerContext | None = getattr(app.state, "ctx", None)
        view = await scrape_view(request, ctx)
        if ctx is None:
            return Response(await metrics.render(view), media_type=CONTENT_TYPE_LATEST)
        text = await metrics.render(
            view,
            registry=ctx.registry,
            latest=ctx.telemetry.latest(),
            entry_totals=ctx.telemetry.entry_totals(),
        )
        return Response(text, media_type=CONTENT_TYPE_LATEST)
