"""The tasks pages (``/ui/tasks``, ``/ui/tasks/{id}``) and the sandboxes pages.

The queue by state (``GET /api/v1/tasks/stats``) and a page of tasks, newest
first, filtered and paged in the query string (``before``: the last task of the
page before); a task's attempts, output and timing; submitting a task from a
form and cancelling one (operator). Sandboxes list their executions.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from fastapi import APIRouter, Form, Query
from fastapi.responses import RedirectResponse, Response

from aether.model.tasks import TaskState
from aether.server.console.view import Action, Page
from aether.tasks.types import registered

__all__ = ["PAYLOAD_FIELDS", "duration", "router", "task_body"]

router = APIRouter()

PAGE_SIZE = 50
STATES = [state.value for state in TaskState]
#: the payload fields the submit form has for each built-in task type
PAYLOAD_FIELDS: dict[str, tuple[str, ...]] = {
    "vm:create": ("name",),
    "vm:execute": ("vm_id", "command", "args"),
    "vm:delete": ("vm_id",),
    "job:run": ("app", "command", "args"),
}
_NUMBERS = ("priority", "max_retry", "timeout", "delay")


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def duration(start: str | None, end: str | None) -> str:
    """'1.2 s', '3 min 4 s', ... between two ISO timestamps; '-' if either is missing."""
    first, last = _when(start), _when(end)
    if first is None or last is None:
        return "-"
    seconds = max(0.0, (last - first).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _number(text: str) -> int | float | str:
    """A number from a form field; text that is none is sent as is, for the API to refuse."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _payload(task_type: str, form: dict[str, str]) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for name in PAYLOAD_FIELDS.get(task_type, ()):
        value = form.get(name, "")
        if name == "args":
            payload["args"] = [line.strip() for line in value.splitlines() if line.strip()]
        elif name == "command" or value.strip():
            payload[name] = value.strip()  # an empty command is the API's to refuse
    return payload


def task_body(form: dict[str, str]) -> dict[str, Any]:
    """The ``TaskIn`` body for the submit form's fields (empty fields: the type's defaults)."""
    task_type = form.get("type", "").strip()
    body: dict[str, Any] = {"type": task_type, "payload": _payload(task_type, form)}
    if form.get("queue", "").strip():
        body["queue"] = form["queue"].strip()
    for name in _NUMBERS:
        if form.get(name, "").strip():
            body[name] = _number(form[name].strip())
    return body


def _back(next_url: str, fallback: str, done: str) -> str:
    """``next_url`` (a console page, else ``fallback``) with ``done`` as its flash."""
    target = next_url if next_url.startswith("/ui/") and "\\" not in next_url else fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        parts = urlsplit(fallback)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "done"] + [("done", done)]
    return f"{parts.path}?{urlencode(query)}"


def _page_url(filters: dict[str, str], before: str | None) -> str:
    query = {k: v for k, v in filters.items() if v}
    if before:
        query["before"] = before
    return "/ui/tasks" + (f"?{urlencode(query)}" if query else "")


@router.get("/tasks")
async def tasks(
    view: Page,
    state: str = "",
    type: str = "",
    queue: str = "",
    before: str = "",
    limit: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> Response:
    filters = {"state": state, "type": type, "queue": queue}
    stats, rows = await asyncio.gather(
        view.api.get("/api/v1/tasks/stats"),
        view.api.get("/api/v1/tasks", limit=limit, before=before, **filters),
    )
    return view.render(
        "tasks.html",
        page="tasks",
        stats=stats,
        tasks=rows,
        filters=filters,
        states=STATES,
        types=registered(),
        payload_fields=PAYLOAD_FIELDS,
        before=before,
        older=_page_url(filters, rows[-1]["id"]) if len(rows) == limit else None,
        newest=_page_url(filters, None),
    )


@router.post("/tasks")
async def submit(view: Action) -> Response:
    form = {k: v for k, v in (await view.request.form()).items() if isinstance(v, str)}
    task = await view.api.post("/api/v1/tasks", task_body(form))
    done = f"Submitted task {task['id']} ({task['type']}): {task['state']}"
    return RedirectResponse(f"/ui/tasks?done={quote(done)}", status_code=303)


@router.get("/tasks/{task_id}")
async def task(view: Page, task_id: str) -> Response:
    path = f"/api/v1/tasks/{quote(task_id, safe='')}"
    found = await view.api.get(path)
    history = await view.api.get(f"{path}/history")
    return view.render(
        "task.html",
        page="tasks",
        task=found,
        history=history,
        waited=duration(found["created_at"], found["started_at"]),
        ran=duration(found["started_at"], found["finished_at"]),
        total=duration(found["created_at"], found["finished_at"]),
        sandbox=found["payload"].get("vm_id") or found["payload"].get("sandbox_id"),
    )


@router.post("/tasks/{task_id}/cancel")
async def cancel(view: Action, task_id: str, next: Annotated[str, Form()] = "") -> Response:
    task = await view.api.post(f"/api/v1/tasks/{quote(task_id, safe='')}/cancel")
    done = f"Task {task['id']} is {task['state']}"
    return RedirectResponse(_back(next, f"/ui/tasks/{quote(task_id)}", done), status_code=303)


@router.get("/sandboxes")
async def sandboxes(view: Page, include_deleted: bool = False) -> Response:
    rows = await view.api.get(
        "/api/v1/sandboxes", include_deleted="true" if include_deleted else None
    )
    return view.render(
        "sandboxes.html", page="tasks", sandboxes=rows, include_deleted=include_deleted
    )


@router.get("/sandboxes/{sandbox_id}")
async def sandbox(view: Page, sandbox_id: str) -> Response:
    path = f"/api/v1/sandboxes/{quote(sandbox_id, safe='')}"
    found = await view.api.get(path)
    runs = await view.api.get(f"{path}/executions")
    for run in runs:
        run["took"] = duration(run["started_at"], run["finished_at"])
    return view.render("sandbox.html", page="tasks", sandbox=found, executions=runs)
