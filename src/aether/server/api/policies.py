"""Agent policies and their decisions (policy enforcements).

``GET /policies`` and ``GET /policies/{policy_id}`` (viewer; ``default-safe`` is built
into every tenant), ``POST /policies``, ``PATCH`` and ``DELETE /policies/{policy_id}``
(admin; a change bumps the version; the built-in is a 409: copy it under another id),
``POST /policies/{policy_id}/evaluate`` (operator: a dry decision on one tool call,
kept as a policy enforcement whose id the request's audit event names), ``POST
/policies/{policy_id}/simulate`` (operator: the policy's kept decisions replayed under
a changed policy; nothing kept, nothing switched on) and ``GET /policy-enforcements``
(admin; newest first). Another tenant's policy is a 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aether.agents.policy import (
    ArgConstraint,
    Counters,
    DecisionRequest,
    Outcome,
    Policy,
    TokenBudgets,
    to_cedar,
)
from aether.agents.tools import ID_PATTERN, validate_arguments
from aether.errors import BadRequestError, ConflictError, NotFoundError
from aether.model.time import Timestamp
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Admin, Caller, Operator
from aether.server.services.agent_policies import (
    BUILTIN_POLICIES,
    VersionedPolicy,
    enforce,
    find_policy,
    find_tool,
    list_policies,
    replay,
)
from aether.store.records.schema import PolicyEnforcementRow

__all__ = ["router"]

router = APIRouter(tags=["policies"])
Ctx = Annotated[ServerContext, Depends(get_context)]


class PolicyOut(Policy):
    version: int
    builtin: bool
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    cedar: str  # the policy as the Cedar engine reads it


class PolicyPatch(BaseModel):
    """The fields to change (the id stays)."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    tools: list[str] | None = None
    constraints: list[ArgConstraint] | None = None
    approval_required: list[str] | None = None
    max_steps: int | None = None
    max_tool_calls: int | None = None
    token_budgets: TokenBudgets | None = None
    egress_hosts: list[str] | None = None
    redact: list[str] | None = None


class EvaluateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool_id: Annotated[str, Field(pattern=ID_PATTERN)]
    arguments: dict[str, Any] = Field(default_factory=dict)
    counters: Counters = Field(default_factory=Counters)
    #: who would call: an agent's id, or an account (default: the caller)
    principal: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    principal_kind: Literal["agent", "user"] = "user"
    #: hosts a sandbox call would reach (an http tool's own host is added)
    hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list, max_length=64
    )


class EvaluateOut(BaseModel):
    decision: Outcome
    allowed: bool
    needs_approval: bool
    reasons: list[str]
    policy_ids: list[str]
    policy_version: int
    enforcement_id: int


class EnforcementOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    policy_id: str
    policy_version: int
    principal: str
    tool_id: str
    arguments: dict[str, Any]
    decision: Outcome
    reasons: list[str]
    run_id: str | None
    step: int | None
    audit_event_id: int | None
    created_at: Timestamp


class EnforcementPage(BaseModel):
    enforcements: list[EnforcementOut]
    cursor: int | None  # the next page: ``before=cursor``; None: the last page


def _out(found: VersionedPolicy) -> PolicyOut:
    row = found.row
    created: datetime | None = row.created_at if row else None
    return PolicyOut(
        **found.policy.model_dump(),
        version=found.version,
        builtin=found.builtin,
        created_at=created,
        updated_at=row.updated_at if row else None,
        cedar=to_cedar(found.policy),
    )


def _own(policy_id: str, verb: str) -> None:
    if policy_id in BUILTIN_POLICIES:
        raise ConflictError(
            f"policy {policy_id!r} is built in and cannot be {verb}: "
            "create a copy under another id and change that"
        )


