"""Tool definitions: kinds and their configuration, the argument schema, the built-ins."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from aether.agents.tools import (
    BUILTIN_TOOLS,
    KINDS,
    Tool,
    hosts_of,
    search_tools,
    validate_arguments,
)
from aether.errors import BadRequestError

CONFIGS: dict[str, dict[str, Any]] = {
    "sandbox": {"mode": "command", "command": "ls {path}"},
    "http": {"url": "https://api.example.com/items/{id}", "headers": {"X-Key": "api-key"}},
    "app": {"app": "shop", "path": "/orders", "method": "POST"},
    "aether": {"operation": "rollback"},
    "memory": {"operation": "write"},
    "mcp": {"command": ["docs-server", "--stdio"]},
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_takes_its_configuration(kind: str) -> None:
    tool = Tool.model_validate(
        {"id": f"my-{kind}", "kind": kind, "description": "d", "config": CONFIGS[kind]}
    )
    assert tool.config.kind == kind
    other = next(k for k in KINDS if k != kind and set(CONFIGS[k]) != set(CONFIGS[kind]))
    with pytest.raises(ValidationError):
        Tool.model_validate({"id": "x", "kind": kind, "description": "d", "config": CONFIGS[other]})


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"parameters": {"type": "object", "properties": {"a": {"type": 7}}}}, "valid JSON Schema"),
        ({"parameters": {"type": "string"}}, "must describe an object"),
        ({"id": "Not An Id"}, "String should match pattern"),
        ({"config": {"url": "file:///etc/passwd"}}, "http:// or https://"),
        ({"kind": "mcp", "config": {"command": ["a"], "url": "http://h"}}, "exactly one"),
    ],
)
def test_an_invalid_definition_is_refused(definition: dict[str, Any], message: str) -> None:
    base = {"id": "t", "kind": "http", "description": "d", "config": CONFIGS["http"]}
    with pytest.raises(ValidationError, match=message):
        Tool.model_validate({**base, **definition})


def test_arguments_are_checked_against_the_schema() -> None:
    scale = BUILTIN_TOOLS["scale"]
    validate_arguments(scale, {"app": "web", "instances": 3})
    with pytest.raises(BadRequestError, match="at 'instances': -1 is less than the minimum of 0"):
        validate_arguments(scale, {"app": "web", "instances": -1})
    with pytest.raises(BadRequestError, match="'instances' is a required property"):
        validate_arguments(scale, {"app": "web"})
    with pytest.raises(BadRequestError, match="Additional properties are not allowed"):
        validate_arguments(scale, {"app": "web", "instances": 1, "force": True})


def test_the_built_ins() -> None:
    assert set(BUILTIN_TOOLS) == {
        "search",
        "memory-write",
        "run-code",
        "run-command",
        "cluster-status",
        "apps-list",
        "scale",
        "rollback",
        "drain",
    }
    read_only = {t.id for t in BUILTIN_TOOLS.values() if t.read_only}
    assert read_only == {"search", "cluster-status", "apps-list"}
    assert BUILTIN_TOOLS["search"].kind == "memory"
    assert BUILTIN_TOOLS["run-code"].config.model_dump()["mode"] == "python"


def test_an_http_tool_reaches_its_url_s_host() -> None:
    tool = Tool.model_validate(
        {
            "id": "h",
            "kind": "http",
            "description": "d",
            "config": {"url": "https://{region}.x.io/a"},
        }
    )
    assert hosts_of(tool, {"region": "eu"}) == ["eu.x.io"]
    assert hosts_of(BUILTIN_TOOLS["run-command"], {"command": "curl evil.com"}) == []


def test_search_ranks_the_id_above_the_description() -> None:
    tools = list(BUILTIN_TOOLS.values())
    assert [t.id for t in search_tools(tools, "memory")] == ["memory-write", "search"]
    assert search_tools(tools, "search")[0].id == "search"
    assert search_tools(tools, "kubernetes") == []
