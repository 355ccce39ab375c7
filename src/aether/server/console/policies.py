"""The policy pages: ``/ui/policies`` (``default-safe`` and the tenant's own) and
``/ui/policies/{id}``, the editor.

The editor shows the policy as YAML in a textarea. **Simulate** posts the edited text
to ``POST /api/v1/policies/{id}/simulate`` and shows what the changed policy would
have decided on the calls this policy decided, saving nothing; **Save** sends it as
``PATCH /api/v1/policies/{id}`` (a new version). Either way a refusal comes back on
the page with the text as typed. The API decides who may: simulating needs an
operator, saving an admin, and the built-in ``default-safe`` cannot be saved.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import quote

import yaml
from fastapi import APIRouter, Form
from fastapi.responses import RedirectResponse, Response

from aether.server.console.client import ApiError
from aether.server.console.view import Action, ConsoleError, Page, View

__all__ = ["editable", "router"]

router = APIRouter()

#: fields of a policy's answer that are not part of what one edits
GENERATED = ("id", "version", "builtin", "created_at", "updated_at", "cedar")
#: what a field left out of the text means when saving: the text is the whole policy
UNSET: dict[str, Any] = {
    "description": "",
    "tools": [],
    "constraints": [],
    "approval_required": [],
    "max_steps": None,
    "max_tool_calls": None,
    "token_budgets": {},
    "egress_hosts": [],
    "redact": [],
}


def _api_policy(policy_id: str) -> str:
    return f"/api/v1/policies/{quote(policy_id, safe='')}"


def editable(policy: dict[str, Any]) -> str:
    """The policy as the editor shows it: YAML of the fields one can change."""
    fields = {k: v for k, v in policy.items() if k not in GENERATED}
    # each constraint has one kind: leave out the others' nulls
    fields["constraints"] = [
        {k: v for k, v in c.items() if v is not None} for c in fields.get("constraints", [])
    ]
    return yaml.safe_dump(fields, sort_keys=False, allow_unicode=True)


def _edited(policy_id: str, text: str) -> dict[str, Any]:
    """The textarea's policy: a YAML or JSON mapping; an ``id`` in it must be this one."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConsoleError(400, f"The policy is not YAML or JSON: {str(exc)[:300]}") from None
    if not isinstance(value, dict):
        raise ConsoleError(400, "The policy must be a mapping of its fields (tools: [...], ...).")
    given = value.pop("id", policy_id)
    if given != policy_id:
        raise ConsoleError(400, f"The text is policy {given!r}, not {policy_id!r}.")
    for generated in GENERATED:
        value.pop(generated, None)
    return value


@router.get("/policies")
async def policies(view: Page) -> Response:
    found = await view.api.get("/api/v1/policies")
    return view.render("policies.html", page="policies", policies=found)


async def _editor(
    view: View,
    policy_id: str,
    *,
    text: str | None = None,
    error: str = "",
    simulation: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    policy, agents = await asyncio.gather(
        view.api.get(_api_policy(policy_id)), view.api.get("/api/v1/agents", limit=1000)
    )
    using = [a for a in agents["agents"] if policy_id in a["policy_ids"]]
    return view.render(
        "policy.html",
        page="policies",
        status_code=status,
        policy=policy,
        text=editable(policy) if text is None else text,
        error=error,
        simulation=simulation,
        using=using,
    )


@router.get("/policies/{policy_id}")
async def policy(view: Page, policy_id: str) -> Response:
    return await _editor(view, policy_id)


def _refused(exc: ApiError | ConsoleError) -> int:
    return exc.status if 400 <= exc.status < 500 else 400


@router.post("/policies/{policy_id}/simulate")
async def simulate(
    view: Action, policy_id: str, policy: Annotated[str, Form(max_length=200_000)] = ""
) -> Response:
    """What the edited text would decide on the policy's past calls; nothing saved."""
    await view.api.get(_api_policy(policy_id))  # another tenant's: 404, before any parsing
    try:
        body = {"policy": _edited(policy_id, policy)}
        answer = await view.api.post(f"{_api_policy(policy_id)}/simulate", body)
    except (ApiError, ConsoleError) as exc:
        return await _editor(view, policy_id, text=policy, error=exc.message, status=_refused(exc))
    return await _editor(view, policy_id, text=policy, simulation=answer)


@router.post("/policies/{policy_id}")
async def save(
    view: Action, policy_id: str, policy: Annotated[str, Form(max_length=200_000)] = ""
) -> Response:
    """Save the edited text as the policy's next version."""
    await view.api.get(_api_policy(policy_id))
    try:
        whole = {**UNSET, **_edited(policy_id, policy)}
        saved = await view.api.request("PATCH", _api_policy(policy_id), json=whole)
    except (ApiError, ConsoleError) as exc:
        return await _editor(view, policy_id, text=policy, error=exc.message, status=_refused(exc))
    done = f"Saved: policy {saved['id']} is now version {saved['version']}."
    return RedirectResponse(f"/ui/policies/{quote(policy_id)}?done={quote(done)}", 303)