async def _tools_exist(ctx: ServerContext, tenant_id: str, policy: Policy) -> None:
    """Refuse a policy naming a tool the tenant does not have (a typo would allow nothing
    and say nothing)."""
    named = {*policy.tools, *policy.approval_required, *(c.tool for c in policy.constraints)}
    for tool_id in sorted(named - {"*"}):
        if await find_tool(ctx, tenant_id, tool_id) is None:
            raise BadRequestError(
                f"the policy names tool {tool_id!r}, which this tenant does not have "
                "(`aether tools ls`)"
            )


@router.get("/policies")
async def all_policies(caller: Caller, ctx: Ctx) -> list[PolicyOut]:
    """``default-safe``, then the tenant's own."""
    return [_out(p) for p in await list_policies(ctx, caller.tenant_id)]


@router.post("/policies", status_code=201)
async def create_policy(body: Policy, caller: Admin, ctx: Ctx) -> PolicyOut:
    _own(body.id, "replaced")
    await _tools_exist(ctx, caller.tenant_id, body)
    row = await ctx.records.add_agent_policy(caller.tenant_id, body.id, body.model_dump())
    if row is None:
        raise ConflictError(f"policy {body.id!r} already exists")
    return _out(VersionedPolicy(body, row.version, False, row))


@router.get("/policies/{policy_id}")
async def get_policy(policy_id: str, caller: Caller, ctx: Ctx) -> PolicyOut:
    return _out(await find_policy(ctx, caller.tenant_id, policy_id))


@router.patch("/policies/{policy_id}")
async def patch_policy(policy_id: str, body: PolicyPatch, caller: Admin, ctx: Ctx) -> PolicyOut:
    """Change the fields given; the version goes up by one."""
    found = await find_policy(ctx, caller.tenant_id, policy_id)
    _own(policy_id, "changed")
    merged = {**found.policy.model_dump(), **body.model_dump(exclude_unset=True)}
    try:
        policy = Policy.model_validate(merged)
    except ValidationError as exc:
        problem = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise BadRequestError(f"invalid policy: {problem}") from None
    await _tools_exist(ctx, caller.tenant_id, policy)
    row = await ctx.records.update_agent_policy(caller.tenant_id, policy_id, policy.model_dump())
    if row is None:  # deleted meanwhile
        raise NotFoundError(f"policy {policy_id!r} not found")
    return _out(VersionedPolicy(policy, row.version, False, row))


@router.delete("/policies/{policy_id}", status_code=204)
async def delete_policy(policy_id: str, caller: Admin, ctx: Ctx) -> Response:
    await find_policy(ctx, caller.tenant_id, policy_id)
    _own(policy_id, "deleted")
    if not await ctx.records.delete_agent_policy(caller.tenant_id, policy_id):
        raise NotFoundError(f"policy {policy_id!r} not found")
    return Response(status_code=204)


@router.post("/policies/{policy_id}/evaluate")
async def evaluate(
    policy_id: str, body: EvaluateIn, request: Request, caller: Operator, ctx: Ctx
) -> EvaluateOut:
    """Decide one tool call without making it; the decision is kept as a policy
    enforcement (arguments redacted) and named in this request's audit event."""
    found = await find_policy(ctx, caller.tenant_id, policy_id)
    tool = await find_tool(ctx, caller.tenant_id, body.tool_id)
    if tool is None:
        raise NotFoundError(f"tool {body.tool_id!r} not found")
    validate_arguments(tool, body.arguments)
    principal = body.principal or caller.user or f"token:{caller.token_id}"
    decision_request = DecisionRequest(
        principal_kind=body.principal_kind if body.principal else "user",
        principal=principal,
        tool_id=tool.id,
        arguments=body.arguments,
        counters=body.counters,
        hosts=body.hosts,
    )
    decision, row = await enforce(ctx, caller.tenant_id, found, tool, decision_request)
    request.state.audit_detail = (
        f"policy enforcement {row.id}: {decision.outcome} {tool.id} under {policy_id}"
        f" v{found.version}"
    )
    return EvaluateOut(
        decision=decision.outcome,
        allowed=decision.allowed,
        needs_approval=decision.needs_approval,
        reasons=decision.reasons,
        policy_ids=decision.policy_ids,
        policy_version=found.version,
        enforcement_id=row.id,
    )


class SimulateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the changed policy, as ``POST /policies`` takes it (``id`` may be left out)
    policy: dict[str, Any]
    #: replay at most this many of the newest decisions
    limit: Annotated[int, Field(ge=1, le=1000)] = 1000
    #: replay only decisions made at or after this time (no zone: UTC)
    since: datetime | None = None


class SimulatedCall(BaseModel):
    enforcement_id: int
    tool_id: str
    principal: str
    at: Timestamp
    old: Outcome
    new: Outcome
    reasons: list[str]  # why the changed policy decides ``new``


class SimulateOut(BaseModel):
    policy_id: str
    replayed: int
    changed: int
    would_allow: int
    would_deny: int
    would_need_approval: int
    calls: list[SimulatedCall]  # the changed ones first, then newest first


def _changed_policy(policy_id: str, body: dict[str, Any]) -> Policy:
    """The body's policy, validated as ``POST /policies`` does; its id is ``policy_id``."""
    given = body.get("id", policy_id)
    if given != policy_id:
        raise BadRequestError(
            f"the policy's id {given!r} is not {policy_id!r}: simulate changes of this policy"
        )
    try:
        return Policy.model_validate({**body, "id": policy_id})
    except ValidationError as exc:
        problem = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'policy'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise BadRequestError(f"invalid policy: {problem}") from None


@router.post("/policies/{policy_id}/simulate")
async def simulate_policy(
    policy_id: str, body: SimulateIn, caller: Operator, ctx: Ctx
) -> SimulateOut:
    """Replay the tool calls this policy decided (the tenant's kept enforcements, newest
    first, up to ``limit``, since ``since``) under the changed policy of the body, and
    say what it would decide. Counters are not kept with a decision: the calls are
    replayed with zero counters, and redacted arguments as kept."""
    await find_policy(ctx, caller.tenant_id, policy_id)
    changed = _changed_policy(policy_id, body.policy)
    await _tools_exist(ctx, caller.tenant_id, changed)
    pairs = await replay(
        ctx, caller.tenant_id, policy_id, changed, limit=body.limit, since=body.since
    )
    calls = [
        SimulatedCall(
            enforcement_id=row.id,
            tool_id=row.tool_id,
            principal=row.principal,
            at=row.created_at,
            old=done.old,
            new=done.new,
            reasons=done.reasons,
        )
        for row, done in pairs
    ]
    news = [c.new for c in calls]
    return SimulateOut(
        policy_id=policy_id,
        replayed=len(calls),
        changed=sum(c.old != c.new for c in calls),
        would_allow=news.count("allow"),
        would_deny=news.count("deny"),
        would_need_approval=news.count("approval"),
        calls=sorted(calls, key=lambda c: c.old == c.new),  # stable: newest first in each
    )


def _enforcement_out(row: PolicyEnforcementRow) -> EnforcementOut:
    return EnforcementOut.model_validate(row, from_attributes=True)


@router.get("/policy-enforcements")
async def enforcements(
    caller: Admin,
    ctx: Ctx,
    policy_id: Annotated[str | None, Query(max_length=64)] = None,
    tool_id: Annotated[str | None, Query(max_length=64)] = None,
    decision: Annotated[str | None, Query(pattern="^(allow|deny|approval)$")] = None,
    before: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EnforcementPage:
    """The tenant's decisions, newest first, ``limit`` at a time (``before``: older than
    that id; the answer's ``cursor`` is the next page's ``before``)."""
    rows = await ctx.records.enforcements(
        caller.tenant_id,
        policy_id=policy_id,
        tool_id=tool_id,
        decision=decision,
        before=before,
        limit=limit,
    )
    cursor = rows[-1].id if len(rows) == limit else None
    return EnforcementPage(enforcements=[_enforcement_out(r) for r in rows], cursor=cursor)
