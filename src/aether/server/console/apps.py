"""The apps pages: ``/ui/apps`` (the tenant's apps) and ``/ui/apps/{app}`` (one app).

The app page shows its deployments with the rollout timeline of one of them
(``?deployment=``), its instances per node, its call/error/latency charts and
the tail of its logs (``?search=`` filters server-side; ``logs.js`` streams new
lines). Its forms scale, roll back, promote a canary and migrate an instance,
each through the API as the visitor. ``/ui/apps/{app}/artifacts/{digest}``
shows a deployed artifact's SBOM, manifest and signature.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Form, Query
from fastapi.responses import RedirectResponse, Response

from aether.model.cluster import parse_instance_key
from aether.model.names import split_cluster_name
from aether.server.console.client import ApiError
from aether.server.console.view import Action, ConsoleError, Page, paginate

__all__ = ["PAGE_SIZE", "filter_logs", "router"]

router = APIRouter()
T = TypeVar("T")

PAGE_SIZE = 50  # apps per page of /ui/apps
LOG_LINES = 200  # log lines shown; a search looks through the last LOG_SCAN
LOG_SCAN = 5000
MANIFEST_ROWS = 500


def filter_logs(text: str, search: str, limit: int = LOG_LINES) -> list[str]:
    """The last ``limit`` lines of ``text`` that contain ``search`` (any case)."""
    needle = search.casefold()
    lines = [line for line in text.splitlines() if needle in line.casefold()]
    return lines[-limit:]


async def _or_none(call: Awaitable[T]) -> T | None:
    """The API's answer, or None when it is a 404 (nothing recorded)."""
    try:
        return await call
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _done(app: str, message: str) -> Response:
    return RedirectResponse(f"/ui/apps/{quote(app)}?done={quote(message)}", status_code=303)


