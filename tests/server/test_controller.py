"""The controller on a real server: telemetry in, blueprint and drain changes out, all recorded.

Telemetry and risk come from small in-memory sources handed to the controller
(the seams it reads through), filled with real ``ClusterSample`` and
``RiskAssessment`` values; everything else is the real server over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from aether.cli.commands.decisions import format_decisions
from aether.client import ApiClient
from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities, instance_key
from aether.model.decisions import DecisionOut
from aether.model.risk import RiskAssessment, RiskStatus
from aether.model.telemetry import (
    AppSample,
    ClusterSample,
    EndpointMetrics,
    InstanceMetrics,
)
from aether.server.leader.controller import Controller
from aether.store.election import Leadership
from tests.support.api import bearer, deploy, spec_for, unique, upload_random
from tests.support.server import RunningServer, running_server
from tests.support.telemetry import node_sample

T = TypeVar("T")


class LoadTelemetry:
    """An in-memory telemetry window: one ClusterSample per second up to now, each
    carrying the app figures set when it was added (what an aggregator would hold)."""

    def __init__(self) -> None:
        self.samples: list[ClusterSample] = []
        self.apps: dict[str, AppSample] = {}

    def set_load(self, app: str, *, instances: int, in_flight: float) -> None:
        figures = AppSample(
            app=app,
            instances=instances,
            cpu_per_instance=0.1,
            rss_mb_per_instance=50.0,
            calls_per_s=10.0 * in_flight,
            errors_per_s=0.0,
            latency_ms=100.0,
            in_flight_per_instance=in_flight,
            restarts=0,
        )
        self.apps = {**self.apps, app: figures}

    def _fill(self) -> None:
        now = time.time()
        t = self.samples[-1].ts + 1.0 if self.samples else now - 40.0
        while t <= now:
            self.samples.append(ClusterSample(ts=t, apps=dict(self.apps)))
            t += 1.0

    def window(self, seconds: float | None) -> list[ClusterSample]:
        self._fill()
        if seconds is None:
            return list(self.samples)
        return [s for s in self.samples if s.ts >= time.time() - seconds]

    def latest(self) -> ClusterSample | None:
        self._fill()
        return self.samples[-1] if self.samples else None


class StaticRisk:
    """Risk verdicts set by the test, stamped fresh on every read."""

    def __init__(self) -> None:
        self.status: dict[str, RiskStatus] = {}

    def assessments(self) -> dict[str, RiskAssessment]:
        now = time.time()
        return {
            node: RiskAssessment(
                node=node,
                status=status,
                confidence=0.95 if status is RiskStatus.CRITICAL else 0.8,
                root_cause="Cloud Provider Signal" if status is RiskStatus.CRITICAL else "Stable",
                rule="market.rebalance" if status is RiskStatus.CRITICAL else "stable",
                inputs={"rebalance": status is RiskStatus.CRITICAL},
                ts=now,
            )
            for node, status in self.status.items()
        }


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(
        tmp_path_factory.mktemp("controller"),
        lease_ttl=60.0,  # registered test nodes stay live without heartbeats
        controller_interval=0.2,
        controller_undrain_after=1.0,
    ) as server:
        yield server


@pytest.fixture
async def http(ctl: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=ctl.base_url, timeout=10.0, headers=bearer(ctl.admin_token)
    ) as client:
        yield client


@pytest.fixture
async def api(ctl: RunningServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(ctl.base_url, ctl.admin_token) as client:
        yield client


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 15.0
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last: {value!r}")
        await asyncio.sleep(0.1)


async def passes(server: RunningServer, count: int) -> None:
    """Wait until the controller has made ``count`` more passes."""
    start = controller_of(server).passes

    async def current() -> int:
        return controller_of(server).passes

    await eventually(current, lambda p: p >= start + count)


def controller_of(server: RunningServer) -> Controller:
    controller = server.controller
    assert controller is not None, "the server did not install a controller"
    return controller


def leadership_of(server: RunningServer) -> Leadership:
    term = server.app.state.leader.election.leadership
    assert term is not None, "the test server is not leading"
    return term  # type: ignore[no-any-return]


async def deploy_autoscaled(
    http: httpx.AsyncClient, token: str, app: str, instances: int, **autoscale: Any
) -> None:
    digest = await upload_random(http, token)
    spec = spec_for(app, autoscale=autoscale)
    response = await deploy(http, token, app, digest, instances=instances, spec=spec)
    assert response.status_code == 201, response.text


async def desired(http: httpx.AsyncClient, app: str) -> int:
    response = await http.get(f"/api/v1/apps/{app}")
    assert response.status_code == 200, response.text
    count: int = response.json()["instances_desired"]
    return count


async def register(http: httpx.AsyncClient, join_token: str, node: str) -> None:
    body = RegisterIn(
        id=node,
        capabilities=NodeCapabilities(cpus=8, memory_mb=8192, drivers=["process"]),
        router_url="http://127.0.0.1:9",
    )
    response = await http.post(
        "/api/v1/nodes/register", json=body.model_dump(mode="json"), headers=bearer(join_token)
    )
    assert response.status_code == 200, response.text


async def node_states(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await http.get("/api/v1/nodes")
    assert response.status_code == 200, response.text
    return {n["id"]: n for n in response.json()}


# -- autoscaling --------------------------------------------------------------------------


async def test_load_scales_up_idleness_scales_down_and_both_are_recorded(
    ctl: RunningServer, http: httpx.AsyncClient, api: ApiClient
) -> None:
    load = LoadTelemetry()
    controller_of(ctl).telemetry = load
    app = unique("auto")
    await deploy_autoscaled(
        http,
        ctl.admin_token,
        app,
        1,
        min=1,
        max=5,
        metric="in_flight",
        target=1.0,
        horizon=0,
        scale_down_cooldown=2,
        scale_down_window=2,
        max_step_down=2,
    )
    load.set_load(app, instances=1, in_flight=3.0)  # 3 open calls on one instance
    assert await eventually(lambda: desired(http, app), lambda n: n == 3) == 3

    decisions = await eventually(lambda: api.decisions(target=app), lambda ds: len(ds) == 1)
    up = decisions[0]
    assert (up.layer, up.kind, up.outcome, up.detail) == (1, "scale", "applied", "")
    assert up.action == {"instances": 3, "from": 1, "direction": "up"}
    assert up.reason.startswith("in_flight 3/instance > target 1 ±15%: 1 → 3"), up.reason
    assert up.inputs["metric"] == "in_flight" and up.inputs["samples"] >= 1
    deployment_id = (await http.get(f"/api/v1/apps/{app}")).json()["deployment_id"]
    events = (await http.get(f"/api/v1/deployments/{deployment_id}/events")).json()
    assert any(e["type"] == "autoscaled" and "1 → 3" in e["message"] for e in events), events

    # the load is carried: no more decisions while it stays (no repeated no-ops recorded)
    load.set_load(app, instances=3, in_flight=1.0)
    await passes(ctl, 5)
    assert len(await api.decisions(target=app)) == 1

    # idle: after the down cool-down, down to min in one step (max_step_down = 2)
    load.set_load(app, instances=3, in_flight=0.0)
    assert await eventually(lambda: desired(http, app), lambda n: n == 1) == 1
    newest = (await eventually(lambda: api.decisions(target=app), lambda ds: len(ds) == 2))[0]
    assert newest.action == {"instances": 1, "from": 3, "direction": "down"}
    assert "below 70% of target 1" in newest.reason and newest.outcome == "applied"

    # a new leader's controller reads the cool-downs back from the records
    successor = Controller(ctl.ctx)
    ctl.run(successor.load_history())
    assert successor.last_change(app) == newest.ts

    # the CLI's table shows them, newest first
    text = format_decisions(await api.decisions(target=app))
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["TIME", "LAYER", "KIND", "TARGET", "OUTCOME", "REASON"]
    assert "3 → 1" in lines[1] and "1 → 3" in lines[2] and app in lines[1]


async def test_node_pushes_through_the_real_telemetry_hub_scale_an_app(
    ctl: RunningServer, http: httpx.AsyncClient, api: ApiClient
) -> None:
    controller_of(ctl).telemetry = None  # read ctx.telemetry, the server's own hub
    app, node = unique("pushed"), unique("pusher")
    await deploy_autoscaled(
        http, ctl.admin_token, app, 1, min=1, max=5, metric="in_flight", target=1.0, horizon=0
    )
    join = bearer(ctl.node_token(node))

    async def push_forever() -> None:
        seq = 0
        while True:
            seq += 1
            update = node_sample(
                node,
                seq,
                interval=0.3,
                cpu=0.5,
                instances=[
                    InstanceMetrics(
                        key=instance_key(node, app, 1, 0),
                        app=app,
                        version=1,
                        n=0,
                        cpu=0.2,
                        rss_mb=30,
                    )
                ],
                endpoints=[EndpointMetrics(app=app, calls=5, total_ms=250.0, in_flight=4)],
            )
            response = await http.post(
                f"/api/v1/nodes/{node}/metrics", content=update.model_dump_json(), headers=join
            )
            assert response.status_code == 204, response.text
            await asyncio.sleep(0.3)

    pusher = asyncio.create_task(push_forever())
    try:
        assert await eventually(lambda: desired(http, app), lambda n: n == 4) == 4
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
    [decision] = await eventually(lambda: api.decisions(target=app), lambda ds: len(ds) == 1)
    assert decision.reason.startswith("in_flight 4/instance > target 1 ±15%: 1 → 4"), (
        decision.reason
    )


async def test_an_app_out_of_bounds_is_brought_back_without_telemetry(
    ctl: RunningServer, http: httpx.AsyncClient, api: ApiClient
) -> None:
    app = unique("bounds")
    await deploy_autoscaled(http, ctl.admin_token, app, 1, min=2, max=4)
    assert await eventually(lambda: desired(http, app), lambda n: n == 2) == 2
    response = await http.post(f"/api/v1/apps/{app}/scale", json={"instances": 9})
    assert response.status_code == 200, response.text
    assert await eventually(lambda: desired(http, app), lambda n: n == 4) == 4
    found = await eventually(lambda: api.decisions(target=app), lambda ds: len(ds) == 2)
    reasons = [d.reason for d in found]
    assert reasons[0] == "9 instance(s) is above the autoscale max 4: 9 → 4"
    assert reasons[1] == "1 instance(s) is below the autoscale min 2: 1 → 2"


async def test_a_deposed_leader_changes_nothing(
    ctl: RunningServer, http: httpx.AsyncClient
) -> None:
    app = unique("fenced")
    await deploy_autoscaled(
        http, ctl.admin_token, app, 2, min=1, max=6, metric="in_flight", target=1.0, horizon=0
    )
    load = LoadTelemetry()
    load.set_load(app, instances=2, in_flight=2.0)
    # a second controller over the same server, driven by hand
    mine = Controller(ctl.ctx, telemetry=load, risk=StaticRisk())
    real = leadership_of(ctl)
    stale = Leadership(candidate="someone-else", key=real.key, epoch=real.epoch - 1, lease=0)
    assert ctl.run(mine.step(stale)) == []
    assert await desired(http, app) == 2
    recorded = ctl.run(mine.step(real))
    assert [(d.kind, d.target, d.outcome, d.action["instances"]) for d in recorded] == [
        ("scale", app, "applied", 4)
    ]
    assert await desired(http, app) == 4


# -- drains -------------------------------------------------------------------------------


async def test_critical_drains_low_undrains_and_operator_drains_are_left_alone(
    ctl: RunningServer, http: httpx.AsyncClient, api: ApiClient
) -> None:
    risk = StaticRisk()
    controller_of(ctl).risk = risk
    one, two = unique("n1"), unique("n2")
    await register(http, ctl.node_token(one), one)
    await register(http, ctl.node_token(two), two)
    risk.status = {one: RiskStatus.CRITICAL, two: RiskStatus.LOW}

    states = await eventually(lambda: node_states(http), lambda s: s[one]["state"] == "draining")
    assert states[one]["drain_reason"].startswith(f"node {one} is CRITICAL: Cloud Provider Signal")
    assert states[two]["state"] == "ready"
    # the flag is set first, the decision recorded right after: wait for the record
    [drain] = await eventually(lambda: api.decisions(target=one), lambda ds: len(ds) == 1)
    assert (drain.layer, drain.kind, drain.outcome) == (1, "drain", "applied")
    assert "(confidence 0.95, rule market.rebalance)" in drain.reason
    assert drain.inputs["root_cause"] == "Cloud Provider Signal"
    # instances other tests placed on it are marked to migrate (tracked migrations)
    assert drain.action["draining"] is True and drain.action["drained_by"] == "controller"
    assert isinstance(drain.action["migrations"], list)

    # LOW again for undrain_after (1 s): the controller undoes its own drain
    risk.status = {one: RiskStatus.LOW, two: RiskStatus.LOW}
    await eventually(lambda: node_states(http), lambda s: s[one]["state"] == "ready")
    undrain = (
        await eventually(lambda: api.decisions(target=one), lambda ds: ds[0].kind == "undrain")
    )[0]
    assert (undrain.kind, undrain.outcome) == ("undrain", "applied")
    assert "has been LOW (Stable)" in undrain.reason

    # an operator drains two; one turns CRITICAL but is the last schedulable node
    assert (await http.post(f"/api/v1/nodes/{two}/drain")).status_code == 200
    risk.status = {one: RiskStatus.CRITICAL, two: RiskStatus.LOW}
    refused = await eventually(
        lambda: api.decisions(target=one), lambda ds: ds[0].outcome == "refused"
    )
    assert refused[0].detail.startswith("it is the last schedulable node")
    await passes(ctl, 8)
    assert len(await api.decisions(target=one)) == 3  # the refusal is recorded once
    states = await node_states(http)
    assert states[one]["state"] == "ready"
    # two has been LOW all along, but an operator drained it: it stays drained
    assert states[two]["state"] == "draining"
    assert states[two]["drain_reason"] == "drained by an operator"
    assert await api.decisions(target=two) == []
    controller_of(ctl).risk = StaticRisk()


async def test_decisions_api_filters_and_access(
    ctl: RunningServer, http: httpx.AsyncClient
) -> None:
    response = await http.get("/api/v1/decisions", params={"layer": 1, "limit": 500})
    assert response.status_code == 200
    decisions = [DecisionOut.model_validate(d) for d in response.json()]
    assert decisions and all(d.layer == 1 for d in decisions)
    assert [d.id for d in decisions] == sorted((d.id for d in decisions), reverse=True)
    kinds = {d.kind for d in decisions}
    assert {"scale", "drain", "undrain"} <= kinds
    drains = (await http.get("/api/v1/decisions", params={"kind": "drain"})).json()
    assert drains and {d["kind"] for d in drains} == {"drain"}
    assert len((await http.get("/api/v1/decisions", params={"limit": 2})).json()) == 2
    assert (await http.get("/api/v1/decisions", params={"layer": 4})).status_code == 400
    assert (await http.get("/api/v1/decisions", params={"kind": "nuke"})).status_code == 400
    anonymous = await http.get("/api/v1/decisions", headers={"Authorization": ""})
    assert anonymous.status_code == 401

    # another tenant sees node decisions but none of this tenant's app decisions
    other = bearer(ctl.new_tenant())
    theirs = (await http.get("/api/v1/decisions", params={"limit": 500}, headers=other)).json()
    assert theirs and {d["kind"] for d in theirs} <= {"drain", "undrain"}
    viewer = bearer(ctl.token("viewer"))
    mine = (await http.get("/api/v1/decisions", params={"kind": "scale"}, headers=viewer)).json()
    assert mine and all(d["kind"] == "scale" for d in mine)


def test_cli_decisions_prints_one_json_object(ctl: RunningServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETHER_", "XDG_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    common = ["--server", ctl.base_url, "--token", ctl.admin_token]
    run = [sys.executable, "-m", "aether", "decisions"]
    result = subprocess.run(
        [*run, "--kind", "drain", "--limit", "3", "--format", "json", *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert 1 <= len(out["decisions"]) <= 3
    assert all(d["kind"] == "drain" and d["layer"] == 1 for d in out["decisions"])
    text = subprocess.run(
        [*run, "--node", out["decisions"][0]["target"], *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("TIME") and "drain" in text.stdout and "applied" in text.stdout
    both = subprocess.run(
        [*run, "--node", "a", "--app", "b", *common], env=env, capture_output=True, text=True
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


async def test_the_controllers_drain_is_an_audit_event_linked_to_its_decision(
    ctl: RunningServer, http: httpx.AsyncClient, api: ApiClient
) -> None:
    risk = StaticRisk()
    controller_of(ctl).risk = risk
    node = unique("audited")
    await register(http, ctl.node_token(node), node)
    risk.status = {node: RiskStatus.CRITICAL}
    [drain] = await eventually(lambda: api.decisions(target=node), lambda ds: len(ds) == 1)
    risk.status = {node: RiskStatus.LOW}

    async def audited() -> list[dict[str, Any]]:
        params = {"actor": "controller", "target": f"nodes/{node}"}
        found: list[dict[str, Any]] = (await http.get("/api/v1/audit", params=params)).json()[
            "events"
        ]
        return found

    events = await eventually(audited, lambda es: any(e["decision_id"] == drain.id for e in es))
    event = next(e for e in events if e["decision_id"] == drain.id)
    assert (event["actor_kind"], event["action"], event["outcome"]) == (
        "controller",
        "controller.drain",
        "ok",
    )
    assert event["tenant_id"] is None and event["status"] is None
