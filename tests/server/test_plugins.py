"""Policy plugins on a real server: the API (cluster admin only, audited), and the
leader running them -- a risk plugin adds to a node's assessment, a guard plugin
refuses the controller's drain, and broken plugins are skipped with their reason
recorded while the loops keep running."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from aether.model.api import RegisterIn
from aether.model.cluster import NodeCapabilities
from aether.model.risk import RiskAssessment, RiskStatus
from aether.server.leader.controller import Controller
from tests.support.api import bearer, unique
from tests.support.plugins import answering, example_wasm, growing, importing, looping
from tests.support.server import RunningServer, running_server

T = TypeVar("T")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(
        tmp_path_factory.mktemp("plugins"), lease_ttl=60.0, controller_interval=0.2
    ) as server:
        yield server


@pytest.fixture
def http(srv: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=srv.base_url, timeout=10.0, headers=bearer(srv.admin_token)
    ) as client:
        yield client


def eventually(probe: Callable[[], T], check: Callable[[T], bool], timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last: {value!r}")
        time.sleep(0.05)


def body(name: str, wasm: bytes, kind: str = "guard", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "wasm": base64.b64encode(wasm).decode(), **extra}


def add(http: httpx.Client, name: str, wasm: bytes, kind: str = "guard", **extra: Any) -> None:
    response = http.post("/api/v1/plugins", json=body(name, wasm, kind, **extra))
    assert response.status_code == 201, response.text


def test_upload_list_get_replace_and_remove(srv: RunningServer, http: httpx.Client) -> None:
    wasm = example_wasm()
    made = http.post("/api/v1/plugins", json=body("freeze-api", wasm, version="1"))
    assert made.status_code == 201, made.text
    out = made.json()
    assert (out["name"], out["kind"], out["version"], out["size"]) == (
        "freeze-api",
        "guard",
        "1",
        len(wasm),
    )
    assert (out["fuel"], out["memory_bytes"], out["deadline_ms"]) == (20_000_000, 16 << 20, 100)
    assert out["created_by"].startswith("token:")
    assert len(out["sha256"]) == 64
    # the same upload again is a no-op; other bytes under the same version a conflict
    again = http.post("/api/v1/plugins", json=body("freeze-api", wasm, version="1"))
    assert again.status_code == 201 and again.json()["sha256"] == out["sha256"]
    other = answering({"allow": True})
    clash = http.post("/api/v1/plugins", json=body("freeze-api", other, version="1"))
    assert clash.status_code == 409, clash.text
    assert "already at version '1'" in clash.json()["message"]
    newer = http.post("/api/v1/plugins", json=body("freeze-api", other, version="2"))
    assert newer.status_code == 201 and newer.json()["version"] == "2"
    assert "freeze-api" in [p["name"] for p in http.get("/api/v1/plugins").json()]
    assert http.get("/api/v1/plugins/freeze-api").json()["version"] == "2"
    gone = http.delete("/api/v1/plugins/freeze-api")
    assert gone.status_code == 200 and gone.json()["name"] == "freeze-api"
    assert http.get("/api/v1/plugins/freeze-api").status_code == 404
    assert http.delete("/api/v1/plugins/freeze-api").status_code == 404
    audit = http.get("/api/v1/audit", params={"target": "plugins/freeze-api"}).json()["events"]
    assert [(e["action"], e["status"]) for e in audit] == [
        ("DELETE /plugins/{name}", 404),
        ("DELETE /plugins/{name}", 200),
    ]
    uploads = http.get("/api/v1/audit", params={"target": "plugins"}).json()["events"]
    assert [(e["action"], e["status"]) for e in uploads if e["target"] == "plugins"][:4] == [
        ("POST /plugins", 201),
        ("POST /plugins", 409),
        ("POST /plugins", 201),
        ("POST /plugins", 201),
    ]


def test_modules_that_are_not_plugins_are_refused(http: httpx.Client) -> None:
    imports = http.post("/api/v1/plugins", json=body("wasi", importing()))
    assert imports.status_code == 400, imports.text
    assert imports.json()["message"] == (
        "not a plugin: a plugin may import nothing (no WASI, no host functions); "
        "this module imports wasi_snapshot_preview1.fd_write"
    )
    text = http.post("/api/v1/plugins", json={"name": "t", "kind": "risk", "wasm": "KG1vZHVsZSk="})
    assert text.status_code == 400 and "no \\0asm header" in text.json()["message"]
    assert http.post("/api/v1/plugins", json={**body("b", b"x"), "wasm": "!!"}).status_code == 400
    assert http.get("/api/v1/plugins/wasi").status_code == 404


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_only_the_cluster_admin_manages_plugins(srv: RunningServer, role: str) -> None:
    callers = {
        f"default {role}": srv.token(role) if role != "admin" else None,
        f"tenant {role}": srv.mint(role, unique("tenant")),
    }
    for who, token in callers.items():
        if token is None:
            continue
        with httpx.Client(base_url=srv.base_url, headers=bearer(token)) as client:
            for method, path, payload in [
                ("GET", "/api/v1/plugins", None),
                ("POST", "/api/v1/plugins", body("nope", example_wasm())),
                ("GET", "/api/v1/plugins/nope", None),
                ("DELETE", "/api/v1/plugins/nope", None),
            ]:
                response = client.request(method, path, json=payload)
                assert response.status_code == 403, (who, method, path, response.text)
                assert response.json()["code"] == "forbidden"


# -- the leader runs them ---------------------------------------------------------------


def register(http: httpx.Client, srv: RunningServer, node: str) -> None:
    spec = RegisterIn(
        id=node,
        capabilities=NodeCapabilities(cpus=4, memory_mb=4096, drivers=["process"]),
        router_url="http://127.0.0.1:9",
    )
    response = http.post(
        "/api/v1/nodes/register",
        json=spec.model_dump(mode="json"),
        headers=bearer(srv.node_token(node)),
    )
    assert response.status_code == 200, response.text


def test_risk_plugins_add_to_the_assessment_and_broken_ones_are_skipped(
    srv: RunningServer, http: httpx.Client
) -> None:
    node = unique("rn")
    register(http, srv, node)
    answer = {"status": "HIGH", "root_cause": "Maintenance Window", "confidence": 0.9}
    add(http, "window", answering(answer), "risk")
    add(http, "spinner", looping(), "risk", fuel=10**9, deadline_ms=20)
    add(http, "hog", growing(), "risk")
    add(http, "babbler", answering(b"<html>"), "risk")
    try:
        srv.risk.plugins.invalidate()

        def verdict() -> RiskAssessment | None:
            return srv.risk.assessment(node)

        found = eventually(verdict, lambda a: a is not None and a.rule == "plugin.window")
        assert found is not None
        assert (found.status, found.root_cause) == (RiskStatus.HIGH, "Maintenance Window")
        assert found.inputs["plugin.window"]["plugin_version"] == "1"
        assert found.inputs["plugin.spinner"] == {"skipped": "deadline: still running after 20 ms"}
        assert found.inputs["plugin.hog"]["skipped"].startswith(
            "trapped: out-of-bounds memory access (memory is limited to 16 MiB"
        )
        assert found.inputs["plugin.babbler"]["skipped"].startswith("garbage: the output is not")
        passes = srv.risk.passes
        eventually(lambda: srv.risk.passes, lambda p: p >= passes + 3)  # still scoring
    finally:
        for name in ("window", "spinner", "hog", "babbler"):
            http.delete(f"/api/v1/plugins/{name}")
        srv.risk.plugins.invalidate()


class Critical:
    """The risk source the hand-driven controller reads: ``node`` CRITICAL."""

    def __init__(self, node: str) -> None:
        self.node = node

    def assessments(self) -> dict[str, RiskAssessment]:
        return {
            self.node: RiskAssessment(
                node=self.node,
                status=RiskStatus.CRITICAL,
                confidence=0.95,
                root_cause="Cloud Provider Signal",
                rule="market.rebalance",
                inputs={},
                ts=time.time(),
            )
        }


def test_a_guard_plugin_refuses_a_drain_and_a_broken_one_is_skipped(
    srv: RunningServer, http: httpx.Client
) -> None:
    doomed, spare = unique("gn"), unique("gn")
    register(http, srv, doomed)
    register(http, srv, spare)
    add(http, "change-freeze", example_wasm())
    add(http, "spinner", looping(), fuel=1_000_000)
    try:
        controller = Controller(srv.ctx, risk=Critical(doomed))
        leadership = srv.app.state.leader.election.leadership
        recorded = srv.run(controller.step(leadership))
        [refused] = [d for d in recorded if d.target == doomed]
        assert (refused.kind, refused.outcome) == ("drain", "refused")
        assert refused.detail == (
            "plugin change-freeze v1: change freeze: no node drains until it is lifted"
        )
        assert refused.inputs["plugins"] == {
            "change-freeze": "refused: change freeze: no node drains until it is lifted",
            "spinner": "skipped: out of fuel: used its 1000000 units (an endless loop?)",
        }
        nodes = {n["id"]: n for n in http.get("/api/v1/nodes").json()}
        assert nodes[doomed]["state"] == "ready"
        # recorded once, and the controller keeps going
        assert [d for d in srv.run(controller.step(leadership)) if d.target == doomed] == []
        assert controller.passes == 2

        # without the freeze, the broken plugin alone refuses nothing: the drain goes ahead
        assert http.delete("/api/v1/plugins/change-freeze").status_code == 200
        controller.guards.invalidate()
        [applied] = [d for d in srv.run(controller.step(leadership)) if d.target == doomed]
        assert (applied.kind, applied.outcome) == ("drain", "applied")
        assert applied.inputs["plugins"] == {
            "spinner": "skipped: out of fuel: used its 1000000 units (an endless loop?)"
        }
    finally:
        for name in ("change-freeze", "spinner"):
            http.delete(f"/api/v1/plugins/{name}")
        http.post(f"/api/v1/nodes/{doomed}/undrain")
