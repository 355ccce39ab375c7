"""Where a deployed agent's replicas go (pure: no I/O, no clock).

Each deployed agent wants ``replicas`` replicas on distinct nodes. A replica is a
claim on the agent's task queue, so it costs a node little; it still goes where the
scheduler would put an app's instance: on a live node that is not draining, the
lowest risk first, then the least loaded (replicas and instances it runs), then the
most free CPU. One pass over the agents (:func:`plan`):

* a replica whose node is lost (no longer live) or draining moves to another node
  (or is dropped when there is none);
* a replica beyond ``replicas`` is removed (the worst-ranked node first);
* at most one replica per agent moves off a node whose risk is HIGH or CRITICAL,
  and only to a node of lower risk;
* missing replicas are placed on the best eligible nodes.

Each change carries a reason a person can read; the leader records it as a
controller decision of kind ``agent``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "AgentChange",
    "AgentNode",
    "AgentPlan",
    "AgentWant",
    "DeploymentStatus",
    "deployment_status",
    "plan",
]

_RISK_ORDER = {"LOW": 0, "MEDIUM": 1, "HIGH": 2, "CRITICAL": 3}
_HIGH = 2


@dataclass(frozen=True, slots=True)
class AgentWant:
    agent_id: str
    replicas: int


@dataclass(frozen=True, slots=True)
class AgentNode:
    """A live node as placement sees it (a node not listed is lost)."""

    id: str
    draining: bool = False
    risk: str | None = None  # LOW | MEDIUM | HIGH | CRITICAL; None: not assessed
    free_cpu: float = 0.0
    load: int = 0  # app instances on it (agent replicas are counted during the pass)


@dataclass(frozen=True, slots=True)
class AgentChange:
    action: Literal["place", "move", "remove"]
    reason: str
    from_node: str | None = None
    to_node: str | None = None


@dataclass(frozen=True, slots=True)
class AgentPlan:
    nodes: tuple[str, ...]
    changes: tuple[AgentChange, ...] = field(default=())


DeploymentStatus = Literal["pending", "running", "degraded"]


def deployment_status(replicas: int, placed: int) -> DeploymentStatus:
    """``pending`` (none placed yet), ``running`` (all) or ``degraded`` (some)."""
    if placed == 0:
        return "pending"
    return "running" if placed >= replicas else "degraded"


def _risk(node: AgentNode) -> int:
    return _RISK_ORDER.get(node.risk or "LOW", 0)


class _Pass:
    """The nodes and their load, updated as agents are placed."""

    def __init__(self, nodes: Sequence[AgentNode], current: Mapping[str, Sequence[str]]) -> None:
        self.by_id = {n.id: n for n in nodes}
        self.load: dict[str, int] = defaultdict(int)
        for node in nodes:
            self.load[node.id] = node.load
        for placed in current.values():
            for nid in placed:
                if nid in self.by_id:
                    self.load[nid] += 1

    def rank(self, nid: str) -> tuple[int, int, float, str]:
        node = self.by_id[nid]
        return (_risk(node), self.load[nid], -node.free_cpu, nid)

    def spare(self, taken: Sequence[str]) -> list[str]:
        """Eligible nodes not in ``taken``, best first."""
        free = [n.id for n in self.by_id.values() if not n.draining and n.id not in taken]
        return sorted(free, key=self.rank)

    def moved(self, from_node: str | None, to_node: str | None) -> None:
        if from_node in self.by_id:
            self.load[from_node] -= 1
        if to_node is not None:
            self.load[to_node] += 1


def _gone(nid: str, ctx: _Pass) -> str | None:
    node = ctx.by_id.get(nid)
    if node is None:
        return f"node {nid} is lost"
    if node.draining:
        return f"node {nid} is draining"
    return None


def _replace(nid: str, why: str, kept: list[str], want: AgentWant, ctx: _Pass) -> AgentChange:
    """The replica on ``nid`` goes to the best spare node (or is dropped: none)."""
    spare = ctx.spare([*kept, nid])
    to = spare[0] if spare and len(kept) < want.replicas else None
    ctx.moved(nid, to)
    if to is None:
        return AgentChange("remove", f"{why}; no other node", from_node=nid)
    kept.append(to)
    return AgentChange("move", why, from_node=nid, to_node=to)


def _off_risky(kept: list[str], want: AgentWant, ctx: _Pass) -> AgentChange | None:
    """One replica off the riskiest HIGH/CRITICAL node, to a node of lower risk."""
    risky = sorted((nid for nid in kept if _risk(ctx.by_id[nid]) >= _HIGH), key=ctx.rank)
    if not risky:
        return None
    worst = risky[-1]
    spare = ctx.spare(kept)
    if not spare or _risk(ctx.by_id[spare[0]]) >= _risk(ctx.by_id[worst]):
        return None
    kept.remove(worst)
    return _replace(worst, f"node {worst} is at risk {ctx.by_id[worst].risk}", kept, want, ctx)


def _plan_one(want: AgentWant, current: Sequence[str], ctx: _Pass) -> AgentPlan:
    kept: list[str] = []
    changes: list[AgentChange] = []
    leaving: list[tuple[str, str]] = []
    for nid in dict.fromkeys(current):
        why = _gone(nid, ctx)
        if why is None:
            kept.append(nid)
        else:
            leaving.append((nid, why))
    while len(kept) > want.replicas:
        worst = max(kept, key=ctx.rank)
        kept.remove(worst)
        ctx.moved(worst, None)
        reason = f"the agent wants {want.replicas} replica(s)"
        changes.append(AgentChange("remove", reason, from_node=worst))
    changes += [_replace(nid, why, kept, want, ctx) for nid, why in leaving]
    while len(kept) < want.replicas:
        spare = ctx.spare(kept)
        if not spare:
            break
        kept.append(spare[0])
        ctx.moved(None, spare[0])
        changes.append(AgentChange("place", "a replica was missing", to_node=spare[0]))
    off = _off_risky(kept, want, ctx)
    if off is not None:
        changes.append(off)
    return AgentPlan(tuple(sorted(kept)), tuple(changes))


def plan(
    wants: Sequence[AgentWant],
    current: Mapping[str, Sequence[str]],
    nodes: Sequence[AgentNode],
) -> dict[str, AgentPlan]:
    """Each agent's nodes after this pass (``current``: agent → its nodes now; an
    agent not in ``wants`` is not deployed any more and keeps nothing)."""
    ctx = _Pass(nodes, current)
    return {w.agent_id: _plan_one(w, current.get(w.agent_id, ()), ctx) for w in wants}
