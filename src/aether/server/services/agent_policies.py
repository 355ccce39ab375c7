"""A tenant's agent tools and policies: the built-ins (code) merged with its own rows.

What the tools and policies routes (and, later, agents and runs) share: look one up,
list them, decide a call and keep the decision as a policy enforcement.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from aether.agents.policy import (
    DEFAULT_SAFE,
    Decision,
    DecisionRequest,
    Policy,
    RecordedCall,
    Replayed,
    decide,
    simulate,
)
from aether.agents.policy import redact_arguments as redact
from aether.agents.tools import BUILTIN_TOOLS, Tool, hosts_of
from aether.errors import InternalError, NotFoundError
from aether.server.context import ServerContext
from aether.store.records.agent_policies import NewEnforcement
from aether.store.records.schema import AgentPolicyRow, PolicyEnforcementRow

__all__ = [
    "BUILTIN_POLICIES",
    "VersionedPolicy",
    "enforce",
    "find_policy",
    "find_tool",
    "list_policies",
    "list_tools",
    "replay",
]

BUILTIN_POLICIES: dict[str, Policy] = {DEFAULT_SAFE.id: DEFAULT_SAFE}


@dataclass(frozen=True, slots=True)
class VersionedPolicy:
    policy: Policy
    version: int
    builtin: bool
    row: AgentPolicyRow | None = None


def _tool_of(definition: dict[str, Any]) -> Tool:
    try:
        return Tool.model_validate(definition)
    except ValidationError as exc:  # a row written by an older, laxer version
        raise InternalError(f"a stored tool definition no longer validates: {exc}") from exc


async def find_tool(ctx: ServerContext, tenant_id: str, tool_id: str) -> Tool | None:
    builtin = BUILTIN_TOOLS.get(tool_id)
    if builtin is not None:
        return builtin
    row = await ctx.records.agent_tool(tenant_id, tool_id)
    return _tool_of(row.definition) if row else None


async def list_tools(ctx: ServerContext, tenant_id: str) -> list[tuple[Tool, bool]]:
    """The built-ins, then the tenant's own: ``(tool, builtin)``."""
    own = [(_tool_of(r.definition), False) for r in await ctx.records.agent_tools(tenant_id)]
    return [(t, True) for t in BUILTIN_TOOLS.values()] + own


def _versioned(row: AgentPolicyRow) -> VersionedPolicy:
    return VersionedPolicy(Policy.model_validate(row.definition), row.version, False, row)


async def find_policy(ctx: ServerContext, tenant_id: str, policy_id: str) -> VersionedPolicy:
    """The policy, or 404 (another tenant's is no different from none)."""
    builtin = BUILTIN_POLICIES.get(policy_id)
    if builtin is not None:
        return VersionedPolicy(builtin, 1, True)
    row = await ctx.records.agent_policy(tenant_id, policy_id)
    if row is None:
        raise NotFoundError(f"policy {policy_id!r} not found")
    return _versioned(row)


async def list_policies(ctx: ServerContext, tenant_id: str) -> list[VersionedPolicy]:
    own = [_versioned(r) for r in await ctx.records.agent_policies(tenant_id)]
    return [VersionedPolicy(p, 1, True) for p in BUILTIN_POLICIES.values()] + own


async def enforce(
    ctx: ServerContext,
    tenant_id: str,
    found: VersionedPolicy,
    tool: Tool,
    request: DecisionRequest,
) -> tuple[Decision, PolicyEnforcementRow]:
    """Decide ``request`` (the hosts the tool itself reaches added) and keep the decision
    with the arguments redacted as the policy says."""
    hosts = sorted({*request.hosts, *hosts_of(tool, request.arguments)})
    decision = decide(found.policy, request.model_copy(update={"hosts": hosts}))
    row = await ctx.records.add_enforcement(
        NewEnforcement(
            tenant_id=tenant_id,
            policy_id=found.policy.id,
            policy_version=found.version,
            principal=f"{request.principal_kind}:{request.principal}",
            tool_id=tool.id,
            arguments=redact(request.arguments, found.policy.redact),
            decision=decision.outcome,
            reasons=decision.reasons,
        )
    )
    return decision, row


def _recorded_call(row: PolicyEnforcementRow, tool: Tool | None) -> RecordedCall:
    """A kept decision as the call it was: the principal split back into its kind and
    id, the arguments as kept (redacted), the hosts the tool reaches with them, and zero
    counters (a decision keeps no counters)."""
    kind, _, principal = row.principal.partition(":")
    hosts = hosts_of(tool, row.arguments) if tool is not None else []
    request = DecisionRequest(
        principal_kind="user" if kind == "user" else "agent",
        principal=(principal or row.principal)[:128],  # what a request may name
        tool_id=row.tool_id,
        arguments=row.arguments,
        hosts=hosts,
    )
    return RecordedCall.model_validate({"request": request, "outcome": row.decision})


def _naive_utc(at: datetime) -> datetime:
    """How the records keep time: UTC without a zone (a naive ``at`` is taken as UTC)."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


async def replay(
    ctx: ServerContext,
    tenant_id: str,
    policy_id: str,
    changed: Policy,
    *,
    limit: int,
    since: datetime | None = None,
) -> list[tuple[PolicyEnforcementRow, Replayed]]:
    """The tenant's kept decisions under ``policy_id`` (newest first, at most ``limit``,
    none older than ``since``) decided again under ``changed``. Nothing is written."""
    rows = await ctx.records.enforcements(tenant_id, policy_id=policy_id, limit=limit)
    if since is not None:  # the newest ``limit`` cut at ``since``: the newest ``limit`` since
        rows = [r for r in rows if r.created_at >= _naive_utc(since)]
    tools: dict[str, Tool | None] = {}
    for tool_id in {r.tool_id for r in rows}:
        tools[tool_id] = await find_tool(ctx, tenant_id, tool_id)
    calls = [_recorded_call(r, tools[r.tool_id]) for r in rows]
    replayed = await asyncio.to_thread(simulate, changed, calls)
    return list(zip(rows, replayed, strict=True))
