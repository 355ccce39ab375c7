"""Signals about nodes, their risk, and the fire drill.

Risk is cluster-level: nodes belong to no tenant. The cluster's operators (the
default tenant's operators and admins) record signals and run drills, and so
do nodes about themselves (their watchers read cloud metadata); viewers read them and the
risk assessments. A signal may name a node that is not registered right now
(it can be between leases); a bad value is refused with the error envelope.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, Field, ValidationError

from aether.core.risk import DRILL_BASE_PRICE, drill_series
from aether.errors import BadRequestError, ConflictError, NotFoundError
from aether.model.risk import RiskAssessment, SignalIn, SignalKind, SignalOut
from aether.server.context import ServerContext, get_context
from aether.server.http.auth import Caller, ClusterOperator, SignalWriter, own_node
from aether.server.services.cluster import read_snapshot

__all__ = ["MAX_FUTURE_SECONDS", "MAX_SIGNALS_PER_REQUEST", "router"]

router = APIRouter(tags=["risk"])
Ctx = Annotated[ServerContext, Depends(get_context)]


class RiskView(Protocol):
    """The risk engine, as the routes see it (``app.state.risk``)."""

    @property
    def serving(self) -> bool: ...

    def assessments(self) -> dict[str, RiskAssessment]: ...

    def wake(self) -> None: ...


async def get_risk(request: Request) -> RiskView | None:
    risk: RiskView | None = getattr(request.app.state, "risk", None)
    return risk


Risk = Annotated[RiskView | None, Depends(get_risk)]

MAX_SIGNALS_PER_REQUEST = 1000
MAX_FUTURE_SECONDS = 300.0  # a ts further ahead of the server's clock is refused
DRILL_SOURCE = "drill"


class SignalBatch(BaseModel):
    signals: list[SignalIn] = Field(min_length=1, max_length=MAX_SIGNALS_PER_REQUEST)


class MarketSignalIn(BaseModel):
    """The compat shape: any of a spot price, a rebalance flag, a capacity score."""

    node: str = Field(min_length=1, max_length=128)
    price: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    rebalance: bool | None = None  # true: a notice; false: the notice is withdrawn
    capacity_score: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    ts: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)


class SignalsCreated(BaseModel):
    ids: list[int]


class DrillIn(BaseModel):
    node: str | None = Field(default=None, min_length=1, max_length=128)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )


def _rows(signals: list[SignalIn], now: float) -> list[dict[str, Any]]:
    rows = []
    for s in signals:
        ts = now if s.ts is None else s.ts
        if ts > now + MAX_FUTURE_SECONDS:
            raise BadRequestError(
                f"signal for node {s.node!r}: ts {ts} is {ts - now:.0f} s ahead of the "
                f"server's clock (at most {MAX_FUTURE_SECONDS:.0f} s); send seconds since the epoch"
            )
        rows.append(
            {"node": s.node, "kind": s.kind, "value": s.value, "source": s.source, "ts": ts}
        )
    return rows


async def _store(ctx: ServerContext, risk: RiskView | None, signals: list[SignalIn]) -> list[int]:
    ids = await ctx.records.add_signals(_rows(signals, time.time()))
    if risk is not None:
        risk.wake()
    return ids


@router.post("/signals", status_code=201)
async def post_signals(
    request: Request, caller: SignalWriter, ctx: Ctx, risk: Risk, payload: Annotated[Any, Body()]
) -> SignalsCreated:
    """One signal (``{"node", "kind", "value", "source"?, "ts"?}``) or ``{"signals": [...]}``.

    ``kind`` is ``spot_price`` (value: the price, > 0), ``rebalance`` (1 a notice,
    0 withdrawn), ``capacity`` (0..1, low = little spare capacity) or ``clear``
    (drops the node's earlier signals of the same ``source`` from risk scoring).
    """
    try:
        if isinstance(payload, dict) and "signals" in payload:
            signals = SignalBatch.model_validate(payload).signals
        else:
            signals = [SignalIn.model_validate(payload)]
    except ValidationError as exc:
        raise BadRequestError(f"invalid signal: {_problems(exc)}") from None
    if caller.role == "node":  # a node's watcher speaks for its own node only
        for signal in signals:
            own_node(request, caller, signal.node)
    return SignalsCreated(ids=await _store(ctx, risk, signals))


@router.post("/market/signal", status_code=201)
async def market_signal(
    body: MarketSignalIn, request: Request, caller: SignalWriter, ctx: Ctx, risk: Risk
) -> SignalsCreated:
    """Compat: ``{"node", "price"?, "rebalance"?, "capacity_score"?, "ts"?}``, stored as the
    equivalent signals (source ``market``)."""
    if caller.role == "node":
        own_node(request, caller, body.node)
    common: dict[str, Any] = {"node": body.node, "source": "market", "ts": body.ts}
    signals = []
    if body.price is not None:
        signals.append(SignalIn(kind="spot_price", value=body.price, **common))
    if body.rebalance is not None:
        signals.append(SignalIn(kind="rebalance", value=1.0 if body.rebalance else 0.0, **common))
    if body.capacity_score is not None:
        signals.append(SignalIn(kind="capacity", value=body.capacity_score, **common))
    if not signals:
        raise BadRequestError("a market signal needs price, rebalance or capacity_score")
    return SignalsCreated(ids=await _store(ctx, risk, signals))


@router.get("/signals")
async def list_signals(
    caller: Caller,
    ctx: Ctx,
    node: str | None = None,
    kind: SignalKind | None = None,
    source: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SignalOut]:
    """Recorded signals, newest first."""
    rows = await ctx.records.list_signals(node=node, kind=kind, source=source, limit=limit)
    return [
        SignalOut.model_construct(
            id=r.id, node=r.node, kind=r.kind, value=r.value, source=r.source, ts=r.ts
        )
        for r in rows
    ]


@router.get("/risk")
async def latest_risk(caller: Caller, ctx: Ctx, risk: Risk) -> list[RiskAssessment]:
    """The latest assessment of each node: the leader's own view, elsewhere the records'."""
    if risk is not None and risk.serving:
        return [a for _, a in sorted(risk.assessments().items())]
    rows = await ctx.records.latest_risk_assessments()
    return [RiskAssessment.model_validate(row, from_attributes=True) for row in rows]


@router.get("/risk/{node}")
async def risk_history(
    node: str,
    caller: Caller,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[RiskAssessment]:
    """A node's recorded assessments (written on each change, and once a minute), newest first."""
    rows = await ctx.records.risk_history(node, limit)
    if not rows:
        raise NotFoundError(f"no risk assessment of node {node!r} has been recorded")
    return [RiskAssessment.model_validate(row, from_attributes=True) for row in rows]


# -- the fire drill ----------------------------------------------------------------------


async def _base_price(ctx: ServerContext, node: str) -> float:
    """The node's newest real spot price, so the drill spikes from where the market is."""
    for row in await ctx.records.list_signals(node=node, kind="spot_price", limit=50):
        if row.source != DRILL_SOURCE:
            return row.value
    return DRILL_BASE_PRICE


@router.post("/drill/start")
async def drill_start(
    caller: ClusterOperator, ctx: Ctx, risk: Risk, body: Annotated[DrillIn | None, Body()] = None
) -> dict[str, Any]:
    """Inject a market crash for a node (default: the live node running the most
    instances): a spot price spiking by 60 % and a rebalance notice, source ``drill``."""
    snap = await read_snapshot(ctx.store)
    node = body.node if body is not None and body.node else None
    if node is None:
        counts = {name: 0 for name in snap.nodes}
        for inst, _ in snap.instances.values():
            if inst.node in counts:
                counts[inst.node] += 1
        if not counts:
            raise ConflictError("no live node to drill; start one (`aether up`) or pass --node")
        node = min(counts, key=lambda name: (-counts[name], name))
    elif node not in snap.nodes:
        raise NotFoundError(f"node {node!r} is not live; pick one from `aether nodes`")
    now = time.time()
    base = await _base_price(ctx, node)
    signals = [
        SignalIn(node=node, kind="spot_price", value=price, source=DRILL_SOURCE, ts=ts)
        for ts, price in drill_series(base, now)
    ]
    signals.append(SignalIn(node=node, kind="rebalance", value=1.0, source=DRILL_SOURCE, ts=now))
    ids = await _store(ctx, risk, signals)
    return {"node": node, "signals": len(ids), "base_price": base, "spike_price": signals[-2].value}


async def _drilled(ctx: ServerContext) -> list[str]:
    """The nodes with a drill running: their newest ``drill`` signal is not a ``clear``."""
    latest = await ctx.records.latest_signals_by_node(DRILL_SOURCE)
    return sorted(node for node, row in latest.items() if row.kind != "clear")


@router.get("/drill")
async def drill_running(caller: Caller, ctx: Ctx) -> dict[str, list[str]]:
    """``{"nodes": [...]}``: where a drill is running (started and not stopped)."""
    return {"nodes": await _drilled(ctx)}


@router.post("/drill/stop")
async def drill_stop(
    caller: ClusterOperator, ctx: Ctx, risk: Risk, body: Annotated[DrillIn | None, Body()] = None
) -> dict[str, Any]:
    """End the drill on a node (default: every node with a drill running): records a
    ``clear`` signal of source ``drill``, so the next pass scores without the drill's
    signals. They stay in the signal history, as do every other source's."""
    if body is not None and body.node:
        nodes = [body.node]
    else:
        nodes = await _drilled(ctx)
    signals = [SignalIn(node=node, kind="clear", source=DRILL_SOURCE) for node in nodes]
    ids = await _store(ctx, risk, signals) if signals else []
    return {"nodes": nodes, "signals": len(ids)}
