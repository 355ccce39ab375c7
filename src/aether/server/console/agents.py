"""The agents pages: ``/ui/agents`` (My Agents), ``/ui/agents/new`` (create one from a
recipe of the catalog) and ``/ui/agents/{id}`` (one agent: its config, versions, export,
its latest runs and a form to start one).

The wizard has two steps: pick a recipe, then a form asking only for what the recipe
leaves open (``open``) and the agent's name. The form posts the recipe and those fields
to ``POST /api/v1/agents``, which fills in the rest from the recipe; when the API
refuses, the form comes back with its message and everything that was typed.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

import yaml
from fastapi import APIRouter, Form, Query
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from aether.server.console.client import ApiError
from aether.server.console.view import Action, ConsoleError, Page, View

__all__ = ["AgentForm", "RunForm", "router"]

router = APIRouter()

PAGE_SIZE = 100  # agents per page of /ui/agents
RUNS_SHOWN = 10  # the latest runs on an agent's page


def _api_agent(agent_id: str) -> str:
    return f"/api/v1/agents/{quote(agent_id, safe='')}"


@router.get("/agents")
async def agents(view: Page, after: Annotated[str, Query(max_length=63)] = "") -> Response:
    found = await view.api.get("/api/v1/agents", after=after, limit=PAGE_SIZE)
    return view.render(
        "agents.html", page="agents", agents=found["agents"], after=after, cursor=found["cursor"]
    )


# -- create from a recipe -----------------------------------------------------------------


@dataclass
class AgentForm:
    """What the wizard's form holds: the name and the recipe's open fields as typed."""

    recipe: str
    name: str = ""
    model: str = ""
    policy_ids: list[str] = field(default_factory=list)
    tool_ids: list[str] = field(default_factory=list)
    system_prompt: str = ""
    config: str = ""

    @classmethod
    def of(cls, form: FormData) -> AgentForm:
        def text(key: str) -> str:
            value = form.get(key, "")
            return value if isinstance(value, str) else ""

        return cls(
            recipe=text("recipe"),
            name=text("name").strip(),
            model=text("model").strip(),
            policy_ids=[v for v in form.getlist("policy_ids") if isinstance(v, str)],
            tool_ids=[v for v in form.getlist("tool_ids") if isinstance(v, str)],
            system_prompt=text("system_prompt"),
            config=text("config"),
        )

    def body(self, open_fields: list[str]) -> dict[str, Any]:
        """The ``POST /api/v1/agents`` body: the name, the recipe, its open fields."""
        body: dict[str, Any] = {"name": self.name, "recipe": self.recipe}
        given: dict[str, Any] = {
            "model": self.model or None,
            "policy_ids": self.policy_ids,
            "tool_ids": self.tool_ids,
            "system_prompt": self.system_prompt,
            "config": _config(self.config) if "config" in open_fields else None,
        }
        body.update({k: given[k] for k in open_fields if given[k] is not None})
        return body


def _config(text: str) -> dict[str, Any]:
    """The config field: a YAML or JSON mapping (empty: none)."""
    if not text.strip():
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConsoleError(400, f"The config is not YAML or JSON: {str(exc)[:300]}") from None
    if not isinstance(value, dict):
        raise ConsoleError(400, 'The config must be a mapping, e.g. {"max_tokens": 1024}.')
    return value


async def _choices(view: View, recipe: dict[str, Any]) -> dict[str, Any]:
    """The options the open fields offer: the tenant's models, policies and tools."""
    wanted = set(recipe["open"])
    models, policies, tools = await asyncio.gather(
        view.api.get("/api/v1/models") if "model" in wanted else _nothing(),
        view.api.get("/api/v1/policies") if "policy_ids" in wanted else _nothing(),
        view.api.get("/api/v1/tools") if "tool_ids" in wanted else _nothing(),
    )
    return {"models": models, "policies": policies, "tools": tools}


async def _nothing() -> list[Any]:
    return []


