"""The agent catalog: recipes (templates) to start an agent from, and an agent's spec.

A recipe fixes some of an agent's fields and leaves others ``open``: creating an agent
from it asks only for those (and the agent's name). The built-in recipes are code;
a tenant adds its own (kept as rows, validated by ``Recipe``). Pure: no I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aether.agents.tools import ID_PATTERN

__all__ = [
    "AGENT_NAME_PATTERN",
    "BUILTIN_RECIPES",
    "MODEL_REF_PATTERN",
    "SPEC_FIELDS",
    "AgentSpec",
    "OpenField",
    "Recipe",
    "missing_open_fields",
    "spec_from_recipe",
]

AGENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
MODEL_REF_PATTERN = r"^model://[a-z0-9][a-z0-9._-]{0,62}$"
SPEC_FIELDS = ("model", "policy_ids", "tool_ids", "system_prompt", "config")
OpenField = Literal["model", "policy_ids", "tool_ids", "system_prompt", "config"]

ModelRef = Annotated[str, Field(pattern=MODEL_REF_PATTERN)]
_Id = Annotated[str, Field(pattern=ID_PATTERN)]
_Ids = Annotated[list[_Id], Field(max_length=64)]
_Prompt = Annotated[str, Field(max_length=32_000)]


class AgentSpec(BaseModel):
    """What one version of an agent is: its model, policies, tools, prompt and config."""

    model_config = ConfigDict(extra="forbid")

    model: ModelRef
    policy_ids: _Ids = Field(default_factory=list)
    tool_ids: _Ids = Field(default_factory=list)
    system_prompt: _Prompt = ""
    config: dict[str, Any] = Field(default_factory=dict)


class Recipe(BaseModel):
    """A template: the fields it fixes, and ``open``, the ones the user must give."""

    model_config = ConfigDict(extra="forbid")

    id: _Id
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: Annotated[str, Field(max_length=2000)] = ""
    model: ModelRef | None = None
    policy_ids: _Ids = Field(default_factory=list)
    tool_ids: _Ids = Field(default_factory=list)
    system_prompt: _Prompt = ""
    config: dict[str, Any] = Field(default_factory=dict)
    open: list[OpenField] = Field(default_factory=list)

    @model_validator(mode="after")
    def _model_given_or_open(self) -> Recipe:
        if self.model is None and "model" not in self.open:
            raise ValueError("a recipe without a model must leave it open: open: [model]")
        return self


BUILTIN_RECIPES: dict[str, Recipe] = {
    r.id: r
    for r in (
        Recipe(
            id="code-runner",
            name="Code runner",
            description="Writes and runs code and commands in a sandbox; each run asks for "
            "approval under default-safe.",
            tool_ids=["run-code", "run-command"],
            policy_ids=["default-safe"],
            system_prompt="You solve tasks by writing and running code in a sandbox. "
            "Show the code you run and explain its output.",
            config={"max_tokens": 2048},
            open=["model"],
        ),
        Recipe(
            id="ops-assistant",
            name="Ops assistant",
            description="Answers questions about this cluster: nodes, apps and their "
            "status. Read-only by default (no tool that changes the cluster).",
            tool_ids=["cluster-status", "apps-list"],
            policy_ids=["default-safe"],
            system_prompt="You help operate an Aether cluster. Look before you answer; "
            "you can read the cluster's state but not change it.",
            config={"max_tokens": 1024, "read_only": True},
            open=["model"],
        ),
        Recipe(
            id="docs-qa",
            name="Docs Q&A",
            description="Answers questions from the documents in its memory and "
            "remembers what it is taught.",
            tool_ids=["search", "memory-write"],
            policy_ids=["default-safe"],
            system_prompt="Answer from the documents you find with search; say so when "
            "they do not hold the answer. Cite what you used.",
            config={"max_tokens": 1024},
            open=["model"],
        ),
    )
}


def missing_open_fields(recipe: Recipe, given: dict[str, Any]) -> list[str]:
    """The open fields of ``recipe`` that ``given`` leaves out, in the recipe's order."""
    return [f for f in recipe.open if given.get(f) is None]


def spec_from_recipe(recipe: Recipe, given: dict[str, Any]) -> dict[str, Any]:
    """The spec's fields: the recipe's, replaced by those ``given`` (not None).
    Validate the result with ``AgentSpec``; check ``missing_open_fields`` first."""
    fields = {f: getattr(recipe, f) for f in SPEC_FIELDS}
    fields.update({f: given[f] for f in SPEC_FIELDS if given.get(f) is not None})
    return fields