@router.get("/apps")
async def apps(
    view: Page,
    q: Annotated[str, Query(max_length=100)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    every: list[dict[str, Any]] = await view.api.get("/api/v1/apps")
    needle = q.strip().casefold()
    shown = sorted(
        (a for a in every if needle in a["name"].casefold()), key=lambda a: str(a["name"])
    )
    listed, page, pages = paginate(shown, page, PAGE_SIZE)
    return view.render(
        "apps.html",
        page="apps",
        apps=listed,
        total=len(every),
        matching=len(shown),
        q=q.strip(),
        page_no=page,
        pages=pages,
    )


def _selected(
    deployments: list[dict[str, Any]], wanted: str, live: str | None
) -> dict[str, Any] | None:
    """The deployment whose timeline is shown: the asked one, else the live, else the newest
    (None: nothing deployed yet, e.g. an app made by registering a signing key)."""
    if wanted:
        for dep in deployments:
            if dep["id"] == wanted:
                return dep
        raise ConsoleError(404, "This app has no such deployment.", code="not_found")
    for dep in deployments:
        if dep["id"] == live:
            return dep
    return deployments[0] if deployments else None


def _by_node(instances: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for inst in instances:
        grouped.setdefault(inst["node"], []).append(inst)
    return sorted(grouped.items())


def _canary_waiting(blueprint: dict[str, Any] | None) -> bool:
    """A canary rollout in progress that has not been promoted yet."""
    if not blueprint or blueprint.get("previous") is None or blueprint.get("promoted"):
        return False
    return bool(blueprint["spec"].get("rollout", {}).get("strategy") == "canary")


@router.get("/apps/{app}")
async def app_page(
    app: str,
    view: Page,
    deployment: Annotated[str, Query(max_length=64)] = "",
    search: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    summary, deployments, instances, blueprint, logs, nodes = await asyncio.gather(
        view.api.get(f"/api/v1/apps/{quote(app)}"),
        view.api.get(f"/api/v1/apps/{quote(app)}/deployments"),
        view.api.get("/api/v1/instances", app=app),
        _or_none(view.api.get(f"/api/v1/blueprints/{quote(app)}")),
        view.api.text(f"/api/v1/apps/{quote(app)}/logs", tail=LOG_SCAN if search else LOG_LINES),
        view.api.get("/api/v1/nodes"),
    )
    selected = _selected(deployments, deployment, summary["deployment_id"])
    events = await view.api.get(f"/api/v1/deployments/{selected['id']}/events") if selected else []
    current = summary["version"]
    return view.render(
        "app.html",
        page="apps",
        app=summary,
        deployments=deployments,
        selected=selected,
        events=events,
        by_node=_by_node(instances),
        instance_count=len(instances),
        earlier=[d for d in deployments if current is None or d["version"] < current],
        canary_waiting=_canary_waiting(blueprint),
        rollout_running=bool(blueprint and blueprint.get("previous")),
        log_lines=filter_logs(logs, search.strip()),
        search=search.strip(),
        nodes=[n["id"] for n in nodes],
    )


@router.get("/apps/{app}/artifacts/{digest}")
async def artifact_page(app: str, digest: str, view: Page) -> Response:
    deployments = await view.api.get(f"/api/v1/apps/{quote(app)}/deployments")
    used = [d for d in deployments if d["digest"] == digest]
    if not used:  # only the artifacts this app deployed, so a URL cannot probe others
        raise ConsoleError(404, "This app never deployed that artifact.", code="not_found")
    base = f"/api/v1/artifacts/{quote(digest)}"
    sbom, manifest, signature = await asyncio.gather(
        _or_none(view.api.get(f"{base}/sbom")),
        _or_none(view.api.get(f"{base}/manifest")),
        view.api.get(f"{base}/signature"),
    )
    files = (manifest or {}).get("files", [])
    return view.render(
        "artifact.html",
        page="apps",
        app=app,
        digest=digest,
        versions=[d["version"] for d in used],
        sbom=sbom,
        components=(sbom or {}).get("components", []),
        manifest=manifest,
        files=files[:MANIFEST_ROWS],
        files_total=len(files),
        signature=signature,
    )


@router.post("/apps/{app}/scale")
async def scale(app: str, view: Action, instances: Annotated[str, Form()] = "") -> Response:
    # sent as typed: the API validates the number and its message is the page's
    answer = await view.api.post(f"/api/v1/apps/{quote(app)}/scale", {"instances": instances})
    return _done(app, f"Scaled {app} to {answer['instances_desired']} instance(s).")


@router.post("/apps/{app}/rollback")
async def rollback(app: str, view: Action, version: Annotated[str, Form()] = "") -> Response:
    body = {"version": version} if version else {}
    answer = await view.api.post(f"/api/v1/apps/{quote(app)}/rollback", body)
    return _done(app, f"Rolling back to v{answer['rollback_of']} as v{answer['version']}.")


@router.post("/apps/{app}/promote")
async def promote(app: str, view: Action) -> Response:
    await view.api.post(f"/api/v1/apps/{quote(app)}/promote")
    return _done(app, "Canary promoted: the rollout goes on.")


def _of_app(instance: str, app: str) -> bool:
    """Whether instance key ``instance`` is one of app ``app``'s (its plain name; the
    key names the cluster name, and the API checks the tenant)."""
    try:
        name = parse_instance_key(instance)[1]
    except ValueError:
        return False
    return split_cluster_name(name)[0] == app


@router.post("/apps/{app}/migrate")
async def migrate(
    app: str,
    view: Action,
    instance: Annotated[str, Form(max_length=400)] = "",
    to: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    await view.api.get(f"/api/v1/apps/{quote(app)}")  # the app is the visitor's
    if not _of_app(instance, app):
        raise ConsoleError(400, "That instance is not one of this app's.", code="bad_request")
    moved = await view.api.post(
        "/api/v1/instances/migrate", {"instance": instance, "to": to or None}
    )
    where = moved["to_node"] or "another node"
    return _done(app, f"Moving instance {instance} from {moved['from_node']} to {where}.")