async def _wizard(
    view: View, recipe_id: str, form: AgentForm | None, error: str = "", status: int = 200
) -> Response:
    recipe = await view.api.get(f"/api/v1/agent-catalog/{quote(recipe_id, safe='')}")
    return view.render(
        "agent_new.html",
        page="agents",
        status_code=status,
        recipe=recipe,
        form=form or AgentForm(recipe=recipe["id"], config=_shown(recipe["config"])),
        error=error,
        **await _choices(view, recipe),
    )


def _shown(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2) if config else ""


@router.get("/agents/new")
async def new_agent(view: Page, recipe: Annotated[str, Query(max_length=64)] = "") -> Response:
    """Step 1 without ``recipe``: the catalog; step 2 with it: the form."""
    if recipe:
        return await _wizard(view, recipe, None)
    catalog = await view.api.get("/api/v1/agent-catalog")
    return view.render("agent_recipes.html", page="agents", recipes=catalog)


@router.post("/agents/new")
async def create_agent(view: Action) -> Response:
    form = AgentForm.of(await view.request.form())
    recipe = await view.api.get(f"/api/v1/agent-catalog/{quote(form.recipe, safe='')}")
    try:
        made = await view.api.post("/api/v1/agents", form.body(recipe["open"]))
    except (ApiError, ConsoleError) as exc:
        status = exc.status if 400 <= exc.status < 500 else 400
        return await _wizard(view, form.recipe, form, exc.message, status)
    done = f"Agent {made['name']} created from {recipe['name']}."
    return RedirectResponse(f"/ui/agents/{quote(made['id'])}?done={quote(done)}", 303)


# -- one agent --------------------------------------------------------------------------------


async def _agent_page(
    view: View, agent_id: str, run_form: RunForm | None = None, status: int = 200
) -> Response:
    found, versions, runs = await asyncio.gather(
        view.api.get(_api_agent(agent_id)),
        view.api.get(f"{_api_agent(agent_id)}/versions"),
        view.api.get(f"{_api_agent(agent_id)}/runs", limit=RUNS_SHOWN),
    )
    return view.render(
        "agent.html",
        page="agents",
        status_code=status,
        agent=found,
        versions=versions,
        runs=runs["runs"],
        run_form=run_form or RunForm(),
        config=json.dumps(found["config"], indent=2, sort_keys=True),
    )


@router.get("/agents/{agent_id}")
async def agent(view: Page, agent_id: str) -> Response:
    return await _agent_page(view, agent_id)


@dataclass
class RunForm:
    """The agent page's form to start a run: its input and, optionally, a thread."""

    input: str = ""
    thread_id: str = ""
    error: str = ""

    def body(self) -> dict[str, Any]:
        """The ``POST /api/v1/agents/{id}/runs`` body: in the background, no waiting."""
        body: dict[str, Any] = {"input": self.input, "background": True}
        if self.thread_id:
            body["thread_id"] = self.thread_id
        return body


@router.post("/agents/{agent_id}/runs")
async def start_run(
    view: Action,
    agent_id: str,
    input: Annotated[str, Form(max_length=100_000)] = "",
    thread_id: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Start a run; it opens in the run view, or the refusal shows on the form."""
    form = RunForm(input=input, thread_id=thread_id.strip())
    try:
        started = await view.api.post(f"{_api_agent(agent_id)}/runs", form.body())
    except ApiError as exc:
        if exc.status == 404 or exc.status >= 500:
            raise
        form.error = exc.message
        return await _agent_page(view, agent_id, form, exc.status)
    done = f"Run {started['id']} started on thread {started['thread_id']}."
    return RedirectResponse(f"/ui/runs/{quote(started['id'])}?done={quote(done)}", 303)


@router.get("/agents/{agent_id}/export")
async def export(view: Page, agent_id: str) -> Response:
    """The agent file (no secrets), as a download."""
    found = await view.api.get(f"{_api_agent(agent_id)}/export")
    name = str(found.get("name", "agent"))
    return Response(
        json.dumps(found, indent=2) + "\n",
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="{quote(name)}.agent.json"'},
    )
